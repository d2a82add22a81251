"""The runtime registry: a runtime is one module registering one runner class.

This file is such a module. It adds a toy runtime, ``numpy``, that runs models of its own
framework, ``npnet``: a ``.npnet`` file (an ``.npz`` archive, read without pickle) holding
``tiny_cnn``'s weights, run by a forward pass written in numpy. With it, one conversion
hop ``npnet->onnx`` (ONNX written with ``onnx.helper``), so that a study has two
configurations of the same model to compare. Nothing in deltann names either: the study
runs through the registry (predictions and timing rows on a real Ray board), and
``deltann localize`` captures the toy runtime's layers against onnxruntime's.

A board process finds the toy runtime the way a plugin is found: ``DELTANN_RUNTIMES``
names this file, and the board actor is given that variable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deltann import convert
from deltann.convert.base import Hop, Produced
from deltann.runtimes import registry
from deltann.runtimes.base import Runner
from deltann.runtimes.trace import Layer, Trace, to_layout

N_CONVS = 3  # tiny_cnn: three 3x3 stride-2 convs with ReLU, a global mean, a dense layer


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3 convolution, stride 2, padding 1 (NCHW), as torch's Conv2d computes it."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    return np.einsum("nchwij,ocij->nohw", windows, w, optimize=True) + b[None, :, None, None]


def _forward(weights: dict[str, np.ndarray], x: np.ndarray) -> list[tuple[str, str, np.ndarray, dict[str, Any]]]:
    """Every layer of the forward pass: (name, op, output, own parameters); the last is the logits.
    Names and ops are those of the ONNX graph :func:`npnet_to_onnx` writes."""
    out = []
    for i in range(N_CONVS):
        w, b = weights[f"convs.{i}.weight"], weights[f"convs.{i}.bias"]
        x = _conv(x, w, b).astype(np.float32)
        out.append((f"convs.{i}", "Conv", x, {"weight": w, "bias": b}))
        x = np.maximum(x, 0)
        out.append((f"relu.{i}", "Relu", x, {}))
    x = x.mean(axis=(2, 3))
    out.append(("pool", "ReduceMean", x, {}))
    w, b = weights["fc.weight"], weights["fc.bias"]
    out.append(("fc", "Gemm", (x @ w.T + b).astype(np.float32), {"weight": w, "bias": b}))
    return out


def _read(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


@registry.register
class NumpyRunner(Runner):
    name = "numpy"
    framework = "npnet"
    dist = framework_dist = "numpy"
    suffixes = (".npnet",)

    def __init__(self, path: Path, layout: str = "NCHW") -> None:
        super().__init__(layout)
        self.path = Path(path)
        self.weights: dict[str, np.ndarray] = {}

    def activate_impl(self) -> None:
        self.weights = _read(self.path)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return _forward(self.weights, x)[-1][2]

    @classmethod
    def capture(cls, payload: Any, x: np.ndarray, layout: str, *, meta: dict[str, Any] | None = None,
                **options: Any) -> Trace:
        layers, previous = [], None
        for name, op, value, params in _forward(_read(Path(payload)), to_layout(x, layout)):
            layers.append(Layer(name, op, value, (f"{name}:out",), params,
                                inputs=(previous,) if previous else ()))
            previous = name
        return Trace(cls.name, layout, layers)


def npnet_to_onnx(parent: Produced, spec: Any, out_dir: Path, quantize: str) -> Produced:
    """The same network as an ONNX graph, node for node, tensors named ``<node>:out``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = _read(Path(parent.payload))
    nodes, inits, prev = [], [], "input"
    for i in range(N_CONVS):
        for part in ("weight", "bias"):
            inits.append(numpy_helper.from_array(weights[f"convs.{i}.{part}"], f"convs.{i}.{part}"))
        nodes.append(helper.make_node("Conv", [prev, f"convs.{i}.weight", f"convs.{i}.bias"], [f"convs.{i}:out"],
                                      name=f"convs.{i}", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"convs.{i}:out"], [f"relu.{i}:out"], name=f"relu.{i}"))
        prev = f"relu.{i}:out"
    nodes.append(helper.make_node("ReduceMean", [prev], ["pool:out"], name="pool", axes=[2, 3], keepdims=0))
    inits += [numpy_helper.from_array(weights["fc.weight"], "fc.weight"),
              numpy_helper.from_array(weights["fc.bias"], "fc.bias")]
    nodes.append(helper.make_node("Gemm", ["pool:out", "fc.weight", "fc.bias"], ["fc:out"], name="fc", transB=1))
    graph = helper.make_graph(nodes, "npnet", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("fc:out", TensorProto.FLOAT, [1, 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    onnx.save(model, str(path))
    return Produced(path, "NCHW")


convert.register(Hop("npnet", "onnx", "onnx", npnet_to_onnx))


# --- tests ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def npnet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deltann.zoo import tiny

    path = tmp_path_factory.mktemp("npnet") / "tiny.npnet"
    with path.open("wb") as fh:
        np.savez(fh, **tiny._weights())
    return path


def test_registry_knows_the_toy_runtime_from_this_file_alone(npnet_file: Path) -> None:
    from deltann.convert.base import framework_dist, parse_chain
    from deltann.zoo import tiny

    assert registry.get("numpy") is NumpyRunner and registry.native("npnet") is NumpyRunner
    assert registry.framework_of_suffix(".NPNET") == "npnet" and framework_dist("npnet") == "numpy"
    assert [s.framework for s in parse_chain("npnet->onnx")] == ["npnet", "onnx"]
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with registry.get("numpy").from_artifact(npnet_file) as runner:
        logits = np.concatenate([runner.infer(x[i : i + 1]) for i in range(2)])
    import torch

    with torch.inference_mode():
        expected = tiny.load_torch()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_register_refuses_what_would_be_ambiguous() -> None:
    class Other(Runner):
        name = "numpy"

    class SecondOnnx(Runner):
        name = "second-onnx"
        framework = "onnx"

    with pytest.raises(ValueError, match="runtime 'numpy' is already registered"):
        registry.register(Other)
    with pytest.raises(ValueError, match="framework 'onnx' already runs natively in 'onnxruntime'"):
        registry.register(SecondOnnx)
    with pytest.raises(ValueError, match="no runner for runtime 'caffe'; known: .*numpy"):
        registry.get("caffe")


def test_a_missing_plugin_is_named_until_fixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere.py"
    monkeypatch.setenv(registry.PLUGINS_ENV, str(missing))
    for _ in range(2):
        with pytest.raises(RuntimeError, match=f"DELTANN_RUNTIMES: {missing} not found"):
            registry.get("numpy")
    monkeypatch.setenv(registry.PLUGINS_ENV, "deltann_no_such_module")
    with pytest.raises(RuntimeError, match="cannot import 'deltann_no_such_module'"):
        registry.runners()
    monkeypatch.delenv(registry.PLUGINS_ENV)
    assert registry.get("numpy") is NumpyRunner


def test_study_and_localize_run_through_the_toy_runtime(tmp_path: Path, npnet_file: Path,
                                                        monkeypatch: pytest.MonkeyPatch, ray_session: None) -> None:
    """A real study of a ``.npnet`` user model on the toy runtime and, converted, on
    onnxruntime: both give tiny_cnn's torch top-1; the toy runtime has timing rows; and
    ``localize`` captures its layers through the registry, aligned one to one with
    onnxruntime's, every one within tolerance."""
    import polars as pl

    from deltann.commands.localize import localize_pair
    from deltann.fleet.driver import run_study
    from deltann.store import Store

    monkeypatch.setenv(registry.PLUGINS_ENV, __file__)  # the board process loads this file too
    study = tmp_path / "study.toml"
    study.write_text(f"""
name = "toy-runtime"
models = ["toy"]
variants = ["npnet", "npnet->onnx"]
runtimes = ["native"]
[dataset]
limit = 3
[timing]
warmup = 1
number = 1
repeat = 2
[user_models.toy]
path = "{npnet_file}"
input_shape = [1, 3, 64, 64]
preprocess = {{ size = 64, resize_shorter = 72 }}
labels = 1000
""")
    out = tmp_path / "results"
    summary = run_study(study, out, progress=False)
    store = Store(out)
    builds = store.scan("builds").collect()
    assert summary.failed == 0, builds.select("config", "stage", "message").to_dicts()
    assert sorted(builds["config"].to_list()) == ["npnet [numpy]", "npnet->onnx [onnxruntime]"]
    predictions = store.scan("predictions").collect()
    by_config = {c: dict(zip(g["image_id"], g["top1"], strict=True))
                 for (c,), g in predictions.group_by(["config"])}
    assert len(by_config["npnet [numpy]"]) == 3
    assert by_config["npnet [numpy]"] == by_config["npnet->onnx [onnxruntime]"]
    timings = store.scan("timings").filter(pl.col("runtime") == "numpy").collect()
    assert timings.height == 3 and all(s and min(s) > 0 for s in timings["samples_ns"].to_list())

    result = localize_pair(out, "npnet [numpy]", "npnet->onnx [onnxruntime]", images="all")
    loc = result.localization
    assert loc.n_a == loc.n_b == 2 * N_CONVS + 2
    assert len(loc.matched) == loc.n_a and loc.first_divergent is None
    layers = store.scan("layers").collect()
    assert layers.height >= loc.n_a and set(layers["config"]) == {"npnet [numpy]"}
