"""Pair tables without a self-join.

Why: comparing every pair of C configurations over N images by joining the predictions
table with itself materialises N·C² rows of strings and lists (90 M rows for 10 M
predictions with 10 configurations per device); aligning each configuration's columns on
one image index and comparing arrays pair by pair does the same N·C² comparisons on
integers, with memory for N·C values. bench/analysis.py measures the difference.

One *group* (e.g. one model on one device kind) is aligned at a time; within it each
*side* (configuration, device kind or variant) gets arrays indexed by image. An image a
side ran twice (a repeated run) keeps one of its rows; :func:`deltann.analysis.stability`
is the table about repeats.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import polars as pl

TOP_K = 5


@dataclass
class Side:
    """One side's values, aligned on the group's image index (``present`` marks the images
    it ran; the other arrays hold a filler there: −1, NaN)."""

    present: np.ndarray
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def align_parts(parts: list[tuple[object, pl.DataFrame]], columns: tuple[str, ...]) -> dict[str, Side]:
    """Each side's rows (``(side value, rows)`` pairs, rows with ``image_id`` and
    ``columns``: any of ``top1``, ``top5``, ``margin``, ``input_hash``, ``logits``, or any
    other numeric column, kept as float64 with NaN where absent) as arrays on one image
    index. ``logits`` is absent from a side whose logits are all null or not all the same
    length."""
    parts = [(k, p) for k, p in parts if p.height]
    if not parts:
        return {}
    if "input_hash" in columns:  # 64-bit hashes: equal inputs, equal codes, no string sort
        parts = [(k, p.with_columns(pl.col("input_hash").hash())) for k, p in parts]
    first = parts[0][1]["image_id"]
    if first.n_unique() == first.len() and all(p["image_id"].equals(first) for _, p in parts):
        # the common case: every side ran the same images in the same order
        n = first.len()
        parts = [(k, p.with_columns(pl.int_range(0, n, dtype=pl.Int64).alias("_i"))) for k, p in parts]
    else:
        images = pl.concat([p.select("image_id") for _, p in parts]).unique().sort("image_id").with_row_index("_i")
        n = images.height
        parts = [(k, p.join(images.with_columns(pl.col("_i").cast(pl.Int64)), on="image_id")) for k, p in parts]
    out: dict[str, Side] = {}
    for value, sub in parts:
        pos = sub["_i"].to_numpy()
        present = np.zeros(n, bool)
        present[pos] = True
        s = Side(present)
        if "top1" in columns:
            s.arrays["top1"] = _scatter(n, pos, sub["top1"].fill_null(-1).to_numpy(), -1, np.int64)
        if "input_hash" in columns:
            s.arrays["input_hash"] = _scatter(n, pos, sub["input_hash"].to_numpy(), 0, np.uint64)
        if "top5" in columns:
            top5 = sub["top5"]
            if top5.null_count() == 0 and (top5.list.len() == TOP_K).all():
                k = top5.list.to_array(TOP_K).to_numpy()  # one fixed-size copy
            else:
                k = sub.select(
                    [pl.col("top5").list.get(i, null_on_oob=True).fill_null(-1).alias(str(i)) for i in range(TOP_K)]
                ).to_numpy()
            # (k, n) int32, rows contiguous: jaccard() compares row against row
            s.arrays["top5"] = np.ascontiguousarray(_scatter(n, pos, k, -1, np.int32, width=TOP_K).T)
        if "margin" in columns:
            s.arrays["margin"] = _scatter(n, pos, sub["margin"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
                                          np.nan, np.float64)
        for name in columns:
            if name not in ("top1", "input_hash", "top5", "margin", "logits"):  # any numeric column, as float
                s.arrays[name] = _scatter(n, pos, sub[name].cast(pl.Float64).fill_null(np.nan).to_numpy(),
                                          np.nan, np.float64)
        if "logits" in columns:
            logits = sub["logits"]
            lengths = logits.list.len()
            if logits.null_count() == 0 and lengths.n_unique() == 1 and int(lengths[0]) > 0:
                width = int(lengths[0])
                flat = logits.explode().cast(pl.Float32).to_numpy().reshape(len(sub), width)
                s.arrays["logits"] = _scatter(n, pos, flat, np.nan, np.float32, width=width)
        out[str(value)] = s
    return out


def _scatter(n: int, pos: np.ndarray, values: np.ndarray, fill: float, dtype: type, width: int = 0) -> np.ndarray:
    if len(pos) == n and len(values) == n and (n == 0 or (pos[0] == 0 and pos[-1] == n - 1)) and np.all(
            pos[1:] > pos[:-1]):
        return np.asarray(values, dtype=dtype)  # every image, in order: nothing to scatter
    shape = (n, width) if width else (n,)
    arr = np.full(shape, fill, dtype=dtype)
    arr[pos] = values
    return arr


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per image |A ∩ B| / |A ∪ B| of two (k, n) arrays of top-k class indices (−1 = none).
    Images whose two top-k lists are equal position by position (most of them, in
    practice) are 1 after k comparisons; the rest take k² comparisons: the k indices of one
    prediction are distinct, so Σᵢⱼ [aᵢ = bⱼ] counts every common class once."""
    k, n = a.shape
    same = np.ones(n, bool)
    for i in range(k):
        same &= (a[i] == b[i]) & (a[i] >= 0)
    out = np.ones(n)
    rest = np.flatnonzero(~same)
    if rest.size:
        ar, br = a[:, rest], b[:, rest]
        inter = np.zeros(rest.size, np.int32)
        for i in range(k):
            for j in range(b.shape[0]):
                inter += (ar[i] == br[j]) & (ar[i] >= 0)
        union = (ar >= 0).sum(axis=0) + (br >= 0).sum(axis=0) - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            out[rest] = inter / union
    return out


