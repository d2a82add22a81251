"""Each table's numbers against values computed by hand from the same rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from deltann import analysis
from deltann.store import SCHEMAS, Store, tag

MS = 1_000_000


def _unit(setting: str, runtime: str) -> dict[str, str]:
    config = f"torch [{runtime}]" if setting == "native" else f"torch [tvm:{setting}]"
    return {"unit_key": config, "study": "s", "model": "m", "variant": "torch", "runtime": runtime,
            "setting": setting, "config": config, "device": "local", "board": "b", "hostname": "h"}


def _store(tmp_path: Path) -> Store:
    store = Store(tmp_path)
    units = {"A": _unit("native", "torch"), "B": _unit("basic", "tvm")}
    top1 = {"A": [1, 2, 3], "B": [1, 5, 3]}
    top5 = {"A": [[1, 2, 3, 4, 5]] * 3, "B": [[1, 2, 3, 4, 6], [5, 2, 3, 4, 1], [3, 2, 1, 4, 5]]}
    samples = {"A": [10 * MS, 20 * MS, 30 * MS], "B": [5 * MS, 5 * MS, 6 * MS]}
    for name, ident in units.items():
        logits = np.zeros((3, 1000), np.float32)
        if name == "B":
            logits[1, 7] = -0.5
        rows = [ident | {"image_index": i, "image_id": f"img{i}", "input_hash": f"h{i}", "label": None,
                         "top1": top1[name][i], "top5": top5[name][i], "top5_prob": [0.2] * 5,
                         "logits": logits[i].tolist(), "latency_ns": 1} for i in range(3)]
        key = ident["unit_key"]
        store.write(tag(pa.Table.from_pylist(rows, schema=SCHEMAS["predictions"]), "predictions", key, 0))
        timing = ident | {"image_id": "img0", "warmup": 1, "number": 1, "repeat": 3, "min_repeat_ms": 0,
                          "threads": 2, "samples_ns": samples[name], "median_ns": 0}
        store.write(tag(pa.Table.from_pylist([timing], schema=SCHEMAS["timings"]), "timings", key, 0))
        build = {n: None for n in SCHEMAS["builds"].names} | ident | {"status": "ok", "passes": []}
        store.write(tag(pa.Table.from_pylist([build], schema=SCHEMAS["builds"]), "builds", key, 0))
    return store


def test_pairwise_agreement_by_hand(tmp_path: Path) -> None:
    pairs = analysis.pairwise_agreement(_store(tmp_path))
    assert pairs.height == 2  # (A, B) and (B, A)
    row = pairs.filter(pl.col("config_a") == "torch [torch]").row(0, named=True)
    assert row["n_images"] == 3 and row["disagree"] == 1
    assert row["disagree_pct"] == pytest.approx(100 / 3)
    # Jaccard per image: {1..5} vs {1,2,3,4,6} = 4/6; the other two are the same set = 1
    assert row["top5_jaccard"] == pytest.approx((4 / 6 + 1 + 1) / 3)
    assert row["max_abs_dlogit"] == pytest.approx(0.5)
    assert row["same_inputs"] is True


def test_dissimilarity_matrix_is_square_with_zero_diagonal(tmp_path: Path) -> None:
    pairs = analysis.pairwise_agreement(_store(tmp_path))
    matrix = analysis.dissimilarity_matrix(pairs, "m", "local")
    assert matrix.columns == ["config_a", "torch [torch]", "torch [tvm:basic]"]
    values = matrix.drop("config_a").to_numpy()
    assert np.allclose(np.diag(values), 0) and np.allclose(values, values.T)
    assert values[0, 1] == pytest.approx(100 / 3)


def test_latency_and_speedup_by_hand_on_a_store_without_sessions(tmp_path: Path) -> None:
    # rows as deltann wrote them before timing sessions (no session, no blocks): one board's
    # rows count as one session, so old stores still compare
    store = _store(tmp_path)
    latency = analysis.latency_table(store)
    medians = dict(zip(latency["config"], latency["median_ms"], strict=True))
    assert medians == {"torch [torch]": pytest.approx(20.0), "torch [tvm:basic]": pytest.approx(5.0)}
    iqr = dict(zip(latency["config"], latency["iqr_ms"], strict=True))
    assert iqr["torch [torch]"] == pytest.approx(10.0)  # q3 25 - q1 15 (linear)
    speed = analysis.speedup_table(analysis.session_latency(store))
    assert speed.height == 1 and speed["session"].to_list() == ["legacy-b"]
    row = speed.row(0, named=True)
    assert (row["A"], row["B"]) == ("torch [torch]", "torch [tvm:basic]")
    assert row["speedup_pct"] == pytest.approx((20 / 5 - 1) * 100)  # B is 4x faster: +300 %


def test_tables_on_a_real_run_match_numpy(tiny_results: Path) -> None:
    store = Store(tiny_results)
    p = store.scan("predictions").collect()
    pairs = analysis.pairwise_agreement(store)
    for row in pairs.iter_rows(named=True):
        a = p.filter(pl.col("config") == row["config_a"]).sort("image_id")
        b = p.filter(pl.col("config") == row["config_b"]).sort("image_id")
        assert row["disagree"] == int((a["top1"].to_numpy() != b["top1"].to_numpy()).sum())
        la, lb = np.stack(a["logits"].to_list()), np.stack(b["logits"].to_list())
        assert row["max_abs_dlogit"] == pytest.approx(float(np.abs(la - lb).max()), abs=1e-7)
    latency = analysis.latency_table(store)
    t = store.scan("timings").collect()
    for row in latency.iter_rows(named=True):
        raw = np.concatenate(t.filter(pl.col("config") == row["config"])["samples_ns"].to_list())
        assert row["median_ms"] == pytest.approx(np.median(raw) / 1e6)
        assert row["images"] == 4 and row["blocks"] == 5 and row["samples"] == 4 * 5 * 3


def test_failures_lists_failed_units(tmp_path: Path) -> None:
    store = _store(tmp_path)
    bad = {n: None for n in SCHEMAS["builds"].names} | _unit("extended", "tvm") | {
        "unit_key": "bad", "status": "failed", "stage": "build", "outcome": "exception",
        "error_type": "ValueError", "message": "boom", "passes": []}
    store.write(tag(pa.Table.from_pylist([bad], schema=SCHEMAS["builds"]), "builds", "bad", 0))
    failed = analysis.failures(store)
    assert failed.select("config", "stage", "message").rows() == [("torch [tvm:extended]", "build", "boom")]


# --- issue 6: the other tables, on hand-made stores (tests/analysis/conftest.py) -------


def test_pairwise_logit_divergence_and_matrices_by_hand(tmp_path: Path) -> None:
    pairs = analysis.pairwise_agreement(_store(tmp_path))
    row = pairs.filter(pl.col("config_a") == "torch [torch]").row(0, named=True)
    # per-image max |dlogit|: 0, 0.5, 0 -> mean 0.5 / 3
    assert row["mean_max_abs_dlogit"] == pytest.approx(0.5 / 3)
    jac = analysis.dissimilarity_matrix(pairs, "m", "local", "top5_jaccard", diagonal=1.0).drop("config_a").to_numpy()
    assert np.allclose(np.diag(jac), 1.0) and jac[0, 1] == pytest.approx((4 / 6 + 2) / 3)
    logit = analysis.dissimilarity_matrix(pairs, "m", "local", "max_abs_dlogit").drop("config_a").to_numpy()
    assert logit[0, 1] == pytest.approx(0.5) and logit[0, 0] == 0.0


def test_top1_disagreement_matches_pairwise_agreement(tmp_path: Path) -> None:
    store = _store(tmp_path)
    fast = analysis.top1_disagreement(store)
    full = analysis.pairwise_agreement(store).select(fast.columns)
    assert fast.equals(full.cast(fast.schema))
    assert fast["disagree"].to_list() == [1, 1]


def test_device_and_framework_pairs_by_hand(hand) -> None:  # noqa: ANN001
    top5 = [[1, 2, 3, 4, 5], [2, 1, 3, 4, 5], [3, 1, 2, 4, 5]]
    hand.write(hand.unit("torch", "torch", "native"), top1=[1, 2, 3], top5=top5)
    hand.write(hand.unit("torch", "torch", "native", device="arm-hikey"), top1=[1, 9, 3],
               top5=[[1, 2, 3, 4, 5], [9, 1, 3, 4, 5], [3, 1, 2, 4, 5]])
    hand.write(hand.unit("torch->onnx", "onnxruntime", "native"), top1=[7, 8, 3], top5=top5)
    devices = analysis.device_pairs(hand.store)
    assert devices.select("config", "device_a", "device_b").rows() == [
        ("torch [torch]", "arm-hikey", "local"), ("torch [torch]", "local", "arm-hikey")]
    row = devices.row(0, named=True)
    # image 1: {2,1,3,4,5} vs {9,1,3,4,5} = 4/6; the other two identical
    assert row["n_images"] == 3 and row["disagree"] == 1
    assert row["disagree_pct"] == pytest.approx(100 / 3) and row["top5_jaccard"] == pytest.approx((2 + 4 / 6) / 3)
    frameworks = analysis.framework_pairs(hand.store)
    # only "local" has both variants under the same setting
    assert frameworks.select("device", "setting", "variant_a", "variant_b").rows() == [
        ("local", "native", "torch", "torch->onnx"), ("local", "native", "torch->onnx", "torch")]
    assert frameworks["disagree"].to_list() == [2, 2]
    matrix = analysis.heatmap_matrix(frameworks, "variant_a", "variant_b", "disagree_pct", diagonal=0.0)
    assert matrix.columns == ["variant_a", "torch", "torch->onnx"]
    assert matrix.drop("variant_a").to_numpy() == pytest.approx(np.array([[0, 200 / 3], [200 / 3, 0]]))


def test_accuracy_by_hand(hand) -> None:  # noqa: ANN001
    top5 = [[1, 2, 3, 4, 5], [5, 2, 3, 4, 1], [3, 2, 1, 4, 5]]
    hand.write(hand.unit("torch", "torch", "native"), top1=[1, 5, 3], top5=top5, labels=[1, 2, 9])
    hand.write(hand.unit("torch", "tvm", "basic"), top1=[1, 5, 3], top5=top5, labels=[None, None, None])
    acc = analysis.accuracy(hand.store)
    assert acc.height == 1  # the unlabelled configuration is absent
    row = acc.row(0, named=True)
    # top-1 right on image 0 only; label 2 is in image 1's top-5, label 9 in none
    assert row["labelled"] == 3
    assert row["top1_acc"] == pytest.approx(100 / 3) and row["top5_acc"] == pytest.approx(200 / 3)


def test_margin_flips_by_hand(hand) -> None:  # noqa: ANN001
    probs = [[0.9, 0.05, 0.02, 0.02, 0.01], [0.30, 0.28, 0.2, 0.1, 0.1], [0.5, 0.35, 0.1, 0.03, 0.02]]
    hand.write(hand.unit("torch", "torch", "native"), top1=[1, 2, 3], top5_prob=probs)  # margins .85 .02 .15
    hand.write(hand.unit("torch", "tvm", "basic"), top1=[1, 7, 3])
    flips = analysis.margin_flips(hand.store)
    assert set(flips["reference"]) == {"torch [torch]"}  # the native configuration by default
    got = {(r["lo"], r["hi"]): (r["n_images"], r["flips"]) for r in flips.iter_rows(named=True)}
    assert got == {(0.0, 0.05): (1, 1), (0.1, 0.2): (1, 0), (0.5, 1.0): (1, 0)}
    other = analysis.margin_flips(hand.store, reference="torch [tvm:basic]")
    assert other["config"].unique().to_list() == ["torch [torch]"] and other["flips"].sum() == 1


def test_stability_two_boards_by_hand(hand) -> None:  # noqa: ANN001
    hand.write(hand.unit("torch", "torch", "native", board="b1"), top1=[1, 2, 3], samples_ms=[10, 20, 30])
    hand.write(hand.unit("torch", "torch", "native", board="b2"), top1=[1, 2, 4], samples_ms=[30, 40, 50])
    row = analysis.stability(hand.store).row(0, named=True)
    assert (row["runs"], row["images"], row["flips"]) == (2, 3, 1)
    assert row["flip_pct"] == pytest.approx(100 / 3)
    all_ms = np.array([10, 20, 30, 30, 40, 50.0])
    assert row["cv_samples_pct"] == pytest.approx(all_ms.std(ddof=1) / all_ms.mean() * 100)
    # run medians 20 and 40: std (ddof 1) = 14.142..., mean 30
    assert row["cv_runs_pct"] == pytest.approx(np.std([20, 40], ddof=1) / 30 * 100)


def test_noise_floor_by_hand(hand) -> None:  # noqa: ANN001
    hand.write(hand.unit("torch", "torch", "native"), top1=[1], samples_ms=[10, 20, 30, 40])
    row = analysis.noise_floor(hand.store).row(0, named=True)
    # one block: sample pairs (10, 20) and (30, 40); the paired ratio is the median of the
    # pairs' log-ratios, here the geometric mean of 10/20 and 30/40
    aa = (np.sqrt(10 / 20 * 30 / 40) - 1) * 100
    assert row["samples"] == 4 and row["aa_speedup_pct"] == pytest.approx(aa)
    assert row["noise_pct"] == pytest.approx(-aa)


def test_latency_matrix_by_hand(tmp_path: Path) -> None:
    matrix = analysis.latency_matrix(analysis.latency_table(_store(tmp_path)), "m")
    assert matrix.rows() == [("torch [torch]", 20.0), ("torch [tvm:basic]", 5.0)]


# --- issue 6: the same tables on the real tiny run, against numpy on its rows -----------


def test_new_tables_on_a_real_run_match_numpy(tiny_results: Path) -> None:
    store = Store(tiny_results)
    p = store.scan("predictions").select("config", "variant", "setting", "image_id", "top1", "top5_prob",
                                         "label").collect()
    t = store.scan("timings").select("config", "image_id", "samples_ns", "sample_block").collect()
    top1 = {c: g.sort("image_id")["top1"].to_numpy() for (c,), g in p.group_by(["config"])}

    for row in analysis.noise_floor(store).iter_rows(named=True):
        # A/A: block 0 against 1 and block 2 against 3 (of 5), image by image, each cell the
        # median of its block's 3 samples; a pair of blocks gives its median log-ratio over
        # the images, and the estimate is the median of those
        pair_01, pair_23 = [], []
        for samples, blocks in t.filter(pl.col("config") == row["config"]).select("samples_ns",
                                                                                  "sample_block").iter_rows():
            s, b = np.asarray(samples, float), np.asarray(blocks)
            cell = [np.median(s[b == k]) for k in range(4)]
            pair_01.append(np.log(cell[0] / cell[1]))
            pair_23.append(np.log(cell[2] / cell[3]))
        aa = np.exp(np.median([np.median(pair_01), np.median(pair_23)]))
        assert row["aa_speedup_pct"] == pytest.approx((aa - 1) * 100)
        assert row["samples"] == 16

    for row in analysis.stability(store).iter_rows(named=True):
        raw = np.concatenate(t.filter(pl.col("config") == row["config"])["samples_ns"].to_list()).astype(float)
        assert row["runs"] == 1 and row["flips"] == 0 and row["cv_runs_pct"] is None
        assert row["cv_samples_pct"] == pytest.approx(raw.std(ddof=1) / raw.mean() * 100)

    flips = analysis.margin_flips(store)
    reference = flips["reference"].unique().to_list()
    assert reference == ["torch [torch]"]  # first native configuration
    ref = p.filter(pl.col("config") == "torch [torch]").sort("image_id")
    margins = np.array([pr[0] - pr[1] for pr in ref["top5_prob"].to_list()])
    for (config,), g in flips.group_by(["config"]):
        assert g["n_images"].sum() == 4
        assert g["flips"].sum() == int((top1[config] != top1["torch [torch]"]).sum())
        for r in g.iter_rows(named=True):
            inside = (margins >= r["lo"]) & ((margins < r["hi"]) | ((r["hi"] == 1.0) & (margins <= 1.0)))
            assert r["n_images"] == int(inside.sum())

    frameworks = analysis.framework_pairs(store)
    assert frameworks.height == 6  # 3 settings x 2 ordered variant pairs
    by = {(s, v): g.sort("image_id")["top1"].to_numpy() for (s, v), g in p.group_by(["setting", "variant"])}
    for r in frameworks.iter_rows(named=True):
        assert r["disagree"] == int((by[(r["setting"], r["variant_a"])] != by[(r["setting"], r["variant_b"])]).sum())

    assert p["label"].is_null().all() and analysis.accuracy(store).is_empty()  # the sample photos carry no label
    fast = analysis.top1_disagreement(store)
    for r in fast.iter_rows(named=True):
        assert r["disagree"] == int((top1[r["config_a"]] != top1[r["config_b"]]).sum())


def test_pairs_use_only_images_both_sides_ran(hand) -> None:  # noqa: ANN001
    hand.write(hand.unit("torch", "torch", "native"), top1=[1, 2, 3, 4])
    # a second unit that ran images img0..img2 only, in another order, flipping img1
    ident = hand.unit("torch", "tvm", "basic")
    hand.write(ident, top1=[1, 9, 3])
    pairs = analysis.top1_disagreement(hand.store)
    assert pairs.select("n_images", "disagree").rows() == [(3, 1), (3, 1)]
    full = analysis.pairwise_agreement(hand.store)
    assert full["n_images"].to_list() == [3, 3] and full["disagree"].to_list() == [1, 1]


def test_jaccard_by_hand() -> None:
    from deltann.analysis.aligned import jaccard

    a = np.array([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, -1, -1, -1]]).T
    b = np.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1], [1, 2, 3, 4, 6], [1, 2, -1, -1, -1]]).T
    # same order 1; same set reordered 1; one class swapped 4/6; two-class lists equal 2/2
    assert jaccard(a, b) == pytest.approx([1.0, 1.0, 4 / 6, 1.0])


def test_full_logit_tables_read_by_image_ranges_equal_one_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A group larger than the partition budget is read a range of images at a time; every
    pair's metrics combined over the ranges are those of one read of the whole group."""
    from deltann.analysis import aligned, findings
    from deltann.analysis.labels import pairwise_agreement
    from tests.analysis.conftest import Hand

    rng = np.random.default_rng(3)
    hand = Hand(tmp_path / "store")
    n = 700
    base = rng.normal(size=(n, 1000)).astype(np.float32)
    for c, (variant, runtime, setting) in enumerate([("torch", "torch", "native"), ("torch->onnx", "onnxruntime",
                                                      "native"), ("torch->onnx", "tvm", "basic")]):
        logits = base + rng.normal(scale=0.01 * c, size=base.shape).astype(np.float32)
        top5 = np.argsort(-logits, axis=1)[:, :5]
        # units of 300 images (shards): image ranges cut across them
        for lo in range(0, n, 300):
            hi = min(n, lo + 300)
            ident = hand.unit(variant, runtime, setting, key=f"{variant}-{setting}-{lo}")
            store = hand.store
            rows = [{name: None for name in SCHEMAS["predictions"].names} | ident | {
                "image_index": i, "image_id": f"img{i:04d}", "input_hash": f"h{i}", "top1": int(top5[i, 0]),
                "top5": top5[i].tolist(), "top5_prob": [0.2] * 5, "logits": logits[i].tolist(), "latency_ns": 1}
                for i in range(lo, hi)]
            store.write(tag(pa.Table.from_pylist(rows, schema=SCHEMAS["predictions"]), "predictions",
                            ident["unit_key"], 0))
            build = {name: None for name in SCHEMAS["builds"].names} | ident | {"status": "ok", "passes": []}
            store.write(tag(pa.Table.from_pylist([build], schema=SCHEMAS["builds"]), "builds", ident["unit_key"], 0))
    whole = pairwise_agreement(hand.store)
    worst = findings._worst_image(hand.store, "m", "local", "torch [torch]", "torch->onnx [tvm:basic]")
    assert aligned.image_ranges(hand.store, ["model", "device"], "config") == [None]
    monkeypatch.setattr(aligned, "PARTITION_BYTES", 3 * aligned.LOGIT_BYTES * 256)  # 256 images a read
    assert len(aligned.image_ranges(hand.store, ["model", "device"], "config")) == 3
    parts = pairwise_agreement(hand.store)
    assert parts.height == 6 and whole["n_images"].to_list() == [n] * 6
    for col in ("n_images", "disagree", "same_inputs", "max_abs_dlogit"):
        assert parts[col].to_list() == whole[col].to_list(), col
    for col in ("disagree_pct", "top5_jaccard", "mean_max_abs_dlogit"):
        assert np.allclose(parts[col].to_numpy(), whole[col].to_numpy(), rtol=1e-6), col
    assert whole["disagree"].max() > 0 and whole["top5_jaccard"].min() < 1  # the metrics have something to combine
    assert findings._worst_image(hand.store, "m", "local", "torch [torch]", "torch->onnx [tvm:basic]") == worst


