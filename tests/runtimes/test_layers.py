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
    # producers, by tensor identity: the graph alignment orders branches by
    assert [layer.inputs for layer in trace.layers[:3]] == [(), ("convs.0",), ("/relu",)]
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
    assert trace.layers[1].inputs == ("/convs.0/Conv",) and trace.layers[-1].inputs == ("/ReduceMean",)
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
    from deltann.analysis.layer_diff import localize
    from deltann.convert.chain_spec import Produced

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
    assert [la.inputs for la in trace.layers] == [(), ("stem",), ("dw",), ("project",), ("pool",)]
    np.testing.assert_allclose(trace.layers[-1].value, np.asarray(model(x.transpose(0, 2, 3, 1))), rtol=1e-6)
    (tmp_path / "tfl").mkdir()
    tfl = convert.get("keras", "tflite").fn(Produced(model, "NHWC"), None, tmp_path / "tfl", "none")
    loc = localize(trace, layers.capture_litert(tfl.payload, x, "NHWC"))
    assert loc.alignment_rate == 1.0 and loc.first_divergent is None
    assert [r["layer_a"] for r in loc.matched] == ["stem", "dw", "project", "pool", "head"]


# --- TVM through the torch exported-program and TFLite frontends; TF; kernels as built ---
def _real_build_logits(frontend: str, payload: object, input_shape: tuple[int, ...], setting: str,
                       x: np.ndarray) -> np.ndarray:
    """The logits of the build exactly as a study makes it (TvmBuild: same import, same
    passes, nothing exposed), one image at a time."""
    from deltann.compile.settings import passes_of
    from deltann.runtimes.tvm_rt import TvmBuild, TvmRunner

    builder = TvmBuild(frontend, payload, input_shape, passes_of(setting), '{"kind": "llvm"}', "")
    with TvmRunner(builder(), "llvm") as runner:
        return np.concatenate([runner.infer(x[i : i + 1]) for i in range(len(x))])


def test_tvm_torch_export_capture_names_module_paths(cache: ArtifactCache, tiny_x: np.ndarray) -> None:
    """The recorder runs inside torch.export, its tensors become extra outputs of the
    exported program: TVM's layers carry the very names, producers and parameters of
    the eager capture, and the exposed build computes what the real build computes."""
    from deltann.compile.settings import passes_of

    model = cache.get("tiny_cnn", "torch").payload
    eager = layers.capture_torch(model, tiny_x)
    tvm = layers.capture_tvm_torch(model, tiny_x, passes_of("extended"))
    assert [(la.name, la.inputs) for la in tvm.layers] == [(la.name, la.inputs) for la in eager.layers]
    for a, b in zip(eager.layers, tvm.layers, strict=True):
        np.testing.assert_allclose(b.value, a.value, rtol=1e-4, atol=1e-4, err_msg=a.name)
        assert a.params.keys() == b.params.keys() and all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    real = _real_build_logits("torch.export", model, (1, 3, 64, 64), "extended", tiny_x)
    np.testing.assert_allclose(tvm.layers[-1].value, real, rtol=1e-5, atol=1e-5)


def test_tvm_kernel_capture_is_the_build_as_built(cache: ArtifactCache, tiny_x: np.ndarray) -> None:
    """Kernel by kernel, nothing exposed: 'default' fuses conv+bias+ReLU, so the capture
    has fewer layers than the model and its last kernel's output is the real logits."""
    from deltann.compile.settings import passes_of

    model = cache.get("tiny_cnn", "torch").payload
    trace = layers.capture_tvm_kernels("torch.export", model, tiny_x, passes_of("default"))
    names = [la.name for la in trace.layers]
    assert len(names) == 5 and all(n.startswith("fused_conv2d") for n in names[:3]), names
    assert all(la.fused_act for la in trace.layers[:3]) and trace.layers[1].inputs == (names[0],)
    assert set(trace.layers[0].params) == {"input1", "input2"}  # weight and bias, read from the kernel call
    real = _real_build_logits("torch.export", model, (1, 3, 64, 64), "default", tiny_x)
    np.testing.assert_array_equal(trace.layers[-1].value, real)


