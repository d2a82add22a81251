"""LiteRT (TFLite) runtime: ``ai_edge_litert.interpreter.Interpreter`` with its default
delegate (XNNPACK on CPU). A float-input model only: a fully integer model needs the
input quantisation the study does not ask for, and is refused by name.

Per-layer capture: ``experimental_preserve_all_tensors=True`` without the default
delegate (XNNPACK would swallow the intermediates), one layer per operator; the operator
templates (:func:`_litert_layers`) and the flatbuffer with every operator's output
exposed (:func:`expose_tflite_layers`) are shared with TVM's capture of a TFLite build."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from deltann.core.runner import Runner
from deltann.core.runtime_registry import register
from deltann.core.trace import EMPTY, Layer, Trace, dedupe, stack, to_layout, unique


class LiteRTRunner(Runner):
    name = "litert"
    framework = "tflite"
    dist = framework_dist = "ai-edge-litert"
    suffixes = (".tflite",)
    default_layout = "NHWC"
    data_files = True

    def __init__(self, path: Path, layout: str = "NHWC", threads: int | None = None) -> None:
        super().__init__(layout)
        self.path = Path(path)
        self.threads = threads
        self.interpreter: Any = None
    def activate_impl(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
        self.interpreter.allocate_tensors()
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{self.path}: {len(inputs)} inputs and {len(outputs)} outputs; expected one of each")
        if inputs[0]["dtype"] != np.float32:
            raise ValueError(f"{self.path}: input dtype {np.dtype(inputs[0]['dtype']).name}; only float32 inputs run")
        self.input, self.output = inputs[0], outputs[0]

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        it = self.interpreter
        if tuple(self.input["shape"]) != x.shape:
            it.resize_tensor_input(self.input["index"], list(x.shape))
            it.allocate_tensors()
            self.input, self.output = it.get_input_details()[0], it.get_output_details()[0]
        it.set_tensor(self.input["index"], x)
        it.invoke()
        return it.get_tensor(self.output["index"]).copy()

    def deactivate_impl(self) -> None:
        self.interpreter = None

    @classmethod
    def capture(cls, payload: Any, x: np.ndarray, layout: str, *, meta: dict[str, Any] | None = None,
                **options: Any) -> Trace:
        return capture_litert(Path(payload), x, layout)


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
        ins = dedupe(p for i in op["inputs"] for p in producers.get(int(i), ()))
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
        name = unique(tensor_name, seen, int(op["index"]))
        producers.update({int(o): (name,) for o in op["outputs"]})
        out_layers.append((Layer(name, op["op_name"], EMPTY, (tensor_name,), params, fused, quantized, ins), out))
    return out_layers


def capture_litert(path: Path, x: np.ndarray, layout: str = "NHWC") -> Trace:
    """One layer per TFLite operator, outputs preserved, no delegate."""
    it = _litert_interpreter(path)
    inp = it.get_input_details()[0]
    templates = _litert_layers(it, Path(path))
    xin = to_layout(x, layout)
    per_image: list[dict[int, np.ndarray]] = []
    for i in range(len(xin)):
        it.set_tensor(inp["index"], np.ascontiguousarray(xin[i : i + 1]))
        it.invoke()
        per_image.append({out: it.get_tensor(out).copy() for _, out in templates})
    stacked = stack(per_image)
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


register(LiteRTRunner)
