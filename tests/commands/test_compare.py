"""``deltann compare``: Polygraphy-shaped pass/fail from stored outputs, exit 1 on mismatch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from deltann.cli import main
from deltann.commands.compare import compare, parse_tolerances
from deltann.store import SCHEMAS, Store, tag

REF, TEST = "torch [torch]", "torch [tvm:extended]"


def _logits(store: Store, config: str) -> np.ndarray:
    rows = store.scan("predictions").filter(pl.col("config") == config).sort("image_id").collect()
    return np.stack(rows["logits"].to_list()).astype(np.float64)


def test_parse_tolerances() -> None:
    assert parse_tolerances(None, 1e-5, "--atol") == {"": 1e-5}
    assert parse_tolerances(["1e-3", "logits:0.5"], 1e-5, "--atol") == {"": 1e-3, "logits": 0.5}
    for bad in ("nope:1", "logits:x", "-1"):
        with pytest.raises(ValueError, match="--atol"):
            parse_tolerances([bad], 1e-5, "--atol")


def test_real_run_passes_with_default_tolerances(tiny_results: Path, capsys) -> None:
    assert main(["compare", str(tiny_results), REF, TEST]) == 0
    out = capsys.readouterr().out
    assert "[I] Accuracy Summary | torch [torch] vs. torch [tvm:extended] | Passed: 4/4 iterations" in out
    assert out.rstrip().endswith("PASSED")


def test_real_run_fails_at_zero_tolerance_with_per_output_errors(tiny_results: Path, capsys) -> None:
    store = Store(tiny_results)
    a, b = _logits(store, REF), _logits(store, TEST)
    diff = np.abs(b - a)
    assert diff.max() > 0  # TVM's kernels round differently from torch's
    result = compare(str(tiny_results), REF, TEST, atol={"": 0.0}, rtol={"": 0.0})
    logits = result.outputs[0]
    assert logits.name == "logits" and not logits.passed
    assert logits.max_abs == pytest.approx(diff.max()) and logits.mean_abs == pytest.approx(diff.mean())
    assert logits.images_failed == int((diff > 0).any(axis=1).sum())
    assert main(["compare", str(tiny_results), REF, TEST, "--atol", "0", "--rtol", "0"]) == 1
    out = capsys.readouterr().out
    assert "[E]         FAILED | Output: 'logits'" in out and "[E]     FAILED | Mismatched outputs:" in out
    assert f"[abs={diff.max():.5g}]" in out  # Polygraphy's "Minimum Required Tolerance"
    # a per-output override lets exactly that output pass
    assert main(["compare", str(tiny_results), REF, TEST, "--atol", "0", f"logits:{diff.max()}",
                 "top5_prob:1e-3", "--rtol", "0"]) == 0
    out = capsys.readouterr().out
    assert f"[I]         Tolerance: [abs={diff.max():.5g}, rel=0] | Checking elemwise error" in out


def _hand_store(root: Path, configs: tuple[tuple[str, list[int]], ...]) -> None:
    store = Store(root)
    store.write_manifest({"name": "t"}, {"started": "now"})
    for config, top1 in configs:
        ident = {n: None for n in SCHEMAS["predictions"].names} | {
            "unit_key": config, "model": "m", "config": config, "device": "local",
            "variant": config.split(" [")[0], "setting": "native", "runtime": "torch"}
        rows = [ident | {"image_id": f"img{i}", "input_hash": f"h{i}", "top1": t, "top5": [t, 0, 1, 2, 6],
                         "top5_prob": [0.5, 0.2, 0.1, 0.1, 0.1], "logits": [0.0, 1.0]} for i, t in enumerate(top1)]
        store.write(tag(pa.Table.from_pylist(rows, schema=SCHEMAS["predictions"]), "predictions", config, 0))
        build = {n: None for n in SCHEMAS["builds"].names} | ident | {"status": "ok", "passes": []}
        build = {k: v for k, v in build.items() if k in SCHEMAS["builds"].names}
        store.write(tag(pa.Table.from_pylist([build], schema=SCHEMAS["builds"]), "builds", config, 0))


def test_top1_flip_fails_and_counts_iterations(tmp_path: Path, capsys) -> None:
    _hand_store(tmp_path, ((REF, [3, 4]), (TEST, [3, 5])))
    assert main(["compare", str(tmp_path), REF, TEST]) == 1
    out = capsys.readouterr().out
    assert "[E]         FAILED | Output: 'top1' | Difference exceeds tolerance on 1/2 images" in out
    assert "Passed: 1/2 iterations | Pass Rate: 50.0%" in out
    assert "FAILED | Mismatched outputs: ['top1']" in out


def test_unknown_configuration_is_a_one_line_error(tiny_results: Path, capsys) -> None:
    assert main(["compare", str(tiny_results), REF, "nope [x]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no predictions for configuration 'nope [x]'" in err and REF in err


def test_the_study_chain_name_finds_its_stored_route(tmp_path: Path, capsys) -> None:
    """A study variant ``onnx->tflite`` is stored as the route it took, ``onnx->tf->tflite``;
    the name the user wrote works too."""
    _hand_store(tmp_path, (("onnx [onnxruntime]", [3, 4]), ("onnx->tf->tflite [litert]", [3, 4])))
    assert main(["compare", str(tmp_path), "onnx [onnxruntime]", "onnx->tflite [litert]"]) == 0
    assert "Comparing 'onnx->tf->tflite [litert]' against reference 'onnx [onnxruntime]'" in capsys.readouterr().out
    assert main(["compare", str(tmp_path), "onnx [onnxruntime]", "onnx->keras [litert]"]) == 2
    assert "no predictions for configuration 'onnx->keras [litert]'" in capsys.readouterr().err
