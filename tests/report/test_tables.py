from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from deltann.cli import main
from deltann.report import build_report


def test_report_writes_markdown_and_csv(tiny_results: Path, tmp_path: Path) -> None:
    report = build_report(tiny_results, tmp_path)
    names = {p.name for p in report.files}
    assert {"report.md", "pairwise_agreement.csv", "latency.csv", "speedup.csv", "failures.csv"} <= names
    assert "top1_dissimilarity_tiny-cnn_local.csv" in names
    assert "## Top-1 label dissimilarity (%): tiny_cnn on local" in report.markdown
    assert "speedup_pct(A→B) = (t_A / t_B − 1) × 100" in report.markdown
    matrix = pl.read_csv(tmp_path / "top1_dissimilarity_tiny-cnn_local.csv")
    assert matrix.height == 6 and matrix.width == 7
    latency = pl.read_csv(tmp_path / "latency.csv")
    assert latency.height == 6 and (latency["median_ms"] > 0).all()


def test_cli_report_prints_tables(tiny_results: Path, tmp_path: Path, capsys) -> None:
    assert main(["report", str(tiny_results), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| A \\ B" in out and "## Latency (ms)" in out and f"report written to {tmp_path}" in out


def test_cli_error_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no manifest" in err


def test_report_writes_html_latex_and_png(tiny_results: Path, tmp_path: Path) -> None:
    import base64
    import io
    import re

    from PIL import Image

    from deltann.report.html import fingerprint
    from deltann.store import Store

    report = build_report(tiny_results, tmp_path)
    names = {p.name for p in report.files}
    assert report.html == tmp_path / "report.html" and "report.html" in names
    assert {"speedup.tex", "latency.tex", "noise_floor.csv", "stability.csv", "margin_flips.csv", "accuracy.csv",
            "settings.csv", "framework_pairs.csv", "top5_jaccard_tiny-cnn_local.csv",
            "logit_divergence_tiny-cnn_local.csv"} <= names
    assert "passes.csv" not in names  # Table IV only for a study run with ablation = true
    table3 = pl.read_csv(tmp_path / "settings.csv")
    assert set(table3["setting"]) == {"basic", "extended"}
    assert table3.filter(pl.col("setting") == "basic")["speedup_pct_vs_basic"].to_list() == [0.0] * 2
    pngs = sorted(p for p in report.files if p.suffix == ".png")
    # 3 label heatmaps + 3 framework heatmaps (native, basic, extended) + boxplot + latency heatmap + speedups
    assert len(pngs) == 9
    for png in pngs:
        with Image.open(png) as im:
            im.verify()
    page = report.html.read_text()
    embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(embedded) == len(pngs) == page.count("<img ")
    assert {base64.b64decode(e) for e in embedded} == {p.read_bytes() for p in pngs}
    Image.open(io.BytesIO(base64.b64decode(embedded[0]))).verify()
    assert "http://" not in page and "https://" not in page and "<script" not in page  # opens offline
    assert "speedup_pct(A→B) = (t_A / t_B − 1) × 100" in page
    env = Store(tiny_results).read_manifest()["environment"]
    assert fingerprint(env) in page and env["cpu"] in page
    tex = (tmp_path / "speedup.tex").read_text()
    assert tex.startswith("\\begin{table}") and "\\begin{tabular}{lllllrrrllrrrrrrrrrrl}" in tex
    assert tex.count("\\\\\n") == 1 + 6  # header + one line per pair
    speed = pl.read_csv(tmp_path / "speedup.csv")
    assert {"ci_low_pct", "ci_high_pct", "p_holm", "effect_rb", "significant"} <= set(speed.columns)


def test_latex_escapes_and_formats() -> None:
    from deltann.report.latex import to_latex

    df = pl.DataFrame({"name": ["a_b & 50%", None], "x": [1.23456, float("nan")], "ok": [True, False]})
    tex = to_latex(df, caption="A→B", floats=2)
    assert r"a\_b \& 50\% & 1.23 & yes \\" in tex
    assert r"-- & -- & no \\" in tex
    assert r"\caption{A$\rightarrow$B}" in tex and "{lrl}" in tex


def test_report_shows_per_layer_divergence(tiny_results: Path, tmp_path: Path) -> None:
    import shutil

    import pyarrow as pa

    from deltann.store import SCHEMAS, Store, tag

    if "layers" not in SCHEMAS:
        pytest.skip("this store has no layers table")
    results = tmp_path / "results"
    shutil.copytree(tiny_results, results)
    pair = "torch [torch]@local | torch [tvm:basic]@local"
    base = {n: None for n in SCHEMAS["layers"].names}
    unit = Store(results).scan("builds").filter(pl.col("config") == "torch [torch]").collect().row(0, named=True)
    rows = [base | {k: unit[k] for k in ("unit_key", "study", "model", "variant", "runtime", "setting", "config",
                                         "device", "board", "hostname")} | {
        "pair": pair, "image_ids": ["chelsea"], "order": i, "layer_a": f"l{i}", "layer_b": f"l{i}", "matched": True,
        "max_abs": m, "mean_abs": m / 10, "cosine": 1.0 - m, "first_divergent": i == 2, "alignment_rate": 1.0}
        for i, m in enumerate([1e-7, 1e-6, 2e-3, 5e-3])]
    Store(results).write(tag(pa.Table.from_pylist(rows, schema=SCHEMAS["layers"]), "layers", unit["unit_key"], 0))
    report = build_report(results, tmp_path / "report")
    assert "## Per-layer divergence (fault localization)" in report.markdown
    summary = pl.read_csv(tmp_path / "report" / "layer_divergence.csv")
    row = summary.row(0, named=True)
    assert (row["aligned"], row["first_layer_a"], row["first_max_abs"]) == (4, "l2", 2e-3)
    assert row["final_max_abs"] == 5e-3
    assert any(p.name.startswith("layers_") and p.suffix == ".png" for p in report.files)


def test_report_names_settings_built_under_two_pass_lists(tiny_results: Path, tmp_path: Path) -> None:
    """A folder that ran under an older deltann, whose ``basic`` had no schedule, and under
    this one: both rows stay (their keys differ) and the report says so, once, by name."""
    import shutil

    import pyarrow as pa

    from deltann.compile import settings as compile_settings
    from deltann.store import SCHEMAS, Store, tag

    results = tmp_path / "results"
    shutil.copytree(tiny_results, results)
    plain = build_report(results, tmp_path / "plain")
    assert "pass lists" not in plain.markdown
    store = Store(results)
    row = store.scan("builds").filter(pl.col("setting") == "basic").collect().row(0, named=True)
    # (rows = 0: a build row of its own, no predictions claimed, so the store counts it complete)
    old = row | {"unit_key": "0" * 32, "passes": list(compile_settings.passes_of("unscheduled")), "rows": 0}
    store.write(tag(pa.Table.from_pylist([old], schema=SCHEMAS["builds"]), "builds", old["unit_key"], 0))
    report = build_report(results, tmp_path / "mixed")
    notes = [line for line in report.markdown.splitlines() if "pass lists" in line]
    assert len(notes) == 1 and "basic (2 pass lists)" in notes[0] and "extended" not in notes[0]
    assert "basic (2 pass lists)" in (tmp_path / "mixed" / "report.html").read_text()
def test_report_opens_with_findings_in_words(tiny_results: Path, tmp_path: Path) -> None:
    """The tiny study agrees on every label: the report says so first, before any matrix,
    and gives TVM extended against onnxruntime as a time ratio with its CI."""
    report = build_report(tiny_results, tmp_path)
    md = report.markdown
    assert md.index("## Findings") < md.index("## Top-1 label dissimilarity") < md.index("![")
    first = md.split("## Findings", 1)[1].split("\n## ", 1)[0]
    assert "No label differs: all 6 configurations give the same top-1 on every image (4 images)." in first
    assert re.search(r"`torch->onnx \[tvm:extended\]` / `torch->onnx \[onnxruntime\]` time: [\d.]+× "
                     r"\(B (slower|faster); 95 % CI [\d.]+–[\d.]+×", first)
    assert "Largest logit difference:" in first and "deltann repro " in first
    assert "(#speedup)" in first and '<a id="speedup"></a>' in md
    found = pl.read_csv(tmp_path / "findings.csv")
    assert {"same", "logits", "time"} <= set(found["kind"])


def test_heatmap_scales_are_fixed_and_no_difference_is_neutral() -> None:
    """0 % dissimilarity and Jaccard 1 are grey, whatever else the matrix holds; 30 % is the
    colour of 30 % on a 0–100 scale (not the end of the map, as a data-range scale made
    it); the more different, the darker (the difference map reversed, the similarity map
    not)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    from deltann.report.plots import NEUTRAL, heatmap_scale

    zeros = heatmap_scale(np.zeros((3, 3)), vmin=0.0, vmax=100.0, neutral=0.0)
    assert (zeros.norm.vmin, zeros.norm.vmax) == (0.0, 100.0)
    assert np.allclose(zeros.rgba(), to_rgba(NEUTRAL))
    mixed = heatmap_scale(np.array([[0.0, 30.0], [30.0, 0.0]]), vmin=0.0, vmax=100.0, neutral=0.0, reverse=True)
    assert np.allclose(mixed.rgba()[0, 1], plt.get_cmap("cividis_r")(0.3))
    jaccard = heatmap_scale(np.array([[1.0, 0.6]]), vmin=0.0, vmax=1.0, neutral=1.0)
    assert np.allclose(jaccard.rgba()[0, 0], to_rgba(NEUTRAL))
    assert np.allclose(jaccard.rgba()[0, 1], plt.get_cmap("cividis")(0.6))
    luminance = [0.2126 * r + 0.7152 * g + 0.0722 * b for r, g, b, _ in
                 (mixed.rgba()[0, 1], plt.get_cmap("cividis_r")(0.9))]
    assert luminance[1] < luminance[0]  # 90 % is darker than 30 %
    logs = heatmap_scale(np.array([[0.0, 1e-6, 1e-2]]), vmin=1e-7, vmax=1e2, neutral=0.0, log=True, reverse=True)
    assert np.allclose(logs.rgba()[0, 0], to_rgba(NEUTRAL))
    assert (logs.norm.vmin, logs.norm.vmax) == (1e-7, 1e2)


def test_table3_without_basic_has_no_none(tmp_path: Path) -> None:
    from deltann.analysis import pass_tables as passes

    builds = pl.DataFrame({"model": ["m"], "variant": ["torch"], "device": ["local"], "setting": ["extended"],
                           "status": ["ok"], "runtime": ["tvm"]})
    timings = pl.DataFrame({"model": ["m"], "variant": ["torch"], "device": ["local"], "setting": ["extended"],
                            "median_ns": [5e6]})
    table3 = passes.settings_table(builds, timings)
    assert table3.row(0, named=True) == {"model": "m", "variant": "torch", "device": "local", "setting": "extended",
                                         "ms": "5.0", "speedup_pct_vs_basic": ""}
