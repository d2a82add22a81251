"""Latency per configuration and relative time change between configurations, in one
sign convention everywhere.

Times come from timing sessions (deltann.fleet.session): the configurations of one model,
timed together on one board in alternating blocks. A time change is only ever computed
between two configurations of the same session — same board, same blocks, the machine's
drift shared — and the table says which board and session. A configuration timed in
several sessions (a study re-timed after it grew) is shown from its latest one. Stores
written before sessions existed (no ``session`` column) count each board's rows as one
session.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from deltann.analysis import stats
from deltann.store import Store

SPEEDUP_CONVENTION = ("speedup_pct(A→B) = (t_A / t_B − 1) × 100 — positive means B is faster (t_A / t_B: the "
                      "median over the session's blocks of A against B timed in the same block).")

#: Order of settings within a variant: a pair (A, B) always has A earlier than B.
SETTING_ORDER = ["native", "unscheduled", "basic", "default", "extended", "tuned"]

CONFIG_KEYS = ["model", "device", "variant", "runtime", "setting", "config"]


def _timings(store: Store) -> pl.LazyFrame:
    """The timings table with a session for every row (``legacy-<board>`` for rows written
    before sessions existed)."""
    t = store.scan("timings")
    return t.with_columns(pl.coalesce(pl.col("session"), pl.lit("legacy-") + pl.col("board")).alias("session"))


def _finished(store: Store) -> pl.LazyFrame:
    if not store.files("sessions"):
        return pl.LazyFrame(schema={"session": pl.String, "finished_at": pl.Datetime("us", "UTC")})
    return (store.scan("sessions", complete_only=False).select("session", "finished_at")
            .group_by("session").agg(pl.col("finished_at").max()))


def sample_stats() -> list[pl.Expr]:
    """Statistics of exploded raw samples: median and quartiles (ms), samples, images, blocks."""
    return [
        (pl.col("samples_ns").median() / 1e6).alias("median_ms"),
        (pl.col("samples_ns").quantile(0.25, "linear") / 1e6).alias("q1_ms"),
        (pl.col("samples_ns").quantile(0.75, "linear") / 1e6).alias("q3_ms"),
        pl.len().alias("samples"),
        pl.col("image_id").n_unique().alias("images"),
        pl.col("blocks").max().fill_null(1).alias("blocks"),
    ]


def session_latency(store: Store) -> pl.DataFrame:
    """Median, quartiles and IQR (ms) of each configuration's raw samples in each session,
    with the board it was timed on, how many images and blocks, and when the session ended."""
    t = _timings(store)
    per = (
        t.explode("samples_ns")
        .group_by(*CONFIG_KEYS, "session", "board")
        .agg(*sample_stats())
        .with_columns((pl.col("q3_ms") - pl.col("q1_ms")).alias("iqr_ms"))
        .join(_finished(store), on="session", how="left")
    )
    return per.sort(*CONFIG_KEYS, "finished_at", nulls_last=False).collect()


def latency_table(store: Store, per_session: pl.DataFrame | None = None) -> pl.DataFrame:
    """Each configuration from its latest timing session: median, quartiles, IQR (ms),
    samples, images, blocks, the board it was timed on and the session."""
    per = per_session if per_session is not None else session_latency(store)
    latest = per.group_by(*CONFIG_KEYS, maintain_order=True).agg(pl.all().last())
    return latest.select(
        *CONFIG_KEYS, "median_ms", "q1_ms", "q3_ms", "iqr_ms", "samples", "images", "blocks", "board", "session",
    ).sort("model", "device", "variant", "config")


def latest_samples(store: Store, latency: pl.DataFrame) -> pl.LazyFrame:
    """The timings rows of each configuration's latest session (the one
    :func:`latency_table` shows)."""
    return _timings(store).join(latency.lazy().select("model", "device", "config", "session"),
                                on=["model", "device", "config", "session"], how="semi")


def quiet_warnings(store: Store) -> list[str]:
    """One line for each timing session that ran while other processes kept more than half
    of the board's cores busy (before or after its blocks), or that failed."""
    if not store.files("sessions"):
        return []
    frame = store.scan("sessions", complete_only=False).collect()
    out = []
    for r in frame.sort("finished_at").iter_rows(named=True):
        where = f"timing session {r['session'][:12]} of {r['model']} on {r['device']} (board {r['board'][:12]})"
        if r["status"] != "ok":
            out.append(f"{where} failed: {r['outcome']}: {r['error_type']}: {r['message'][:200]}")
            continue
        busy = max(v for v in (r["others_before"], r["others_after"], 0.0) if v is not None)
        if r["cores"] and busy > r["cores"] / 2:
            out.append(f"{where} ran while other processes kept {busy:.1f} of its {r['cores']} cores busy; "
                       "its times may be off (time again on a quiet machine)")
    return out


