"""The Keras, TF and LiteRT runners, and TVM's TFLite frontend, on a small real Keras
model and the artifacts the real tools make from it. Inputs arrive NCHW; the NHWC
artifacts must transpose inside the runner (their layout is recorded, not guessed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deltann.convert.chain_spec import Produced
from deltann.core import runtime_registry as registry
from deltann.runtimes.native import native_runner


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Keras 3 classifier (NHWC, 32x32x3 -> 100) with seeded weights, saved. The
    dense layer has 3200 weights: above TFLite's 1024-element floor for dynamic-range
    quantisation, so that mode really quantises something."""
    import keras

    keras.utils.set_random_seed(7)
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
        keras.layers.DepthwiseConv2D(3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(100),
    ])
    path = tmp_path_factory.mktemp("keras") / "small.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def nchw() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(keras_file: Path, nchw: np.ndarray) -> np.ndarray:
    import keras

    model = keras.saving.load_model(keras_file, safe_mode=True)
    return np.asarray(model(nchw.transpose(0, 2, 3, 1), training=False))


def _run(runtime: str, payload: Any, layout: str, x: np.ndarray, meta: dict[str, Any] | None = None) -> np.ndarray:
    with native_runner(runtime, payload, layout, meta) as runner:
        return np.concatenate([runner.infer(x[i : i + 1]) for i in range(len(x))])


def test_every_native_runtime_has_a_runner() -> None:
    assert set(registry.frameworks()) >= {"torch", "onnx", "keras", "tf", "tflite"}
    for framework in registry.frameworks():
        runner = registry.native_of(framework)
        assert registry.get(runner.name) is runner and runner.framework == framework
        assert runner.dist and registry.framework_dist(framework)


def test_keras_runner_transposes_nchw_inputs(keras_file: Path, nchw: np.ndarray, reference: np.ndarray) -> None:
    out = _run("keras", keras_file, "NHWC", nchw)
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)
    # Declared NCHW, the same file gets the wrong tensor and fails: layout is not guessed.
    with pytest.raises(Exception):  # noqa: B017 - Keras raises its own shape error type
        _run("keras", keras_file, "NCHW", nchw)


def test_tf_and_litert_runners_on_converted_artifacts(
    keras_file: Path, nchw: np.ndarray, reference: np.ndarray, tmp_path: Path
) -> None:
    from deltann.convert.keras_tf import keras_to_tf
    from deltann.convert.keras_tflite import keras_to_tflite

    parent = Produced(keras_file, "NHWC", {"keras_api": "keras"})
    (tmp_path / "tf").mkdir()
    (tmp_path / "tfl").mkdir()
    saved = keras_to_tf(parent, None, tmp_path / "tf", "none")
    assert saved.layout == "NHWC" and (saved.payload / "saved_model.pb").exists()
    np.testing.assert_allclose(_run("tf", saved.payload, saved.layout, nchw), reference, rtol=1e-5, atol=1e-5)

    lite = keras_to_tflite(parent, None, tmp_path / "tfl", "none")
    assert lite.layout == "NHWC"
    np.testing.assert_allclose(_run("litert", lite.payload, lite.layout, nchw), reference, rtol=1e-4, atol=1e-4)


def test_tflite_quantize_modes_change_the_file(keras_file: Path, tmp_path: Path) -> None:
    """none / float16 / dynamic-range give three different flatbuffers: float16 halves
    the weights, dynamic-range stores int8 weights (no hidden int8 in 'none')."""
    from deltann.convert.keras_tflite import keras_to_tflite

    parent = Produced(keras_file, "NHWC", {"keras_api": "keras"})
    sizes = {}
    tensors = {}
    for mode in ("none", "float16", "dynamic-range"):
        (tmp_path / mode).mkdir()
        out = keras_to_tflite(parent, None, tmp_path / mode, mode)
        sizes[mode] = out.payload.stat().st_size
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(out.payload))
        tensors[mode] = {np.dtype(t["dtype"]).name for t in it.get_tensor_details()}
    assert "int8" not in tensors["none"] and "float16" not in tensors["none"]
    assert "float16" in tensors["float16"]
    assert "int8" in tensors["dynamic-range"]
    assert len(set(sizes.values())) == 3


def test_tvm_tflite_frontend_matches_litert(keras_file: Path, nchw: np.ndarray, tmp_path: Path) -> None:
    import json

    from deltann.compile.frontends import import_relax
    from deltann.compile.pipeline import build, make_target
    from deltann.convert.keras_tflite import keras_to_tflite
    from deltann.runtimes.tvm_rt import TvmRunner

    assert TvmRunner.frontends["tflite"] == "tflite"
    lite = keras_to_tflite(Produced(keras_file, "NHWC", {"keras_api": "keras"}), None, tmp_path, "none")
    mod = import_relax("tflite", lite.payload, (1, 32, 32, 3))
    exe = build(mod, (), make_target(json.dumps({"kind": "llvm"}), ""))
    with TvmRunner(exe, layout="NHWC") as runner:
        tvm_out = np.concatenate([runner.infer(nchw[i : i + 1]) for i in range(len(nchw))])
    np.testing.assert_allclose(tvm_out, _run("litert", lite.payload, "NHWC", nchw), rtol=1e-4, atol=1e-4)


def test_runner_refuses_unknown_layout() -> None:
    with pytest.raises(ValueError, match="unknown layout 'CHWN'"):
        native_runner("onnxruntime", "x.onnx", "CHWN")
    with pytest.raises(ValueError, match="no runner for runtime 'caffe'"):
        native_runner("caffe", "x", "NCHW")


def test_frozen_graphdef_runs_and_converts(keras_file: Path, nchw: np.ndarray, reference: np.ndarray,
                                           tmp_path: Path) -> None:
    """A frozen GraphDef (.pb, as TF-slim ships) has no signature: its tensor names are
    metadata. The TF runner, tf->tflite and tf->onnx all read them from there."""
    import keras
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from deltann.convert.tf_onnx import tf_to_onnx
    from deltann.convert.tf_tflite import tf_to_tflite

    model = keras.saving.load_model(keras_file, safe_mode=True)
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec((1, 32, 32, 3), tf.float32, name="input"))
    frozen = convert_variables_to_constants_v2(fn)
    pb = tmp_path / "frozen.pb"
    pb.write_bytes(frozen.graph.as_graph_def().SerializeToString())
    meta = {"input": frozen.inputs[0].name, "output": frozen.outputs[0].name}

    np.testing.assert_allclose(_run("tf", pb, "NHWC", nchw, meta), reference, rtol=1e-5, atol=1e-5)
    parent = Produced(pb, "NHWC", meta)
    (tmp_path / "tfl").mkdir()
    (tmp_path / "onnx").mkdir()
    lite = tf_to_tflite(parent, None, tmp_path / "tfl", "none")
    np.testing.assert_allclose(_run("litert", lite.payload, "NHWC", nchw), reference, rtol=1e-4, atol=1e-4)
    onnx = tf_to_onnx(parent, None, tmp_path / "onnx", "none")
    assert onnx.layout == "NHWC"
    np.testing.assert_allclose(_run("onnxruntime", onnx.payload, "NHWC", nchw), reference, rtol=1e-4, atol=1e-4)
