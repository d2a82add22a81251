"""Per-layer capture: every runtime's intermediate tensors, by name, in execution order,
with each layer's own parameters and the layers it reads from (its producers) — what
fault localization (:mod:`deltann.analysis.localize`) aligns and compares.

One capture function per runtime, each returning a :class:`Trace` (an ordered list of
:class:`Layer`). How each runtime exposes its tensors (see NOTES.md "Per-layer outputs"):

- torch: forward hooks on every module that computes something itself, plus the
  functional ops of containers (:class:`_TorchRecorder`);
- onnxruntime and TVM from ONNX: every float output of every node that depends on the
  input becomes a graph output. TVM imports the ONNX exactly as deltann's builds do
  (folded by onnxruntime's basic optimisations first, which fuses Pad into Conv and
  renames nothing else), so its layers carry the folded graph's node and tensor names;
- TVM from torch (``torch.export`` frontend): the recorder runs inside ``torch.export``
  and its tensors become extra outputs of the exported program (names = module paths);
- TVM from TFLite: the flatbuffer's subgraph outputs are extended with every operator's
  output before import (names = TFLite tensor names, as LiteRT's capture has them);
- LiteRT: ``experimental_preserve_all_tensors=True`` without the default delegate
  (XNNPACK would swallow the intermediates), one layer per operator;
- TF (SavedModel or frozen GraphDef): the signature's graph, variables frozen to
  constants, pruned to every op's float output (names = op names);
- Keras: a sub-model over every layer's output.

Capturing is intrusive by nature: an exposed tensor cannot be fused away, so a TVM
capture runs the setting's passes over a graph in which every layer is an output. The
operators and their arithmetic are the setting's, but fusion stops at each exposed
tensor (measured on EfficientNet-Lite0 under ``default``: conv+bias+ReLU6 in one kernel
as built, conv+bias and ReLU6 in two when exposed). :func:`capture_tvm_kernels` is the
other way: the build exactly as made, one layer per kernel, where what a setting fused
is unobservable (and listed as unmatched by the alignment). Only ``numpy`` is imported at module level: the analysis layer imports
:class:`Trace` without any framework.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("deltann.runtimes")


@dataclass
class Layer:
    """One captured tensor and what produced it.

    ``name`` is the runtime's own name (module path, ONNX node, TFLite tensor, TF op);
    ``outputs`` the tensor names it wrote (ONNX/TFLite/TF), used to match two captures of
    one graph exactly; ``value`` is the batch output in the runtime's layout (see
    :attr:`Trace.layout`); ``params`` the layer's own weights (float, dequantised);
    ``fused_act`` says the op applies an activation itself (TFLite's fused ReLU6);
    ``quantized`` that some of its weights are stored as integers; ``inputs`` the names
    of the captured layers it reads (through uncaptured ops), in argument order, or None
    where the runtime does not tell (then alignment keeps the execution order)."""

    name: str
    op: str
    value: np.ndarray
    outputs: tuple[str, ...] = ()
    params: dict[str, np.ndarray] = field(default_factory=dict)
    fused_act: bool = False
    quantized: bool = False
    inputs: tuple[str, ...] | None = None


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


def _dedupe(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def _unique(name: str, seen: set[str], i: int) -> str:
    """``name``, or ``name#i`` when an earlier layer already has it (edges and alignment
    need one name per layer)."""
    out = name if name not in seen else f"{name}#{i}"
    seen.add(out)
    return out


EMPTY = np.empty(0, np.float32)  # the value of a layer template before it runs


# --- torch -------------------------------------------------------------------------
@dataclass
class _Frame:
    captured: bool  # does a hook capture this module's output as a whole?
    path: str
    inner: list[str] = field(default_factory=list)  # layers recorded while it ran


class _TorchRecorder:
    """What :func:`capture_torch` and :func:`capture_tvm_torch` share: forward hooks on
    the modules that compute (leaves, and modules owning parameters), plus the tensor
    functions a container's ``forward`` calls itself (``torch.relu``, ``x + y``,
    ``torch.cat``), seen through a ``TorchFunctionMode`` (without them a model written
    with functional activations, residual adds or branch concatenations has no tensor to
    compare there). A functional op is named like the legacy ONNX exporter names it,
    ``/<module path>/<op>[_k]``; a module called twice is ``path``, then ``path_1``. Each
    record's producers are found by tensor identity (a captured module's own captured
    children count as its producers: a conv that owns its padding child consumes it).

    Eager (``keep_tensors=False``) copies each value to numpy at once (a later in-place
    op must not change it); under ``torch.export`` it keeps a clone of each tensor, which
    the exposing wrapper returns as an extra output."""

    def __init__(self, module: Any, keep_tensors: bool) -> None:
        self.module = module
        self.keep = keep_tensors
        self.reset()

    def reset(self) -> None:
        self.layers: list[Layer] = []
        self.paths: list[str | None] = []
        self.tensors: list[Any] = []
        self.calls: dict[str, int] = {}
        self.produced: dict[int, tuple[str, ...]] = {}
        self.alive: list[Any] = []  # keeps recorded tensors alive: their ids stay unique
        self.stack: list[_Frame] = []
        self.busy = False

    def _count(self, key: str) -> str:
        k = self.calls.get(key, 0)
        self.calls[key] = k + 1
        return key if k == 0 else f"{key}_{k}"

    def _producers(self, *args: Any) -> tuple[str, ...]:
        import torch

        out: list[str] = []

        def walk(a: Any) -> None:
            if isinstance(a, torch.Tensor):
                out.extend(n for n in self.produced.get(id(a), ()) if n not in out)
            elif isinstance(a, (list, tuple)):
                for b in a:
                    walk(b)
            elif isinstance(a, dict):
                for b in a.values():
                    walk(b)

        walk(args)
        return tuple(out)

    def _record(self, key: str, op: str, tensor: Any, inputs: tuple[str, ...], path: str | None) -> None:
        self.busy = True  # our own clone/detach calls are not layers
        try:
            name = self._count(key)
            if self.keep:
                value, kept = np.empty(0, np.float32), tensor.clone()
            else:
                value, kept = tensor.detach().cpu().numpy().copy(), None
            self.layers.append(Layer(name, op, value, inputs=inputs))
            self.paths.append(path)
            self.tensors.append(kept)
            self.produced[id(tensor)] = (name,)
            self.alive.append(tensor)
            if self.stack:
                self.stack[-1].inner.append(name)
        finally:
            self.busy = False

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        import torch

        def pre_for(path: str, captured: bool) -> Any:
            def pre(_mod: Any, _inputs: Any) -> None:
                self.stack.append(_Frame(captured, path))
            return pre

        def hook_for(path: str, mod: Any) -> Any:
            def hook(_mod: Any, inputs: Any, output: Any) -> None:
                frame = self.stack.pop()
                if frame.captured and isinstance(output, torch.Tensor) and output.is_floating_point():
                    producers = self._producers(inputs)
                    inner = tuple(n for n in frame.inner if n not in producers)
                    self._record(path, type(mod).__name__, output, producers + inner, path)
            return hook

        handles = []
        for path, mod in self.module.named_modules():
            own = any(True for _ in mod.parameters(recurse=False))
            # nn.Identity computes nothing (a no-op padding slot): not a layer
            captured = (bool(path) and type(mod).__name__ != "Identity"
                        and (own or not any(True for _ in mod.children())))
            handles.append(mod.register_forward_pre_hook(pre_for(path, captured)))
            handles.append(mod.register_forward_hook(hook_for(path, mod)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def functional(self) -> Any:
        import torch
        from torch.overrides import TorchFunctionMode

        rec = self

        class Functional(TorchFunctionMode):
            def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                out = func(*args, **(kwargs or {}))
                if rec.busy or (rec.stack and rec.stack[-1].captured) or not isinstance(out, torch.Tensor):
                    return out  # inside a captured module: its hook records the result
                producers = rec._producers(args, kwargs)
                if not out.is_floating_point() or out.ndim == 0 or not producers and not any(
                        isinstance(a, torch.Tensor) for a in args):
                    if producers:  # not a layer, but data flows through it
                        rec.produced[id(out)] = producers
                        rec.alive.append(out)
                    return out
                op = getattr(func, "__name__", str(func)).strip("_")
                scope = rec.stack[-1].path if rec.stack else ""
                rec._record(f"/{scope}/{op}" if scope else f"/{op}", op, out, producers, None)
                return out

        return Functional()

    def finish(self) -> list[Layer]:
        """The records with each module layer's own parameters (read from the real module,
        not the tensors a trace saw)."""
        for layer, path in zip(self.layers, self.paths, strict=True):
            if path is None:
                continue
            mod = self.module.get_submodule(path)
            layer.params = {n: p.detach().cpu().numpy().copy() for n, p in mod.named_parameters(recurse=False)}
            layer.params |= {n: b.detach().cpu().numpy().copy() for n, b in mod.named_buffers(recurse=False)
                             if b.dtype.is_floating_point}
        return self.layers


def capture_torch(module: Any, x: np.ndarray) -> Trace:
    """Eager torch: every module that computes and every functional op of a container
    (see :class:`_TorchRecorder`)."""
    import torch

    rec = _TorchRecorder(module, keep_tensors=False)
    module.eval()
    with rec.hooks(), torch.inference_mode(), rec.functional():
        module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return Trace("torch", "NCHW", rec.finish())


def expose_torch_layers(module: Any, input_shape: tuple[int, ...]) -> tuple[Any, list[Layer]]:
    """An exported program of ``module`` whose outputs are ``(logits, *every layer)``: a
    wrapper runs the module under the recorder while ``torch.export`` traces it, so the
    layers are the very ones (names, producers) :func:`capture_torch` records. Export
    keeps the recorded clones as outputs; nothing else of the graph changes."""
    import torch

    rec = _TorchRecorder(module, keep_tensors=True)
    module.eval()

    class Exposed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, x: Any) -> Any:
            rec.reset()
            with rec.functional():
                out = self.inner(x)
            return (out, *rec.tensors)

    with rec.hooks(), torch.no_grad():
        program = torch.export.export(Exposed(), (torch.zeros(input_shape, dtype=torch.float32),))
    return program, rec.finish()


def capture_tvm_torch(module: Any, x: np.ndarray, passes: tuple[str, ...] = (),
                      target_json: str = "", host_json: str = "", tuning: str = "") -> Trace:
    """Every torch layer from a TVM Relax build imported through the exported-program
    frontend (as deltann's ``torch.export`` builds import it) under ``passes``; layers
    named by module path, as :func:`capture_torch` names them."""
    shape = (1, *x.shape[1:])
    program, recorded = expose_torch_layers(module, shape)
    outs = _run_tvm("torch.export", program, shape, passes, target_json, host_json, _to_layout(x, "NCHW"),
                    1 + len(recorded), tuning)
    return Trace("tvm", "NCHW", [replace(layer, value=outs[1 + k]) for k, layer in enumerate(recorded)])


def _tvm_vm(frontend: str, payload: Any, input_shape: tuple[int, ...], passes: tuple[str, ...], target_json: str,
            host_json: str, tuning: str) -> Any:
    """The build as deltann's builds make it, through the one TVM path
    (:func:`deltann.compile.pipeline.compile_payload`: the same import, the board's target,
    the setting's passes then the target's lowering), on the Relax VM; a one-line error
    where this machine has no device for the target (a board's build is captured on a
    machine that can run it)."""
    from deltann.compile import pipeline

    target = pipeline.make_target(target_json or pipeline.DEFAULT_TARGET, host_json)
    pipeline.device(target, check=True)  # before the minutes a build can take
    built = pipeline.compile_payload(frontend, payload, input_shape, passes, target, tuning)
    return pipeline.Vm(built.executable, target, check=True)


def _run_tvm(frontend: str, payload: Any, input_shape: tuple[int, ...], passes: tuple[str, ...], target_json: str,
             host_json: str, xin: np.ndarray, n_outputs: int, tuning: str = "") -> list[np.ndarray]:
    """Build ``payload`` (:func:`_tvm_vm`) and run it one image at a time (exporters fix
    the batch at 1); returns each output stacked over the batch. ``tuning``: the ``tuned``
    setting's MetaSchedule records (JSON, as units carry them)."""
    vm = _tvm_vm(frontend, payload, input_shape, passes, target_json, host_json, tuning)
    per_image = []
    for i in range(len(xin)):
        outs = vm.outputs(xin[i : i + 1])
        if len(outs) != n_outputs:
            raise RuntimeError(f"TVM returned {len(outs)} outputs where {n_outputs} were exposed")
        per_image.append({k: o.numpy() for k, o in enumerate(outs)})
    stacked = _stack(per_image)
    return [stacked[k] for k in range(n_outputs)]


# --- ONNX (onnxruntime, TVM) ---------------------------------------------------------
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
        ins = _dedupe(p for name in node.input for p in producers.get(name, ()))
        out = node.output[0]
        if types.get(out, onnx.TensorProto.FLOAT) not in floats:
            producers.update({o: ins for o in node.output})
            continue
        params = {name: numpy_helper.to_array(inits[name]).astype(np.float32)
                  for name in node.input if name in inits and inits[name].data_type in floats}
        name = _unique(node.name or f"{node.op_type}_{i}", seen, i)
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
    xin = _to_layout(x, layout)
    # Exporters fix the batch at 1: one image at a time, stacked.
    values = _stack([dict(zip(names, session.run(names, {input_name: xin[i : i + 1]}), strict=True))
                     for i in range(len(xin))])
    return _onnx_trace("onnxruntime", layout, exposed, values)


def capture_tvm(path: Path, x: np.ndarray, passes: tuple[str, ...] = (), target_json: str = "",
                host_json: str = "", layout: str = "NCHW", tuning: str = "") -> Trace:
    """Every node's output from a TVM Relax build of the ONNX at ``path`` under ``passes``,
    imported as deltann's builds import it (onnxruntime-folded first)."""
    from deltann.compile.frontends import _fold_onnx

    xin = _to_layout(x, layout)
    # at one image's static shape, as deltann's builds import ONNX (frontends.fix_input_shape)
    shape = (1, *xin.shape[1:])
    exposed = expose_onnx_layers(_fold_onnx(Path(path), shape))
    names = [o.name for o in exposed.model.graph.output]
    outs = _run_tvm("onnx", exposed.model, shape, passes, target_json, host_json, xin, len(names), tuning)
    return _onnx_trace("tvm", layout, exposed, dict(zip(names, outs, strict=True)))


# --- TVM as built: one layer per kernel ------------------------------------------------
#: activations a fused kernel may end with (Relax legalises Clip/ReLU6 to maximum+minimum)
_KERNEL_ACTS = ("relu", "clip", "minimum", "sigmoid", "tanh", "swish", "silu", "gelu", "hardswish")
#: ops that join two data inputs (a residual add fused after a conv: the kernel's output
#: is the join's, not the conv's)
_KERNEL_JOINS = ("add", "subtract", "multiply", "concatenate", "divide")


def _kernel_ops(name: str) -> list[str]:
    """``fused_conv2d11_add9_maximum5_minimum5`` -> ``[conv2d, add, maximum, minimum]``."""
    import re

    return [re.sub(r"\d+$", "", part) for part in name.removeprefix("fused_").split("_") if part]


def capture_tvm_kernels(frontend: str, payload: Any, x: np.ndarray, passes: tuple[str, ...] = (),
                        target_json: str = "", host_json: str = "", layout: str = "NCHW",
                        tuning: str = "") -> Trace:
    """The build exactly as deltann's builds make it (same import, same passes, nothing
    exposed), one layer per kernel call, read by the Relax VM's instrument hook after
    each call (a kernel writes its output into its last argument). What a setting fused
    into one kernel is unobservable here: its inner layers have no counterpart and the
    alignment lists them as unmatched. Kernels are named by their function name (with a
    call count); their producers are the kernels that last wrote the buffers they read
    (memory planning reuses buffers, so "last writer" is the only sound link); kernels
    that read no data (weight layout transforms) are not layers; constant arguments are
    the layer's parameters."""
    import tvm

    xin = _to_layout(x, layout)
    built = _tvm_vm(frontend, payload, (1, *xin.shape[1:]), passes, target_json, host_json, tuning)
    vm = built.vm
    per_image: list[list[Layer]] = []

    def ptr(t: Any) -> int | None:
        return t.data_ptr() if isinstance(t, tvm.runtime.Tensor) else None

    for i in range(len(xin)):
        arg = built.tensor(xin[i : i + 1])
        writer: dict[int, str] = {ptr(arg): ""}  # buffer -> the layer that last wrote it ("" = the input)
        calls: dict[str, int] = {}
        found: list[Layer] = []

        def instrument(_func: Any, name: str, before: bool, _ret: Any, *args: Any) -> int:
            if before or name.startswith("vm.") or not args or not isinstance(args[-1], tvm.runtime.Tensor):
                return 0
            out = args[-1]
            reads = [writer.get(ptr(a)) for a in args[:-1]]
            live = [r for r in reads if r is not None]
            if not live:  # reads no data: a weight transform (its buffer holds no layer now)
                writer.pop(ptr(out), None)
                return 0
            k = calls.get(name, 0)
            calls[name] = k + 1
            label = name if k == 0 else f"{name}_{k}"
            ops = _kernel_ops(name)
            producers = _dedupe(r for r in live if r)
            joins = [o for o in ops[1:] if o in _KERNEL_JOINS]
            act = bool(ops) and ops[-1] in _KERNEL_ACTS
            if len(live) > 1 and joins and not act:
                op, params = joins[-1], {}  # conv+bias+residual add: the add's output
            else:
                op = name
                params = {f"input{j}": a.numpy() for j, (a, r) in enumerate(zip(args[:-1], reads, strict=True))
                          if r is None and isinstance(a, tvm.runtime.Tensor) and "float" in str(a.dtype)}
            if "float" in str(out.dtype):
                found.append(Layer(label, op, out.numpy().copy(), (), params, fused_act=act and len(ops) > 1,
                                   inputs=producers))
                writer[ptr(out)] = label
            else:
                writer[ptr(out)] = producers[0] if producers else ""
            return 0

        vm.set_instrument(instrument)
        vm["main"](arg)
        per_image.append(found)
    layers = [replace(layer, value=np.concatenate([img[k].value for img in per_image]))
              for k, layer in enumerate(per_image[0])]
    # ConvertLayout (the catalogue's AlterOpLayout) makes the kernels channel-last; its
    # 4-D outputs cannot be told from NCHW by shape when C == H == W
    return Trace("tvm", "NHWC" if "ConvertLayout" in passes else layout, layers)


# --- LiteRT, and TVM from TFLite -------------------------------------------------------
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
        tflite.BuiltinOptions.ConcatenationOptions: tflite.ConcatenationOptions,
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


def _litert_interpreter(path: Path) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it


def _litert_layers(it: Any, path: Path) -> list[tuple[Layer, int]]:
    """One layer template per operator with a float output, and that output's tensor
    index: name, op, weights (dequantised), fused activation, producers."""
    inp = it.get_input_details()[0]
    ops = [op for op in it._get_ops_details()  # the only API listing operators with their tensors
           if op["op_name"] != "DELEGATE" and len(op["outputs"])]
    details = {d["index"]: d for d in it.get_tensor_details()}
    fused_ops = _tflite_fused_activations(path)
    producers: dict[int, tuple[str, ...]] = {}
    seen: set[str] = set()
    out_layers = []
    for op in ops:
        out = int(op["outputs"][0])
        ins = _dedupe(p for i in op["inputs"] for p in producers.get(int(i), ()))
        if np.dtype(details[out]["dtype"]).kind != "f":
            producers.update({int(o): ins for o in op["outputs"]})
            continue
        params: dict[str, np.ndarray] = {}
        quantized = False
        for k, idx in enumerate(int(i) for i in op["inputs"]):
            if idx < 0 or idx in producers or idx == inp["index"]:
                continue
            try:
                raw = it.get_tensor(idx)
            except ValueError:
                continue
            weights = raw.dtype in (np.int8, np.uint8)  # (int32 inputs are shapes, paddings, axes)
            quantized = quantized or weights
            if (raw.dtype.kind == "f" or weights) and raw.ndim >= 1:
                params[f"input{k}"] = _dequantize(raw, details[idx])
        tensor_name = details[out]["name"]
        if fused_ops is not None:
            fused = fused_ops.get(int(op["index"]), False)
        else:  # the TF converter names a fused tensor "<act>;<add>;<conv>"
            fused = "relu" in tensor_name.split(";")[0].lower()
        name = _unique(tensor_name, seen, int(op["index"]))
        producers.update({int(o): (name,) for o in op["outputs"]})
        out_layers.append((Layer(name, op["op_name"], EMPTY, (tensor_name,), params, fused, quantized, ins), out))
    return out_layers


def capture_litert(path: Path, x: np.ndarray, layout: str = "NHWC") -> Trace:
    """One layer per TFLite operator, outputs preserved, no delegate."""
    it = _litert_interpreter(path)
    inp = it.get_input_details()[0]
    templates = _litert_layers(it, Path(path))
    xin = _to_layout(x, layout)
    per_image: list[dict[int, np.ndarray]] = []
    for i in range(len(xin)):
        it.set_tensor(inp["index"], np.ascontiguousarray(xin[i : i + 1]))
        it.invoke()
        per_image.append({out: it.get_tensor(out).copy() for _, out in templates})
    stacked = _stack(per_image)
    return Trace("litert", layout, [replace(layer, value=stacked[out]) for layer, out in templates])


def expose_tflite_layers(path: Path, tensors: list[int]) -> bytes:
    """The flatbuffer at ``path`` with ``tensors`` appended to its first subgraph's
    outputs (the model's own outputs stay first); nothing else changes, so TVM's TFLite
    frontend imports the same operators."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(Path(path).read_bytes()))
    graph = model.subgraphs[0]
    outputs = [int(o) for o in graph.outputs]
    graph.outputs = np.asarray(outputs + [t for t in dict.fromkeys(tensors) if t not in outputs], np.int32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def capture_tvm_tflite(path: Path, x: np.ndarray, passes: tuple[str, ...] = (),
                       target_json: str = "", host_json: str = "", layout: str = "NHWC",
                       tuning: str = "") -> Trace:
    """Every TFLite operator's output from a TVM Relax build imported through the TFLite
    frontend (as deltann's ``tflite`` builds import it) under ``passes``; layers named and
    parametrised as :func:`capture_litert` names them."""
    it = _litert_interpreter(path)
    templates = _litert_layers(it, Path(path))
    own = [int(o["index"]) for o in it.get_output_details()]
    wanted = [out for _, out in templates]
    order = own + [t for t in dict.fromkeys(wanted) if t not in own]
    xin = _to_layout(x, layout)
    outs = _run_tvm("tflite", expose_tflite_layers(Path(path), wanted), (1, *xin.shape[1:]), passes, target_json,
                    host_json, xin, len(order), tuning)
    position = {t: k for k, t in enumerate(order)}
    return Trace("tvm", layout, [replace(layer, value=outs[position[out]]) for layer, out in templates])


# --- TF (SavedModel, frozen GraphDef) ---------------------------------------------------
_TF_PASSTHROUGH = frozenset({"Identity", "IdentityN", "Placeholder", "PlaceholderWithDefault", "NoOp",
                             "StopGradient", "Snapshot", "Const"})


def _tf_graph(path: Path, meta: dict[str, Any] | None) -> tuple[Any, str]:
    """(GraphDef with variables as constants, input tensor name) of a SavedModel's
    ``serving_default`` signature or of a frozen ``.pb`` (input named in its metadata)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from deltann.runtimes.tf_rt import SIGNATURE

    if path.suffix == ".pb":
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(path.read_bytes())
        if not meta or "input" not in meta:
            raise ValueError(f"{path}: a frozen graph needs its input tensor name in the artifact metadata")
        return graph_def, meta["input"]
    loaded = tf.saved_model.load(str(path))
    if SIGNATURE not in loaded.signatures:
        raise ValueError(f"{path}: no {SIGNATURE!r} signature; has {list(loaded.signatures)}")
    frozen = convert_variables_to_constants_v2(loaded.signatures[SIGNATURE])
    inputs = [t for t in frozen.inputs if t.dtype.is_floating]
    if len(inputs) != 1:
        raise ValueError(f"{path}: {SIGNATURE} has {len(inputs)} float inputs; an image classifier has one")
    return frozen.graph.as_graph_def(), inputs[0].name


def _tf_name(op_name: str) -> str:
    """An op name without the call wrappers freezing leaves in front
    (``StatefulPartitionedCall/model/conv/Conv2D`` -> ``model/conv/Conv2D``)."""
    parts = op_name.split("/")
    while len(parts) > 1 and parts[0] in ("StatefulPartitionedCall", "PartitionedCall"):
        parts = parts[1:]
    return "/".join(parts)


def capture_tf(path: Path, x: np.ndarray, layout: str = "NHWC", meta: dict[str, Any] | None = None) -> Trace:
    """Every op's float output of a TF SavedModel's serving signature (or a frozen
    graph), in the graph's topological order: the variables are frozen to constants, the
    GraphDef is re-imported with ``wrap_function`` and pruned from the input to all those
    tensors (TF's documented route for GraphDefs). An op's float inputs computed from
    constants alone (a weight, a batch norm's folded scale) are its parameters;
    Identity-like ops and integer arithmetic are not layers, but link a layer to its
    producers."""
    from deltann._native import before_tensorflow

    before_tensorflow()
    import tensorflow as tf

    path = Path(path)
    graph_def, input_name = _tf_graph(path, meta)
    wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    graph = wrapped.graph
    producers: dict[str, tuple[str, ...]] = {}
    live = {input_name.split(":")[0]}
    layers: list[Layer] = []
    fetches = []
    weights: list[tuple[int, str, Any]] = []  # (layer, key, tensor): computed from constants only
    seen: set[str] = set()
    for i, node in enumerate(_tf_topological(graph_def)):
        in_names = [s for s in node.input if not s.startswith("^")]
        in_ops = [s.split(":")[0] for s in in_names]
        if not any(o in live for o in in_ops):
            continue  # constants, variables and what is computed from them alone
        live.add(node.name)
        ins = _dedupe(p for o in in_ops for p in producers.get(o, ()))
        op = graph.get_operation_by_name(node.name)
        if node.op in _TF_PASSTHROUGH or not op.outputs or not op.outputs[0].dtype.is_floating:
            producers[node.name] = ins
            continue
        name = _unique(_tf_name(node.name), seen, i)
        producers[node.name] = (name,)
        for k, (s, o) in enumerate(zip(in_names, in_ops, strict=True)):
            t = graph.get_tensor_by_name(s if ":" in s else f"{s}:0")
            if o not in live and t.dtype.is_floating:
                weights.append((len(layers), f"input{k}", t))
        layers.append(Layer(name, node.op, EMPTY, (op.outputs[0].name,), inputs=ins))
        fetches.append(op.outputs[0])
    fn = wrapped.prune(graph.get_tensor_by_name(input_name), fetches + [t for _, _, t in weights])
    xin = _to_layout(x, layout)
    per_image = []
    for i in range(len(xin)):
        values = [t.numpy() for t in fn(tf.constant(xin[i : i + 1]))]
        if i == 0:  # an op's constant inputs (a BN's folded scale too): its parameters
            for (k, key, _), v in zip(weights, values[len(fetches):], strict=True):
                layers[k].params[key] = np.asarray(v, np.float32)
        per_image.append(dict(enumerate(values[: len(fetches)])))
    stacked = _stack(per_image)
    return Trace("tf", layout, [replace(layer, value=stacked[k]) for k, layer in enumerate(layers)])


def _tf_topological(graph_def: Any) -> list[Any]:
    """The GraphDef's nodes in a topological order that keeps the file's order wherever
    it already is one (freezing usually writes one; a hand-edited file may not)."""
    nodes = {n.name: n for n in graph_def.node}
    done: set[str] = set()
    out: list[Any] = []
    for start in graph_def.node:
        stack = [(start, False)]
        while stack:
            node, expanded = stack.pop()
            if node.name in done:
                continue
            if expanded:
                done.add(node.name)
                out.append(node)
                continue
            stack.append((node, True))
            for s in reversed(node.input):
                dep = nodes.get(s.lstrip("^").split(":")[0])
                if dep is not None and dep.name not in done:
                    stack.append((dep, False))
    return out


# --- Keras ----------------------------------------------------------------------------
def _keras_producers(layer: Any) -> tuple[str, ...] | None:
    """Names of the layers feeding ``layer`` (first call), from Keras 3's
    ``parent_nodes`` or tf-keras's ``inbound_layers``; None when neither is there."""
    try:
        node = layer._inbound_nodes[0]
    except (AttributeError, IndexError):
        return None
    parents = getattr(node, "parent_nodes", None)
    if parents is not None:
        return _dedupe(p.operation.name for p in parents if type(p.operation).__name__ != "InputLayer")
    inbound = getattr(node, "inbound_layers", None)
    if inbound is None:
        return None
    inbound = inbound if isinstance(inbound, (list, tuple)) else [inbound]
    return _dedupe(lyr.name for lyr in inbound if type(lyr).__name__ != "InputLayer")


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
                            fused_act=act not in ("linear", None), inputs=_keras_producers(lyr)))
    return Trace("keras", layout, result)


