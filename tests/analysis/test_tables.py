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


def test_latency_and_speedup_by_hand(tmp_path: Path) -> None:
    latency = analysis.latency_table(_store(tmp_path))
    medians = dict(zip(latency["config"], latency["median_ms"], strict=True))
    assert medians == {"torch [torch]": pytest.approx(20.0), "torch [tvm:basic]": pytest.approx(5.0)}
    iqr = dict(zip(latency["config"], latency["iqr_ms"], strict=True))
    assert iqr["torch [torch]"] == pytest.approx(10.0)  # q3 25 - q1 15 (linear)
    speed = analysis.speedup_table(latency)
    assert speed.height == 1
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
        raw = t.filter(pl.col("config") == row["config"])["samples_ns"].to_list()[0]
        assert row["median_ms"] == pytest.approx(np.median(raw) / 1e6)


def test_failures_lists_failed_units(tmp_path: Path) -> None:
    store = _store(tmp_path)
    bad = {n: None for n in SCHEMAS["builds"].names} | _unit("extended", "tvm") | {
        "unit_key": "bad", "status": "failed", "stage": "build", "outcome": "exception",
        "error_type": "ValueError", "message": "boom", "passes": []}
    store.write(tag(pa.Table.from_pylist([bad], schema=SCHEMAS["builds"]), "builds", "bad", 0))
    failed = analysis.failures(store)
    assert failed.select("config", "stage", "message").rows() == [("torch [tvm:extended]", "build", "boom")]
