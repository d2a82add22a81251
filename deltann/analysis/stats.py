"""Statistics that hold for latency comparisons (after asv and torch.utils.benchmark).

Why these and not the seed's uncorrected ANOVA:

1. Latency distributions are skewed and heavy-tailed, so centre and spread are the median
   and IQR, and the uncertainty of a ratio of medians comes from a bootstrap (no normality
   assumed): :func:`bootstrap_ratio_ci`.
2. The same images run on both sides of a comparison, so the test is *paired* per image:
   the Wilcoxon signed-rank test (:func:`paired_wilcoxon`), which needs no normality either.
3. A report tests many pairs at once; Holm's step-down correction (:func:`holm`) keeps the
   family-wise error rate at ``alpha`` without the independence Bonferroni-Hochberg needs.
   statsmodels is not a dependency, so it is written out here (twelve lines, tested).
4. A p-value says nothing about size: the matched-pairs rank-biserial correlation
   (:func:`rank_biserial`) is the effect size that goes with the signed-rank test, and a
   change is only called significant when it is also larger than a minimum factor (asv).
5. The unit of a comparison is the *block* of an interleaved timing session
   (deltann.runtimes.interleave): A and B ran within seconds of each other in it, in one
   machine state, and that state is shared by every image of the block. So the test is
   over blocks, not cells (one image in one block): each block gives the median over its
   images of log(t_A / t_B), and a one-sample t-test asks whether their mean is zero
   (:func:`block_test`). Cells of one block are not independent: tested as if they were,
   a machine state that changed between A and B within one block made an A/A pair of
   tiny_cnn "significant" over its cells, and not over its blocks. The t-test keeps its
   power at a handful of blocks when the change is consistent (a large change over 6
   images in 5 blocks is significant), where a rank test over n blocks can never go
   below 2/2^n. A session of one block has no block-to-block spread: its images are the
   units (paired Wilcoxon signed-rank). The confidence interval resamples the two
   crossed factors, images and blocks, together (:func:`cell_bootstrap_ratio_ci`).
   :func:`min_detectable_change` says what a comparison of this size and noise can see.
6. The ratio reported is the *paired* estimate that goes with the test
   (:func:`paired_ratio`): the median over blocks of each block's median log(t_A / t_B),
   not the ratio of the two sides' overall medians. A VM that moves between fast and slow
   states for seconds at a time puts A's and B's samples of one block in one state, but
   the overall medians of two sides may each fall in a different state, so the ratio of
   medians of one pair moved between runs far more than the paired estimate (issue 13).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats as st

#: asv's default: a change smaller than 5 % is not reported, however small its p-value.
MIN_FACTOR = 1.05
ALPHA = 0.05


def holm(pvalues: np.ndarray | list[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order as given; NaN stays NaN and does not
    count as a test). Reject H0_i at level alpha iff ``adjusted[i] <= alpha``."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]  # k-th smallest times (m - k + 1)
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def _signed_ranks(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The signs (+1/−1) of the non-zero differences ``a − b`` and the average ranks of
    their absolute values, both in rank order (one sort; ties averaged), and the tie term
    Σ(t³ − t) of the rank variance."""
    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[d != 0]
    if d.size == 0:
        return d, d, 0.0
    absd = np.abs(d)
    order = np.argsort(absd)
    ordered = absd[order]
    signs = np.sign(d[order])
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    if starts.size == d.size:  # no ties: ranks are 1..n
        return signs, np.arange(1, d.size + 1, dtype=float), 0.0
    counts = np.diff(np.r_[starts, d.size])
    ranks = np.repeat(starts + (counts + 1) / 2, counts)  # a tie group shares its average rank
    return signs, ranks, float((counts.astype(float) ** 3 - counts).sum())


