"""Render analysis tables: one Markdown page (printed and written as ``report.md``), one
self-contained HTML page (``report.html``), one CSV and one LaTeX file per table and one PNG
per figure, under ``DIR/report/``. The tables are :data:`deltann.report.sections.SECTIONS`,
walked once for every format; the findings open both pages and link to them."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from deltann import analysis
from deltann.analysis import pass_tables as passes
from deltann.analysis.findings import Finding, findings, findings_table, slug
from deltann.analysis.hop_attribution import attribute
from deltann.report import html as html_page, latex
from deltann.report.markdown import MarkdownPage, to_markdown
from deltann.report.sections import Analysis, Each, Group, SECTIONS, Section, Sentence
from deltann.store import Store

log = logging.getLogger("deltann.report")

__all__ = ["Report", "build_report", "to_markdown"]


@dataclass
class Report:
    markdown: str
    files: list[Path] = field(default_factory=list)
    html: Path | None = None


#: How each kind of finding is tagged in the report.
_TAGS = {"labels": "Labels", "same": "Labels", "groups": "Groups", "hop": "Hop", "logits": "Logits", "time": "Time",
         "failures": "Failures", "devices": "Devices", "note": "Note"}
_NOTHING = "Nothing ran: no predictions, timings or failures in this results folder."
_REPRO = ("A reproducer (`deltann repro`) is a folder with both models, the exact inputs, the stored outputs and "
          "a repro.py that needs only the two runtimes; hop: the first conversion step (or the TVM build) after "
          "which the outputs leave tolerance, found by running the chain's prefixes on the flipped images.")

Page = MarkdownPage | html_page.HtmlPage


def _sentences(found: list[Finding], anchors: set[str]) -> list[tuple[str, list[Sentence]]]:
    """The findings per model and device (in the order found), each linking to its table
    where the report has it."""
    groups: dict[tuple[str, str], list[Sentence]] = {}
    for f in found:
        link = f.table if f.table in anchors else ""
        groups.setdefault((f.model, f.device), []).append(
            Sentence(f.kind, _TAGS.get(f.kind, f.kind.capitalize()), f.text, link, f.repro))
    return [(f"{model} on {device}" if device != "(across devices)" else f"{model} across device kinds", items)
            for (model, device), items in groups.items()]


@dataclass(frozen=True)
class _Figure:
    draw: Callable[[pl.DataFrame, Path, str], Path]
    frame: pl.DataFrame
    path: Path
    title: str
    alt: str


@dataclass
class _Part:
    """One section made for one group: its table (as saved and as shown), heading, notes
    and figures. ``section`` None: a whole table saved with no heading of its own."""

    section: Section | None
    key: str
    table: pl.DataFrame
    heading: str = ""
    shown: pl.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    figures: list[_Figure] = field(default_factory=list)


def _part(section: Section, data: Analysis, group: Group, out: Path) -> _Part | None:
    """``section`` for ``group``: every table and figure frame read from the store now."""
    table = section.table(data, group)
    if table is None:
        return None
    key = slug(section.name, *group.values())
    part = _Part(section, key, table, section.heading.format(**group, rows=table.height),
                 section.shown(data, table) if section.shown else table, section.notes(data, table))
    plot = section.plot
    if plot is not None and not plot.per:
        part.figures.append(_Figure(plot.draw, table, out / f"{key}.png", plot.title.format(**group),
                                    plot.alt.format(**group)))
    elif plot is not None:
        frame = plot.frame(data, table) if plot.frame else table
        for values, sub in frame.group_by(list(plot.per), maintain_order=True):
            named = dict(zip(plot.per, values, strict=True))
            part.figures.append(_Figure(plot.draw, sub, out / f"{slug(plot.name, *values)}.png",
                                        plot.title.format(**named), plot.alt.format(**named)))
    return part


def _parts(sections: Sequence[Section | Each], data: Analysis, out: Path) -> list[_Part]:
    """Every section of ``sections`` made, in order; an :class:`Each` once per group."""
    parts: list[_Part] = []
    for item in sections:
        if isinstance(item, Each):
            if item.save:
                parts.append(_Part(None, item.save, item.frame(data)))
            made = (_part(s, data, group, out) for group in item.groups(data) for s in item.sections)
        else:
            made = iter([_part(item, data, {}, out)])
        parts += [p for p in made if p is not None]
    return parts


def _anchors(parts: list[_Part]) -> set[str]:
    """The anchors the findings may link to; two sections with one anchor are a bug in
    the section list (a link would land on the first)."""
    keys = ["findings", *(p.key for p in parts if p.section is not None and p.section.anchor)]
    twice = sorted(k for k, n in Counter(keys).items() if n > 1)
    if twice:
        raise ValueError(f"report sections with the same anchor: {', '.join(twice)}; give each a distinct name")
    return set(keys)


def _save(df: pl.DataFrame, out: Path, name: str, caption: str = "", floats: int = 2) -> list[Path]:
    """``df`` as ``name.csv`` and ``name.tex`` (LaTeX, for papers)."""
    path = out / f"{name}.csv"
    df.write_csv(path)
    tex = out / f"{name}.tex"
    tex.write_text(latex.to_latex(df, caption=caption or name, label=f"tab:{name}", floats=floats))
    return [path, tex]


def _write(part: _Part, pages: list[Page], out: Path) -> list[Path]:
    """``part``'s table saved (CSV, LaTeX) and, for a section, the section on every page:
    heading, table, the table's figure, notes, then the per-group figures. The files
    written, in order."""
    section = part.section
    if section is None:
        return _save(part.table, out, part.key)
    files = _save(part.table, out, part.key, part.heading if section.caption else "", section.saved_floats)
    under = section.plot is not None and not section.plot.per  # a figure of the table itself: above the notes
    for page in pages:
        page.heading(part.heading, part.key if section.anchor else "")
        page.table(part.shown if part.shown is not None else part.table, section.floats, section.markdown)
    for text in [] if under else part.notes:
        for page in pages:
            page.note(text)
    for figure in part.figures:
        files.append(figure.draw(figure.frame, figure.path, figure.title))
        for page in pages:
            page.figure(figure.path, figure.alt)
    for text in part.notes if under else []:
        for page in pages:
            page.note(text)
    return files


def _attribute_hops(store: Store, found: list[Finding], data_root: Path | None) -> tuple[list[Finding], pl.DataFrame]:
    """Findings with, after each label difference between a chain and its source, the hop
    that introduced it (:mod:`deltann.analysis.hop_attribution`; runs the prefixes the study did
    not), and the steps as a table."""
    builds = store.scan("builds").filter(pl.col("status") == "ok").collect()
    rows: list[dict[str, object]] = []
    out: list[Finding] = []
    for f in found:
        out.append(f)
        if f.kind != "labels" or not f.images:
            continue
        pick = builds.filter((pl.col("model") == f.model) & (pl.col("device") == f.device))
        a = pick.filter(pl.col("config") == f.config_a).sort("finished_at")
        b = pick.filter(pl.col("config") == f.config_b).sort("finished_at")
        if a.is_empty() or b.is_empty():
            continue
        try:
            found_hop = attribute(store.root, a.row(-1, named=True), b.row(-1, named=True), list(f.images),
                                  data_root=data_root)
        except Exception as exc:  # noqa: BLE001 - attribution is extra; the finding stands without it
            log.warning("which hop changed %s against %s: %s: %s", f.config_b, f.config_a, type(exc).__name__, exc)
            continue
        if found_hop is None:
            continue
        out.append(Finding(f.model, f.device, "hop", found_hop.sentence(), "hops", f.config_a, f.config_b, f.image,
                           images=f.images))
        first = found_hop.first
        for step in found_hop.steps:
            rows.append({"model": f.model, "device": f.device, "source": f.config_a, "chain": f.config_b,
                         "hop": step.hop, "compared": step.config, "tool": step.tool, "origin": step.origin,
                         "images": len(found_hop.images), "max_abs_dlogit": step.max_abs, "flips": step.flips,
                         "within_tol": step.within, "first_beyond": first is not None and step is first})
    schema = {"model": pl.String, "device": pl.String, "source": pl.String, "chain": pl.String, "hop": pl.String,
              "compared": pl.String, "tool": pl.String, "origin": pl.String, "images": pl.Int64,
              "max_abs_dlogit": pl.Float64, "flips": pl.Int64, "within_tol": pl.Boolean, "first_beyond": pl.Boolean}
    return out, pl.DataFrame(rows, schema=schema)


def build_report(results: Path | str, out: Path | str | None = None, *, pool: bool = False, hops: bool = True,
                 data_root: Path | str | None = None, sections: Sequence[Section | Each] = SECTIONS) -> Report:
    """Compute every table from the store at ``results`` and write them to ``out``
    (default ``results/report``): ``report.md``, ``report.html`` (self-contained), one CSV
    and one LaTeX file per table, one PNG per figure. Both pages open with the findings.
    Several labs' results are shown side by side (device ``<kind>@<lab>``); ``pool`` mixes
    them, latencies included. ``hops``: name the hop of a conversion chain that flipped a
    label, running the chain's prefixes the study did not run (on the flipped images only;
    ``data_root``: the folder the study's dataset path is relative to). ``sections``: the
    tables after the findings, in order (:data:`~deltann.report.sections.SECTIONS`)."""
    store = Store(results, sites=not pool)
    manifest = store.read_manifest()
    out = Path(out) if out is not None else store.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    env = manifest.get("environment", {})
    header = _header(store, manifest, pool)
    data = Analysis(store, pool=pool)
    found = findings(store, pairs=data.pairs, speedups=data.speedups, failed=data.failed, devices=data.devices,
                     latency=data.latency)
    if hops:
        found, data.hops = _attribute_hops(store, found, Path(data_root) if data_root else None)
    parts = _parts(sections, data, out)  # every table read before the header says what was left out
    anchors = _anchors(parts)

    pages: list[Page] = [MarkdownPage(), html_page.HtmlPage()]
    files = _save(findings_table(found), out, "findings")
    for page in pages:
        page.heading("Findings", "findings")
        page.findings(_sentences(found, anchors), _NOTHING)
        page.note(_REPRO)
    for part in parts:
        files += _write(part, pages, out)

    title = f"DeltaNN report: {manifest['study'].get('name', '?')}"
    warning = _bad_parts_line(store) if store.skipped or store.shortfalls else ""
    for page in pages:
        page.header(title, header, analysis.SPEEDUP_CONVENTION, warning)
    pages[1].environment(env)
    markdown, md_path, html_path = pages[0].text(), out / "report.md", out / "report.html"
    md_path.write_text(markdown)
    html_path.write_text(pages[1].text())
    return Report(markdown, [md_path, html_path, *files], html=html_path)


def _header(store: Store, manifest: dict[str, Any], pool: bool) -> list[str]:
    """The lines under the title: where the results are, the environment, the labs, and
    settings built under different pass lists."""
    env = manifest.get("environment", {})
    header = [
        f"Results: `{store.root}` · schema v{manifest['schema_version']} · deltann {manifest.get('deltann_version')}",
        f"Environment: {env.get('cpu', '?')} ({env.get('cores', '?')} cores), {env.get('platform', '?')}, "
        f"Python {env.get('python', '?')} · fingerprint {html_page.fingerprint(env)}",
        *_labs_lines(store, pool),
    ]
    mixed = passes.mixed_pass_lists(store.scan("builds").collect())
    if mixed:  # content keys hash the passes: old rows were kept, not replaced
        header.append(
            "Note: setting(s) " + ", ".join(f"{name} ({n} pass lists)" for name, n in mixed.items())
            + " were built here under different pass lists (an older deltann's settings beside this one's); "
            "their rows share the setting's name in every table. Run into a new folder to compare like with like.")
    return header


def _labs_lines(store: Store, pool: bool) -> list[str]:
    """Which lab made what (one line per lab when there are several), and whether they
    are shown side by side or pooled."""
    labs = store.labs()
    if labs.height <= 1:
        return [f"Lab: {r['lab']} ({', '.join(r['cpus']) or '?'})" for r in labs.iter_rows(named=True)]
    lines = [f"Labs ({labs.height}): " + " · ".join(
        f"{r['lab']}: {r['units']} units on {', '.join(r['devices'])}, host {', '.join(r['hosts'])}, "
        f"{', '.join(r['cpus']) or '?'}" for r in labs.iter_rows(named=True))]
    lines.append("Pooled (--pool): the labs' results are mixed in every table, latencies included."
                 if pool else "Side by side: each lab's results appear under device <kind>@<lab>; nothing is "
                 "pooled across labs (deltann report --pool mixes them).")
    return lines


def _bad_parts_line(store: Store) -> str:
    """One warning line naming what the report left out (and how to get it back)."""
    names = [str(p.relative_to(store.root)) if p.is_relative_to(store.root) else str(p) for p in store.skipped]
    short = list(store.shortfalls.values())
    shown = "; ".join([*names[:3], *short[:2]]) + (" …" if len(names) > 3 or len(short) > 2 else "")
    return (f"**Warning:** left out {len(names)} bad parts and {len(short)} incomplete units or sessions "
            f"(every table is without them, never computed from part of them): {shown}. 'deltann verify' lists "
            "them; 'deltann run' makes them again.")
