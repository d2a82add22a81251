"""Render analysis tables: one Markdown page (printed and written as ``report.md``) and one
CSV per table, under ``DIR/report/``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from deltann import analysis
from deltann.store import Store


def to_markdown(df: pl.DataFrame, floats: int = 2) -> str:
    """A GitHub-flavoured Markdown table of ``df`` (all rows, all columns)."""
    if df.is_empty():
        return "_(none)_"
    with pl.Config(
        tbl_formatting="MARKDOWN",
        tbl_hide_column_data_types=True,
        tbl_hide_dataframe_shape=True,
        tbl_rows=-1,
        tbl_cols=-1,
        tbl_width_chars=60_000,
        fmt_str_lengths=200,
        float_precision=floats,
    ):
        return str(df)


@dataclass
class Report:
    markdown: str
    files: list[Path] = field(default_factory=list)


def _slug(*parts: str) -> str:
    """A file name from table name and partition values: ``top1_dissimilarity_tiny-cnn_local``."""
    return "_".join([parts[0], *("".join(c if c.isalnum() else "-" for c in p) for p in parts[1:])])


def build_report(results: Path | str, out: Path | str | None = None) -> Report:
    """Compute every table from the store at ``results`` and write them to ``out``
    (default ``results/report``)."""
    store = Store(results)
    manifest = store.read_manifest()
    out = Path(out) if out is not None else store.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    def save(df: pl.DataFrame, name: str) -> None:
        path = out / f"{name}.csv"
        df.write_csv(path)
        files.append(path)

    sections = [f"# DeltaNN report: {manifest['study'].get('name', '?')}", ""]
    env = manifest.get("environment", {})
    sections += [
        f"Results: `{store.root}` · schema v{manifest['schema_version']} · deltann {manifest.get('deltann_version')}",
        f"Environment: {env.get('cpu', '?')} ({env.get('cores', '?')} cores), {env.get('platform', '?')}, "
        f"Python {env.get('python', '?')}",
        "",
    ]

    pairs = analysis.pairwise_agreement(store)
    save(pairs, "pairwise_agreement")
    for (model, device), _ in pairs.group_by(["model", "device"], maintain_order=True):
        matrix = analysis.dissimilarity_matrix(pairs, model, device)
        save(matrix, _slug("top1_dissimilarity", model, device))
        sections += [
            f"## Top-1 label dissimilarity (%): {model} on {device}",
            "",
            to_markdown(matrix.rename({"config_a": "A \\ B"})),
            "",
            "Cell: % of images whose top-1 label differs between row A and column B.",
            "",
        ]
    sections += [
        "## Pairwise agreement",
        "",
        to_markdown(pairs.filter(pl.col("config_a") < pl.col("config_b")), floats=4),
        "",
        "top5_jaccard: mean |top5_A ∩ top5_B| / |top5_A ∪ top5_B|; max_abs_dlogit: max |logit_A − logit_B| "
        "over images and classes; same_inputs: every image's input tensor hash equal on both sides.",
        "",
    ]

    latency = analysis.latency_table(store)
    save(latency, "latency")
    sections += ["## Latency (ms)", "", to_markdown(latency.drop("variant", "runtime", "setting"), floats=3), ""]
    speedups = analysis.speedup_table(latency)
    save(speedups, "speedup")
    sections += ["## Time change between configurations", "", to_markdown(speedups, floats=2), "",
                 f"Convention: {analysis.SPEEDUP_CONVENTION}", ""]

    failed = analysis.failures(store)
    save(failed, "failures")
    sections += [f"## Failures ({failed.height})", "", to_markdown(failed), ""]

    markdown = "\n".join(sections)
    md = out / "report.md"
    md.write_text(markdown)
    files.insert(0, md)
    return Report(markdown, files)