def _rank(setting: pl.Expr) -> pl.Expr:
    order = {s: i for i, s in enumerate(SETTING_ORDER)}
    return setting.replace_strict(order, default=len(order), return_dtype=pl.Int32)


def speedup_table(per_session: pl.DataFrame) -> pl.DataFrame:
    """For each model, device and variant, every pair of its configurations timed in one
    session (A earlier than B in :data:`SETTING_ORDER`): t_A, t_B and ``speedup_pct`` from
    their medians (:func:`speedup_stats` replaces it with the estimate paired by block that
    :data:`SPEEDUP_CONVENTION` names), with the board and session they were timed in. A pair
    timed in several sessions is shown from the latest."""
    base = per_session.select("model", "device", "variant", "setting", "config", "session", "board", "finished_at",
                              "median_ms").with_columns(_rank(pl.col("setting")).alias("rank"))
    other = base.select("model", "device", "variant", "session", pl.col("setting").alias("setting_b"),
                        pl.col("config").alias("config_b"), pl.col("median_ms").alias("median_ms_b"),
                        pl.col("rank").alias("rank_b"))
    pairs = base.join(other, on=["model", "device", "variant", "session"]).filter(
        (pl.col("rank") < pl.col("rank_b")) | ((pl.col("rank") == pl.col("rank_b")) & (pl.col("config") < pl.col("config_b")))
    )
    latest = (pairs.sort("finished_at", nulls_last=False)
              .group_by("model", "device", "variant", "config", "config_b", maintain_order=True).agg(pl.all().last()))
    return (
        latest.select(
            "model", "device", "variant",
            pl.col("config").alias("A"), pl.col("config_b").alias("B"),
            pl.col("median_ms").alias("t_A_ms"), pl.col("median_ms_b").alias("t_B_ms"),
            ((pl.col("median_ms") / pl.col("median_ms_b") - 1) * 100).alias("speedup_pct"),
            "board", "session",
        )
        .sort("model", "device", "variant", "A", "B")
    )


def cells(store: Store, sessions: list[str]) -> dict[tuple[str, str], tuple[list[str], np.ndarray]]:
    """(session, config) -> (image ids, cell matrix): ``cells[i, b]`` is the median of image
    i's samples in block b (NaN where it has none). The unit every test pairs."""
    if not sessions:
        return {}
    frame = (_timings(store).filter(pl.col("session").is_in(sessions))
             .select("session", "config", "image_id", "samples_ns", "sample_block").collect())
    out: dict[tuple[str, str], tuple[list[str], np.ndarray]] = {}
    for (session, config), sub in frame.group_by(["session", "config"], maintain_order=True):
        ids: list[str] = []
        rows: list[np.ndarray] = []
        for image_id, samples, blocks in sub.select("image_id", "samples_ns", "sample_block").iter_rows():
            s = np.asarray(samples, float)
            b = np.asarray(blocks if blocks is not None else range(s.size), int)  # legacy: a sample a block
            row = np.full(int(b.max()) + 1 if b.size else 0, np.nan)
            for block in np.unique(b):
                row[block] = np.median(s[b == block])
            ids.append(str(image_id))
            rows.append(row)
        width = max((r.size for r in rows), default=0)
        matrix = np.full((len(rows), width), np.nan)
        for i, r in enumerate(rows):
            matrix[i, : r.size] = r
        out[(str(session), str(config))] = (ids, matrix)
    return out


