"""Label discrepancies between configurations: top-1 disagreement, top-5 Jaccard, logit
divergence, and whether both sides saw the same input tensor."""

from __future__ import annotations

import numpy as np
import polars as pl

from deltann.analysis import aligned
from deltann.store import Store

def pairwise_agreement(store: Store) -> pl.DataFrame:
    """One row per ordered pair of configurations (A, B) of the same model on the same
    device kind, over the images both ran: ``n_images``, ``disagree`` (top-1 differs),
    ``disagree_pct``, ``top5_jaccard`` (mean |A∩B|/|A∪B| of the top-5 sets),
    ``max_abs_dlogit`` (max over images and classes of |logit_A − logit_B|),
    ``mean_max_abs_dlogit`` (the logit divergence: mean over images of the per-image max)
    and ``same_inputs`` (every image's input hash equal on both sides)."""
    return _pair_table(store, ["model", "device"], "config", ("top1", "top5", "logits", "input_hash"))


_PAIR_SCHEMA: dict[str, pl.DataType] = {
    "n_images": pl.UInt32(), "disagree": pl.UInt32(), "disagree_pct": pl.Float64(), "top5_jaccard": pl.Float64(),
    "max_abs_dlogit": pl.Float32(), "mean_max_abs_dlogit": pl.Float32(), "same_inputs": pl.Boolean(),
}
_METRIC_COLUMNS = {"top1": ["disagree", "disagree_pct"], "top5": ["top5_jaccard"],
                   "logits": ["max_abs_dlogit", "mean_max_abs_dlogit"], "input_hash": ["same_inputs"]}


def _pair_table(store: Store, group: list[str], side: str, metrics: tuple[str, ...]) -> pl.DataFrame:
    """Every ordered pair of ``side`` values within each ``group`` over the images both ran
    (see :mod:`deltann.analysis.aligned`: one group read at a time, arrays per side, no
    self-join)."""
    a_col = "config_a" if side == "config" else f"{side}_a"
    b_col = "config_b" if side == "config" else f"{side}_b"
    names = ["n_images", *(c for m in metrics for c in _METRIC_COLUMNS[m])]
    schema = {g: pl.String() for g in group} | {a_col: pl.String(), b_col: pl.String()} | {
        n: _PAIR_SCHEMA[n] for n in names}
    # Full logits: a large group is read a range of images at a time (bounded memory) and
    # each pair's metrics combined over the ranges.
    ranges = aligned.image_ranges(store, group, side) if "logits" in metrics else [None]
    found: dict[tuple[object, ...], list[dict[str, object]]] = {}
    for span in ranges:
        where = None if span is None else pl.col("image_index").is_between(span[0], span[1] - 1)
        for key, parts in aligned.scan_groups(store, group, ["image_id", *metrics], filter_expr=where, side=side):
            for row in aligned.pair_rows(aligned.align_parts(parts, metrics), metrics):
                found.setdefault((*key, row["a"], row["b"]), []).append(row)
    rows = []
    for (*key, a, b), parts in found.items():
        row = aligned.combine(parts)
        rows.append([*key, a, b, *(row[n] for n in names)])
    return pl.DataFrame(rows, schema=schema, orient="row").sort(*group, a_col, b_col)


def dissimilarity_matrix(
    pairs: pl.DataFrame, model: str, device: str, value: str = "disagree_pct", diagonal: float = 0.0
) -> pl.DataFrame:
    """The seed's Fig. 1: configurations × configurations, ``value`` in each cell
    (top-1 disagreement % by default; ``top5_jaccard`` with ``diagonal=1``,
    ``max_abs_dlogit`` for logit divergence), ``diagonal`` on the diagonal."""
    sub = pairs.filter((pl.col("model") == model) & (pl.col("device") == device))
    configs = sorted(set(sub["config_a"].to_list()) | set(sub["config_b"].to_list()))
    diagonal = pl.DataFrame(
        {"config_a": configs, "config_b": configs, value: [diagonal] * len(configs)},
        schema={"config_a": pl.String, "config_b": pl.String, value: sub.schema.get(value, pl.Float64)},
    )
    cells = pl.concat([sub.select("config_a", "config_b", value), diagonal], how="vertical_relaxed")
    matrix = cells.pivot(on="config_b", index="config_a", values=value, sort_columns=True).sort("config_a")
    return matrix.select("config_a", *[c for c in configs if c in matrix.columns])


