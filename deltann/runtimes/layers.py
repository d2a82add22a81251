"""Per-layer capture: every runtime's intermediate tensors, by name, in execution order,
with each layer's own parameters — what fault localization
(:mod:`deltann.analysis.localize`) aligns and compares.

One capture function per runtime, each returning a :class:`Trace` (an ordered list of
:class:`Layer`). How each runtime exposes its tensors (see NOTES.md "Per-layer outputs"):

- torch: forward hooks on every module that computes something itself (a leaf, or a
  module with parameters of its own such as a conv that owns its padding child); a module
  called twice is named ``path``, then ``path_1``, ... as the legacy ONNX exporter names
  its scopes, so the two name spaces agree;
- onnxruntime and TVM (from ONNX): every float output of every node that depends on the
  input becomes a graph output. TVM imports the ONNX exactly as deltann's builds do
  (folded by onnxruntime's basic optimisations first, which fuses Pad into Conv and
  renames nothing else), so its layers carry the folded graph's node and tensor names;
- LiteRT: ``experimental_preserve_all_tensors=True`` without the default delegate
  (XNNPACK would swallow the intermediates), one layer per operator;
- Keras: a sub-model over every layer's output.

Capturing is intrusive by nature (an exposed tensor cannot be fused away), so a capture
describes the model's arithmetic, not its fastest schedule. Only ``numpy`` is imported at
module level: the analysis layer imports :class:`Trace` without any framework.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("deltann.runtimes")


@dataclass
class Layer:
    """One captured tensor and what produced it.

    ``name`` is the runtime's own name (module path, ONNX node, TFLite tensor);
    ``outputs`` the tensor names it wrote (ONNX/TFLite), used to match two captures of one
    graph exactly; ``value`` is the batch output in the runtime's layout (see
    :attr:`Trace.layout`); ``params`` the layer's own weights (float, dequantised);
    ``fused_act`` says the op applies an activation itself (TFLite's fused ReLU6);
    ``quantized`` that some of its weights are stored as integers."""

    name: str
    op: str
    value: np.ndarray
    outputs: tuple[str, ...] = ()
    params: dict[str, np.ndarray] = field(default_factory=dict)
    fused_act: bool = False
    quantized: bool = False


@dataclass
class Trace:
    """A whole capture: the runtime, the layout of its 4-D tensors and the layers in
    execution (topological) order."""

    runtime: str
    layout: str
    layers: list[Layer]

    def arrays(self) -> dict[str, np.ndarray]:
        """Ordered ``name -> array`` (the plain form callers most often want)."""
        return {layer.name: layer.value for layer in self.layers}

    def params(self) -> dict[str, dict[str, np.ndarray]]:
        return {layer.name: layer.params for layer in self.layers if layer.params}


# --- torch -------------------------------------------------------------------------
def capture_torch(module: Any, x: np.ndarray) -> Trace:
    """Forward hooks on the modules that compute (leaves, and modules owning parameters),
    plus the tensor functions a container's ``forward`` calls itself (``torch.relu``,
    ``x + y``, ``flatten``), seen through a ``TorchFunctionMode``: without them a model
    written with functional activations or residual adds has no tensor to compare there.
    A functional op is named like the legacy ONNX exporter names it,
    ``/<module path>/<op>[_k]``, so both name spaces share scopes."""
    import torch
    from torch.overrides import TorchFunctionMode

    records: list[Layer] = []
    calls: dict[str, int] = {}
    handles = []
    stack: list[bool] = []  # per active module: does a hook capture it as a whole?
    scopes: list[str] = []

    def count(key: str) -> str:
        k = calls.get(key, 0)
        calls[key] = k + 1
        return key if k == 0 else f"{key}_{k}"

    def pre_for(path: str, captured: bool) -> Any:
        def pre(_mod: Any, _inputs: Any) -> None:
            stack.append(captured)
            scopes.append(path)
        return pre

    def hook_for(path: str, mod: Any, captured: bool) -> Any:
        def hook(_mod: Any, _inputs: Any, output: Any) -> None:
            try:
                if not captured or not isinstance(output, torch.Tensor):
                    return
                # stack[-1] is still True here: our own detach/cpu calls are not recorded
                params = {n: p.detach().cpu().numpy().copy() for n, p in mod.named_parameters(recurse=False)}
                params |= {n: b.detach().cpu().numpy().copy() for n, b in mod.named_buffers(recurse=False)
                           if b.dtype.is_floating_point}
                records.append(Layer(count(path), type(mod).__name__, output.detach().cpu().numpy().copy(),
                                     params=params))
            finally:
                stack.pop()
                scopes.pop()
        return hook

    class Functional(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            if not stack or stack[-1]:
                return out  # inside a captured module: its hook records the result
            if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.ndim == 0:
                return out
            if not any(isinstance(a, torch.Tensor) for a in args):
                return out
            op = getattr(func, "__name__", str(func)).strip("_")
            scope = scopes[-1] if scopes else ""
            name = count(f"/{scope}/{op}" if scope else f"/{op}")
            records.append(Layer(name, op, out.detach().cpu().numpy().copy()))
            return out

    for path, mod in module.named_modules():
        own = any(True for _ in mod.parameters(recurse=False))
        # nn.Identity computes nothing (a no-op padding slot): not a layer
        captured = (bool(path) and type(mod).__name__ != "Identity"
                    and (own or not any(True for _ in mod.children())))
        handles.append(mod.register_forward_pre_hook(pre_for(path, captured)))
        handles.append(mod.register_forward_hook(hook_for(path, mod, captured)))
    try:
        module.eval()
        with torch.inference_mode(), Functional():
            module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    finally:
        for h in handles:
            h.remove()
    return Trace("torch", "NCHW", records)


# --- ONNX (onnxruntime, TVM) ---------------------------------------------------------
@dataclass
class _OnnxLayers:
    model: Any  # onnx.ModelProto with the exposed outputs
    nodes: list[tuple[str, str, str, tuple[str, ...], dict[str, np.ndarray]]]  # name, op, out, outs, params


def expose_onnx_layers(model: Any) -> _OnnxLayers:
    """Copy of ``model`` whose graph outputs include the first float output of every node
    that depends on the graph input (shape arithmetic and constants are left out)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    inits = {t.name: t for t in model.graph.initializer}
    live = {i.name for i in model.graph.input if i.name not in inits}
    existing = [o.name for o in model.graph.output]
    nodes = []
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
    for i, node in enumerate(model.graph.node):
        if not any(name in live for name in node.input):
            continue
        live.update(node.output)
        out = node.output[0]
        if types.get(out, onnx.TensorProto.FLOAT) not in floats:
            continue
        params = {name: numpy_helper.to_array(inits[name]).astype(np.float32)
                  for name in node.input if name in inits and inits[name].data_type in floats}
        nodes.append((node.name or f"{node.op_type}_{i}", node.op_type, out, tuple(node.output), params))
    for _, _, out, _, _ in nodes:
        if out not in existing:
            elem = types.get(out, onnx.TensorProto.FLOAT)
            model.graph.output.append(onnx.helper.make_tensor_value_info(out, elem, None))
    return _OnnxLayers(model, nodes)