def rank_biserial(a: np.ndarray, b: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation of ``a − b`` in [−1, 1]: (W⁺ − W⁻)/(W⁺ + W⁻)
    over the non-zero differences (Kerby 2014). With a = t_A and b = t_B it is positive
    when B is faster, the sign of ``speedup_pct``; NaN when every difference is zero."""
    signs, ranks, _ = _signed_ranks(a, b)
    if signs.size == 0:
        return math.nan
    return float((signs * ranks).sum() / ranks.sum())


#: Above this many non-zero differences the normal approximation is used (scipy's own
#: switch-over for method="auto").
EXACT_MAX = 50


def paired_wilcoxon(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the paired samples ``a`` and ``b``, zero
    differences dropped. Up to :data:`EXACT_MAX` differences scipy computes it (exact
    without ties); above, the normal approximation with the tie-corrected variance is
    computed here from one sort, because scipy ranks twice and a 10 M-row report runs
    dozens of 250 k-image tests (same numbers as ``scipy.stats.wilcoxon(...,
    method="asymptotic")``, tested). 1.0 when every difference is zero (nothing changed),
    NaN when there is no pair at all."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size == 0:
        return math.nan
    if np.all(a == b):
        return 1.0
    if np.count_nonzero(a != b) > EXACT_MAX:
        signs, ranks, ties = _signed_ranks(a, b)
        n = signs.size
        w_plus = ranks[signs > 0].sum()
        mean = n * (n + 1) / 4
        var = n * (n + 1) * (2 * n + 1) / 24 - ties / 48
        if var <= 0:
            return 1.0
        z = (w_plus - mean) / math.sqrt(var)
        return float(min(1.0, 2 * st.norm.sf(abs(z))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns that exact p-values are coarse for tiny n
        return float(st.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(:func:`paired_wilcoxon` p-value, :func:`rank_biserial` effect size) of one pair,
    ranking the differences once when the sample is large."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size == 0:
        return math.nan, math.nan
    if np.count_nonzero(a != b) <= EXACT_MAX:
        return paired_wilcoxon(a, b), rank_biserial(a, b)
    signs, ranks, ties = _signed_ranks(a, b)
    n = signs.size
    w_plus = ranks[signs > 0].sum()
    total = ranks.sum()  # = n (n + 1) / 2
    var = n * (n + 1) * (2 * n + 1) / 24 - ties / 48
    p = 1.0 if var <= 0 else float(min(1.0, 2 * st.norm.sf(abs(w_plus - total / 2) / math.sqrt(var))))
    return p, float((2 * w_plus - total) / total)


def block_test(la: np.ndarray, lb: np.ndarray) -> tuple[float, str, np.ndarray]:
    """The time-change test of two sides' log cell matrices ``la[i, b]``, ``lb[i, b]``
    (image i, block b; NaN where a cell is missing). With two or more blocks holding a
    paired cell: the one-sample t-test of the blocks' median log-ratios (unit "blocks");
    with one: the paired Wilcoxon signed-rank test over its images (unit "images").
    Returns (two-sided p-value, unit, the units' log-ratios). A zero spread between
    blocks gives p 0 for a change and 1 for none; NaN with no paired cell."""
    unit, d = unit_log_ratios(la, lb)
    if unit == "blocks":
        if np.ptp(d) == 0:
            return (1.0 if d[0] == 0 else 0.0), unit, d
        return float(st.ttest_1samp(d, 0.0).pvalue), unit, d
    if d.size == 0:
        return math.nan, unit, d
    return paired_wilcoxon(d, np.zeros_like(d)), unit, d


def unit_log_ratios(la: np.ndarray, lb: np.ndarray) -> tuple[str, np.ndarray]:
    """The units :func:`block_test` tests, from log cell matrices ``la[i, b]``, ``lb[i, b]``
    (NaN where a cell is missing): with two or more blocks holding a paired cell, each
    block's median over its images of ``la − lb`` (unit "blocks"); else the paired cells
    themselves (unit "images")."""
    la, lb = np.asarray(la, float), np.asarray(lb, float)
    if la.ndim == 1:
        la, lb = la[:, None], lb[:, None]
    d = la - lb
    valid = np.isfinite(d)
    blocks = [b for b in range(d.shape[1]) if valid[:, b].any()]
    if len(blocks) >= 2:
        return "blocks", np.array([np.median(d[valid[:, b], b]) for b in blocks])
    return "images", d[valid]


def paired_ratio(ta: np.ndarray, tb: np.ndarray) -> float:
    """The paired estimate of t_A / t_B from cell matrices ``ta[i, b]``, ``tb[i, b]``
    (image i, block b; NaN where missing; reason 6 of the module docstring): exp of the
    median of :func:`unit_log_ratios` — over blocks, each block's median over its images;
    with one block, over the paired images. NaN with no paired cell."""
    ta, tb = np.asarray(ta, float), np.asarray(tb, float)
    valid = np.isfinite(ta) & np.isfinite(tb) & (ta > 0) & (tb > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        _, d = unit_log_ratios(np.where(valid, np.log(ta), np.nan), np.where(valid, np.log(tb), np.nan))
    return float(np.exp(np.median(d))) if d.size else math.nan


def _median_ratio(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(a, axis=axis) / np.median(b, axis=axis)


def bootstrap_ratio_ci(
    a: np.ndarray, b: np.ndarray, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``median(a) / median(b)`` with ``a`` and
    ``b`` resampled independently (raw timing samples of two configurations). Percentile,
    not BCa: BCa's jackknife degenerates on the handful of repeats a timing row often has.
    A fixed ``seed`` makes the report reproducible. (NaN, NaN) with fewer than 2 samples
    on a side."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 2 or b.size < 2:
        return math.nan, math.nan
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread: every resample gives the same ratio
        r = float(a[0] / b[0])
        return r, r
    res = st.bootstrap(
        (a, b), _median_ratio, vectorized=True, paired=False, confidence_level=confidence,
        n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def significant(p_holm: float, ratio: float, *, alpha: float = ALPHA, min_factor: float = MIN_FACTOR) -> bool:
    """asv's rule: the corrected test rejects *and* the change is at least ``min_factor``
    either way (``ratio = t_A / t_B``)."""
    if not (math.isfinite(p_holm) and math.isfinite(ratio)) or ratio <= 0:
        return False
    return p_holm <= alpha and max(ratio, 1 / ratio) >= min_factor


def cell_bootstrap_ratio_ci(ta: np.ndarray, tb: np.ndarray, *, confidence: float = 0.95, n_resamples: int = 2000,
                            seed: int = 0, max_cells: int = 20_000_000) -> tuple[float, float]:
    """Percentile bootstrap CI of the paired ratio (:func:`paired_ratio`: the median over
    blocks of each block's median over images of t_A / t_B) over paired cells
    ``ta[i, b]``, ``tb[i, b]`` (image i, block b; NaN where a cell is missing): each
    resample draws images and blocks with replacement, the same for both sides (a two-way
    crossed bootstrap). Numpy has no such resampler and scipy.stats.bootstrap resamples
    one axis of independent observations, so it is written out here (vectorised; the
    number of resamples shrinks, to no fewer than 200, when images x blocks x resamples
    would pass ``max_cells``). (NaN, NaN) with fewer than 2 valid cells."""
    ta, tb = np.asarray(ta, float), np.asarray(tb, float)
    if ta.ndim == 1:
        ta, tb = ta[None, :], tb[None, :]
    valid = np.isfinite(ta) & np.isfinite(tb)
    if valid.sum() < 2:
        return math.nan, math.nan
    ta, tb = np.where(valid, ta, np.nan), np.where(valid, tb, np.nan)
    n_i, n_b = ta.shape
    if np.nanmax(ta) == np.nanmin(ta) and np.nanmax(tb) == np.nanmin(tb):
        r = float(np.nanmedian(ta) / np.nanmedian(tb))
        return r, r
    reps = max(200, min(n_resamples, max_cells // max(1, n_i * n_b)))
    rng = np.random.default_rng(seed)
    ii = rng.integers(0, n_i, size=(reps, n_i))
    bb = rng.integers(0, n_b, size=(reps, n_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.log(ta) - np.log(tb)
    d = np.where(np.isfinite(d), d, np.nan)[ii[:, :, None], bb[:, None, :]]  # (resample, image, block)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample of only missing cells: NaN, dropped
        per_block = np.nanmedian(d, axis=1)  # (resample, block): each block's median over its images
        ratios = np.exp(np.nanmedian(per_block, axis=1) if n_b > 1 else per_block[:, 0])
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


#: The signed-rank test's asymptotic efficiency relative to the paired t-test (3/pi):
#: it needs about 1/0.955 as many pairs for the same power under normal noise.
WILCOXON_ARE = 3 / math.pi


def min_detectable_change(d: np.ndarray, *, tests: int = 1, alpha: float = ALPHA, power: float = 0.8,
                          min_factor: float = MIN_FACTOR, unit: str = "images") -> float:
    """The smallest time change (in %, either way) that :func:`block_test` detects with
    ``power`` at level ``alpha / tests`` (Holm's strictest step), given the spread of its
    units' log-ratios ``d`` (see :func:`block_test`). ``unit="blocks"``: the t-test's
    (t₁₋α/2 + t_power; n − 1 degrees of freedom)·s/√n, s the standard deviation of the
    blocks' log-ratios. ``unit="images"``: the signed-rank test's normal-theory size
    (z₁₋α/2 + z_power)·σ/√(0.955·n), σ the MAD-based spread of ``d`` around its median
    (robust to the shift itself and to outliers); ``inf`` when ``n`` pairs cannot reach
    that level at all (the exact test's smallest p-value is 2/2ⁿ). Never below the
    ``min_factor`` that :func:`significant` also asks for; ``inf`` with one block."""
    d = np.asarray(d, float)
    d = d[np.isfinite(d)]
    n = d.size
    level = alpha / max(1, tests)
    if unit == "blocks":
        if n < 2:
            return math.inf
        size = (st.t.ppf(1 - level / 2, n - 1) + st.t.ppf(power, n - 1)) * float(np.std(d, ddof=1)) / math.sqrt(n)
        return float(max(math.expm1(size), min_factor - 1) * 100)
    if n == 0 or 2.0 / 2.0 ** min(n, 1000) > level:
        return math.inf
    sigma = float(st.median_abs_deviation(d, scale="normal")) if n > 1 else 0.0
    z = st.norm.ppf(1 - level / 2) + st.norm.ppf(power)
    size = z * sigma / math.sqrt(WILCOXON_ARE * n)
    return float(max(math.expm1(size), min_factor - 1) * 100)
