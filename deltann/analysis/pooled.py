"""Latency pooled over boards and labs: asked for with ``deltann report --pool`` only.

By default a configuration's latency is its latest timing session's (one board), and a
folder with several labs shows each lab's beside the others (``Store(sites=True)``): two
boards' or two labs' samples are never mixed into one median unasked. Pooled, the median
and quartiles are over every sample of every session that timed the configuration, and
the table says how many boards, labs and sessions that was."""

from __future__ import annotations

import polars as pl

from deltann.analysis.timing import CONFIG_KEYS, _timings, sample_stats
from deltann.store import Store

#: The sentence the report shows under a pooled latency table.
POOL_NOTE = ("Pooled (--pool): each configuration's median and quartiles are over every sample of every timing "
             "session on every board and in every lab that timed it (board and session columns count them); "
             "time changes are still computed only within one session.")


def pooled_latency(store: Store) -> pl.DataFrame:
    """:func:`~deltann.analysis.timing.latency_table`'s columns, over all sessions."""
    t = _timings(store).with_columns(pl.coalesce(pl.col("lab"), pl.col("hostname"), pl.lit("?")).alias("_lab"))
    return (
        t.explode("samples_ns")
        .group_by(*CONFIG_KEYS)
        .agg(
            *sample_stats(),
            pl.col("board").n_unique().alias("_boards"),
            pl.col("_lab").n_unique().alias("_labs"),
            pl.col("session").n_unique().alias("_sessions"),
        )
        .with_columns(
            (pl.col("q3_ms") - pl.col("q1_ms")).alias("iqr_ms"),
            pl.format("({} boards)", pl.col("_boards")).alias("board"),
            pl.format("({} sessions)", pl.col("_sessions")).alias("session"),
        )
        .select(*CONFIG_KEYS, "median_ms", "q1_ms", "q3_ms", "iqr_ms", "samples", "images", "blocks", "board",
                "session")
        .sort("model", "device", "variant", "config")
        .collect()
    )


def pooled_samples(store: Store) -> pl.LazyFrame:
    """Every timings row (the samples :func:`pooled_latency` pools)."""
    return _timings(store)
