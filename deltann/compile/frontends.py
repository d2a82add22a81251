"""TVM Relax frontends: import a materialised artifact into a Relax IRModule by the most
direct route its framework has (torch exported program, ONNX, TFLite)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("deltann.compile")


def _fold_onnx(path: Path) -> Any:
    """Constant-fold an ONNX file with onnxruntime's basic (semantics-preserving) graph
    optimisations. Relax's ONNX frontend refuses shape-computed ``Pad`` inputs ("Dynamic
    pads are not supported yet"), which exporters emit for TF-style 'same' padding;
    folding turns them into constants. Returns the folded ``onnx.ModelProto``."""
    import tempfile

    import onnx
    import onnxruntime as ort

    # Folded in a private folder, never beside the source: a user model's .onnx lives in
    # the user's folder, which deltann must not write to (folding takes well under a second).
    with tempfile.TemporaryDirectory(prefix="deltann-fold-") as tmp:
        folded = Path(tmp) / "folded.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return onnx.load(str(folded))


def from_onnx(path: Path) -> Any:
    import tvm.relax.frontend.onnx as relax_onnx

    return relax_onnx.from_onnx(_fold_onnx(path), keep_params_in_input=False)


def from_torch(module: Any, input_shape: tuple[int, ...]) -> Any:
    import torch
    import tvm.relax.frontend.torch as relax_torch

    program = getattr(module, "exported_program", None)  # a loaded .pt2: imported as it is
    if program is None:
        example = torch.zeros(input_shape, dtype=torch.float32)
        with torch.no_grad():
            program = torch.export.export(module, (example,))
    return relax_torch.from_exported_program(program, keep_params_as_input=False)


def from_tflite(path: Path) -> Any:
    """Relax's TFLite frontend over the flatbuffer, read with the ``tflite`` package."""
    import tflite
    import tvm.relax.frontend.tflite as relax_tflite

    model = tflite.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    return relax_tflite.from_tflite(model)


def import_relax(frontend: str, payload: Any, input_shape: tuple[int, ...]) -> Any:
    """Relax IRModule of ``payload`` through ``frontend`` (``onnx``, ``torch.export`` or
    ``tflite``). ``input_shape`` is the artifact's own (layout-specific) input shape."""
    if frontend == "onnx":
        return from_onnx(Path(payload))
    if frontend == "torch.export":
        return from_torch(payload, input_shape)
    if frontend == "tflite":
        return from_tflite(Path(payload))
    raise ValueError(f"no TVM frontend {frontend!r}")
