"""What a per-layer capture returns: :class:`Trace`, an ordered list of :class:`Layer`,
and the small helpers every runtime's capture shares. Its own module (re-exported by
:mod:`deltann.runtimes.layers`) so that each runtime module can build traces and
:mod:`deltann.runtimes.layers` can reuse their exposers without an import loop. Only
``numpy`` is imported: the analysis layer reads traces without any framework."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


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


def dedupe(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def unique(name: str, seen: set[str], i: int) -> str:
    """``name``, or ``name#i`` when an earlier layer already has it (edges and alignment
    need one name per layer)."""
    out = name if name not in seen else f"{name}#{i}"
    seen.add(out)
    return out


EMPTY = np.empty(0, np.float32)  # the value of a layer template before it runs


def stack(per_image: list[dict[Any, np.ndarray]]) -> dict[Any, np.ndarray]:
    """One dict of batch arrays from per-image dicts (each value has batch 1)."""
    return {k: np.concatenate([d[k] for d in per_image]) for k in per_image[0]} if per_image else {}


def to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if layout == "NHWC" and x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x)
