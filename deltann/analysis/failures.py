"""Units that did not complete: the stage they failed in and why."""

from __future__ import annotations

import polars as pl

from deltann.store import Store


def failures(store: Store) -> pl.DataFrame:
    return (
        store.scan("builds")
        .filter(pl.col("status") != "ok")
        .select("model", "device", "config", "stage", "outcome", "error_type", "message")
        .sort("model", "device", "config")
        .collect()
    )
