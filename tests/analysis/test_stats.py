"""Statistics: each number checked against a value worked out by hand from the same data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import stats as st

from deltann import analysis
from deltann.analysis import stats
from deltann.store import Store


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    adjusted = stats.holm([0.01, 0.04, 0.03, math.nan])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(adjusted[3])
    assert stats.holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert stats.holm([]).size == 0


def test_rank_biserial_by_hand() -> None:
    # d = [1, -2, 3, 0]: zero dropped, |d| ranks 1, 2, 3 -> W+ = 4, W- = 2 -> (4 - 2) / 6
    assert stats.rank_biserial(np.array([10, 20, 30, 40]), np.array([9, 22, 27, 40])) == pytest.approx(1 / 3)
    assert stats.rank_biserial(np.array([2, 3]), np.array([1, 1])) == 1.0
    assert math.isnan(stats.rank_biserial(np.array([1.0]), np.array([1.0])))


def test_paired_wilcoxon_exact_by_hand() -> None:
    # n differences all of one sign, no ties: exact two-sided p = 2 / 2**n
    a = np.arange(10.0, 16.0)
    assert stats.paired_wilcoxon(a, a - np.arange(1.0, 7.0)) == pytest.approx(2 / 2**6)
    assert stats.paired_wilcoxon(a[:4], a[:4] + np.arange(1.0, 5.0)) == pytest.approx(2 / 2**4)
    assert stats.paired_wilcoxon(a, a) == 1.0
    assert math.isnan(stats.paired_wilcoxon(np.zeros(0), np.zeros(0)))


def test_bootstrap_ratio_ci() -> None:
    assert stats.bootstrap_ratio_ci(np.full(4, 10.0), np.full(4, 5.0)) == (2.0, 2.0)
    a, b = np.array([10.0, 11, 12, 13, 30]), np.array([5.0, 5.5, 6, 6.5, 7])
    low, high = stats.bootstrap_ratio_ci(a, b)
    point = np.median(a) / np.median(b)  # 12 / 6
    assert a.min() / b.max() <= low <= point <= high <= a.max() / b.min()
    assert low < high
    assert stats.bootstrap_ratio_ci(a, b) == (low, high)  # fixed seed: reproducible
    assert all(math.isnan(x) for x in stats.bootstrap_ratio_ci(a[:1], b))


@pytest.mark.parametrize(("p", "ratio", "expected"), [
    (0.01, 1.2, True), (0.01, 1 / 1.2, True), (0.01, 1.01, False), (0.2, 3.0, False), (math.nan, 2.0, False),
])
def test_significant_needs_test_and_factor(p: float, ratio: float, expected: bool) -> None:
    assert stats.significant(p, ratio) is expected


def _three_configs(hand) -> None:  # noqa: ANN001 - the conftest Hand
    # six images; A and C identical per-image latencies, B faster on every image
    a_ms, b_ms = [10, 11, 12, 13, 14, 15], [5, 5.5, 6, 6.5, 7, 7.5]
    hand.write(hand.unit("torch", "torch", "native"), top1=[1] * 6, latency_ms=a_ms, samples_ms=[10, 20, 30])
    hand.write(hand.unit("torch", "tvm", "basic"), top1=[1] * 6, latency_ms=b_ms, samples_ms=[5, 5, 6])
    hand.write(hand.unit("torch", "tvm", "extended"), top1=[1] * 6, latency_ms=a_ms, samples_ms=[10, 20, 30])


def test_speedup_stats_by_hand(hand) -> None:  # noqa: ANN001
    _three_configs(hand)
    table = analysis.speedup_stats(hand.store)
    rows = {(r["A"], r["B"]): r for r in table.iter_rows(named=True)}
    assert set(rows) == {("torch [torch]", "torch [tvm:basic]"), ("torch [torch]", "torch [tvm:extended]"),
                         ("torch [tvm:basic]", "torch [tvm:extended]")}
    ab = rows[("torch [torch]", "torch [tvm:basic]")]
    assert ab["ratio"] == pytest.approx(20 / 5) and ab["speedup_pct"] == pytest.approx(300.0)
    assert ab["n_paired"] == 6 and ab["p_value"] == pytest.approx(2 / 64) and ab["effect_rb"] == 1.0
    assert ab["ci_low"] <= 4.0 <= ab["ci_high"]
    assert ab["ci_low_pct"] == pytest.approx((ab["ci_low"] - 1) * 100)
    ac = rows[("torch [torch]", "torch [tvm:extended]")]
    assert ac["p_value"] == 1.0 and ac["ratio"] == pytest.approx(1.0) and math.isnan(ac["effect_rb"])
    bc = rows[("torch [tvm:basic]", "torch [tvm:extended]")]
    assert bc["p_value"] == pytest.approx(2 / 64) and bc["effect_rb"] == -1.0  # C slower on every image
    # Holm over three tests: 2/64 * 3, 2/64 * 2 -> running max 0.09375 for both; 1.0 stays 1.0
    assert ab["p_holm"] == pytest.approx(0.09375) and bc["p_holm"] == pytest.approx(0.09375)
    assert ac["p_holm"] == 1.0
    assert not table["significant"].any()  # uncorrected 0.031 would have passed 0.05; Holm does not
    loose = analysis.speedup_stats(hand.store, alpha=0.1)
    assert loose.filter(pl.col("significant")).select("A", "B").rows() == [
        ("torch [torch]", "torch [tvm:basic]"), ("torch [tvm:basic]", "torch [tvm:extended]")]
    # the factor rule: a 4x change with factor 5 is not reported
    assert not analysis.speedup_stats(hand.store, alpha=0.1, min_factor=5.0)["significant"].any()


def test_speedup_stats_on_a_real_run_match_scipy(tiny_results: Path) -> None:
    store = Store(tiny_results)
    table = analysis.speedup_stats(store)
    assert table.height == 6
    p = store.scan("predictions").select("config", "image_id", "latency_ns").collect()
    t = store.scan("timings").select("config", "samples_ns").collect()

    def per_image(config: str) -> np.ndarray:
        return p.filter(pl.col("config") == config).sort("image_id")["latency_ns"].to_numpy().astype(float)

    def samples(config: str) -> np.ndarray:
        return np.asarray(t.filter(pl.col("config") == config)["samples_ns"].to_list()[0], float)

    for row in table.iter_rows(named=True):
        la, lb = per_image(row["A"]), per_image(row["B"])
        assert row["n_paired"] == la.size == 4
        assert row["p_value"] == pytest.approx(st.wilcoxon(la, lb).pvalue)
        assert row["ratio"] == pytest.approx(np.median(samples(row["A"])) / np.median(samples(row["B"])))
        assert row["ci_low"] <= row["ratio"] <= row["ci_high"]
        # with 4 images the smallest two-sided exact p is 2/16: nothing can be significant
        assert row["p_holm"] >= row["p_value"] >= 0.125 and row["significant"] is False


def test_large_sample_wilcoxon_matches_scipy_asymptotic() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(100, 120, 400).astype(float)  # many ties
    b = a + rng.integers(-3, 4, 400)  # zeros included
    b[:50] -= 2  # a shift
    ours = stats.paired_wilcoxon(a, b)
    theirs = st.wilcoxon(a, b, zero_method="wilcox", method="asymptotic", correction=False).pvalue
    assert ours == pytest.approx(theirs, rel=1e-9)
    assert stats.rank_biserial(a, b) == pytest.approx(
        (st.rankdata(np.abs((a - b)[a != b]))[(a - b)[a != b] > 0].sum()
         - st.rankdata(np.abs((a - b)[a != b]))[(a - b)[a != b] < 0].sum())
        / st.rankdata(np.abs((a - b)[a != b])).sum())


def test_paired_test_is_the_two_functions_together() -> None:
    rng = np.random.default_rng(2)
    for n in (6, 400):
        a = rng.integers(100, 130, n).astype(float)
        b = a + rng.integers(-4, 3, n)
        p, r = stats.paired_test(a, b)
        assert p == pytest.approx(stats.paired_wilcoxon(a, b), rel=1e-12)
        assert r == pytest.approx(stats.rank_biserial(a, b), rel=1e-12)
