"""One self-contained HTML page: inline CSS, every image embedded as a base64 data URI, no
script and no external URL, so it opens offline and can be mailed as one file."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:  # the section list imports the analysis and matplotlib; `deltann repro` needs neither
    from deltann.report.sections import Sentence

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#eef} td.t{text-align:left}
.note{color:#555;font-size:13px} .conv{background:#ffd;padding:.4em;border:1px solid #cc9}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
.findings{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:.3em 1.2em;margin:.5em 0 1em}
.findings h3{margin:.6em 0 .2em;font-size:16px} .findings li{margin:.35em 0;line-height:1.45}
.findings li.labels b,.findings li.hop b,.findings li.failures b,.findings li.devices b{color:#b03a00}
code{background:#eef;padding:0 .25em;border-radius:3px;font-size:90%} code.cmd{background:#f0f0e0}
"""


def fingerprint(environment: dict[str, Any]) -> str:
    """A short stable hash of the environment record (sorted JSON): two results folders
    with the same fingerprint ran on the same machine facts and package versions."""
    canonical = json.dumps(environment, sort_keys=True, default=str).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def _cell(value: object, floats: int) -> tuple[str, bool]:
    if value is None:
        return "–", False
    if isinstance(value, float):
        return ("–" if math.isnan(value) else f"{value:.{floats}f}"), False
    if isinstance(value, int | bool):
        return str(value), False
    return html.escape(str(value)), True


def table_html(df: pl.DataFrame, floats: int = 2) -> str:
    """An HTML table of ``df`` (all rows)."""
    if df.is_empty():
        return "<p class='note'><em>(none)</em></p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = []
    for row in df.iter_rows():
        cells = []
        for v in row:
            text, is_text = _cell(v, floats)
            cells.append(f"<td class='t'>{text}</td>" if is_text else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def image_html(png: Path, alt: str) -> str:
    """``png`` embedded as a data URI."""
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def environment_html(environment: dict[str, Any]) -> str:
    """The manifest's environment record as a two-column table, fingerprint first."""
    rows = [("fingerprint", fingerprint(environment))]
    for key in ("hostname", "platform", "machine", "python", "cpu", "cores"):
        if key in environment:
            rows.append((key, str(environment[key])))
    for name, version in sorted((environment.get("packages") or {}).items()):
        rows.append((name, str(version)))
    body = "".join(f"<tr><td class='t'>{html.escape(k)}</td><td class='t'>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table><tbody>{body}</tbody></table>"


def page(title: str, blocks: list[str]) -> str:
    """The whole page around already-rendered HTML ``blocks``."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>" + "\n".join(blocks) + "</body></html>\n"
    )


def inline(text: str) -> str:
    """Text as HTML: escaped, with its `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


class HtmlPage:
    """``report.html`` being written: the same calls as
    :class:`deltann.report.markdown.MarkdownPage`, as HTML blocks joined by :func:`page`."""

    def __init__(self) -> None:
        self.title = ""
        self.blocks: list[str] = []

    def header(self, title: str, lines: list[str], convention: str, warning: str) -> None:
        """The results/environment lines, the sign convention, then any warning (the title
        is the page's, see :meth:`text`)."""
        self.title = title
        self.blocks[:0] = [*(f"<p class='note'>{inline(line)}</p>" for line in lines),
                           f"<p class='conv'>Sign convention: {html.escape(convention)}</p>",
                           *([f"<p class='note'>{html.escape(warning)}</p>"] if warning else [])]

    def heading(self, text: str, anchor: str = "") -> None:
        """A section heading; ``anchor`` is the id findings link to (``#anchor``)."""
        self.blocks.append(f"<h2{f' id={anchor!r}' if anchor else ''}>{html.escape(text)}</h2>")

    def note(self, text: str) -> None:
        self.blocks.append(f"<p class='note'>{html.escape(text)}</p>")

    def table(self, df: pl.DataFrame, floats: int, renamed: dict[str, str]) -> None:  # noqa: ARG002
        """``df`` as it is (``renamed``: columns renamed in Markdown only)."""
        self.blocks.append(table_html(df, floats))

    def figure(self, path: Path, alt: str) -> None:
        self.blocks.append(image_html(path, alt))

    def findings(self, groups: list[tuple[str, list[Sentence]]], nothing: str) -> None:
        """The findings' sentences in a box, a list per model and device (see build_report)."""
        self.blocks.append("<div class='findings'>")
        if not groups:
            self.note(nothing)
        for where, items in groups:
            self.blocks.append(f"<h3>{html.escape(where)}</h3><ul>")
            for f in items:
                li = f"<b>{f.tag}:</b> " + inline(f.text) + (f" <a href='#{f.link}'>table</a>" if f.link else "")
                li += f" · reproduce: <code class='cmd'>{html.escape(f.repro)}</code>" if f.repro else ""
                self.blocks.append(f"<li class='{f.kind}'>{li}</li>")
            self.blocks.append("</ul>")
        self.blocks.append("</div>")

    def environment(self, environment: dict[str, Any]) -> None:
        self.blocks.append("<h2>Environment</h2>" + environment_html(environment))

    def text(self) -> str:
        return page(self.title, self.blocks)