def _onnx_trace(runtime: str, layout: str, exposed: _OnnxLayers, values: dict[str, np.ndarray]) -> Trace:
    layers = [Layer(name, op, np.asarray(values[out]), outs, params)
              for name, op, out, outs, params in exposed.nodes if out in values]
    return Trace(runtime, layout, layers)


def capture_onnxruntime(path: Path, x: np.ndarray, layout: str = "NCHW") -> Trace:
    """Every node's output from onnxruntime (CPU, default optimisations: an exposed
    tensor is kept, so fusions across it do not happen)."""
    import onnx
    import onnxruntime as ort

    exposed = expose_onnx_layers(onnx.load(str(path)))
    session = ort.InferenceSession(exposed.model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    xin = _to_layout(x, layout)
    # Exporters fix the batch at 1: one image at a time, stacked.
    values = _stack([dict(zip(names, session.run(names, {input_name: xin[i : i + 1]}), strict=True))
                     for i in range(len(xin))])
    return _onnx_trace("onnxruntime", layout, exposed, values)


def capture_tvm(path: Path, x: np.ndarray, passes: tuple[str, ...] = (), target_json: str = '{"kind": "llvm"}',
                host_json: str = "", layout: str = "NCHW") -> Trace:
    """Every node's output from a TVM Relax build of the ONNX at ``path`` under ``passes``,
    imported as deltann's builds import it (onnxruntime-folded first)."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from deltann.compile.frontends import _fold_onnx
    from deltann.compile.pipeline import build, make_target

    exposed = expose_onnx_layers(_fold_onnx(Path(path)))
    mod = from_onnx(exposed.model, keep_params_in_input=False)
    target = make_target(target_json, host_json)
    executable = build(mod, tuple(passes), target)
    dev = tvm.device("cpu" if target.kind.name == "llvm" else target.kind.name, 0)
    vm = relax.VirtualMachine(executable, dev)
    names = [o.name for o in exposed.model.graph.output]
    xin = _to_layout(x, layout)
    per_image = []
    for i in range(len(xin)):
        out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(xin[i : i + 1]), device=dev))
        outs = [out] if hasattr(out, "numpy") else list(out)
        if len(outs) != len(names):
            raise RuntimeError(f"TVM returned {len(outs)} outputs for {len(names)} exposed ONNX outputs")
        per_image.append({n: o.numpy() for n, o in zip(names, outs, strict=True)})
    values = _stack(per_image)
    return _onnx_trace("tvm", layout, exposed, values)


# --- LiteRT ---------------------------------------------------------------------------
def _tflite_fused_activations(path: Path) -> dict[int, bool] | None:
    """Operator index -> "applies a fused activation", read from the flatbuffer's builtin
    options (``fused_activation_function != NONE``) with the ``tflite`` package; None
    when that package is missing (then the converter's tensor name tells, below)."""
    try:
        import tflite
    except ImportError:
        return None
    options = {
        tflite.BuiltinOptions.Conv2DOptions: tflite.Conv2DOptions,
        tflite.BuiltinOptions.DepthwiseConv2DOptions: tflite.DepthwiseConv2DOptions,
        tflite.BuiltinOptions.FullyConnectedOptions: tflite.FullyConnectedOptions,
        tflite.BuiltinOptions.AddOptions: tflite.AddOptions,
        tflite.BuiltinOptions.MulOptions: tflite.MulOptions,
        tflite.BuiltinOptions.Pool2DOptions: tflite.Pool2DOptions,
    }
    graph = tflite.Model.GetRootAsModel(Path(path).read_bytes(), 0).Subgraphs(0)
    fused: dict[int, bool] = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        cls = options.get(op.BuiltinOptionsType())
        table = op.BuiltinOptions()
        if cls is None or table is None:
            fused[i] = False
            continue
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        fused[i] = opts.FusedActivationFunction() != tflite.ActivationFunctionType.NONE
    return fused


def _dequantize(arr: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if arr.dtype in (np.float32, np.float16, np.float64):
        return arr.astype(np.float32)
    q = detail.get("quantization_parameters", {})
    scales, zeros = np.asarray(q.get("scales", [])), np.asarray(q.get("zero_points", []))
    if scales.size == 0:
        return arr.astype(np.float32)
    shape = [1] * arr.ndim
    if scales.size > 1:
        shape[int(q.get("quantized_dimension", 0))] = scales.size
    return ((arr.astype(np.float32) - zeros.reshape(shape)) * scales.reshape(shape)).astype(np.float32)


def capture_litert(path: Path, x: np.ndarray, layout: str = "NHWC") -> Trace:
    """One layer per TFLite operator, outputs preserved, no delegate."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    inp = it.get_input_details()[0]
    xin = _to_layout(x, layout)
    it.allocate_tensors()
    ops = [op for op in it._get_ops_details()  # the only API listing operators with their tensors
           if op["op_name"] != "DELEGATE" and len(op["outputs"])]
    per_image: list[dict[int, np.ndarray]] = []
    for i in range(len(xin)):
        it.set_tensor(inp["index"], np.ascontiguousarray(xin[i : i + 1]))
        it.invoke()
        per_image.append({int(op["outputs"][0]): it.get_tensor(int(op["outputs"][0])).copy() for op in ops})
    stacked = _stack(per_image)
    details = {d["index"]: d for d in it.get_tensor_details()}
    fused_ops = _tflite_fused_activations(path)
    produced = set()
    layers = []
    for op in ops:
        out = int(op["outputs"][0])
        produced.update(int(o) for o in op["outputs"])
        name = details[out]["name"]
        params: dict[str, np.ndarray] = {}
        quantized = False
        for k, idx in enumerate(int(i) for i in op["inputs"]):
            if idx < 0 or idx in produced or idx == inp["index"]:
                continue
            try:
                raw = it.get_tensor(idx)
            except ValueError:
                continue
            weights = raw.dtype in (np.int8, np.uint8)  # (int32 inputs are shapes, paddings, axes)
            quantized = quantized or weights
            if (raw.dtype.kind == "f" or weights) and raw.ndim >= 1:
                params[f"input{k}"] = _dequantize(raw, details[idx])
        if fused_ops is not None:
            fused = fused_ops.get(int(op["index"]), False)
        else:  # the TF converter names a fused tensor "<act>;<add>;<conv>"
            fused = "relu" in name.split(";")[0].lower()
        value = stacked[out]
        if value.dtype.kind != "f":
            continue
        layers.append(Layer(name, op["op_name"], value, (name,), params, fused, quantized))
    return Trace("litert", layout, layers)


# --- Keras ----------------------------------------------------------------------------
def capture_keras(model: Any, x: np.ndarray, layout: str = "NHWC") -> Trace:
    """A sub-model over every layer's output (Keras 3 or tf-keras: both have
    ``Model(inputs, outputs)`` over a functional model)."""
    import importlib

    api = "tf_keras" if type(model).__module__.startswith("tf_keras") else "keras"
    keras = importlib.import_module(api)
    layers = [lyr for lyr in model.layers if not type(lyr).__name__ == "InputLayer"]
    outs = [lyr.output for lyr in layers]
    sub = keras.Model(inputs=model.inputs, outputs=outs)
    values = sub(_to_layout(x, layout), training=False)
    if not isinstance(values, (list, tuple)):
        values = [values]
    result = []
    for lyr, val in zip(layers, values, strict=True):
        params = {w.path if hasattr(w, "path") else w.name: np.asarray(w.numpy()) for w in lyr.weights}
        act = getattr(getattr(lyr, "activation", None), "__name__", "linear")
        result.append(Layer(lyr.name, type(lyr).__name__, np.asarray(val), (lyr.name,), params,
                            fused_act=act not in ("linear", None)))
    return Trace("keras", layout, result)


def _stack(per_image: list[dict[Any, np.ndarray]]) -> dict[Any, np.ndarray]:
    """One dict of batch arrays from per-image dicts (each value has batch 1)."""
    return {k: np.concatenate([d[k] for d in per_image]) for k in per_image[0]} if per_image else {}


def _to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if layout == "NHWC" and x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x)


def capture(runtime: str, payload: Any, x: np.ndarray, layout: str, *, passes: tuple[str, ...] = (),
            target_json: str = "", host_json: str = "", meta: dict[str, Any] | None = None) -> Trace:
    """Capture by runtime name (the names of the ``builds`` table). ``x`` is the canonical
    NCHW batch; ``payload`` the artifact's (a module, or a file path)."""
    if runtime == "torch":
        return capture_torch(payload, x)
    if runtime == "onnxruntime":
        return capture_onnxruntime(Path(payload), x, layout)
    if runtime == "tvm":
        if not str(payload).endswith(".onnx"):
            raise ValueError("per-layer TVM capture imports through the ONNX frontend; "
                             f"{payload} is not an ONNX file")
        return capture_tvm(Path(payload), x, passes, target_json or '{"kind": "llvm"}', host_json, layout)
    if runtime == "litert":
        return capture_litert(Path(payload), x, layout)
    if runtime == "keras":
        from deltann.convert._tools import keras_model
        from deltann.convert.base import Produced

        return capture_keras(keras_model(Produced(payload, layout, meta or {})), x, layout)
    raise ValueError(f"no per-layer capture for runtime {runtime!r}; have: torch, onnxruntime, tvm, litert, keras")
