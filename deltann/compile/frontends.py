"""TVM Relax frontends: import a materialised artifact into a Relax IRModule by the most
direct route its framework has (torch exported program, ONNX, TFLite)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("deltann.compile")


def _image_input(model: Any) -> Any:
    """The graph input that is not an initializer (an image model has one), or None."""
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    return inputs[0] if len(inputs) == 1 else None


def fix_input_shape(model: Any, input_shape: tuple[int, ...], path: Path) -> bool:
    """Give the ONNX model's one image input the static ``input_shape`` (in place).
    Returns whether a dimension was symbolic (``batch``, ``N``, ``height``). Why: ONNX
    files are often exported with a dynamic batch (and sometimes dynamic height/width).
    Imported as is, every Relax shape stays symbolic: clips and reshapes cannot be raised
    or folded, ``ConvertLayout`` leaves a transpose pair around every clip and the tuning-
    free schedule cannot split loops of unknown extent (EfficientNet-Lite0 with a dynamic
    batch: 12 of 49 kernels left as naive loops, 3-6x onnxruntime). A board runs one image
    at a time, at the artifact's own shape: that is the shape deltann builds for, as the
    torch.export and TFLite imports already do. A static dimension that disagrees is an
    error naming the file."""
    graph_input = _image_input(model)
    if graph_input is None:
        return False
    dims = graph_input.type.tensor_type.shape.dim
    if len(dims) != len(input_shape):
        raise ValueError(f"{path}: input {graph_input.name!r} has {len(dims)} dimensions, the model's input shape "
                         f"{tuple(input_shape)} has {len(input_shape)}; set input_size/layout to match the file")
    symbolic = False
    for k, (dim, size) in enumerate(zip(dims, input_shape, strict=True)):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            if dim.dim_value != size:
                raise ValueError(f"{path}: input {graph_input.name!r} dimension {k} is {dim.dim_value}, not {size} "
                                 f"(expected shape {tuple(input_shape)}); set input_size/layout to match the file")
            continue
        symbolic = True
        dim.Clear()
        dim.dim_value = int(size)
    if symbolic:  # stale symbolic shapes of intermediate values: inferred again from the input
        del model.graph.value_info[:]
    return symbolic


def _fold_onnx(path: Path, input_shape: tuple[int, ...] | None = None) -> Any:
    """Constant-fold an ONNX file with onnxruntime's basic (semantics-preserving) graph
    optimisations, its image input first made static (:func:`fix_input_shape`) so that
    shape computations fold too. Relax's ONNX frontend refuses shape-computed ``Pad``
    inputs ("Dynamic pads are not supported yet"), which exporters emit for TF-style
    'same' padding; folding turns them into constants, and merges a zero ``Pad`` into the
    ``Conv`` after it. Returns the folded ``onnx.ModelProto``."""
    import tempfile

    import onnx
    import onnxruntime as ort

    # Folded in a private folder, never beside the source: a user model's .onnx lives in
    # the user's folder, which deltann must not write to (folding takes well under a second).
    with tempfile.TemporaryDirectory(prefix="deltann-fold-") as tmp:
        source = Path(path)
        if input_shape is not None:
            model = onnx.load(str(path))
            if fix_input_shape(model, tuple(input_shape), Path(path)):
                source = Path(tmp) / "static.onnx"
                onnx.save(model, str(source))
                log.info("%s: dynamic input dimensions fixed to %s for the build", path, tuple(input_shape))
        folded = Path(tmp) / "folded.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(source), opts, providers=["CPUExecutionProvider"])
        return onnx.load(str(folded))


def from_onnx(path: Any, input_shape: tuple[int, ...] | None = None) -> Any:
    """Relax module of an ONNX file, folded first; with ``input_shape``, built for that
    static shape (see :func:`fix_input_shape`). An ``onnx.ModelProto`` is imported as it
    is: one already folded by :func:`_fold_onnx` (localize exposes its layers in between)."""
    import tvm.relax.frontend.onnx as relax_onnx

    model = path if hasattr(path, "graph") else _fold_onnx(Path(path), input_shape)
    return relax_onnx.from_onnx(model, keep_params_in_input=False)


def from_torch(module: Any, input_shape: tuple[int, ...]) -> Any:
    """Relax module of a torch module exported at ``input_shape``; a loaded ``.pt2`` or an
    ``ExportedProgram`` (localize exports its own) is imported as it is."""
    import torch
    import tvm.relax.frontend.torch as relax_torch

    if isinstance(module, torch.export.ExportedProgram):
        program = module
    else:
        program = getattr(module, "exported_program", None)  # a loaded .pt2: imported as it is
    if program is None:
        example = torch.zeros(input_shape, dtype=torch.float32)
        with torch.no_grad():
            program = torch.export.export(module, (example,))
    return relax_torch.from_exported_program(program, keep_params_as_input=False)


def from_tflite(path: Any) -> Any:
    """Relax's TFLite frontend over the flatbuffer (a file, or its bytes), read with the
    ``tflite`` package."""
    import tflite
    import tvm.relax.frontend.tflite as relax_tflite

    data = bytes(path) if isinstance(path, (bytes, bytearray)) else Path(path).read_bytes()
    model = tflite.Model.GetRootAsModel(data, 0)
    return relax_tflite.from_tflite(model)


#: TVM's Relax frontends by the name a runner declares (``Runner.frontends``): the
#: importer of a payload at an input shape (TFLite files carry their own).
FRONTENDS: dict[str, Callable[[Any, tuple[int, ...]], Any]] = {
    "onnx": from_onnx,
    "torch.export": from_torch,
    "tflite": lambda payload, _shape: from_tflite(payload),
}


def import_relax(frontend: str, payload: Any, input_shape: tuple[int, ...]) -> Any:
    """Relax IRModule of ``payload`` through ``frontend`` (``onnx``, ``torch.export`` or
    ``tflite``). ``input_shape`` is the artifact's own (layout-specific) input shape.
    ``payload``: the artifact's file or module, or what localize made of it (a folded
    ``ModelProto``, an ``ExportedProgram``, a flatbuffer's bytes), imported as it is."""
    importer = FRONTENDS.get(frontend)
    if importer is not None:
        return importer(payload, input_shape)
    raise ValueError(f"no TVM frontend {frontend!r}")