def _stack(per_image: list[dict[Any, np.ndarray]]) -> dict[Any, np.ndarray]:
    """One dict of batch arrays from per-image dicts (each value has batch 1)."""
    return {k: np.concatenate([d[k] for d in per_image]) for k in per_image[0]} if per_image else {}


def _to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if layout == "NHWC" and x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x)


#: TVM frontend (the ``builds`` table's ``frontend``) -> how its builds are captured
TVM_FRONTENDS = ("onnx", "torch.export", "tflite")


def _tvm_frontend(payload: Any) -> str:
    """The frontend deltann's planner uses for an artifact (``runtimes.TVM_FRONTEND``),
    told from the payload when a caller has no ``builds`` row."""
    if not isinstance(payload, (str, Path)):
        return "torch.export"  # a module
    return {".onnx": "onnx", ".tflite": "tflite"}.get(Path(payload).suffix, "")


def capture(runtime: str, payload: Any, x: np.ndarray, layout: str, *, passes: tuple[str, ...] = (),
            target_json: str = "", host_json: str = "", meta: dict[str, Any] | None = None,
            frontend: str = "", kernels: bool = False, tuning: str = "") -> Trace:
    """Capture by runtime name (the names of the ``builds`` table). ``x`` is the canonical
    NCHW batch; ``payload`` the artifact's (a module, or a file path); ``frontend`` the
    TVM frontend the build imported through (told from the payload when empty);
    ``kernels``: a TVM build as built, one layer per kernel (:func:`capture_tvm_kernels`),
    instead of every layer exposed; ``tuning``: a ``tuned`` build's MetaSchedule records
    (JSON, :mod:`deltann.compile.tuning`)."""
    if runtime == "torch":
        return capture_torch(payload, x)
    if runtime == "onnxruntime":
        return capture_onnxruntime(Path(payload), x, layout)
    if runtime == "tvm":
        frontend = frontend or _tvm_frontend(payload)
        target_json = target_json or '{"kind": "llvm"}'
        if kernels and frontend in TVM_FRONTENDS:
            return capture_tvm_kernels(frontend, payload, x, passes, target_json, host_json,
                                       "NCHW" if frontend == "torch.export" else layout, tuning)
        if frontend == "onnx":
            return capture_tvm(Path(payload), x, passes, target_json, host_json, layout, tuning)
        if frontend == "torch.export":
            return capture_tvm_torch(payload, x, passes, target_json, host_json, tuning)
        if frontend == "tflite":
            return capture_tvm_tflite(Path(payload), x, passes, target_json, host_json, layout, tuning)
        raise ValueError(f"no per-layer TVM capture through frontend {frontend!r} ({payload}); "
                         f"have: {', '.join(TVM_FRONTENDS)}")
    if runtime == "litert":
        return capture_litert(Path(payload), x, layout)
    if runtime == "tf":
        return capture_tf(Path(payload), x, layout, meta)
    if runtime == "keras":
        from deltann.convert._tools import keras_model
        from deltann.convert.base import Produced

        return capture_keras(keras_model(Produced(payload, layout, meta or {})), x, layout)
    raise ValueError(f"no per-layer capture for runtime {runtime!r}; have: torch, onnxruntime, tvm, litert, tf, keras")
