"""A study with all four frameworks of MobileNetV2 lists every one of the 12 ordered
conversions among keras, tf, tflite and torch — each becomes a variant whose units end
in a ``builds`` row: ok, or failed with its stage and reason. None is silently missing.

Offline (this machine) no MobileNetV2 weights are cached in any framework, so every
unit fails at ``convert`` with the file to fetch and where to put it; with the weights
in place the same test checks that the variants run."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pyarrow as pa
import pytest

from deltann import plan
from deltann.convert.chain import ArtifactCache
from deltann.core.device_catalogue import load_catalogue
from deltann.fleet.driver import prepare_inputs
from deltann.fleet.execute import run_unit
from deltann.study import parse_study

PAIRS = [f"{a}->{b}" for a, b in itertools.permutations(("keras", "tf", "tflite", "torch"), 2)]


def test_twelve_conversions_are_each_a_variant_or_a_failure_row(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("DELTANN_MODELS", str(tmp_path / "models"))
    kinds = load_catalogue()
    study = parse_study({"name": "matrix", "models": ["mobilenet_v2"], "variants": PAIRS, "runtimes": ["native"],
                         "dataset": {"limit": 2}}, tmp_path / "matrix.toml", kinds)
    assert len(study.variants) == 12
    inputs = prepare_inputs(study, tmp_path)
    # Keras / TF-slim sources scale to [-1, 1]: their own recipe, recorded as a different input.
    assert inputs["mobilenet_v2@keras"].hashes != inputs["mobilenet_v2"].hashes
    units = plan.expand(study, inputs, kinds)
    assert {u.variant for u in units} == set(study.variants)

    cache = ArtifactCache(tmp_path / "artifacts")
    rows = []
    for unit in units:
        for table in run_unit(unit, inputs[unit.inputs], cache, study="matrix", board="b", hostname="h"):
            if (table.schema.metadata or {}).get(b"deltann.table") == b"builds":
                assert isinstance(table, pa.Table)
                rows.extend(table.to_pylist())
    assert sorted(r["variant"] for r in rows) == sorted(u.variant for u in units)
    for row in rows:
        assert row["quantize"] == "none"
        if row["status"] == "ok":
            assert row["layout"] in ("NCHW", "NHWC") and json.loads(row["hops"])
            continue
        assert row["stage"] and row["message"], row
        if row["stage"] == "convert":
            # offline: the source's weights; the message says which file goes where
            assert any(name in row["message"] for name in (
                "mobilenet_v2-b0353104.pth", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
                "mobilenet_v2_1.0_224_frozen.pb", "mobilenet_v2_1.0_224.tflite")), row["message"]
    by_source = {r["variant"].split("->")[0]: r for r in rows if r["status"] == "failed"}
    if "keras" in by_source and by_source["keras"]["error_type"] == "WeightsNotFound":
        assert str(tmp_path / "keras" / "models") in by_source["keras"]["message"]
