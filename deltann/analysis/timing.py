"""Latency per configuration and relative time change between configurations, in one
sign convention everywhere."""

from __future__ import annotations

import numpy as np
import polars as pl

from deltann.analysis import aligned, stats
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


def speedup_stats(
    store: Store,
    latency: pl.DataFrame | None = None,
    *,
    alpha: float = stats.ALPHA,
    min_factor: float = stats.MIN_FACTOR,
    n_resamples: int = 2000,
    seed: int = 0,
) -> pl.DataFrame:
    """:func:`speedup_table` with the statistics that decide whether a change is real:

    ``ratio`` = t_A / t_B (medians of the timing samples) and its bootstrap 95 % CI, also as
    ``ci_low_pct``/``ci_high_pct`` in the speedup convention; ``n_paired`` images with a
    latency on both sides (``predictions.latency_ns``, paired by ``image_id``), the paired
    Wilcoxon ``p_value``, ``p_holm`` (Holm across every row of this table), the effect size
    ``effect_rb`` (matched-pairs rank-biserial, positive when B is faster) and
    ``significant``: ``p_holm ≤ alpha`` and a change of at least ``min_factor`` either way."""
    latency = latency if latency is not None else latency_table(store)
    table = speedup_table(latency)
    extra = {"ratio": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "ci_low_pct": pl.Float64,
             "ci_high_pct": pl.Float64, "n_paired": pl.Int64, "p_value": pl.Float64, "p_holm": pl.Float64,
             "effect_rb": pl.Float64, "significant": pl.Boolean}
    if table.is_empty():
        return table.with_columns([pl.lit(None, dtype=t).alias(c) for c, t in extra.items()])
    wanted = sorted(set(table["A"].to_list()) | set(table["B"].to_list()))
    samples = {
        (m, d, c): np.asarray(s, float) / 1e6
        for m, d, c, s in store.scan("timings")
        .select("model", "device", "config", "samples_ns")
        .filter(pl.col("config").is_in(wanted))
        .group_by("model", "device", "config")
        .agg(pl.col("samples_ns").explode())
        .collect()
        .iter_rows()
    }
    found: dict[tuple[str, str, str, str], dict[str, object]] = {}
    pairs = table.select("model", "device", "A", "B")
    empty = np.zeros(0)
    # one (model, device) group's per-image latencies at a time
    for (model, device), parts in aligned.scan_groups(store, ["model", "device"], ["image_id", "latency_ns"],
                                                      pl.col("config").is_in(wanted), side="config"):
        sides = aligned.align_parts(parts, ("latency_ns",))
        for a_cfg, b_cfg in pairs.filter((pl.col("model") == model) & (pl.col("device") == device)).select(
                "A", "B").iter_rows():
            la, lb = (sides[a_cfg].arrays["latency_ns"], sides[b_cfg].arrays["latency_ns"]) if (
                a_cfg in sides and b_cfg in sides) else (empty, empty)
            both = np.isfinite(la) & np.isfinite(lb)
            p_value, effect = stats.paired_test(la[both], lb[both])
            found[(model, device, a_cfg, b_cfg)] = {"n_paired": int(both.sum()), "p_value": p_value,
                                                    "effect_rb": effect}
    rows: list[dict[str, object]] = []
    for model, device, a_cfg, b_cfg in pairs.iter_rows():
        sa, sb = samples.get((model, device, a_cfg), empty), samples.get((model, device, b_cfg), empty)
        low, high = stats.bootstrap_ratio_ci(sa, sb, n_resamples=n_resamples, seed=seed)
        test = found.get((model, device, a_cfg, b_cfg), {"n_paired": 0, "p_value": float("nan"),
                                                         "effect_rb": float("nan")})
        rows.append({"ratio": float(np.median(sa) / np.median(sb)) if sa.size and sb.size else float("nan"),
                     "ci_low": low, "ci_high": high, **test})
    out = pl.concat(
        [table, pl.DataFrame(rows, schema={k: extra[k] for k in rows[0]})],  # rows in the table's order
        how="horizontal",
    )
    p_holm = stats.holm(out["p_value"].to_numpy())
    flags = [stats.significant(p, r, alpha=alpha, min_factor=min_factor) for p, r in zip(p_holm, out["ratio"], strict=True)]
    return out.with_columns(
        ((pl.col("ci_low") - 1) * 100).alias("ci_low_pct"),
        ((pl.col("ci_high") - 1) * 100).alias("ci_high_pct"),
        pl.Series("p_holm", p_holm, dtype=pl.Float64),
        pl.Series("significant", flags, dtype=pl.Boolean),
    ).select(*table.columns, *extra)


def noise_floor(store: Store) -> pl.DataFrame:
    """The A/A noise floor: each configuration's raw timing samples split into even and odd
    positions (interleaved, so slow drift lands on both halves) and compared with itself,
    ``aa_speedup_pct = (median_even / median_odd − 1) × 100``. ``noise_pct`` is its size:
    a time change between two configurations smaller than both sides' floors is noise,
    whatever a test says."""
    half = pl.col("samples_ns").list
    return (
        store.scan("timings")
        .select("model", "device", "config", "samples_ns")
        .group_by("model", "device", "config")
        .agg(pl.col("samples_ns").explode())
        .select(
            "model", "device", "config",
            half.len().alias("samples"),
            ((half.gather_every(2).list.median() / half.gather_every(2, offset=1).list.median() - 1) * 100)
            .alias("aa_speedup_pct"),
        )
        .with_columns(pl.col("aa_speedup_pct").abs().alias("noise_pct"))
        .sort("model", "device", "config")
        .collect()
    )


def latency_matrix(latency: pl.DataFrame, model: str, rows: str = "config", columns: str = "device") -> pl.DataFrame:
    """A heatmap table of median latency (ms) for one model: ``rows`` × ``columns``
    (configuration × device kind by default; ``rows="variant", columns="setting"`` on one
    device gives the framework × setting view)."""
    sub = latency.filter(pl.col("model") == model)
    return (
        sub.pivot(on=columns, index=rows, values="median_ms", aggregate_function="median", sort_columns=True)
        .sort(rows)
    )


def timing_stability(store: Store, run_by: tuple[str, ...] = ("study", "board")) -> pl.DataFrame:
    """Latency half of the multi-run stability table: per configuration, ``runs`` (distinct
    ``run_by`` values), ``cv_samples_pct`` (coefficient of variation of all raw samples,
    ddof 1) and ``cv_runs_pct`` (of the per-run medians; null with a single run)."""
    keys = ["model", "device", "config"]
    t = store.scan("timings").select(*keys, *run_by, "samples_ns").explode("samples_ns")
    per_run = t.group_by(*keys, *run_by).agg(pl.col("samples_ns").median().alias("run_median"))
    pooled = t.group_by(*keys).agg(
        (pl.col("samples_ns").std() / pl.col("samples_ns").mean() * 100).alias("cv_samples_pct")
    )
    across = per_run.group_by(*keys).agg(
        pl.len().alias("runs"),
        (pl.col("run_median").std() / pl.col("run_median").mean() * 100).alias("cv_runs_pct"),
    )
    return across.join(pooled, on=keys).select(*keys, "runs", "cv_samples_pct", "cv_runs_pct").sort(keys).collect()