def test_shards_of_one_run_on_two_boards_are_one_run(hand) -> None:  # noqa: ANN001
    """Two shards of one configuration, each on its own board, are not a repeated run;
    the same images on two boards (replicate) are."""
    for lo, board in ((0, "b1"), (3, "b2")):
        ident = hand.unit("torch", "torch", "native", board=board, key=f"shard-{lo}")
        rows = [{name: None for name in SCHEMAS["predictions"].names} | ident | {
            "image_index": i, "image_id": f"img{i}", "input_hash": f"h{i}", "top1": i, "top5": [i, 1, 2, 3, 4],
            "top5_prob": [0.2] * 5, "logits": [0.0, 1.0], "latency_ns": 1} for i in range(lo, lo + 3)]
        hand.store.write(tag(pa.Table.from_pylist(rows, schema=SCHEMAS["predictions"]), "predictions",
                             ident["unit_key"], 0))
        build = {name: None for name in SCHEMAS["builds"].names} | ident | {"status": "ok", "passes": []}
        hand.store.write(tag(pa.Table.from_pylist([build], schema=SCHEMAS["builds"]), "builds", ident["unit_key"], 0))
    row = analysis.label_stability(hand.store).row(0, named=True)
    assert (row["runs"], row["images"], row["flips"]) == (1, 6, 0)
    hand.write(hand.unit("torch", "torch", "native", board="b3", key="again"), top1=[0, 1, 9])  # img2 flips
    row = analysis.label_stability(hand.store).row(0, named=True)
    assert (row["runs"], row["images"], row["flips"]) == (2, 6, 1)
