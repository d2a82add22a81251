"""The report's tables as data: one :class:`Section` per table (heading, the function that
makes it from the analysis, the note under it, its plot, whether findings link to it), in
the order the report shows them. :func:`deltann.report.tables.build_report` walks
:data:`SECTIONS` once and writes each section to every format (Markdown, HTML, CSV,
LaTeX, PNG), so adding a table to the report is adding one entry here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import polars as pl

from deltann import analysis
from deltann.analysis import pass_tables as passes, pooled
from deltann.analysis.layer_diff import divergence_summary
from deltann.report import plots
from deltann.store import SCHEMAS, Store

#: One group's values (``{"model": ..., "device": ...}``) for a section repeated per group;
#: empty for a section shown once.
Group = dict[str, str]


class Analysis:
    """The analysis tables one report is made from, each computed once, on first use, from
    the store; sections read them from here (and anything else from ``store``)."""

    def __init__(self, store: Store, *, pool: bool = False) -> None:
        self.store = store
        self.pool = pool
        #: The hop attribution's steps (set by build_report when it names hops).
        self.hops = pl.DataFrame()

    @cached_property
    def pairs(self) -> pl.DataFrame:
        return analysis.pairwise_agreement(self.store)

    @cached_property
    def devices(self) -> pl.DataFrame:
        return analysis.device_pairs(self.store)

    @cached_property
    def per_session(self) -> pl.DataFrame:
        return analysis.session_latency(self.store)

    @cached_property
    def latency(self) -> pl.DataFrame:
        return pooled.pooled_latency(self.store) if self.pool else analysis.latency_table(self.store, self.per_session)

    @cached_property
    def speedups(self) -> pl.DataFrame:
        return analysis.speedup_stats(self.store, self.per_session)

    @cached_property
    def failed(self) -> pl.DataFrame:
        return analysis.failures(self.store)

    @cached_property
    def frameworks(self) -> pl.DataFrame:
        return analysis.framework_pairs(self.store)

    @cached_property
    def settings(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The seed's Tables III and IV: FAILED where a build failed, never a number."""
        return passes.from_store(self.store)

    @cached_property
    def layers(self) -> pl.DataFrame | None:
        """The per-layer rows ``deltann localize`` wrote; None when it never ran here."""
        if "layers" not in SCHEMAS or not self.store.files("layers"):
            return None
        cols = ["pair", "model", "image_ids", "order", "layer_a", "layer_b", "matched", "max_abs", "mean_abs",
                "cosine", "first_divergent", "alignment_rate"]
        return self.store.scan("layers").select(cols).collect()

    def samples(self, latency: pl.DataFrame) -> pl.DataFrame:
        """Every latency sample (ns) of the configurations in ``latency``, one list per configuration."""
        frame = pooled.pooled_samples(self.store) if self.pool else analysis.latest_samples(self.store, latency)
        return (frame.group_by("model", "device", "config").agg(pl.col("samples_ns").explode())
                .sort("model", "device", "config").collect())


@dataclass(frozen=True)
class Plot:
    """A section's figure: ``draw(frame, path, title)`` writes one PNG; ``title`` and
    ``alt`` are format strings over the group's values. Without ``per``: one figure of the
    section's table, under it, named like the table. With ``per``: one figure for each
    group of those columns of ``frame(analysis, table)`` (default: the table), named
    ``slug(name, *values)``, after the section's notes."""

    draw: Callable[[pl.DataFrame, Path, str], Path]
    title: str
    alt: str
    per: tuple[str, ...] = ()
    name: str = ""
    frame: Callable[[Analysis, pl.DataFrame], pl.DataFrame] | None = None


