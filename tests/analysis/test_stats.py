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
    # six images in one block; A and C identical, B faster on every image
    a_ms, b_ms = [10, 11, 12, 13, 14, 15], [5, 5.5, 6, 6.5, 7, 7.5]
    hand.write(hand.unit("torch", "torch", "native"), top1=[1] * 6, cells_ms=[[t] for t in a_ms])
    hand.write(hand.unit("torch", "tvm", "basic"), top1=[1] * 6, cells_ms=[[t] for t in b_ms])
    hand.write(hand.unit("torch", "tvm", "extended"), top1=[1] * 6, cells_ms=[[t] for t in a_ms])


def test_speedup_stats_by_hand(hand) -> None:  # noqa: ANN001
    _three_configs(hand)
    table = analysis.speedup_stats(hand.store)
    rows = {(r["A"], r["B"]): r for r in table.iter_rows(named=True)}
    assert set(rows) == {("torch [torch]", "torch [tvm:basic]"), ("torch [torch]", "torch [tvm:extended]"),
                         ("torch [tvm:basic]", "torch [tvm:extended]")}
    ab = rows[("torch [torch]", "torch [tvm:basic]")]
    assert ab["ratio"] == pytest.approx(12.5 / 6.25) and ab["speedup_pct"] == pytest.approx(100.0)
    assert ab["n_paired"] == 6 and ab["p_value"] == pytest.approx(2 / 64) and ab["effect_rb"] == 1.0
    assert ab["ci_low"] <= 2.0 <= ab["ci_high"]
    assert ab["ci_low_pct"] == pytest.approx((ab["ci_low"] - 1) * 100)
    assert ab["session"] == "s1" and ab["board"] == "b"
    ac = rows[("torch [torch]", "torch [tvm:extended]")]
    assert ac["p_value"] == 1.0 and ac["ratio"] == pytest.approx(1.0) and math.isnan(ac["effect_rb"])
    bc = rows[("torch [tvm:basic]", "torch [tvm:extended]")]
    assert bc["p_value"] == pytest.approx(2 / 64) and bc["effect_rb"] == -1.0  # C slower on every image
    # Holm over three tests: 2/64 * 3, 2/64 * 2 -> running max 0.09375 for both; 1.0 stays 1.0
    assert ab["p_holm"] == pytest.approx(0.09375) and bc["p_holm"] == pytest.approx(0.09375)
    assert ac["p_holm"] == 1.0
    assert not table["significant"].any()  # uncorrected 0.031 would have passed 0.05; Holm does not
    # six pairs at alpha/3 cannot reach significance: 2/64 > 0.05/3
    assert table["mdc_pct"].is_infinite().all()
    loose = analysis.speedup_stats(hand.store, alpha=0.1)
    assert loose.filter(pl.col("significant")).select("A", "B").rows() == [
        ("torch [torch]", "torch [tvm:basic]"), ("torch [tvm:basic]", "torch [tvm:extended]")]
    # the factor rule: a 2x change with factor 3 is not reported
    assert not analysis.speedup_stats(hand.store, alpha=0.1, min_factor=3.0)["significant"].any()


def test_a_25x_change_over_six_images_is_significant_and_an_aa_pair_is_not(hand) -> None:  # noqa: ANN001
    """The issue's case: 6 images, a 25x change. Timed in 5 interleaved blocks (30 cells,
    image x block), the test over the blocks says yes; between two configurations that are the
    same code (same distribution, drawn independently) it says no."""
    rng = np.random.default_rng(7)
    base = rng.lognormal(np.log(4.0), 0.3, size=(6, 1))  # images differ
    noise = lambda: rng.lognormal(0.0, 0.05, size=(6, 5))  # noqa: E731 - machine noise per cell
    hand.write(hand.unit("torch", "torch", "native"), top1=[1] * 6, cells_ms=(base * 25 * noise()).tolist())
    hand.write(hand.unit("torch", "tvm", "basic"), top1=[1] * 6, cells_ms=(base * noise()).tolist())
    hand.write(hand.unit("torch", "tvm", "extended"), top1=[1] * 6, cells_ms=(base * noise()).tolist())
    rows = {(r["A"], r["B"]): r for r in analysis.speedup_stats(hand.store).iter_rows(named=True)}
    big = rows[("torch [torch]", "torch [tvm:basic]")]
    assert big["n_paired"] == 30 and big["ratio"] == pytest.approx(25, rel=0.1)
    assert big["p_holm"] < 1e-6 and big["significant"] is True
    assert big["ci_low"] > 15 and big["ci_high"] < 40
    aa = rows[("torch [tvm:basic]", "torch [tvm:extended]")]
    assert aa["significant"] is False and 0.9 < aa["ratio"] < 1.1
    assert aa["ci_low"] < 1 < aa["ci_high"]
    assert 5.0 <= aa["mdc_pct"] < 15  # 5 blocks of 6 images with 5 % noise see changes of ~10 %
    aa_floor = analysis.noise_floor(hand.store)  # no drift between blocks was simulated
    assert not aa_floor["drift"].any() and (aa_floor["noise_pct"] < 10).all()


