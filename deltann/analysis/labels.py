"""Label discrepancies between configurations: top-1 disagreement, top-5 Jaccard, logit
divergence, and whether both sides saw the same input tensor."""

from __future__ import annotations

import polars as pl

from deltann.store import Store

KEYS = ["model", "device", "image_id"]


def pairwise_agreement(store: Store) -> pl.DataFrame:
    """One row per ordered pair of configurations (A, B) of the same model on the same
    device kind, over the images both ran: ``n_images``, ``disagree`` (top-1 differs),
    ``disagree_pct``, ``top5_jaccard`` (mean |A∩B|/|A∪B| of the top-5 sets),
    ``max_abs_dlogit`` (max over images and classes of |logit_A − logit_B|) and
    ``same_inputs`` (every image's input hash equal on both sides)."""
    cols = [*KEYS, "config", "input_hash", "top1", "top5", "logits"]
    a = store.scan("predictions").select(cols)
    b = a.rename({c: f"{c}_b" for c in cols if c not in KEYS})
    joined = a.join(b, on=KEYS).filter(pl.col("config") != pl.col("config_b"))
    per_image = joined.select(
        pl.col("model"),
        pl.col("device"),
        pl.col("config").alias("config_a"),
        pl.col("config_b"),
        (pl.col("top1") != pl.col("top1_b")).alias("differ"),
        (
            pl.col("top5").list.set_intersection("top5_b").list.len()
            / pl.col("top5").list.set_union("top5_b").list.len()
        ).alias("jaccard"),
        (pl.col("logits") - pl.col("logits_b")).list.eval(pl.element().abs()).list.max().alias("dlogit"),
        (pl.col("input_hash") == pl.col("input_hash_b")).alias("same_input"),
    )
    return (
        per_image.group_by("model", "device", "config_a", "config_b")
        .agg(
            pl.len().alias("n_images"),
            pl.col("differ").sum().alias("disagree"),
            (pl.col("differ").mean() * 100).alias("disagree_pct"),
            pl.col("jaccard").mean().alias("top5_jaccard"),
            pl.col("dlogit").max().alias("max_abs_dlogit"),
            pl.col("same_input").all().alias("same_inputs"),
        )
        .sort("model", "device", "config_a", "config_b")
        .collect()
    )


def dissimilarity_matrix(pairs: pl.DataFrame, model: str, device: str, value: str = "disagree_pct") -> pl.DataFrame:
    """The seed's Fig. 1: configurations × configurations, ``value`` in each cell
    (top-1 disagreement % by default), zero on the diagonal."""
    sub = pairs.filter((pl.col("model") == model) & (pl.col("device") == device))
    configs = sorted(set(sub["config_a"].to_list()) | set(sub["config_b"].to_list()))
    diagonal = pl.DataFrame(
        {"config_a": configs, "config_b": configs, value: [0.0] * len(configs)},
        schema={"config_a": pl.String, "config_b": pl.String, value: sub.schema.get(value, pl.Float64)},
    )
    cells = pl.concat([sub.select("config_a", "config_b", value), diagonal], how="vertical_relaxed")
    matrix = cells.pivot(on="config_b", index="config_a", values=value, sort_columns=True).sort("config_a")
    return matrix.select("config_a", *[c for c in configs if c in matrix.columns])