def test_tf_savedmodel_and_tvm_tflite_captures(cache: ArtifactCache, tiny_x: np.ndarray) -> None:
    """onnx2tf's SavedModel (runtime tf) op by op, and TVM's import of the TFLite
    flatbuffer with every operator's output appended to the subgraph outputs."""
    from deltann.analysis.layer_diff import localize
    from deltann.compile.settings import passes_of
    from deltann.runtimes.litert_rt import LiteRTRunner

    tfl = cache.get("tiny_cnn", "torch->onnx->tf->tflite")  # makes torch->onnx->tf on the way
    saved = cache.get("tiny_cnn", "torch->onnx->tf")
    tf_trace = layers.capture_tf(saved.payload, tiny_x, saved.layout, saved.meta)
    ops = [la.op for la in tf_trace.layers]
    assert ops.count("Conv2D") == 3 and ops.count("Relu") == 3 and "MatMul" in ops
    conv = next(la for la in tf_trace.layers if la.op == "Conv2D")
    assert conv.params["input1"].shape == (3, 3, 3, 8)  # HWIO, frozen from the variables
    ref = layers.capture_torch(cache.get("tiny_cnn", "torch").payload, tiny_x)
    loc = localize(ref, tf_trace)
    assert loc.alignment_rate == 1.0 and loc.first_divergent is None
    assert {r["layer_a"] for r in loc.matched} == {la.name for la in ref.layers}
    assert [r["param_max_abs"] for r in loc.matched if r["layer_a"].startswith("convs")] == [0.0, 0.0, 0.0]

    lite = layers.capture_litert(tfl.payload, tiny_x, tfl.layout)
    tvm = layers.capture_tvm_tflite(tfl.payload, tiny_x, passes_of("default"))
    assert [(la.name, la.op, la.inputs) for la in tvm.layers] == [(la.name, la.op, la.inputs) for la in lite.layers]
    for a, b in zip(lite.layers, tvm.layers, strict=True):
        np.testing.assert_allclose(b.value.reshape(a.value.shape), a.value, rtol=1e-4, atol=1e-4, err_msg=a.name)
    with LiteRTRunner(tfl.payload, tfl.layout) as runner:
        expected = np.concatenate([runner.infer(tiny_x[i : i + 1]) for i in range(len(tiny_x))])
    np.testing.assert_allclose(tvm.layers[-1].value.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)


def test_capture_dispatch_errors_name_the_fix(tiny_x: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no per-layer TVM capture through frontend"):
        layers.capture("tvm", tmp_path / "model.pb", tiny_x, "NHWC")
    with pytest.raises(ValueError, match="no per-layer capture for runtime 'nope'"):
        layers.capture("nope", None, tiny_x, "NCHW")


def test_tf_capture_of_a_native_keras_savedmodel_with_branches(tmp_path: Path) -> None:
    """A SavedModel exported by Keras (runtime tf): op names carry the Keras layer scopes,
    a BN is its folded Mul + Add, and the two branches align with the Keras capture's."""
    import keras

    from deltann import convert
    from deltann.analysis.layer_diff import _prepare, _score, localize
    from deltann.convert.chain_spec import Produced

    keras.utils.set_random_seed(3)
    inp = keras.Input((32, 32, 3))
    y = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="stem")(inp)
    a = keras.layers.Conv2D(4, 1, name="br_a")(y)
    b = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6", name="br_b")(y)
    b = keras.layers.Conv2D(4, 1, name="br_b_proj")(b)
    y = keras.layers.BatchNormalization(name="bn")(keras.layers.Concatenate(name="cat")([a, b]))
    out = keras.layers.Dense(10, name="head")(keras.layers.GlobalAveragePooling2D(name="pool")(y))
    model = keras.Model(inp, out)
    x = np.random.RandomState(0).rand(2, 3, 32, 32).astype(np.float32)
    saved = convert.get("keras", "tf").fn(Produced(model, "NHWC"), None, tmp_path, "none")
    trace = layers.capture_tf(saved.payload, x, "NHWC", saved.meta)
    assert any(la.op == "ConcatV2" and len(la.inputs or ()) == 2 for la in trace.layers)
    ref = layers.capture_keras(model, x, "NHWC")
    loc = localize(ref, trace)
    assert loc.alignment_rate == 1.0 and loc.first_divergent is None
    pairs = {r["layer_a"]: r for r in loc.matched}
    assert set(pairs) == {la.name for la in ref.layers}
    assert "br_a_1" in pairs["br_a"]["layer_b"] and "br_b_proj_1" in pairs["br_b_proj"]["layer_b"]
    ka = {n.layer.name: n for n in _prepare(ref)}
    kb = {n.layer.name: n for n in _prepare(trace)}
    assert _score(ka["br_a"], kb[pairs["br_a"]["layer_b"]]) > 1  # the Keras layer name is in the TF op's scope
    assert all(pairs[n]["param_max_abs"] == 0.0 for n in ("stem", "br_a", "br_b", "br_b_proj", "head"))
    np.testing.assert_allclose(trace.layers[-1].value, np.asarray(model(x.transpose(0, 2, 3, 1))), rtol=1e-5,
                               atol=1e-6)
