"""Multi-run stability: the same configuration run more than once, labels and latency."""

from __future__ import annotations

import polars as pl

from deltann.analysis.labels import label_stability
from deltann.analysis.timing import timing_stability
from deltann.store import Store


def stability(store: Store, run_by: tuple[str, ...] = ("study", "board")) -> pl.DataFrame:
    """Per configuration: ``runs``, ``images``, ``flips``/``flip_pct`` (top-1 not the same in
    every run) and the latency coefficients of variation ``cv_samples_pct`` (raw samples)
    and ``cv_runs_pct`` (per-run medians). A run is one value of ``run_by``."""
    keys = ["model", "device", "config"]
    labels = label_stability(store, run_by)
    timing = timing_stability(store, run_by).rename({"runs": "timing_runs"})
    return labels.join(timing, on=keys, how="full", coalesce=True).sort(keys)
