"""``deltann repro``: a bundle per discrepancy whose ``repro.py`` runs in a fresh Python
process that cannot import deltann, with only the two runtimes, and prints the same top-1
difference the study stored. On a real study where a dynamic-range TFLite variant flips
labels (tests/conftest.py ``flip_results``), whose report opens with that pair; and on a
TVM build, shipped as the compiled shared library the board kept."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from deltann import analysis
from deltann.cli import main
from deltann.report import build_report
from deltann.store import Store

SOURCE, QUANT = "keras [keras]", "keras->tflite:dynamic-range [litert]"
#: Runs repro.py as a user would, in a fresh interpreter (isolated mode: no PYTHONPATH, no
#: user site) in which ``import deltann`` fails, so the bundle must stand on its own.
FRESH = ("import runpy, sys; sys.modules['deltann'] = None; sys.argv = ['repro.py'] + sys.argv[1:]; "
         "runpy.run_path('repro.py', run_name='__main__')")


def _run_bundle(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = (folder / "repro.py").read_text()
    assert "deltann" not in "".join(line for line in script.splitlines() if line.startswith(("import", "from")))
    return subprocess.run([sys.executable, "-I", "-c", FRESH, *args], cwd=folder, capture_output=True, text=True,
                          timeout=300, check=False)


def _printed_top1(stdout: str) -> dict[str, tuple[int, int]]:
    return {m[1]: (int(m[2]), int(m[3])) for m in re.finditer(r"^top1 (\S+): A=(\d+) B=(\d+)", stdout, re.M)}


def _stored_top1(results: Path, config: str) -> dict[str, int]:
    rows = Store(results).scan("predictions").filter(pl.col("config") == config).select("image_id", "top1").collect()
    return dict(rows.iter_rows())


def test_flip_study_report_leads_with_the_pair_and_repro_reproduces_it(flip_results: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    pairs = analysis.pairwise_agreement(Store(flip_results))
    row = pairs.filter((pl.col("config_a") == SOURCE) & (pl.col("config_b") == QUANT)).row(0, named=True)
    assert row["disagree"] > 0  # the fixture's premise: dynamic-range flips labels

    report = build_report(flip_results, tmp_path / "report")
    sections = re.findall(r"^## (.+)$", report.markdown, re.M)
    assert sections[0] == "Findings"
    first = report.markdown.split("## Findings", 1)[1].split("\n## ", 1)[0]
    bullet = next(line for line in first.splitlines() if line.startswith("- "))
    assert f"`{QUANT}` differs from `{SOURCE}`" in bullet
    assert f"on the top-1 of {row['disagree']} of {row['n_images']} images" in bullet
    assert f"deltann repro {flip_results} --pair '{SOURCE}' '{QUANT}' --image " in bullet
    assert "**Hop:** `keras->tflite:dynamic-range` (tensorflow-cpu" in first  # the one hop, named
    assert "(#top1_dissimilarity_outlier_local)" in bullet and '<a id="top1_dissimilarity_outlier_local">' in \
        report.markdown
    page = report.html.read_text()
    assert page.index("<h2 id='findings'>Findings</h2>") < page.index("<img ")
    assert "<a href='#top1_dissimilarity_outlier_local'>table</a>" in page

    bundle = tmp_path / "bundle"
    assert main(["repro", str(flip_results), "--pair", SOURCE, QUANT, "--out", str(bundle)]) == 0
    assert f"python {bundle / 'repro.py'}" in capsys.readouterr().out
    meta = json.loads((bundle / "bundle.json").read_text())
    stored_a, stored_b = _stored_top1(flip_results, SOURCE), _stored_top1(flip_results, QUANT)
    flipped = {i for i in stored_a if stored_a[i] != stored_b[i]}
    assert {im["id"] for im in meta["images"]} == flipped and len(flipped) == row["disagree"]
    assert (bundle / meta["a"]["file"]).suffix == ".keras" and (bundle / meta["b"]["file"]).suffix == ".tflite"
    assert [h["quantize"] for h in meta["b"]["hops"]] == ["dynamic-range"] and meta["b"]["hops"][0]["version"]
    assert meta["fingerprint"] and meta["environment"]["packages"]
    assert meta["hops"]["steps"][-1]["hop"] == "keras->tflite:dynamic-range"
    assert len(list((bundle / "inputs").glob("*.npy"))) == len(flipped)

    done = _run_bundle(bundle)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    printed = _printed_top1(done.stdout)
    assert printed == {i: (stored_a[i], stored_b[i]) for i in flipped}
    assert "REPRODUCED" in done.stdout and "warning" not in done.stdout  # inputs hash as the study saw


def test_repro_packs_one_image(flip_results: Path, tmp_path: Path) -> None:
    """``--image`` packs that image alone, also one whose labels agree (repro.py then
    prints 'same'); an image the pair did not run is a one-line error."""
    stored_a, stored_b = _stored_top1(flip_results, SOURCE), _stored_top1(flip_results, QUANT)
    same = next(i for i in sorted(stored_a) if stored_a[i] == stored_b[i])
    bundle = tmp_path / "one"
    assert main(["repro", str(flip_results), "--pair", SOURCE, QUANT, "--image", same, "--out", str(bundle),
                 "--no-hops"]) == 0
    done = _run_bundle(bundle)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _printed_top1(done.stdout) == {same: (stored_a[same], stored_b[same])}
    assert f"top1 {same}: A={stored_a[same]} B={stored_b[same]} same" in done.stdout
    assert main(["repro", str(flip_results), "--pair", SOURCE, QUANT, "--image", "nope"]) == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["repro", str(flip_results), "--pair", SOURCE, QUANT, "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"  # never deletes what it did not write


def test_tvm_bundle_ships_the_compiled_module_and_reproduces(tiny_results: Path, tmp_path: Path) -> None:
    a, b = "torch->onnx [onnxruntime]", "torch->onnx [tvm:extended]"
    bundle = tmp_path / "tvm"
    assert main(["repro", str(tiny_results), "--pair", a, b, "--out", str(bundle)]) == 0
    meta = json.loads((bundle / "bundle.json").read_text())
    side = meta["b"]
    assert side["file"] == "b/module.so" and side["module"].startswith("copied from the board's compiled-module cache")
    assert (bundle / side["file"]).stat().st_size > 0 and (bundle / side["frontend_input"]).suffix == ".onnx"
    assert "FuseTIR" in side["passes"] and json.loads(side["target"])["kind"] == "llvm"
    done = _run_bundle(bundle, "--time", "3")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    image = meta["images"][0]["id"]
    stored_a, stored_b = _stored_top1(tiny_results, a), _stored_top1(tiny_results, b)
    assert _printed_top1(done.stdout) == {image: (stored_a[image], stored_b[image])}
    assert "B vs stored 0" in done.stdout or re.search(r"B vs stored \d(\.\d+)?e-0[6-9]", done.stdout)
    assert re.search(r"time B / A: [\d.]+x", done.stdout)


def test_tvm_bundle_rebuilds_a_module_the_board_did_not_keep(tiny_results: Path, tmp_path: Path) -> None:
    """A results folder copied without its compiled modules (or from a board without a C
    compiler to export them): the bundle builds the module again from the stored build
    settings and says so; it reproduces the stored outputs all the same."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(tiny_results, results, ignore=shutil.ignore_patterns("*.so"))
    a, b = "torch [torch]", "torch [tvm:basic]"
    bundle = tmp_path / "rebuilt"
    assert main(["repro", str(results), "--pair", a, b, "--out", str(bundle)]) == 0
    side = json.loads((bundle / "bundle.json").read_text())["b"]
    assert side["module"].startswith("rebuilt by deltann repro on this machine for target ")
    assert (bundle / side["frontend_input"]).suffix == ".pt2"  # torch.export: the program TVM imported
    refused = _run_bundle(bundle)  # side A is a .pt2: not unpickled unless the user says so
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("refused: ") and "--trust-remote-code" in refused.stderr
    done = _run_bundle(bundle, "--trust-remote-code")
    assert done.returncode == 0 and "REPRODUCED" in done.stdout, done.stdout + done.stderr[-3000:]


def test_bundle_carries_the_first_divergent_layer_once_localized(flip_results: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    import shutil

    results = tmp_path / "results"
    shutil.copytree(flip_results, results)
    bundle = tmp_path / "bundle"
    assert main(["repro", str(results), "--pair", SOURCE, QUANT, "--out", str(bundle), "--no-hops"]) == 0
    assert json.loads((bundle / "bundle.json").read_text())["localize"] is None  # not localized yet
    assert main(["localize", str(results), "--pair", SOURCE, QUANT]) == 0
    printed = capsys.readouterr().out
    assert "first layer beyond tolerance: " in printed
    assert main(["repro", str(results), "--pair", SOURCE, QUANT, "--out", str(bundle), "--no-hops"]) == 0
    layers = json.loads((bundle / "bundle.json").read_text())["localize"]
    first = layers["first_divergent"]
    assert first is not None and f"first layer beyond tolerance: {first['layer_a']} ~ {first['layer_b']}" in printed
    table = pl.read_csv(bundle / layers["table"])
    assert table.filter(pl.col("first_divergent"))["layer_a"].to_list() == [first["layer_a"]]
    assert f"`{first['layer_a']}` ~ `{first['layer_b']}`" in (bundle / "README.md").read_text()
