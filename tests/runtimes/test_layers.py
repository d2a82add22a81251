"""Per-layer capture on real frameworks: torch hooks (+ functional ops), onnxruntime and
TVM with every ONNX node output exposed, LiteRT with all tensors preserved. The last
captured layer must be the model's own output, so a capture that lost or reordered
tensors fails here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deltann import dataset, zoo
from deltann.convert.chain import ArtifactCache
from deltann.runtimes import layers


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> ArtifactCache:
    return ArtifactCache(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="module")
def tiny_x() -> np.ndarray:
    return dataset.preprocess(dataset.load_samples(2), zoo.get("tiny_cnn").preprocess).tensors


def test_torch_capture_names_modules_and_functional_ops(cache: ArtifactCache, tiny_x: np.ndarray) -> None:
    model = cache.get("tiny_cnn", "torch").payload
    trace = layers.capture_torch(model, tiny_x)
    names = [layer.name for layer in trace.layers]
    # convs are modules (hooks); relu and mean are functional calls in TinyCNN.forward
    assert names == ["convs.0", "/relu", "convs.1", "/relu_1", "convs.2", "/relu_2", "/mean", "fc"]
    assert set(trace.layers[0].params) == {"weight", "bias"}
    assert trace.layers[0].value.shape == (2, 8, 32, 32)
    import torch

    with torch.inference_mode():
        logits = model(torch.from_numpy(tiny_x)).numpy()
    np.testing.assert_array_equal(trace.layers[-1].value, logits)
    assert np.all(trace.layers[1].value >= 0)  # a ReLU output, not the conv's


def test_onnxruntime_capture_exposes_every_node(cache: ArtifactCache, tiny_x: np.ndarray) -> None:
    from deltann.runtimes.onnxrt import OnnxrtRunner

    onnx_path = cache.get("tiny_cnn", "torch->onnx").payload
    trace = layers.capture_onnxruntime(onnx_path, tiny_x)
    assert [la.op for la in trace.layers] == ["Conv", "Relu", "Conv", "Relu", "Conv", "Relu", "ReduceMean", "Gemm"]
    assert trace.layers[0].name == "/convs.0/Conv"
    assert set(trace.layers[0].params) == {"convs.0.weight", "convs.0.bias"}
    with OnnxrtRunner(onnx_path) as runner:
        expected = np.concatenate([runner.infer(tiny_x[i : i + 1]) for i in range(len(tiny_x))])
    np.testing.assert_allclose(trace.layers[-1].value, expected, rtol=1e-6, atol=1e-6)


def test_tvm_capture_names_match_onnx_and_values_agree(cache: ArtifactCache, tiny_x: np.ndarray) -> None:
    onnx_path = Path(cache.get("tiny_cnn", "torch->onnx").payload)
    ort = layers.capture_onnxruntime(onnx_path, tiny_x)
    tvm = layers.capture_tvm(onnx_path, tiny_x, passes=("FoldConstant", "FuseOps", "FuseTIR"))
    assert [la.outputs[0] for la in tvm.layers] == [la.outputs[0] for la in ort.layers]
    for a, b in zip(ort.layers, tvm.layers, strict=True):
        np.testing.assert_allclose(b.value, a.value, rtol=1e-4, atol=1e-4, err_msg=a.name)


@pytest.mark.slow  # its conversions repeat tests/analysis/test_localize.py's tiny TFLite ones
def test_litert_capture_preserves_intermediates(cache: ArtifactCache, tiny_x: np.ndarray) -> None:
    from deltann.runtimes.litert_rt import LiteRTRunner

    art = cache.get("tiny_cnn", "torch->onnx->tf->tflite")
    trace = layers.capture_litert(art.payload, tiny_x, art.layout)
    ops = [la.op for la in trace.layers]
    assert ops.count("CONV_2D") == 3 and ops[-1] == "FULLY_CONNECTED"
    assert all(la.fused_act for la in trace.layers if la.op == "CONV_2D")  # conv+bias+relu in one op
    assert trace.layers[1].value.shape == (2, 32, 32, 8)  # NHWC, as the artifact runs
    with LiteRTRunner(art.payload, art.layout) as runner:
        expected = np.concatenate([runner.infer(tiny_x[i : i + 1]) for i in range(len(tiny_x))])
    np.testing.assert_allclose(trace.layers[-1].value, expected, rtol=1e-5, atol=1e-5)
    quant = cache.get("tiny_cnn", "torch->onnx->tf->tflite:dynamic-range")
    qtrace = layers.capture_litert(quant.payload, tiny_x, quant.layout)
    # dynamic range quantises weights of >= 1024 elements: conv 1 and 2 and the dense, not conv 0
    assert [la.quantized for la in qtrace.layers if la.op in ("CONV_2D", "FULLY_CONNECTED")] == [
        False, True, True, True]


def test_keras_capture_and_alignment_with_its_tflite_conversion(tmp_path: Path) -> None:
    """Keras sub-model capture (one layer per Keras layer, activations fused into Conv2D)
    aligned with LiteRT's capture of the model's own keras->tflite conversion."""
    import keras

    from deltann import convert
    from deltann.analysis.localize import localize
    from deltann.convert.base import Produced

    keras.utils.set_random_seed(3)
    inp = keras.Input((32, 32, 3))
    y = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="stem")(inp)
    y = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6", name="dw")(y)
    y = keras.layers.Conv2D(16, 1, name="project")(y)
    y = keras.layers.GlobalAveragePooling2D(name="pool")(y)
    out = keras.layers.Dense(10, name="head")(y)
    model = keras.Model(inp, out)
    x = np.random.RandomState(0).rand(2, 3, 32, 32).astype(np.float32)
    trace = layers.capture_keras(model, x, "NHWC")
    assert [la.name for la in trace.layers] == ["stem", "dw", "project", "pool", "head"]
    assert [la.fused_act for la in trace.layers] == [True, True, False, False, False]
    np.testing.assert_allclose(trace.layers[-1].value, np.asarray(model(x.transpose(0, 2, 3, 1))), rtol=1e-6)
    (tmp_path / "tfl").mkdir()
    tfl = convert.get("keras", "tflite").fn(Produced(model, "NHWC"), None, tmp_path / "tfl", "none")
    loc = localize(trace, layers.capture_litert(tfl.payload, x, "NHWC"))
    assert loc.alignment_rate == 1.0 and loc.first_divergent is None
    assert [r["layer_a"] for r in loc.matched] == ["stem", "dw", "project", "pool", "head"]