def top1_disagreement(store: Store) -> pl.DataFrame:
    """The seed's Fig. 1 query alone, for large stores: per model and device, every ordered
    pair of configurations with ``n_images``, ``disagree`` and ``disagree_pct``, the same
    numbers as :func:`pairwise_agreement` from four narrow columns."""
    return _pair_table(store, ["model", "device"], "config", ("top1",))


def _side_pairs(store: Store, group: list[str], side: str) -> pl.DataFrame:
    """Top-1 disagreement and top-5 Jaccard between every ordered pair of values of
    ``side`` (device kind, variant) that ran the same image within ``group``."""
    return _pair_table(store, group, side, ("top1", "top5"))


def device_pairs(store: Store) -> pl.DataFrame:
    """Device-pair table (the seed's heatmaps across devices): the same model and
    configuration on two device kinds, per ordered pair (``device_a``, ``device_b``)."""
    return _side_pairs(store, ["model", "config"], "device")


def framework_pairs(store: Store) -> pl.DataFrame:
    """Framework-pair table (heatmaps across frameworks, and the label-dissimilarity
    matrices per device × setting): two variants of one model on one device kind under
    the same setting (``native`` compares each framework's own runtime)."""
    return _side_pairs(store, ["model", "device", "setting"], "variant")


def heatmap_matrix(long: pl.DataFrame, row: str, column: str, value: str, diagonal: float | None = None) -> pl.DataFrame:
    """A long pair table (already filtered to one heatmap) as a matrix: ``row`` values down,
    ``column`` values across, sorted; ``diagonal`` fills cells where row == column when the
    table has no such rows (a pair table never compares a thing with itself)."""
    cells = long.select(row, column, value)
    if diagonal is not None:
        names = sorted(set(cells[row].to_list()) | set(cells[column].to_list()))
        diag = pl.DataFrame({row: names, column: names, value: [diagonal] * len(names)},
                            schema={row: cells.schema[row], column: cells.schema[column], value: pl.Float64})
        cells = pl.concat([cells, diag], how="vertical_relaxed")
    return cells.pivot(on=column, index=row, values=value, aggregate_function="first", sort_columns=True).sort(row)


def accuracy(store: Store) -> pl.DataFrame:
    """Top-1 and top-5 accuracy (%) per configuration over the images that carry a label
    (``labelled``); configurations without any labelled image are absent."""
    return (
        store.scan("predictions")
        .select("model", "device", "config", "label", "top1", "top5")
        .filter(pl.col("label").is_not_null())
        .group_by("model", "device", "config")
        .agg(
            pl.len().alias("labelled"),
            ((pl.col("top1") == pl.col("label")).mean() * 100).alias("top1_acc"),
            (pl.col("top5").list.contains(pl.col("label")).mean() * 100).alias("top5_acc"),
        )
        .sort("model", "device", "config")
        .collect()
    )


#: Bucket edges of the reference's top-1/top-2 probability margin.
MARGIN_EDGES = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)


def _reference_configs(store: Store, reference: str | None) -> pl.LazyFrame:
    """(model, device, reference): the given configuration, or per model and device the
    first ``native`` one (a framework's own runtime is the natural baseline), else the first."""
    # from the small builds table (a unit that produced no predictions has no margins, and
    # is skipped as a reference by margin_flips)
    configs = store.scan("builds").filter(pl.col("status") == "ok").select("model", "device", "config", "setting")
    if reference is not None:
        return configs.filter(pl.col("config") == reference).select("model", "device", pl.col("config").alias("reference"))
    return (
        configs.sort((pl.col("setting") != "native"), "config")
        .group_by("model", "device")
        .agg(pl.col("config").first().alias("reference"))
    )


