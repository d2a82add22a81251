"""A toy runtime kept outside deltann, as a user would add one: one module registering one
runner class (tests/runtimes/test_registry.py loads it through ``DELTANN_RUNTIMES``).

``numpy`` runs models of its own framework, ``npnet``: a ``.npnet`` file (an ``.npz``
archive, read without pickle) holding ``tiny_cnn``'s weights, run by a forward pass
written in numpy, with its per-layer capture. With it, one conversion hop
``npnet->onnx`` (ONNX written with ``onnx.helper``, node for node), so that a study has
two configurations of the same model to compare. Nothing in deltann names either."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deltann import convert
from deltann.convert.chain_spec import Hop, Produced
from deltann.core import runtime_registry as registry
from deltann.core.runner import Runner
from deltann.core.trace import Layer, Trace, to_layout

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


registry.register(NumpyRunner)
convert.register(Hop("npnet", "onnx", "onnx", npnet_to_onnx))
