"""Analysis: Polars lazy queries over the results store. Every table the report shows is
one function here returning a DataFrame; nothing here imports a framework."""

from deltann.analysis.failures import failures
from deltann.analysis.labels import dissimilarity_matrix, pairwise_agreement
from deltann.analysis.timing import SPEEDUP_CONVENTION, SETTING_ORDER, latency_table, speedup_table

__all__ = [
    "SETTING_ORDER",
    "SPEEDUP_CONVENTION",
    "dissimilarity_matrix",
    "failures",
    "latency_table",
    "pairwise_agreement",
    "speedup_table",
]
