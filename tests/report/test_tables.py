from __future__ import annotations

from pathlib import Path

import polars as pl

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
