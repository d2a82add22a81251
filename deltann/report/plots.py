"""PNG figures for the report (matplotlib, Agg backend: no display, no network).

Each function takes an analysis DataFrame (or plain samples) and writes one PNG. The PNGs
carry no ``Software`` text chunk (matplotlib's default names its web site), so the HTML
page that embeds them holds no URL at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, deterministic

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

_META = {"Software": None}


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata=_META)
    plt.close(fig)
    return path


#: Okabe & Ito's colour-blind-safe palette (blue, vermillion, grey) for categorical marks.
BLUE, VERMILLION, GREY = "#0072B2", "#D55E00", "#999999"
#: The colour of a cell that shows no difference (0 % dissimilarity, Jaccard 1, Δ = 0):
#: neutral, so that what differs is what catches the eye.
NEUTRAL = "#e8e8e8"
#: Sequential maps that stay readable with any colour vision deficiency and in grey.
SEQUENTIAL = "cividis"


@dataclass
class Scale:
    """How a heatmap maps values to colours: the norm, the colour map (with the neutral
    colour for masked cells) and the values as drawn (NaN where neutral or missing)."""

    norm: Any
    cmap: Any
    shown: np.ndarray

    def rgba(self) -> np.ndarray:
        """The colour of every cell, (rows, columns, 4)."""
        return self.cmap(self.norm(np.ma.masked_invalid(self.shown)))


def heatmap_scale(values: np.ndarray, *, cmap: str = SEQUENTIAL, vmin: float | None = None,
                  vmax: float | None = None, neutral: float | None = None, log: bool = False,
                  reverse: bool = False) -> Scale:
    """The colour scale of :func:`heatmap_png` (see there)."""
    from matplotlib.colors import LogNorm, Normalize

    shown = np.array(values, dtype=float)
    if neutral is not None:
        shown[np.isclose(shown, neutral, rtol=0.0, atol=1e-12)] = np.nan  # drawn in the neutral colour
    if log:
        shown[~(shown > 0)] = np.nan
    finite = shown[np.isfinite(shown)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else (1e-8 if log else 0.0))
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if lo >= hi:
        lo, hi = (lo / 10, hi * 10) if log else (lo - 0.5, hi + 0.5)
    norm = LogNorm(vmin=max(lo, 1e-12), vmax=hi) if log else Normalize(vmin=lo, vmax=hi)
    colours = plt.get_cmap(cmap + ("_r" if reverse else "")).with_extremes(bad=NEUTRAL)
    return Scale(norm, colours, shown)


def heatmap_png(matrix: pl.DataFrame, path: Path, title: str, *, fmt: str = "{:.1f}", cmap: str = SEQUENTIAL,
                vmin: float | None = None, vmax: float | None = None, neutral: float | None = None,
                log: bool = False, reverse: bool = False, label: str = "") -> Path:
    """An annotated heatmap of a matrix table: first column holds the row names, the other
    columns are the cells (the shape :func:`deltann.analysis.dissimilarity_matrix` returns).
    ``vmin``/``vmax`` fix the scale (0–100 for a percentage, 0–1 for Jaccard), so that the
    same colour means the same value in every report; without them the data's range is
    used. Cells equal to ``neutral`` (the value meaning "no difference") are drawn in a
    neutral grey instead of the map's colour. ``log``: a logarithmic scale (logit
    differences span decades; values outside the scale take its end colours).
    ``reverse``: the map reversed, light for small values and dark for large ones (a
    difference, so that the more two configurations differ the darker the cell; a
    similarity keeps the map as it is). Missing cells are left blank and annotated ``–``."""
    rows = [str(v) for v in matrix.to_series(0).to_list()]
    cols = matrix.columns[1:]
    values = matrix.select(cols).cast(pl.Float64).fill_null(float("nan")).to_numpy()
    n_r, n_c = values.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * n_c + 3), max(3.0, 0.5 * n_r + 2)))
    scale = heatmap_scale(values, cmap=cmap, vmin=vmin, vmax=vmax, neutral=neutral, log=log, reverse=reverse)
    image = ax.imshow(np.ma.masked_invalid(scale.shown), cmap=scale.cmap, norm=scale.norm, aspect="auto")
    bar = fig.colorbar(image, ax=ax)
    if label:
        bar.set_label(label, fontsize=8)
    ax.set_xticks(range(n_c), labels=cols, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(n_r), labels=rows, fontsize=8)
    rgba = scale.rgba()
    for i in range(n_r):
        for j in range(n_c):
            v = values[i, j]
            text = fmt.format(v) if math.isfinite(v) else "–"
            r, g, b, _ = rgba[i, j]
            dark = 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5  # relative luminance of the cell's colour
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def boxplot_png(samples: dict[str, list[float]], path: Path, title: str, ylabel: str = "latency (ms)") -> Path:
    """Latency distributions side by side, one box per configuration (whiskers at 1.5 IQR,
    the points beyond drawn), so the spread behind each median is visible."""
    names = list(samples)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 * len(names) + 2), 4.0))
    ax.boxplot([samples[n] for n in names], showfliers=True)
    ax.set_xticks(range(1, len(names) + 1), labels=names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def speedup_png(speedups: pl.DataFrame, path: Path, title: str) -> Path:
    """``speedup_pct`` per pair as horizontal bars with the bootstrap 95 % CI as whiskers;
    significant rows (``significant`` column) in blue (B faster) or vermillion (B slower),
    the rest grey (colour-blind-safe)."""
    labels = [f"{a} → {b}" for a, b in speedups.select("A", "B").iter_rows()]
    y = np.arange(len(labels))
    value = speedups["speedup_pct"].to_numpy()
    low = speedups["ci_low_pct"].fill_null(float("nan")).to_numpy()
    high = speedups["ci_high_pct"].fill_null(float("nan")).to_numpy()
    err = np.vstack([np.nan_to_num(value - low), np.nan_to_num(high - value)])
    significant = speedups["significant"].fill_null(False).to_list()
    colours = [GREY if not s else BLUE if v > 0 else VERMILLION for s, v in zip(significant, value, strict=True)]
    fig, ax = plt.subplots(figsize=(7.5, max(2.5, 0.45 * len(labels) + 1.5)))
    ax.barh(y, value, xerr=err, color=colours, capsize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=BLUE, label="B faster (significant)"),
                       Patch(color=VERMILLION, label="B slower (significant)"),
                       Patch(color=GREY, label="not significant")], fontsize=7, loc="best")
    ax.set_yticks(y, labels=labels, fontsize=8)
    ax.set_xlabel("speedup_pct(A→B) = (t_A / t_B − 1) × 100")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def layers_png(layers: pl.DataFrame, path: Path, title: str) -> Path:
    """The seed's Fig. 2 from a store's ``layers`` rows of one pair: max and mean
    |difference| per aligned layer along the network (log scale), cosine similarity on the
    right axis, the first layer beyond tolerance marked."""
    rows = layers.filter(pl.col("matched")).sort("order")
    x = np.arange(rows.height)
    floor = 1e-12
    fig, ax = plt.subplots(figsize=(max(6.0, min(18.0, 0.09 * rows.height + 4)), 4.0))
    for column, colour in (("max_abs", "tab:red"), ("mean_abs", "tab:orange")):
        values = rows[column].fill_null(floor).to_numpy()
        ax.semilogy(x, np.maximum(values, floor), label=column.replace("_abs", " |a−b|"), color=colour)
    ax.set_xlabel("aligned layer (network order)")
    ax.set_ylabel("absolute difference")
    ax2 = ax.twinx()
    ax2.plot(x, rows["cosine"].fill_null(float("nan")).to_numpy(), label="cosine", color="tab:blue", alpha=0.7)
    ax2.set_ylabel("cosine similarity")
    first = np.flatnonzero(rows["first_divergent"].fill_null(False).to_numpy())
    if first.size:
        k = int(first[0])
        ax.axvline(k, color="black", linestyle="--", linewidth=1)
        name = rows["layer_a"][k] or rows["layer_b"][k] or ""
        ax.annotate(f"first beyond tol: {name}", (k, ax.get_ylim()[1]), xytext=(4, -12),
                    textcoords="offset points", fontsize=8)
    handles, labels = ax.get_legend_handles_labels()
    handles2, labels2 = ax2.get_legend_handles_labels()
    ax.legend(handles + handles2, labels + labels2, fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
