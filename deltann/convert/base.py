"""Framework names and the conversion-hop registry shared by plan and artifacts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FRAMEWORKS: tuple[str, ...] = ("torch", "onnx", "keras", "tf", "tflite")
QUANTIZE: tuple[str, ...] = ("none", "dynamic-range", "float16")

#: framework -> PyPI distribution whose version identifies a model loaded in it
FRAMEWORK_DIST: dict[str, str] = {
    "torch": "torch",
    "onnx": "onnx",
    "keras": "keras",
    "tf": "tensorflow-cpu",
    "tflite": "ai-edge-litert",
}


@dataclass(frozen=True)
class Hop:
    """One conversion ``src -> dst`` by a maintained tool.

    ``fn(parent_payload, spec, out_dir, quantize) -> payload``: a native object (e.g. a
    ``torch.nn.Module``) or a :class:`~pathlib.Path` to the converted file. ``tool`` is
    the PyPI distribution whose version goes into the content key."""

    src: str
    dst: str
    tool: str
    fn: Callable[[Any, Any, Path, str], Any]
    quantize: tuple[str, ...] = ("none",)