def pair_rows(sides: dict[str, Side], metrics: tuple[str, ...]) -> Iterator[dict[str, object]]:
    """For every unordered pair of sides with images in common, the symmetric metrics over
    those images, yielded for (a, b) and (b, a)."""
    for a, b in combinations(sorted(sides), 2):
        sa, sb = sides[a], sides[b]
        both = sa.present & sb.present
        n = int(both.sum())
        if n == 0:
            continue
        sel: slice | np.ndarray = slice(None) if n == both.size else both  # no copy in the common case
        row: dict[str, object] = {"n_images": n}
        if "top1" in metrics:
            disagree = int(np.count_nonzero(sa.arrays["top1"][sel] != sb.arrays["top1"][sel]))
            row |= {"disagree": disagree, "disagree_pct": disagree / n * 100}
        if "top5" in metrics:
            row["top5_jaccard"] = float(jaccard(sa.arrays["top5"][:, sel], sb.arrays["top5"][:, sel]).mean())
        if "logits" in metrics:
            la, lb = sa.arrays.get("logits"), sb.arrays.get("logits")
            if la is not None and lb is not None and la.shape[1] == lb.shape[1]:
                per_image = np.abs(la[sel] - lb[sel]).max(axis=1)
                row |= {"max_abs_dlogit": float(per_image.max()), "mean_max_abs_dlogit": float(per_image.mean())}
            else:
                row |= {"max_abs_dlogit": None, "mean_max_abs_dlogit": None}
        if "input_hash" in metrics:
            row["same_inputs"] = bool((sa.arrays["input_hash"][sel] == sb.arrays["input_hash"][sel]).all())
        yield {"a": a, "b": b} | row
        yield {"a": b, "b": a} | row


#: Bytes the aligned arrays of one read of a group may take when it compares full logits
#: (the other columns are a few bytes an image): a group larger than this is read a range
#: of images at a time (:func:`image_ranges`), so a store larger than RAM is analysed in
#: bounded memory.
PARTITION_BYTES = 384 << 20
#: Bytes one image's logits take per side while read (Arrow list, flattened copy, array).
LOGIT_BYTES = 1000 * 4 * 3