def margin_flips(store: Store, reference: str | None = None, edges: tuple[float, ...] = MARGIN_EDGES) -> pl.DataFrame:
    """Top-1 flips against a reference configuration, bucketed by the reference's margin
    ``top5_prob[0] − top5_prob[1]``: flips concentrate where the reference was unsure,
    which tells numeric noise (small margins) from a real defect (confident images flip).
    Buckets are left-closed ``[lo, hi)``, the last one closed; ``lo``/``hi`` are columns."""
    refs = dict(((m, d), r) for m, d, r in _reference_configs(store, reference).collect().iter_rows())
    columns = ["image_id", "top1", (pl.col("top5_prob").list.get(0, null_on_oob=True)
                                    - pl.col("top5_prob").list.get(1, null_on_oob=True)).alias("margin")]
    edges_arr = np.asarray(edges, float)
    rows = []
    for (model, device), parts in aligned.scan_groups(store, ["model", "device"], columns, side="config"):
        ref_name = refs.get((model, device))
        sides = aligned.align_parts(parts, ("top1", "margin"))
        if ref_name not in sides:
            continue
        ref = sides[ref_name]
        margin = ref.arrays["margin"]
        bucket = np.searchsorted(edges_arr, margin, side="right") - 1
        bucket[margin == edges_arr[-1]] = len(edges_arr) - 2  # the last bucket is closed
        bucket[~((margin >= edges_arr[0]) & (margin <= edges_arr[-1]))] = -1  # NaN or outside: no bucket
        for config, other in sides.items():
            both = ref.present & other.present
            if config == ref_name or not both.any():
                continue
            flip = other.arrays["top1"] != ref.arrays["top1"]
            for k in np.unique(bucket[both]):
                inside = both & (bucket == k)
                lo, hi = (None, None) if k < 0 else (float(edges_arr[k]), float(edges_arr[k + 1]))
                n, f = int(inside.sum()), int((flip & inside).sum())
                rows.append([model, device, ref_name, config, lo, hi, n, f, f / n * 100])
    schema = {"model": pl.String, "device": pl.String, "reference": pl.String, "config": pl.String,
              "lo": pl.Float64, "hi": pl.Float64, "n_images": pl.UInt32, "flips": pl.UInt32, "flip_pct": pl.Float64}
    return pl.DataFrame(rows, schema=schema, orient="row").sort("model", "device", "config", "lo", nulls_last=True)


def label_stability(store: Store, run_by: tuple[str, ...] = ("study", "board")) -> pl.DataFrame:
    """Label half of the multi-run stability table: the same configuration run more than
    once (distinct ``run_by`` values, e.g. two boards of one kind, or two studies merged
    into one store). ``flips``: images whose top-1 is not the same in every run.

    Runs are counted on the small ``builds`` table; only configurations with more than one
    there are read image by image (a single run cannot flip, and its images are its rows),
    and their ``runs`` is the most runs any one image had: the shards of one run spread
    over two boards are one run, not two."""
    keys = ["model", "device", "config"]
    runs = (
        store.scan("builds").select(*keys, *run_by).unique()
        .group_by(keys).agg(pl.len().cast(pl.UInt32).alias("runs"))
    )
    rows = store.scan("predictions").select(*keys).group_by(keys).agg(pl.len().alias("rows"))
    counts = runs.join(rows, on=keys).collect()
    repeated = counts.filter(pl.col("runs") > 1)
    per_image = (
        store.scan("predictions")
        .select(*keys, "image_id", "top1", *run_by)
        .join(repeated.lazy().select(keys), on=keys, how="semi")
        .group_by(*keys, "image_id")
        .agg(pl.col("top1").n_unique().alias("labels"), pl.struct(*run_by).n_unique().alias("image_runs"))
        .group_by(keys)
        .agg(pl.len().alias("images"), (pl.col("labels") > 1).sum().alias("flips"),
             pl.col("image_runs").max().cast(pl.UInt32))
        .collect()
    )
    return (
        counts.join(per_image, on=keys, how="left")
        .with_columns(pl.coalesce("image_runs", "runs").alias("runs"))
        .select(
            *keys, "runs",
            pl.coalesce("images", "rows").cast(pl.UInt32).alias("images"),
            pl.col("flips").fill_null(0).cast(pl.UInt32).alias("flips"),
        )
        .with_columns((pl.col("flips") / pl.col("images") * 100).alias("flip_pct"))
        .sort(keys)
    )
