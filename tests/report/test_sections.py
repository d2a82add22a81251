"""The report's sections are data (deltann/report/sections.py): an entry added from here
shows up, in its place, on both pages and as CSV/LaTeX; anchors are unique and every
finding links to a section of the report."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from deltann import analysis
from deltann.report import build_report
from deltann.report.sections import SECTIONS, Each, Plot, Section, heatmap


def _index(sections: list, name: str) -> int:
    return next(i for i, s in enumerate(sections) if isinstance(s, Section) and s.name == name)


def _between(text: str, start: str, end: str) -> str:
    """The text from ``start`` up to the next ``end`` after it."""
    tail = text[text.index(start):]
    return tail[:tail.index(end, len(start))]


def test_an_added_entry_appears_in_its_place_on_every_page(tiny_results: Path, tmp_path: Path) -> None:
    """One entry (a table with a note) and one per-model entry (a matrix with its heatmap),
    added here, appear after accuracy and before the margin flips in Markdown and HTML,
    with their notes, and are saved as CSV and LaTeX; an entry whose table is None is
    left out."""
    def per_model(data, _):  # noqa: ANN001, ANN202 - a table function as a section list takes it
        return data.store.scan("predictions").group_by("model").agg(pl.len().alias("rows")).collect()

    extra = Section("extra_counts", "Prediction rows per model ({rows} models)", per_model,
                    "Extra note: rows stored per model.", anchor=True)
    matrix = Each(lambda data: data.latency, ("model",), (
        Section("extra_matrix", "Extra latency matrix: {model}",
                lambda data, g: analysis.latency_matrix(data.latency, g["model"]),
                lambda _, table: [f"Extra matrix note ({table.height} rows).", "Second paragraph."],
                Plot(heatmap(fmt="{:.2f}", label="ms"), "{model}: extra", "extra heatmap {model}")),
    ))
    absent = Section("extra_absent", "Never shown", lambda data, _: None, "never")
    at = _index(SECTIONS, "accuracy") + 1
    sections = [*SECTIONS[:at], extra, matrix, absent, *SECTIONS[at:]]
    report = build_report(tiny_results, tmp_path, hops=False, sections=sections)

    md = report.markdown
    order = ["## Accuracy (%)", "## Prediction rows per model (1 models)", "## Extra latency matrix: tiny_cnn",
             "## Top-1 flips by the reference"]
    assert [md.index(h) for h in order] == sorted(md.index(h) for h in order)
    block = _between(md, order[1], "\n## ")
    assert f'<a id="extra_counts"></a>\n\n{order[1]}' in md
    assert "| tiny_cnn | 24" in block and block.rstrip().endswith("Extra note: rows stored per model.")
    block = _between(md, order[2], "\n## ")
    assert block.index("![extra heatmap tiny_cnn](extra_matrix_tiny-cnn.png)") < block.index("Extra matrix note (")
    assert block.index("Extra matrix note (") < block.index("Second paragraph.")
    assert "Never shown" not in md and "never" not in md

    page = report.html.read_text()  # type: ignore[union-attr]
    h2 = ["<h2>Accuracy (%)</h2>", "<h2 id='extra_counts'>Prediction rows per model (1 models)</h2>",
          "<h2>Extra latency matrix: tiny_cnn</h2>", "<h2>Top-1 flips by the reference"]
    assert [page.index(h) for h in h2] == sorted(page.index(h) for h in h2)
    block = _between(page, h2[1], "<h2")
    assert "<td class='t'>tiny_cnn</td><td>24</td>" in block
    assert block.endswith("<p class='note'>Extra note: rows stored per model.</p>\n")
    block = _between(page, h2[2], "<h2")
    assert block.index("<img alt='extra heatmap tiny_cnn'") < block.index("Extra matrix note (") \
        < block.index("Second paragraph.")
    assert "Never shown" not in page

    counts = pl.read_csv(tmp_path / "extra_counts.csv")
    assert counts.to_dicts() == [{"model": "tiny_cnn", "rows": 24}]  # 6 configurations x 4 images
    tex = (tmp_path / "extra_counts.tex").read_text()
    assert r"\label{tab:extra_counts}" in tex and r"tiny\_cnn & 24 \\" in tex
    assert (tmp_path / "extra_matrix_tiny-cnn.png").stat().st_size > 1000
    assert {p.name for p in report.files} >= {"extra_counts.csv", "extra_matrix_tiny-cnn.png"}
    assert not (tmp_path / "extra_absent.csv").exists()


def test_anchors_are_unique_and_every_finding_links_to_its_section(flip_results: Path, tmp_path: Path) -> None:
    """The flip study's report: no anchor twice on either page, every in-page link lands
    on an anchor, and every finding (labels, hop, logits, ...) links to its table."""
    report = build_report(flip_results, tmp_path)
    md, page = report.markdown, report.html.read_text()  # type: ignore[union-attr]
    ids = re.findall(r'<a id="([^"]+)"></a>', md)
    assert len(ids) == len(set(ids)) and {"findings", "top1_dissimilarity_outlier_local", "failures"} <= set(ids)
    assert set(re.findall(r"\]\(#([^)]+)\)", md)) <= set(ids)
    html_ids = re.findall(r"<h2 id='([^']+)'>", page)
    assert sorted(html_ids) == sorted(ids)
    assert set(re.findall(r"<a href='#([^']+)'>", page)) <= set(html_ids)
    found = pl.read_csv(tmp_path / "findings.csv")
    assert "labels" in found["kind"].to_list()
    assert set(found["table"].drop_nulls()) <= set(ids)  # every finding has its section
    findings = md.split("## Findings", 1)[1].split("\n## ", 1)[0]
    assert findings.count("→ [table](#") == found["table"].drop_nulls().len()


def test_two_sections_with_one_anchor_are_refused(tiny_results: Path, tmp_path: Path) -> None:
    again = Section("latency", "Latency again", lambda data, _: data.latency, anchor=True)
    with pytest.raises(ValueError, match="same anchor: latency"):
        build_report(tiny_results, tmp_path, hops=False, sections=[*SECTIONS, again])
