"""The report as Markdown (``report.md``, also printed by ``deltann report``): the same
calls as :class:`deltann.report.html.HtmlPage`, so build_report writes every section to
both pages alike."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from deltann.report.sections import Sentence


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


class MarkdownPage:
    """``report.md`` being written: a list of lines, joined at the end."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def header(self, title: str, lines: list[str], convention: str, warning: str) -> None:
        """The title, the results/environment lines, the sign convention, then any warning."""
        self.lines[:0] = [f"# {title}", "", *lines, "", f"Convention: {convention}", "",
                          *([warning, ""] if warning else [])]

    def heading(self, text: str, anchor: str = "") -> None:
        """A section heading; ``anchor`` is the id findings link to (``#anchor``)."""
        self.lines += ([f'<a id="{anchor}"></a>', ""] if anchor else []) + [f"## {text}", ""]

    def note(self, text: str) -> None:
        self.lines += [text, ""]

    def table(self, df: pl.DataFrame, floats: int, renamed: dict[str, str]) -> None:
        self.lines += [to_markdown(df.rename(renamed) if renamed else df, floats=floats), ""]

    def figure(self, path: Path, alt: str) -> None:
        self.lines += [f"![{alt}]({path.name})", ""]

    def findings(self, groups: list[tuple[str, list[Sentence]]], nothing: str) -> None:
        """The findings' sentences under a heading per model and device (see build_report)."""
        if not groups:
            self.note(nothing)
        for where, items in groups:
            self.lines += [f"### {where}", ""]
            for f in items:
                line = f"- **{f.tag}:** {f.text}" + (f" → [table](#{f.link})" if f.link else "")
                self.lines.append(line + (f" · reproduce: `{f.repro}`" if f.repro else ""))
            self.lines.append("")

    def text(self) -> str:
        return "\n".join(self.lines)