@dataclass(frozen=True)
class Section:
    """One table of the report. ``name``: the file name of its CSV and LaTeX (and PNG), with
    the group's values appended for a section repeated per group (``deltann.analysis.findings.slug``), and its
    anchor when ``anchor`` (findings link to ``#name``). ``heading``: a format string over
    the group's values and ``rows`` (the table's height). ``table(analysis, group)``: the
    table as saved; None leaves the section out. ``shown``: what the pages show when
    that differs (ids cut short, one row per pair); ``markdown``: columns renamed in
    Markdown only. ``note``: paragraphs under the table, or a function of the table that
    gives them. ``floats``: decimals on the pages, ``saved_floats`` in LaTeX.
    ``caption``: the LaTeX caption is the heading (else the file name)."""

    name: str
    heading: str
    table: Callable[[Analysis, Group], pl.DataFrame | None]
    note: str | Callable[[Analysis, pl.DataFrame], str | list[str]] = ""
    plot: Plot | None = None
    anchor: bool = False
    shown: Callable[[Analysis, pl.DataFrame], pl.DataFrame] | None = None
    markdown: dict[str, str] = field(default_factory=dict)
    floats: int = 2
    saved_floats: int = 2
    caption: bool = False

    def notes(self, data: Analysis, table: pl.DataFrame) -> list[str]:
        """The paragraphs under ``table``."""
        text = self.note(data, table) if callable(self.note) else self.note
        if isinstance(text, str):
            return [text] if text else []
        return list(text)


@dataclass(frozen=True)
class Each:
    """``sections`` repeated for every group of ``columns`` in ``frame(analysis)`` (in the
    order the groups first appear), all of one group's before the next; ``save``: the
    whole frame is also written (CSV, LaTeX) under this name, before the groups."""

    frame: Callable[[Analysis], pl.DataFrame]
    columns: tuple[str, ...]
    sections: tuple[Section, ...]
    save: str = ""

    def groups(self, data: Analysis) -> list[Group]:
        frame = self.frame(data)
        return list(frame.select(self.columns).unique(maintain_order=True).iter_rows(named=True))


@dataclass(frozen=True)
class Sentence:
    """One finding as the pages show it: tagged by its kind, linked to its table's anchor
    (``link``, "" where that table is not in the report), with its reproducer command."""

    kind: str
    tag: str
    text: str
    link: str = ""
    repro: str = ""


def rows(frame: pl.DataFrame, group: Group) -> pl.DataFrame:
    """The rows of ``frame`` in ``group``."""
    return frame.filter(*(pl.col(c).eq_missing(v) for c, v in group.items())) if group else frame


def short_ids(frame: pl.DataFrame) -> pl.DataFrame:
    """Board and session ids cut to 12 characters for display (the saved CSV keeps them whole)."""
    return frame.with_columns(pl.col(c).str.slice(0, 12) for c in ("board", "session") if c in frame.columns)


def heatmap(**scale: object) -> Callable[[pl.DataFrame, Path, str], Path]:
    """A matrix table's heatmap drawn with ``scale`` (:func:`plots.heatmap_png`'s keywords)."""
    return lambda matrix, path, title: plots.heatmap_png(matrix, path, title, **scale)  # type: ignore[arg-type]


def _boxes(samples: pl.DataFrame, path: Path, title: str) -> Path:
    series = {c: [v / 1e6 for v in s] for c, s in samples.select("config", "samples_ns").iter_rows()}
    return plots.boxplot_png(series, path, title)


def _matrix(name: str, heading: str, value: str, diagonal: float, fmt: str, note: str,
            scale: dict[str, object]) -> Section:
    """One of the per-pair matrices (configurations × configurations) of a model on a device."""
    logits = value == "max_abs_dlogit"
    return Section(
        name, f"{heading}: {{model}} on {{device}}",
        lambda data, g: analysis.dissimilarity_matrix(data.pairs, g["model"], g["device"], value, diagonal),
        note, Plot(heatmap(fmt=fmt, **scale), f"{heading}: {{model}} on {{device}}",
                   f"{heading} heatmap, {{model}} on {{device}}"),
        anchor=True, markdown={"config_a": "A \\ B"}, floats=8 if logits else 2, saved_floats=6 if logits else 2,
        caption=True)


def _latency_notes(data: Analysis, _: pl.DataFrame) -> list[str]:
    plain = ("Each configuration from its latest timing session: the configurations of a model timed together "
             "on one board in alternating blocks (images × blocks × repeat samples); board and session say where.")
    return [pooled.POOL_NOTE if data.pool else plain,
            *(f"**Warning:** {warning}" for warning in analysis.quiet_warnings(data.store))]


