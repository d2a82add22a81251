"""Latency per configuration and relative time change between configurations, in one
sign convention everywhere."""

from __future__ import annotations

import polars as pl

from deltann.store import Store

SPEEDUP_CONVENTION = "speedup_pct(A→B) = (t_A / t_B − 1) × 100 — positive means B is faster (median latencies)."

#: Order of settings within a variant: a pair (A, B) always has A earlier than B.
SETTING_ORDER = ["native", "basic", "default", "extended"]


def latency_table(store: Store) -> pl.DataFrame:
    """Median, quartiles and IQR (ms) of each configuration's raw timing samples."""
    t = store.scan("timings").explode("samples_ns").with_columns((pl.col("samples_ns") / 1e6).alias("ms"))
    return (
        t.group_by("model", "device", "variant", "runtime", "setting", "config")
        .agg(
            pl.col("ms").median().alias("median_ms"),
            pl.col("ms").quantile(0.25, "linear").alias("q1_ms"),
            pl.col("ms").quantile(0.75, "linear").alias("q3_ms"),
            pl.len().alias("samples"),
        )
        .with_columns((pl.col("q3_ms") - pl.col("q1_ms")).alias("iqr_ms"))
        .sort("model", "device", "variant", "config")
        .collect()
    )


def _rank(setting: pl.Expr) -> pl.Expr:
    order = {s: i for i, s in enumerate(SETTING_ORDER)}
    return setting.replace_strict(order, default=len(order), return_dtype=pl.Int32)


def speedup_table(latency: pl.DataFrame) -> pl.DataFrame:
    """For each model, device and variant, every pair of its configurations (A earlier
    than B in :data:`SETTING_ORDER`): t_A, t_B and ``speedup_pct`` (see
    :data:`SPEEDUP_CONVENTION`)."""
    base = latency.select("model", "device", "variant", "setting", "config", "median_ms").with_columns(
        _rank(pl.col("setting")).alias("rank")
    )
    other = base.rename({"setting": "setting_b", "config": "config_b", "median_ms": "median_ms_b", "rank": "rank_b"})
    pairs = base.join(other, on=["model", "device", "variant"]).filter(
        (pl.col("rank") < pl.col("rank_b")) | ((pl.col("rank") == pl.col("rank_b")) & (pl.col("config") < pl.col("config_b")))
    )
    return (
        pairs.select(
            "model",
            "device",
            "variant",
            pl.col("config").alias("A"),
            pl.col("config_b").alias("B"),
            pl.col("median_ms").alias("t_A_ms"),
            pl.col("median_ms_b").alias("t_B_ms"),
            ((pl.col("median_ms") / pl.col("median_ms_b") - 1) * 100).alias("speedup_pct"),
        )
        .sort("model", "device", "variant", "A", "B")
    )