def test_the_noise_floor_sees_drift_between_blocks_that_paired_changes_do_not(hand) -> None:  # noqa: ANN001
    rng = np.random.default_rng(8)
    base = rng.lognormal(np.log(4.0), 0.3, size=(6, 1))
    drift = np.array([[1.0, 1.3, 1.0, 1.3, 1.0]])  # the machine is 30 % slower in odd blocks
    noise = lambda: rng.lognormal(0.0, 0.01, size=(6, 5))  # noqa: E731
    hand.write(hand.unit("torch", "tvm", "basic"), top1=[1] * 6, cells_ms=(base * drift * noise()).tolist())
    hand.write(hand.unit("torch", "tvm", "extended"), top1=[1] * 6, cells_ms=(base * drift * noise()).tolist())
    floor = analysis.noise_floor(hand.store)
    assert floor["drift"].all() and (floor["noise_pct"] > 15).all()
    row = analysis.speedup_stats(hand.store).row(0, named=True)  # A and B drifted together
    assert row["significant"] is False and abs(row["ratio"] - 1) < 0.03


def test_min_detectable_change() -> None:
    rng = np.random.default_rng(3)
    quiet, loud = rng.normal(0, 0.01, 50), rng.normal(0, 0.2, 50)
    assert stats.min_detectable_change(quiet) == pytest.approx(5.0)  # below the factor rule: the factor decides
    # by hand: (z_0.975 + z_0.8) = 1.960 + 0.842; sigma = 1.4826 * MAD; n = 50 pairs at 3/pi efficiency
    sigma = 1.4826 * np.median(np.abs(loud - np.median(loud)))
    expected = math.expm1((1.95996 + 0.84162) * sigma / math.sqrt(3 / math.pi * 50)) * 100
    assert stats.min_detectable_change(loud) == pytest.approx(expected, rel=1e-3)
    assert stats.min_detectable_change(loud[:20]) > stats.min_detectable_change(loud)  # fewer pairs see less
    assert stats.min_detectable_change(loud, tests=20) > stats.min_detectable_change(loud)
    assert math.isinf(stats.min_detectable_change(quiet[:4]))  # 4 pairs: smallest p is 2/16
    assert math.isinf(stats.min_detectable_change(np.zeros(0)))


def test_the_block_is_the_unit_a_state_change_within_one_block_is_not_a_change() -> None:
    """Measured on this VM (tiny_cnn, an A/A pair, 4 images x 5 blocks, µs): the machine
    went from ~50 to ~26 µs per call between A and B in block 2. Cells tested as
    independent called it a change (Wilcoxon over 20 cells: p = 0.007); over blocks (p = 0.25) it is
    not one. The same shape with B 25x faster in every block is."""
    a = np.array([[57.4, 51.5, 45.1, 26.0, 27.9], [55.5, 48.4, 42.8, 26.7, 26.7],
                  [53.9, 49.3, 43.5, 26.4, 25.6], [57.6, 50.4, 42.4, 26.4, 26.2]])
    b = np.array([[49.3, 47.8, 26.8, 26.8, 28.7], [49.6, 49.0, 26.1, 25.7, 26.9],
                  [45.2, 49.6, 26.5, 25.8, 26.6], [51.0, 48.4, 25.8, 26.2, 26.1]])
    la, lb = np.log(a), np.log(b)
    assert stats.paired_wilcoxon(la.ravel(), lb.ravel()) < 0.01
    p, unit, d = stats.block_test(la, lb)
    assert unit == "blocks" and d.shape == (5,) and p > 0.1
    assert p == pytest.approx(st.ttest_1samp(np.median(la - lb, axis=0), 0.0).pvalue)
    p25, _, _ = stats.block_test(la + np.log(25), lb)
    assert p25 < 1e-4
    # one block: its images are the units (the signed-rank test)
    p1, unit1, d1 = stats.block_test(la[:, :1] + 0.1, lb[:, :1])
    assert unit1 == "images" and d1.size == 4 and p1 == pytest.approx(2 / 16)
    # missing cells (NaN) are left out of their block
    holes = la.copy()
    holes[0, 0] = np.nan
    assert stats.block_test(holes, lb)[2][0] == pytest.approx(np.median((la - lb)[1:, 0]))
    # by hand: t-based size over blocks, s the blocks' sample standard deviation
    d5 = np.array([0.01, -0.02, 0.03, 0.0, -0.01])
    size = (st.t.ppf(0.975, 4) + st.t.ppf(0.8, 4)) * np.std(d5, ddof=1) / np.sqrt(5)
    assert stats.min_detectable_change(d5, unit="blocks", min_factor=1.0) == pytest.approx(np.expm1(size) * 100)
    assert math.isinf(stats.min_detectable_change(d5[:1], unit="blocks"))