def _settings_note(_: Analysis, table3: pl.DataFrame) -> str:
    return (f"Convention: {passes.CONVENTION}; A = basic, B = the setting. Every setting but unscheduled "
            "ends with the target's tuning-free schedule: they differ in graph-level passes only."
            + ("" if table3.is_empty() or "basic" in table3["setting"].to_list() else
               " This study timed no 'basic' build, so there is nothing to compare against: add 'basic' to "
               "settings for the speedup column."))


def _per_pass(data: Analysis, _: Group) -> pl.DataFrame | None:
    """Table IV, when the study ran with ``ablation = true`` (settings such as basic+X)."""
    return data.settings[1] if data.latency["setting"].str.contains(r"[+-]").any() else None


def _layer_summary(data: Analysis, _: Group) -> pl.DataFrame | None:
    return None if data.layers is None else divergence_summary(data.layers)


_SCALE = {"vmin": 0.0, "vmax": 100.0, "neutral": 0.0, "reverse": True, "label": "% of images"}

#: Every table of the report, in order (after the findings, which link to the anchored ones).
SECTIONS: list[Section | Each] = [
    # --- labels ---------------------------------------------------------------
    # Fixed scales, so a colour means the same value in every report (logits: 1e-7, fp32
    # rounding, to 100); "no difference" cells are drawn neutral, and the more two
    # configurations differ, the darker their cell.
    Each(lambda data: data.pairs, ("model", "device"), (
        _matrix("top1_dissimilarity", "Top-1 label dissimilarity (%)", "disagree_pct", 0.0, "{:.1f}",
                "Cell: % of images whose top-1 label differs between row A and column B (grey: none).", _SCALE),
        _matrix("top5_jaccard", "Top-5 Jaccard similarity", "top5_jaccard", 1.0, "{:.2f}",
                "Cell: mean |top5_A ∩ top5_B| / |top5_A ∪ top5_B| over the images both ran (1 = same sets; grey).",
                {"vmin": 0.0, "vmax": 1.0, "neutral": 1.0, "label": "Jaccard"}),
        _matrix("logit_divergence", "Logit divergence (max |Δlogit|)", "max_abs_dlogit", 0.0, "{:.1e}",
                "Cell: max over images and classes of |logit_A − logit_B| (log colour scale 1e-7–100; grey: "
                "identical).",
                {"log": True, "vmin": 1e-7, "vmax": 1e2, "neutral": 0.0, "reverse": True, "label": "max |Δlogit|"}),
    )),
    Each(lambda data: data.frameworks, ("model", "device", "setting"), (
        Section("framework_dissimilarity",
                "Top-1 dissimilarity across frameworks (%): {model} on {device}, setting {setting}",
                lambda data, g: analysis.heatmap_matrix(rows(data.frameworks, g), "variant_a", "variant_b",
                                                        "disagree_pct", diagonal=0.0),
                plot=Plot(heatmap(**_SCALE), "{model} on {device} [{setting}]: top-1 %",
                          "framework heatmap {model} {device} {setting}")),
    ), save="framework_pairs"),
    Each(lambda data: data.devices, ("model", "config"), (
        Section("device_dissimilarity", "Top-1 dissimilarity across devices (%): {model}, {config}",
                lambda data, g: analysis.heatmap_matrix(rows(data.devices, g), "device_a", "device_b",
                                                        "disagree_pct", diagonal=0.0),
                plot=Plot(heatmap(**_SCALE), "{model} {config}: top-1 % across devices",
                          "device heatmap {model} {config}"), anchor=True),
    ), save="device_pairs"),
    Section("pairwise_agreement", "Pairwise agreement", lambda data, _: data.pairs,
            "top5_jaccard: mean |top5_A ∩ top5_B| / |top5_A ∪ top5_B|; max_abs_dlogit: max |logit_A − logit_B| "
            "over images and classes; mean_max_abs_dlogit: its mean over images; same_inputs: every image's "
            "input tensor hash equal on both sides.",
            anchor=True, shown=lambda _, pairs: pairs.filter(pl.col("config_a") < pl.col("config_b")),
            floats=4, saved_floats=6),
    Section("accuracy", "Accuracy (%)", lambda data, _: analysis.accuracy(data.store),
            "Over the images with a label in the common 1000-class ImageNet space; none means no labels."),
    Section("margin_flips", "Top-1 flips by the reference's top-1/top-2 margin",
            lambda data, _: analysis.margin_flips(data.store),
            "margin = p(top-1) − p(top-2) of the reference configuration, bucket [lo, hi); flips at large "
            "margins point at a defect rather than rounding noise."),
    Section("stability", "Multi-run stability", lambda data, _: analysis.stability(data.store),
            "runs: distinct (study, board); flips: images whose top-1 is not the same in every run; "
            "cv: coefficient of variation (std/mean, %) of raw samples and of per-run medians."),
    # --- time -----------------------------------------------------------------
    Section("latency", "Latency (ms)", lambda data, _: data.latency, _latency_notes,
            Plot(_boxes, "Latency samples: {model} on {device}", "latency boxplot {model} {device}",
                 per=("model", "device"), name="latency_box", frame=lambda data, latency: data.samples(latency)),
            anchor=True, shown=lambda _, latency: short_ids(latency.drop("variant", "runtime", "setting")),
            floats=3, saved_floats=4),
    Each(lambda data: data.latency, ("model",), (
        Section("latency_matrix", "Median latency (ms) per device: {model}",
                lambda data, g: analysis.latency_matrix(data.latency, g["model"]),
                plot=Plot(heatmap(fmt="{:.2f}", cmap="viridis", label="ms"), "{model}: median latency (ms)",
                          "latency heatmap {model}"), floats=3, saved_floats=4),
    )),
    Section("speedup", "Time change between configurations", lambda data, _: data.speedups,
            lambda _, speedups: [
                f"Convention: {analysis.SPEEDUP_CONVENTION}",
                "ratio = t_A / t_B with its 95 % CI (ci_*_pct in the same convention); effect_rb: matched-pairs "
                f"rank-biserial (positive: B faster). {analysis.test_note(speedups)}"],
            Plot(plots.speedup_png, "Time change: {model} on {device}", "speedup bars {model} {device}",
                 per=("model", "device"), name="speedup"),
            anchor=True, shown=lambda _, speedups: short_ids(speedups), saved_floats=4),
    Section("settings", "Time per setting against basic (Table III)", lambda data, _: data.settings[0],
            _settings_note),
    Section("passes", "Per-pass time change (Table IV)", _per_pass,
            f"Convention: {passes.CONVENTION}. alone: basic → basic+X (what X does by itself; for "
            "DefaultSchedule, which basic has: unscheduled → basic); adds: extended−X → extended (what X "
            "adds to all the others); relax: the pass's Relax counterpart. Every build but unscheduled and "
            "extended−DefaultSchedule runs scheduled kernels, so each pass is measured over them."),
    Section("noise_floor", "A/A noise floor", lambda data, _: analysis.noise_floor(data.store),
            "Each configuration against itself: its even blocks against its odd blocks (image by image; with "
            "one block, alternate samples), in the speedup convention. drift: the same test as the time changes "
            "finds that the configuration's time moved between blocks (the machine changed state while timing); "
            "time changes pair A and B within each block, so drift cancels out of them, but absolute times are "
            "then uncertain by about noise_pct. A change smaller than both sides' noise_pct is noise."),
    # --- written by other commands ---------------------------------------------
    Section("layer_divergence", "Per-layer divergence (fault localization)", _layer_summary,
            "Layers aligned by name and structure; first_layer_*: the first aligned layer whose "
            "difference exceeds the tolerance (|a − b| ≤ atol + rtol·|a|, A the reference).",
            Plot(plots.layers_png, "Per-layer difference: {pair}", "per-layer lines {pair}", per=("pair",),
                 name="layers", frame=lambda data, _: data.layers),
            floats=6, saved_floats=6),
    Section("hops", "Which hop introduced a label difference",
            lambda data, _: data.hops if data.hops.height else None,
            "Each step of a conversion chain (and a TVM build) against the chain's source on the flipped "
            "images: origin 'store' where the study ran that prefix, 'ran' where the report ran it; "
            "first_beyond: the first step whose outputs leave tolerance (top-1, or |Δlogit| > atol + "
            "rtol·|source|).", anchor=True, floats=6, saved_floats=6),
    Section("failures", "Failures ({rows})", lambda data, _: data.failed, anchor=True),
]
