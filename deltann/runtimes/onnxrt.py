"""onnxruntime (CPU execution provider, default graph optimisations), and the per-layer
capture of an ONNX graph: every float output of every node that depends on the input
becomes a graph output (:func:`expose_onnx_layers`, which TVM's capture of an ONNX build
shares)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from deltann.core.runner import Runner, thread_count
from deltann.core.runtime_registry import register
from deltann.core.trace import EMPTY, Layer, Trace, dedupe, stack, to_layout, unique


class OnnxrtRunner(Runner):
    name = "onnxruntime"
    framework = "onnx"
    dist = "onnxruntime"
    framework_dist = "onnx"
    suffixes = (".onnx",)
    data_files = True

    def __init__(self, path: Path, layout: str = "NCHW") -> None:
        super().__init__(layout)
        self.path = Path(path)
        self.session: Any = None

    def activate_impl(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = thread_count()
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def deactivate_impl(self) -> None:
        self.session = None

    @classmethod
    def capture(cls, payload: Any, x: np.ndarray, layout: str, *, meta: dict[str, Any] | None = None,
                **options: Any) -> Trace:
        return capture_onnxruntime(Path(payload), x, layout)


@dataclass
class _OnnxLayers:
    model: Any  # onnx.ModelProto with the exposed outputs
    layers: list[Layer]  # templates (value empty); outputs[0] is the exposed tensor


def expose_onnx_layers(model: Any) -> _OnnxLayers:
    """Copy of ``model`` whose graph outputs include the first float output of every node
    that depends on the graph input (shape arithmetic and constants are left out; data
    flowing through them still links a layer to its producers)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    inits = {t.name: t for t in model.graph.initializer}
    live = {i.name for i in model.graph.input if i.name not in inits}
    existing = [o.name for o in model.graph.output]
    producers: dict[str, tuple[str, ...]] = {}
    layers: list[Layer] = []
    seen: set[str] = set()
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
    for i, node in enumerate(model.graph.node):
        if not any(name in live for name in node.input):
            continue
        live.update(node.output)
        ins = dedupe(p for name in node.input for p in producers.get(name, ()))
        out = node.output[0]
        if types.get(out, onnx.TensorProto.FLOAT) not in floats:
            producers.update({o: ins for o in node.output})
            continue
        params = {name: numpy_helper.to_array(inits[name]).astype(np.float32)
                  for name in node.input if name in inits and inits[name].data_type in floats}
        name = unique(node.name or f"{node.op_type}_{i}", seen, i)
        producers.update({o: (name,) for o in node.output})
        layers.append(Layer(name, node.op_type, EMPTY, tuple(node.output), params, inputs=ins))
    for layer in layers:
        if layer.outputs[0] not in existing:
            elem = types.get(layer.outputs[0], onnx.TensorProto.FLOAT)
            model.graph.output.append(onnx.helper.make_tensor_value_info(layer.outputs[0], elem, None))
    return _OnnxLayers(model, layers)


def _onnx_trace(runtime: str, layout: str, exposed: _OnnxLayers, values: dict[str, np.ndarray]) -> Trace:
    return Trace(runtime, layout, [replace(layer, value=np.asarray(values[layer.outputs[0]]))
                                   for layer in exposed.layers if layer.outputs[0] in values])


def capture_onnxruntime(path: Path, x: np.ndarray, layout: str = "NCHW") -> Trace:
    """Every node's output from onnxruntime (CPU, default optimisations: an exposed
    tensor is kept, so fusions across it do not happen)."""
    import onnx
    import onnxruntime as ort

    exposed = expose_onnx_layers(onnx.load(str(path)))
    session = ort.InferenceSession(exposed.model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    xin = to_layout(x, layout)
    # Exporters fix the batch at 1: one image at a time, stacked.
    values = stack([dict(zip(names, session.run(names, {input_name: xin[i : i + 1]}), strict=True))
                     for i in range(len(xin))])
    return _onnx_trace("onnxruntime", layout, exposed, values)


register(OnnxrtRunner)
