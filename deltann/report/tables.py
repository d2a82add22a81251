"""Render analysis tables: one Markdown page (printed and written as ``report.md``), one
self-contained HTML page (``report.html``), one CSV and one LaTeX file per table and one PNG
per figure, under ``DIR/report/``."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from deltann import analysis
from deltann.analysis import passes, pooled
from deltann.report import html as html_page
from deltann.report import latex, plots
from deltann.store import SCHEMAS, Store


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


def _slug(*parts: str) -> str:
    """A file name from table name and partition values: ``top1_dissimilarity_tiny-cnn_local``."""
    return "_".join([parts[0], *("".join(c if c.isalnum() else "-" for c in p) for p in parts[1:])])


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

    def heading(self, text: str) -> None:
        self.md += [f"## {text}", ""]
        self.html.append(f"<h2>{html.escape(text)}</h2>")

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


def build_report(results: Path | str, out: Path | str | None = None, *, pool: bool = False) -> Report:
    """Compute every table from the store at ``results`` and write them to ``out``
    (default ``results/report``): ``report.md``, ``report.html`` (self-contained), one CSV
    and one LaTeX file per table, one PNG per figure. Several labs' results are shown
    side by side (device ``<kind>@<lab>``); ``pool`` mixes them, latencies included."""
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
    doc.html += [f"<p class='note'>{html.escape(line)}</p>" for line in header]
    doc.html.append(f"<p class='conv'>Sign convention: {html.escape(analysis.SPEEDUP_CONVENTION)}</p>")
    warn_at = (len(doc.md), len(doc.html))  # bad parts are known once every table has read them

    # --- labels -------------------------------------------------------------------
    pairs = analysis.pairwise_agreement(store)
    doc.save(pairs, "pairwise_agreement", floats=6)
    matrices = (
        ("top1_dissimilarity", "Top-1 label dissimilarity (%)", "disagree_pct", 0.0, "{:.1f}",
         "Cell: % of images whose top-1 label differs between row A and column B."),
        ("top5_jaccard", "Top-5 Jaccard similarity", "top5_jaccard", 1.0, "{:.2f}",
         "Cell: mean |top5_A ∩ top5_B| / |top5_A ∪ top5_B| over the images both ran (1 = same sets)."),
        ("logit_divergence", "Logit divergence (max |Δlogit|)", "max_abs_dlogit", 0.0, "{:.1e}",
         "Cell: max over images and classes of |logit_A − logit_B|."),
    )
    for (model, device), _ in pairs.group_by(["model", "device"], maintain_order=True):
        for name, heading, value, diagonal, fmt, note in matrices:
            matrix = analysis.dissimilarity_matrix(pairs, model, device, value, diagonal)
            slug = _slug(name, model, device)
            doc.save(matrix, slug, f"{heading}: {model} on {device}", floats=6 if value == "max_abs_dlogit" else 2)
            doc.heading(f"{heading}: {model} on {device}")
            doc.table(matrix, floats=2 if value != "max_abs_dlogit" else 8,
                      markdown=matrix.rename({"config_a": "A \\ B"}))
            doc.figure(plots.heatmap_png(matrix, out / f"{slug}.png", f"{heading}: {model} on {device}", fmt=fmt),
                       f"{heading} heatmap, {model} on {device}")
            doc.note(note)

    frameworks = analysis.framework_pairs(store)
    doc.save(frameworks, "framework_pairs")
    for (model, device, setting), sub in frameworks.group_by(["model", "device", "setting"], maintain_order=True):
        matrix = analysis.heatmap_matrix(sub, "variant_a", "variant_b", "disagree_pct", diagonal=0.0)
        slug = _slug("framework_dissimilarity", model, device, setting)
        doc.save(matrix, slug)
        doc.heading(f"Top-1 dissimilarity across frameworks (%): {model} on {device}, setting {setting}")
        doc.table(matrix)
        doc.figure(plots.heatmap_png(matrix, out / f"{slug}.png", f"{model} on {device} [{setting}]: top-1 %"),
                   f"framework heatmap {model} {device} {setting}")
    devices = analysis.device_pairs(store)
    doc.save(devices, "device_pairs")
    for (model, config), sub in devices.group_by(["model", "config"], maintain_order=True):
        matrix = analysis.heatmap_matrix(sub, "device_a", "device_b", "disagree_pct", diagonal=0.0)
        slug = _slug("device_dissimilarity", model, config)
        doc.save(matrix, slug)
        doc.heading(f"Top-1 dissimilarity across devices (%): {model}, {config}")
        doc.table(matrix)
        doc.figure(plots.heatmap_png(matrix, out / f"{slug}.png", f"{model} {config}: top-1 % across devices"),
                   f"device heatmap {model} {config}")

    doc.heading("Pairwise agreement")
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
    per_session = analysis.session_latency(store)
    latency = pooled.pooled_latency(store) if pool else analysis.latency_table(store, per_session)
    doc.save(latency, "latency", floats=4)
    doc.heading("Latency (ms)")
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
        slug = _slug("latency_box", model, device)
        doc.figure(plots.boxplot_png(series, out / f"{slug}.png", f"Latency samples: {model} on {device}"),
                   f"latency boxplot {model} {device}")
    for model in latency["model"].unique(maintain_order=True).to_list():
        matrix = analysis.latency_matrix(latency, model)
        slug = _slug("latency_matrix", model)
        doc.save(matrix, slug, floats=4)
        doc.heading(f"Median latency (ms) per device: {model}")
        doc.table(matrix, floats=3)
        doc.figure(plots.heatmap_png(matrix, out / f"{slug}.png", f"{model}: median latency (ms)", fmt="{:.2f}",
                                     cmap="magma"), f"latency heatmap {model}")

    speedups = analysis.speedup_stats(store, per_session)
    doc.save(speedups, "speedup", floats=4)
    doc.heading("Time change between configurations")
    doc.table(_short_ids(speedups), floats=2)
    doc.note(f"Convention: {analysis.SPEEDUP_CONVENTION}")
    doc.note("ratio = t_A / t_B with its 95 % CI (ci_*_pct in the same convention); effect_rb: matched-pairs "
             f"rank-biserial (positive: B faster). {analysis.test_note(speedups)}")
    for (model, device), sub in speedups.group_by(["model", "device"], maintain_order=True):
        slug = _slug("speedup", model, device)
        doc.figure(plots.speedup_png(sub, out / f"{slug}.png", f"Time change: {model} on {device}"),
                   f"speedup bars {model} {device}")

    # The seed's Tables III-IV: FAILED where a build failed, never a number.
    table3, table4 = passes.from_store(store)
    doc.save(table3, "settings")
    doc.heading("Time per setting against basic (Table III)")
    doc.table(table3)
    doc.note(f"Convention: {passes.CONVENTION}; A = basic, B = the setting. Every setting but unscheduled "
             "ends with the target's tuning-free schedule: they differ in graph-level passes only.")
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
            slug = _slug("layers", pair)
            doc.figure(plots.layers_png(sub, out / f"{slug}.png", f"Per-layer difference: {pair}"),
                       f"per-layer lines {pair}")

    failed = analysis.failures(store)
    doc.save(failed, "failures")
    doc.heading(f"Failures ({failed.height})")
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
