"""Render analysis tables: one Markdown page (printed and written as ``report.md``), one
self-contained HTML page (``report.html``), one CSV and one LaTeX file per table and one PNG
per figure, under ``DIR/report/``."""

from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from deltann import analysis
from deltann.analysis import passes, pooled
from deltann.analysis.findings import Finding, findings, findings_table, slug
from deltann.report import html as html_page
from deltann.report import latex, plots
from deltann.store import SCHEMAS, Store

log = logging.getLogger("deltann.report")


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
    html: Path | None = None




def _short_ids(frame: pl.DataFrame) -> pl.DataFrame:
    """Board and session ids cut to 12 characters for display (the saved CSV keeps them whole)."""
    return frame.with_columns(pl.col(c).str.slice(0, 12) for c in ("board", "session") if c in frame.columns)


class _Doc:
    """The report being written: Markdown and HTML side by side, every table saved as CSV
    and LaTeX, every figure as PNG (embedded in the HTML)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.md: list[str] = []
        self.html: list[str] = []
        self.files: list[Path] = []

    def heading(self, text: str, anchor: str = "") -> None:
        """A section heading; ``anchor`` is the id findings link to (``#anchor``)."""
        self.md += ([f'<a id="{anchor}"></a>', ""] if anchor else []) + [f"## {text}", ""]
        self.html.append(f"<h2{f' id={anchor!r}' if anchor else ''}>{html.escape(text)}</h2>")

    def note(self, text: str) -> None:
        self.md += [text, ""]
        self.html.append(f"<p class='note'>{html.escape(text)}</p>")

    def save(self, df: pl.DataFrame, name: str, caption: str = "", floats: int = 2) -> None:
        path = self.out / f"{name}.csv"
        df.write_csv(path)
        tex = self.out / f"{name}.tex"
        tex.write_text(latex.to_latex(df, caption=caption or name, label=f"tab:{name}", floats=floats))
        self.files += [path, tex]

    def table(self, df: pl.DataFrame, floats: int = 2, markdown: pl.DataFrame | None = None) -> None:
        self.md += [to_markdown(markdown if markdown is not None else df, floats=floats), ""]
        self.html.append(html_page.table_html(df, floats))

    def figure(self, path: Path, alt: str) -> None:
        self.files.append(path)
        self.md += [f"![{alt}]({path.name})", ""]
        self.html.append(html_page.image_html(path, alt))


def _inline(text: str) -> str:
    """A finding's text as HTML: escaped, with its `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


#: How each kind of finding is tagged in the report.
_TAGS = {"labels": "Labels", "same": "Labels", "groups": "Groups", "hop": "Hop", "logits": "Logits", "time": "Time",
         "failures": "Failures", "devices": "Devices", "note": "Note"}


def _findings_section(doc: _Doc, found: list[Finding], anchors: set[str]) -> None:
    """The report's first section: per model and device, what differs, each sentence
    linking to its table and, for a pair, giving the command that packs its reproducer."""
    doc.heading("Findings", "findings")
    doc.html.append("<div class='findings'>")
    if not found:
        doc.note("Nothing ran: no predictions, timings or failures in this results folder.")
    groups: dict[tuple[str, str], list[Finding]] = {}
    for f in found:
        groups.setdefault((f.model, f.device), []).append(f)
    for (model, device), items in groups.items():
        where = f"{model} on {device}" if device != "(across devices)" else f"{model} across device kinds"
        doc.md += [f"### {where}", ""]
        doc.html.append(f"<h3>{html.escape(where)}</h3><ul>")
        for f in items:
            link = f.table if f.table in anchors else ""
            tag = _TAGS.get(f.kind, f.kind.capitalize())
            md = f"- **{tag}:** {f.text}" + (f" → [table](#{link})" if link else "")
            li = f"<b>{tag}:</b> " + _inline(f.text) + (f" <a href='#{link}'>table</a>" if link else "")
            if f.repro:
                md += f" · reproduce: `{f.repro}`"
                li += f" · reproduce: <code class='cmd'>{html.escape(f.repro)}</code>"
            doc.md.append(md)
            doc.html.append(f"<li class='{f.kind}'>{li}</li>")
        doc.md.append("")
        doc.html.append("</ul>")
    doc.html.append("</div>")
    doc.note("A reproducer (`deltann repro`) is a folder with both models, the exact inputs, the stored outputs and "
             "a repro.py that needs only the two runtimes; hop: the first conversion step (or the TVM build) after "
             "which the outputs leave tolerance, found by running the chain's prefixes on the flipped images.")


def _attribute_hops(store: Store, found: list[Finding], data_root: Path | None) -> tuple[list[Finding], pl.DataFrame]:
    """Findings with, after each label difference between a chain and its source, the hop
    that introduced it (:mod:`deltann.convert.attribution`; runs the prefixes the study did
    not), and the steps as a table."""
    from deltann.convert.attribution import attribute

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
                 data_root: Path | str | None = None) -> Report:
    """Compute every table from the store at ``results`` and write them to ``out``
    (default ``results/report``): ``report.md``, ``report.html`` (self-contained), one CSV
    and one LaTeX file per table, one PNG per figure. Both pages open with the findings.
    Several labs' results are shown side by side (device ``<kind>@<lab>``); ``pool`` mixes
    them, latencies included. ``hops``: name the hop of a conversion chain that flipped a
    label, running the chain's prefixes the study did not run (on the flipped images only;
    ``data_root``: the folder the study's dataset path is relative to)."""
    store = Store(results, sites=not pool)
    manifest = store.read_manifest()
    out = Path(out) if out is not None else store.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    doc = _Doc(out)
    title = f"DeltaNN report: {manifest['study'].get('name', '?')}"

    env = manifest.get("environment", {})
    header = [
        f"Results: `{store.root}` · schema v{manifest['schema_version']} · deltann {manifest.get('deltann_version')}",
        f"Environment: {env.get('cpu', '?')} ({env.get('cores', '?')} cores), {env.get('platform', '?')}, "
        f"Python {env.get('python', '?')} · fingerprint {html_page.fingerprint(env)}",
    ]
    header += _labs_lines(store, pool)
    mixed = passes.mixed_pass_lists(store.scan("builds").collect())
    if mixed:  # content keys hash the passes: old rows were kept, not replaced
        header.append(
            "Note: setting(s) " + ", ".join(f"{name} ({n} pass lists)" for name, n in mixed.items())
            + " were built here under different pass lists (an older deltann's settings beside this one's); "
            "their rows share the setting's name in every table. Run into a new folder to compare like with like.")
    doc.md += [f"# {title}", "", *header, "", f"Convention: {analysis.SPEEDUP_CONVENTION}", ""]
    doc.html += [f"<p class='note'>{_inline(line)}</p>" for line in header]
    doc.html.append(f"<p class='conv'>Sign convention: {html.escape(analysis.SPEEDUP_CONVENTION)}</p>")
    warn_at = (len(doc.md), len(doc.html))  # bad parts are known once every table has read them

    # --- the tables the findings come from ----------------------------------------
    pairs = analysis.pairwise_agreement(store)
    devices = analysis.device_pairs(store)
    per_session = analysis.session_latency(store)
    latency = pooled.pooled_latency(store) if pool else analysis.latency_table(store, per_session)
    speedups = analysis.speedup_stats(store, per_session)
    failed = analysis.failures(store)
    found = findings(store, pairs=pairs, speedups=speedups, failed=failed, devices=devices, latency=latency)
    hop_table = pl.DataFrame()
    if hops:
        found, hop_table = _attribute_hops(store, found, Path(data_root) if data_root else None)
    doc.save(findings_table(found), "findings")
    anchors = {"speedup", "latency", "failures", "pairwise_agreement"} | ({"hops"} if hop_table.height else set())
    anchors |= {slug(n, m, d) for m, d in pairs.select("model", "device").unique().iter_rows()
                for n in ("top1_dissimilarity", "logit_divergence")}
    anchors |= {slug("device_dissimilarity", m, c) for m, c in devices.select("model", "config").unique().iter_rows()}
    _findings_section(doc, found, anchors)

    # --- labels -------------------------------------------------------------------
    doc.save(pairs, "pairwise_agreement", floats=6)
    # (name, heading, value, diagonal, cell format, note, scale): fixed scales, so a colour
    # means the same value in every report (logits: 1e-7, fp32 rounding, to 100); "no
    # difference" cells are drawn neutral, and the more two configurations differ, the
    # darker their cell.
    matrices = (
        ("top1_dissimilarity", "Top-1 label dissimilarity (%)", "disagree_pct", 0.0, "{:.1f}",
         "Cell: % of images whose top-1 label differs between row A and column B (grey: none).",
         {"vmin": 0.0, "vmax": 100.0, "neutral": 0.0, "reverse": True, "label": "% of images"}),
        ("top5_jaccard", "Top-5 Jaccard similarity", "top5_jaccard", 1.0, "{:.2f}",
         "Cell: mean |top5_A ∩ top5_B| / |top5_A ∪ top5_B| over the images both ran (1 = same sets; grey).",
         {"vmin": 0.0, "vmax": 1.0, "neutral": 1.0, "label": "Jaccard"}),
        ("logit_divergence", "Logit divergence (max |Δlogit|)", "max_abs_dlogit", 0.0, "{:.1e}",
         "Cell: max over images and classes of |logit_A − logit_B| (log colour scale 1e-7–100; grey: identical).",
         {"log": True, "vmin": 1e-7, "vmax": 1e2, "neutral": 0.0, "reverse": True, "label": "max |Δlogit|"}),
    )
    for (model, device), _ in pairs.group_by(["model", "device"], maintain_order=True):
        for name, heading, value, diagonal, fmt, note, scale in matrices:
            matrix = analysis.dissimilarity_matrix(pairs, model, device, value, diagonal)
            key = slug(name, model, device)
            doc.save(matrix, key, f"{heading}: {model} on {device}", floats=6 if value == "max_abs_dlogit" else 2)
            doc.heading(f"{heading}: {model} on {device}", key)
            doc.table(matrix, floats=2 if value != "max_abs_dlogit" else 8,
                      markdown=matrix.rename({"config_a": "A \\ B"}))
            doc.figure(plots.heatmap_png(matrix, out / f"{key}.png", f"{heading}: {model} on {device}", fmt=fmt,
                                         **scale), f"{heading} heatmap, {model} on {device}")
            doc.note(note)

    frameworks = analysis.framework_pairs(store)
    doc.save(frameworks, "framework_pairs")
    for (model, device, setting), sub in frameworks.group_by(["model", "device", "setting"], maintain_order=True):
        matrix = analysis.heatmap_matrix(sub, "variant_a", "variant_b", "disagree_pct", diagonal=0.0)
        key = slug("framework_dissimilarity", model, device, setting)
        doc.save(matrix, key)
        doc.heading(f"Top-1 dissimilarity across frameworks (%): {model} on {device}, setting {setting}")
        doc.table(matrix)
        doc.figure(plots.heatmap_png(matrix, out / f"{key}.png", f"{model} on {device} [{setting}]: top-1 %",
                                     vmin=0.0, vmax=100.0, neutral=0.0, reverse=True,
                                     label="% of images"),
                   f"framework heatmap {model} {device} {setting}")
    doc.save(devices, "device_pairs")
    for (model, config), sub in devices.group_by(["model", "config"], maintain_order=True):
        matrix = analysis.heatmap_matrix(sub, "device_a", "device_b", "disagree_pct", diagonal=0.0)
        key = slug("device_dissimilarity", model, config)
        doc.save(matrix, key)
        doc.heading(f"Top-1 dissimilarity across devices (%): {model}, {config}", key)
        doc.table(matrix)
        doc.figure(plots.heatmap_png(matrix, out / f"{key}.png", f"{model} {config}: top-1 % across devices",
                                     vmin=0.0, vmax=100.0, neutral=0.0, reverse=True,
                                     label="% of images"),
                   f"device heatmap {model} {config}")

    doc.heading("Pairwise agreement", "pairwise_agreement")
    doc.table(pairs.filter(pl.col("config_a") < pl.col("config_b")), floats=4)
    doc.note("top5_jaccard: mean |top5_A ∩ top5_B| / |top5_A ∪ top5_B|; max_abs_dlogit: max |logit_A − logit_B| "
             "over images and classes; mean_max_abs_dlogit: its mean over images; same_inputs: every image's "
             "input tensor hash equal on both sides.")

    acc = analysis.accuracy(store)
    doc.save(acc, "accuracy")
    doc.heading("Accuracy (%)")
    doc.table(acc)
    doc.note("Over the images with a label in the common 1000-class ImageNet space; none means no labels.")

    flips = analysis.margin_flips(store)
    doc.save(flips, "margin_flips")
    doc.heading("Top-1 flips by the reference's top-1/top-2 margin")
    doc.table(flips)
    doc.note("margin = p(top-1) − p(top-2) of the reference configuration, bucket [lo, hi); flips at large "
             "margins point at a defect rather than rounding noise.")

    stable = analysis.stability(store)
    doc.save(stable, "stability")
    doc.heading("Multi-run stability")
    doc.table(stable)
    doc.note("runs: distinct (study, board); flips: images whose top-1 is not the same in every run; "
             "cv: coefficient of variation (std/mean, %) of raw samples and of per-run medians.")

    # --- time ---------------------------------------------------------------------
    doc.save(latency, "latency", floats=4)
    doc.heading("Latency (ms)", "latency")
    doc.table(_short_ids(latency.drop("variant", "runtime", "setting")), floats=3)
    doc.note(pooled.POOL_NOTE if pool else
             "Each configuration from its latest timing session: the configurations of a model timed together "
             "on one board in alternating blocks (images × blocks × repeat samples); board and session say where.")
    for warning in analysis.quiet_warnings(store):
        doc.note(f"**Warning:** {warning}")
    samples = (
        (pooled.pooled_samples(store) if pool else analysis.latest_samples(store, latency))
        .group_by("model", "device", "config").agg(pl.col("samples_ns").explode())
        .sort("model", "device", "config").collect()
    )
    for (model, device), sub in samples.group_by(["model", "device"], maintain_order=True):
        series = {c: [v / 1e6 for v in s] for c, s in sub.select("config", "samples_ns").iter_rows()}
        key = slug("latency_box", model, device)
        doc.figure(plots.boxplot_png(series, out / f"{key}.png", f"Latency samples: {model} on {device}"),
                   f"latency boxplot {model} {device}")
    for model in latency["model"].unique(maintain_order=True).to_list():
        matrix = analysis.latency_matrix(latency, model)
        key = slug("latency_matrix", model)
        doc.save(matrix, key, floats=4)
        doc.heading(f"Median latency (ms) per device: {model}")
        doc.table(matrix, floats=3)
        doc.figure(plots.heatmap_png(matrix, out / f"{key}.png", f"{model}: median latency (ms)", fmt="{:.2f}",
                                     cmap="viridis", label="ms"), f"latency heatmap {model}")

    doc.save(speedups, "speedup", floats=4)
    doc.heading("Time change between configurations", "speedup")
    doc.table(_short_ids(speedups), floats=2)
    doc.note(f"Convention: {analysis.SPEEDUP_CONVENTION}")
    doc.note("ratio = t_A / t_B with its 95 % CI (ci_*_pct in the same convention); effect_rb: matched-pairs "
             f"rank-biserial (positive: B faster). {analysis.test_note(speedups)}")
    for (model, device), sub in speedups.group_by(["model", "device"], maintain_order=True):
        key = slug("speedup", model, device)
        doc.figure(plots.speedup_png(sub, out / f"{key}.png", f"Time change: {model} on {device}"),
                   f"speedup bars {model} {device}")

    # The seed's Tables III-IV: FAILED where a build failed, never a number.
    table3, table4 = passes.from_store(store)
    doc.save(table3, "settings")
    doc.heading("Time per setting against basic (Table III)")
    doc.table(table3)
    doc.note(f"Convention: {passes.CONVENTION}; A = basic, B = the setting. Every setting but unscheduled "
             "ends with the target's tuning-free schedule: they differ in graph-level passes only."
             + ("" if table3.is_empty() or "basic" in table3["setting"].to_list() else
                " This study timed no 'basic' build, so there is nothing to compare against: add 'basic' to "
                "settings for the speedup column."))
    if latency["setting"].str.contains(r"[+-]").any():  # the study ran with ablation = true
        doc.save(table4, "passes")
        doc.heading("Per-pass time change (Table IV)")
        doc.table(table4)
        doc.note(f"Convention: {passes.CONVENTION}. alone: basic → basic+X (what X does by itself; for "
                 "DefaultSchedule, which basic has: unscheduled → basic); adds: extended−X → extended (what X "
                 "adds to all the others); relax: the pass's Relax counterpart. Every build but unscheduled and "
                 "extended−DefaultSchedule runs scheduled kernels, so each pass is measured over them.")

    noise = analysis.noise_floor(store)
    doc.save(noise, "noise_floor")
    doc.heading("A/A noise floor")
    doc.table(noise)
    doc.note("Each configuration against itself: its even blocks against its odd blocks (image by image; with "
             "one block, alternate samples), in the speedup convention. drift: the same test as the time changes "
             "finds that the configuration's time moved between blocks (the machine changed state while timing); "
             "time changes pair A and B within each block, so drift cancels out of them, but absolute times are "
             "then uncertain by about noise_pct. A change smaller than both sides' noise_pct is noise.")

    if "layers" in SCHEMAS and store.files("layers"):  # written by `deltann localize`
        from deltann.analysis.localize import divergence_summary

        cols = ["pair", "model", "image_ids", "order", "layer_a", "layer_b", "matched", "max_abs", "mean_abs",
                "cosine", "first_divergent", "alignment_rate"]
        layers = store.scan("layers").select(cols).collect()
        summary = divergence_summary(layers)
        doc.save(summary, "layer_divergence", floats=6)
        doc.heading("Per-layer divergence (fault localization)")
        doc.table(summary, floats=6)
        doc.note("Layers aligned by name and structure; first_layer_*: the first aligned layer whose "
                 "difference exceeds the tolerance (|a − b| ≤ atol + rtol·|a|, A the reference).")
        for (pair,), sub in layers.group_by(["pair"], maintain_order=True):
            key = slug("layers", pair)
            doc.figure(plots.layers_png(sub, out / f"{key}.png", f"Per-layer difference: {pair}"),
                       f"per-layer lines {pair}")

    if hop_table.height:
        doc.save(hop_table, "hops", floats=6)
        doc.heading("Which hop introduced a label difference", "hops")
        doc.table(hop_table, floats=6)
        doc.note("Each step of a conversion chain (and a TVM build) against the chain's source on the flipped "
                 "images: origin 'store' where the study ran that prefix, 'ran' where the report ran it; "
                 "first_beyond: the first step whose outputs leave tolerance (top-1, or |Δlogit| > atol + "
                 "rtol·|source|).")

    doc.save(failed, "failures")
    doc.heading(f"Failures ({failed.height})", "failures")
    doc.table(failed)

    if store.skipped or store.shortfalls:  # the warning line, under the header
        line = _bad_parts_line(store)
        doc.md[warn_at[0]:warn_at[0]] = [line, ""]
        doc.html.insert(warn_at[1], f"<p class='note'>{html.escape(line)}</p>")
    doc.html.append("<h2>Environment</h2>" + html_page.environment_html(env))
    markdown = "\n".join(doc.md)
    md = out / "report.md"
    md.write_text(markdown)
    page = out / "report.html"
    page.write_text(html_page.page(title, doc.html))
    return Report(markdown, [md, page, *doc.files], html=page)


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