def test_cell_bootstrap_resamples_images_and_blocks_together() -> None:
    rng = np.random.default_rng(4)
    ta = rng.lognormal(np.log(10), 0.05, size=(8, 5))
    block_state = rng.lognormal(0, 0.3, size=(1, 5))  # a slow block slows both sides
    low, high = stats.cell_bootstrap_ratio_ci(ta * block_state, ta / 2 * block_state)
    assert low <= 2.0 <= high and high - low < 0.3  # shared drift cancels out of a paired ratio
    assert stats.cell_bootstrap_ratio_ci(ta, ta) == stats.cell_bootstrap_ratio_ci(ta, ta)  # seeded
    assert stats.cell_bootstrap_ratio_ci(np.full((2, 2), 4.0), np.full((2, 2), 2.0)) == (2.0, 2.0)
    assert all(math.isnan(x) for x in stats.cell_bootstrap_ratio_ci(ta[:1, :1], ta[:1, :1]))


def test_speedup_stats_on_a_real_run_match_scipy(tiny_results: Path) -> None:
    store = Store(tiny_results)
    table = analysis.speedup_stats(store)
    assert table.height == 6
    t = store.scan("timings").select("config", "image_id", "samples_ns", "sample_block").collect()
    assert t["image_id"].n_unique() == 4

    def cells(config: str) -> np.ndarray:  # image x block medians, worked out here
        sub = t.filter(pl.col("config") == config).sort("image_id")
        out = []
        for samples, blocks in sub.select("samples_ns", "sample_block").iter_rows():
            s, b = np.asarray(samples, float), np.asarray(blocks)
            out.append([np.median(s[b == k]) for k in sorted(set(blocks))])
        return np.asarray(out)

    def samples(config: str) -> np.ndarray:
        return np.concatenate(t.filter(pl.col("config") == config)["samples_ns"].to_list()).astype(float)

    for row in table.iter_rows(named=True):
        ca, cb = cells(row["A"]), cells(row["B"])
        assert ca.shape == cb.shape == (4, 5) and row["n_paired"] == 20  # 4 images x 5 blocks
        per_block = np.median(np.log(ca) - np.log(cb), axis=0)  # the test's unit: a block
        assert row["p_value"] == pytest.approx(st.ttest_1samp(per_block, 0.0).pvalue)
        assert row["ratio"] == pytest.approx(np.exp(np.median(per_block)))  # paired by block
        assert row["speedup_pct"] == pytest.approx((row["ratio"] - 1) * 100)
        assert row["t_A_ms"] == pytest.approx(np.median(samples(row["A"])) / 1e6)  # each side's own median
        assert row["ci_low"] <= row["ratio"] <= row["ci_high"]
        assert row["significant"] == (row["p_holm"] <= 0.05 and max(row["ratio"], 1 / row["ratio"]) >= 1.05)


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


def test_an_aa_study_of_tiny_cnn_finds_no_significant_change(study_file, tmp_path: Path, ray_session: None) -> None:
    """Two settings that build the same kernels for tiny_cnn (it has no common
    subexpression to eliminate): a real A/A comparison, timed in one interleaved session.
    Neither the time-change test nor the A/A noise floor may call it a change."""
    from deltann.fleet.driver import run_study

    study = study_file('name = "aa"\nmodels = ["tiny_cnn"]\nvariants = ["torch->onnx"]\nruntimes = ["tvm"]\n'
                       'settings = ["extended", "extended-EliminateCommonSubexpr"]\n[dataset]\nlimit = 4\n'
                       "[timing]\nrepeat = 3\npause_ms = 50\n")
    summary = run_study(study, tmp_path / "out", progress=False)
    assert summary.failed == 0 and [r["status"] for r in summary.sessions] == ["ok"]
    store = Store(tmp_path / "out")
    row = analysis.speedup_stats(store).row(0, named=True)
    assert row["n_paired"] == 4 * 20 and row["session"] == summary.sessions[0]["session"]  # images x default blocks
    assert row["significant"] is False, row