def paired_cells(a: tuple[list[str], np.ndarray], b: tuple[list[str], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two sides' cell matrices on their common images and blocks."""
    (ids_a, ma), (ids_b, mb) = a, b
    common = [i for i in ids_a if i in set(ids_b)]
    ia, ib = [ids_a.index(i) for i in common], [ids_b.index(i) for i in common]
    width = min(ma.shape[1], mb.shape[1]) if ma.size and mb.size else 0
    return ma[ia, :width], mb[ib, :width]


def speedup_stats(
    store: Store,
    per_session: pl.DataFrame | None = None,
    *,
    alpha: float = stats.ALPHA,
    min_factor: float = stats.MIN_FACTOR,
    n_resamples: int = 2000,
    seed: int = 0,
) -> pl.DataFrame:
    """:func:`speedup_table` with the statistics that decide whether a change is real
    (see :mod:`deltann.analysis.stats`, reasons 5 and 6): ``ratio`` = t_A / t_B paired by
    block (:func:`~deltann.analysis.stats.paired_ratio`; ``speedup_pct`` follows it, so
    it may differ from the ratio of the two medians shown beside it) and its 95 % CI from
    a bootstrap over images and blocks (``ci_*_pct`` in the speedup convention);
    ``n_paired`` cells (image × block) timed on both sides;
    ``p_value`` of :func:`~deltann.analysis.stats.block_test` (a t-test over the blocks'
    median log-ratios; over images with one block) and ``p_holm`` (Holm across every
    row); the effect size ``effect_rb`` (matched-pairs rank-biserial over the cells,
    positive when B is faster); ``mdc_pct``, the smallest change this pair could show;
    ``significant``: ``p_holm ≤ alpha`` and a change of at least ``min_factor`` either way."""
    per = per_session if per_session is not None else session_latency(store)
    table = speedup_table(per)
    extra = {"ratio": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "ci_low_pct": pl.Float64,
             "ci_high_pct": pl.Float64, "n_paired": pl.Int64, "p_value": pl.Float64, "p_holm": pl.Float64,
             "effect_rb": pl.Float64, "mdc_pct": pl.Float64, "significant": pl.Boolean}
    if table.is_empty():
        return table.with_columns([pl.lit(None, dtype=t).alias(c) for c, t in extra.items()])
    found = cells(store, table["session"].unique().to_list())
    rows: list[dict[str, Any]] = []
    diffs: list[tuple[np.ndarray, str]] = []
    for a_cfg, b_cfg, session, t_a, t_b in table.select("A", "B", "session", "t_A_ms", "t_B_ms").iter_rows():
        ta, tb = paired_cells(found[(session, a_cfg)], found[(session, b_cfg)])
        valid = np.isfinite(ta) & np.isfinite(tb) & (ta > 0) & (tb > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            la, lb = np.where(valid, np.log(ta), np.nan), np.where(valid, np.log(tb), np.nan)
        p_value, unit, d = stats.block_test(la, lb)
        effect = stats.rank_biserial(la[valid], lb[valid]) if valid.any() else math.nan
        low, high = stats.cell_bootstrap_ratio_ci(ta, tb, n_resamples=n_resamples, seed=seed)
        diffs.append((d, unit))
        rows.append({"ratio": stats.paired_ratio(ta, tb) if valid.any() else (t_a / t_b if t_b else math.nan),
                     "ci_low": low, "ci_high": high,
                     "n_paired": int(valid.sum()), "p_value": p_value, "effect_rb": effect})
    mdc = [stats.min_detectable_change(d, tests=len(rows), alpha=alpha, min_factor=min_factor, unit=unit)
           for d, unit in diffs]
    out = pl.concat([table, pl.DataFrame(rows, schema={k: extra[k] for k in rows[0]})], how="horizontal")
    p_holm = stats.holm(out["p_value"].to_numpy())
    flags = [stats.significant(p, r, alpha=alpha, min_factor=min_factor) for p, r in zip(p_holm, out["ratio"], strict=True)]
    return out.with_columns(
        ((pl.col("ratio") - 1) * 100).alias("speedup_pct"),
        ((pl.col("ci_low") - 1) * 100).alias("ci_low_pct"),
        ((pl.col("ci_high") - 1) * 100).alias("ci_high_pct"),
        pl.Series("p_holm", p_holm, dtype=pl.Float64),
        pl.Series("mdc_pct", mdc, dtype=pl.Float64),
        pl.Series("significant", flags, dtype=pl.Boolean),
    ).select(*table.columns, *extra)


def test_note(speedups: pl.DataFrame, *, alpha: float = stats.ALPHA, min_factor: float = stats.MIN_FACTOR) -> str:
    """The sentence under the time-change table: what the test is, and what this study's
    sample can detect."""
    n = speedups["n_paired"].drop_nulls()
    mdc = speedups["mdc_pct"].drop_nulls().filter(speedups["mdc_pct"].drop_nulls().is_finite()) \
        if "mdc_pct" in speedups.columns else pl.Series([], dtype=pl.Float64)
    size = f"n = {int(n.min())}–{int(n.max())} paired cells" if n.len() else "no paired cells"
    seen = (f"the smallest change detectable with 80 % power at this study's noise is {mdc.min():.1f}–"
            f"{mdc.max():.1f} % (mdc_pct)" if mdc.len() else "no pair has enough cells to detect any change "
            "(add images or blocks)")
    return (f"Test: one-sample t-test of log(t_A / t_B) over the blocks of an interleaved session (A and B "
            f"timed seconds apart in each; a block's value is the median over its images; a session of one "
            f"block: paired Wilcoxon signed-rank over its images), {size}; p_holm: Holm-corrected across this "
            f"table; ratio (and speedup_pct): the median of the blocks' values, so a machine state that moved "
            f"between blocks does not move it; ratio CI: bootstrap over images and blocks together. "
            f"significant: p_holm ≤ {alpha} and a "
            f"change of at least ×{min_factor} either way; {seen}. Pairs are only formed within one session "
            "(board, session columns).")


def noise_floor(store: Store, per_session: pl.DataFrame | None = None) -> pl.DataFrame:
    """The A/A noise floor: each configuration (in its latest session) against itself, its
    even blocks against its odd blocks (cells paired by image and neighbouring blocks), in
    the speedup convention: ``aa_speedup_pct = (t_even / t_odd − 1) × 100``, the ratio
    paired as time changes are (:func:`~deltann.analysis.stats.paired_ratio`: the median
    over block pairs of each pair's median over images), and ``noise_pct`` its size. With
    one block, alternate samples of each image are compared
    instead. ``drift``: the same test as :func:`speedup_stats` says the configuration's
    time moved between blocks (``aa_p_value``, Holm-corrected, and ×1.05) — the machine
    changed state during the session. Time changes pair A and B within each block, so such
    drift cancels out of them, but it bounds how far an absolute time can be trusted; a
    change between two configurations smaller than both floors is noise."""
    per = per_session if per_session is not None else session_latency(store)
    latest = latency_table(store, per).select("model", "device", "config", "session")
    if latest.is_empty():
        return pl.DataFrame(schema={"model": pl.String, "device": pl.String, "config": pl.String,
                                    "samples": pl.Int64, "aa_speedup_pct": pl.Float64, "noise_pct": pl.Float64,
                                    "aa_p_value": pl.Float64, "drift": pl.Boolean})
    found = cells(store, sorted(set(latest["session"].to_list())))
    rows = []
    for model, device, config, session in latest.iter_rows():
        even, odd = _halves(store, session, config, found[(session, config)][1])
        valid = np.isfinite(even) & np.isfinite(odd) & (even > 0) & (odd > 0)
        aa = (stats.paired_ratio(even, odd) - 1) * 100 if valid.any() else math.nan
        p, _ = stats.paired_test(np.log(even[valid]), np.log(odd[valid]))
        rows.append({"model": model, "device": device, "config": config, "samples": int(valid.sum() * 2),
                     "aa_speedup_pct": aa, "noise_pct": abs(aa), "aa_p_value": p})
    out = pl.DataFrame(rows)
    p_holm = stats.holm(out["aa_p_value"].to_numpy())
    flags = [stats.significant(p, 1 + a / 100) for p, a in zip(p_holm, out["aa_speedup_pct"], strict=True)]
    return out.with_columns(pl.Series("drift", flags, dtype=pl.Boolean)).sort("model", "device", "config")


def _halves(store: Store, session: str, config: str, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A configuration's two halves, paired: block 2k against block 2k + 1 (image by image)
    when it has several blocks, else sample 2k against sample 2k + 1 of each image."""
    if matrix.shape[1] >= 2:
        k = matrix.shape[1] // 2
        return matrix[:, 0 : 2 * k : 2], matrix[:, 1 : 2 * k : 2]
    frame = (_timings(store).filter((pl.col("session") == session) & (pl.col("config") == config))
             .select("samples_ns").collect())
    pairs = [(s[i], s[i + 1]) for s in frame["samples_ns"].to_list() for i in range(0, len(s) - 1, 2)]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    even, odd = np.asarray(pairs, float).T
    return even, odd


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