def image_ranges(store: object, by: list[str], side: str | None,
                 sides: int | None = None) -> list[tuple[int, int] | None]:
    """``[lo, hi)`` ranges of ``image_index`` to read every group of ``by`` in, so that
    the logits of all its sides (the group's rows, without ``side``) fit
    :data:`PARTITION_BYTES` (``sides``: read that many sides instead); ``[None]`` when
    one read fits. Predictions parts hold consecutive images (a chunk of a shard), so
    Parquet skips the parts outside a range."""
    if sides is None:
        builds = store.scan("builds").filter(pl.col("status") == "ok")  # type: ignore[attr-defined]
        per = builds.group_by(by).agg(pl.col(side).n_unique().alias("n") if side else pl.len().alias("n"))
        sides = int(per.select(pl.col("n").max()).collect().item() or 1)
    most = max(1, sides)
    span = (store.scan("predictions", complete_only=False)  # type: ignore[attr-defined]
            .select(pl.col("image_index").min().alias("lo"), pl.col("image_index").max().alias("hi")).collect())
    lo, hi = span.row(0)
    if lo is None:
        return [None]
    step = max(256, PARTITION_BYTES // (most * LOGIT_BYTES))
    if hi - lo + 1 <= step:
        return [None]
    return [(a, min(a + step, hi + 1)) for a in range(lo, hi + 1, step)]


def combine(rows: list[dict[str, object]]) -> dict[str, object]:
    """One pair's metrics over several image ranges (each a :func:`pair_rows` row of it)."""
    if len(rows) == 1:
        return rows[0]
    n = sum(int(r["n_images"]) for r in rows)  # type: ignore[call-overload]
    out: dict[str, object] = {"a": rows[0]["a"], "b": rows[0]["b"], "n_images": n}
    if "disagree" in rows[0]:
        d = sum(int(r["disagree"]) for r in rows)  # type: ignore[call-overload]
        out |= {"disagree": d, "disagree_pct": d / n * 100}
    if "top5_jaccard" in rows[0]:
        out["top5_jaccard"] = sum(float(r["top5_jaccard"]) * int(r["n_images"]) for r in rows) / n  # type: ignore
    if "max_abs_dlogit" in rows[0]:
        if any(r["max_abs_dlogit"] is None for r in rows):
            out |= {"max_abs_dlogit": None, "mean_max_abs_dlogit": None}
        else:
            out |= {"max_abs_dlogit": max(float(r["max_abs_dlogit"]) for r in rows),  # type: ignore[arg-type]
                    "mean_max_abs_dlogit": sum(float(r["mean_max_abs_dlogit"]) * int(r["n_images"])  # type: ignore
                                               for r in rows) / n}
    if "same_inputs" in rows[0]:
        out["same_inputs"] = all(bool(r["same_inputs"]) for r in rows)
    return out


def scan_groups(store: object, by: list[str], columns: list[str | pl.Expr], filter_expr: pl.Expr | None = None,
                side: str | None = None) -> Iterator[tuple[tuple[str, ...], pl.DataFrame | list]]:
    """One group of ``predictions`` at a time, read lazily: the group keys and their
    complete units come from the small ``builds`` table (read once), and each group is a
    filtered scan (``model``/``device`` are hive partitions; ``config`` and ``unit_key``
    are constant per file, so Parquet skips the rest). Peak memory is one group's columns,
    not the table's. With ``side``, each group comes as ``[(side value, rows), …]``, one
    scan per side (no partitioning of a big frame)."""
    cols = [*by, side] if side else list(by)
    # ok units only: one that failed midway (a shard) keeps the rows it wrote, unused
    units = (store.scan("builds").filter(pl.col("status") == "ok")  # type: ignore[attr-defined]
             .select(*cols, "unit_key").collect())
    for key in units.select(by).unique().sort(by).iter_rows():
        where = dict(zip(by, key, strict=True))
        mine = units.filter(pl.all_horizontal([pl.col(c) == v for c, v in where.items()]))
        if side is None:
            frame = _scan(store, where, mine["unit_key"], columns, filter_expr)
            if frame.height:
                yield tuple(str(v) for v in key), frame
        else:
            parts = [(value, _scan(store, where | {side: value}, g["unit_key"], columns, filter_expr))
                     for (value,), g in sorted(mine.partition_by(side, as_dict=True).items(), key=lambda kv: str(kv[0]))]
            if any(p.height for _, p in parts):
                yield tuple(str(v) for v in key), parts


def _scan(store: object, where: dict[str, object], unit_keys: pl.Series, columns: list[str | pl.Expr],
          filter_expr: pl.Expr | None) -> pl.DataFrame:
    """Rows of the given complete units only: the same rows ``Store.scan`` keeps with its
    semi-join on ``builds``, which would otherwise be redone for every one of these scans."""
    cond = pl.all_horizontal([pl.col(c) == v for c, v in where.items()]) & pl.col("unit_key").is_in(unit_keys.implode())
    if filter_expr is not None:
        cond = cond & filter_expr
    frame = store.scan("predictions", complete_only=False)  # type: ignore[attr-defined]
    return frame.filter(cond).select(columns).collect()
