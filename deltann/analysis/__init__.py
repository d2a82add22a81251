"""Analysis: Polars lazy queries over the results store. Every table the report shows is
one function here returning a DataFrame; nothing here imports a framework."""

from deltann.analysis.failures import failures
from deltann.analysis.labels import (
    MARGIN_EDGES,
    accuracy,
    device_pairs,
    dissimilarity_matrix,
    framework_pairs,
    heatmap_matrix,
    label_stability,
    margin_flips,
    pairwise_agreement,
    top1_disagreement,
)
from deltann.analysis.stability import stability
from deltann.analysis.timing import (
    SETTING_ORDER,
    SPEEDUP_CONVENTION,
    latency_matrix,
    latency_table,
    latest_samples,
    noise_floor,
    quiet_warnings,
    session_latency,
    speedup_stats,
    speedup_table,
    test_note,
    timing_stability,
)

__all__ = [
    "MARGIN_EDGES",
    "SETTING_ORDER",
    "SPEEDUP_CONVENTION",
    "accuracy",
    "device_pairs",
    "dissimilarity_matrix",
    "failures",
    "framework_pairs",
    "heatmap_matrix",
    "label_stability",
    "latency_matrix",
    "latency_table",
    "latest_samples",
    "margin_flips",
    "noise_floor",
    "pairwise_agreement",
    "quiet_warnings",
    "session_latency",
    "speedup_stats",
    "speedup_table",
    "test_note",
    "stability",
    "timing_stability",
    "top1_disagreement",
]
