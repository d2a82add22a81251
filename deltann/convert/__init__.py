"""Conversions between frameworks: one module per hop (``torch_onnx.py`` is
``torch->onnx``), each registering a :class:`Hop`. Adding a conversion is adding a file
and its name in :data:`BUILTIN` (imported by dotted name on first lookup, so this package
never imports a module that imports it).

Where no maintained tool converts ``a`` to ``b`` directly, :func:`resolve` routes the pair
through ONNX (and TF where only TF reaches the target, e.g. ``torch->tflite`` is
``torch->onnx->tf->tflite``), so the variant's chain names every hop it really took."""

from __future__ import annotations

import importlib
from collections import deque

from deltann.convert.chain_spec import QUANTIZE, Hop, Produced, Step, format_chain, parse_chain

__all__ = ["QUANTIZE", "Hop", "Produced", "get", "hops", "register", "resolve", "route", "unregister"]

_HOPS: dict[tuple[str, str], Hop] = {}
_LOADED = False
#: the conversion modules shipped with deltann (under this package), one per hop
BUILTIN: tuple[str, ...] = ("keras_onnx", "keras_tf", "keras_tflite", "onnx_keras", "onnx_tf", "onnx_torch", "tf_onnx",
                             "tf_tflite", "tflite_onnx", "torch_onnx")

#: Intermediate frameworks tried first when routing a pair with no direct tool: ONNX is
#: the exchange format every tool reads; TF next (TFLiteConverter's own input).
VIA_PREFERENCE: tuple[str, ...] = ("onnx", "tf", "keras", "torch", "tflite")


def register(hop: Hop) -> Hop:
    _HOPS[(hop.src, hop.dst)] = hop
    return hop


def unregister(src: str, dst: str) -> None:
    """Forget hop ``src->dst`` (a plugin's, when a test is done with it)."""
    _HOPS.pop((src, dst), None)


def _load_builtin() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for module in BUILTIN:
            importlib.import_module(f"{__name__}.{module}")


def hops() -> dict[tuple[str, str], Hop]:
    _load_builtin()
    return dict(_HOPS)


def get(src: str, dst: str) -> Hop:
    _load_builtin()
    try:
        return _HOPS[(src, dst)]
    except KeyError:
        known = ", ".join(f"{a}->{b}" for a, b in sorted(_HOPS))
        raise KeyError(f"no conversion {src}->{dst}; available: {known}") from None


def route(src: str, dst: str) -> list[str]:
    """Shortest list of frameworks from ``src`` to ``dst`` over registered hops,
    intermediates tried in :data:`VIA_PREFERENCE` order (deterministic)."""
    _load_builtin()
    order = {fw: i for i, fw in enumerate(VIA_PREFERENCE)}
    previous: dict[str, str | None] = {src: None}
    queue = deque([src])
    while queue:
        here = queue.popleft()
        if here == dst:
            break
        for nxt in sorted((b for a, b in _HOPS if a == here), key=lambda fw: order.get(fw, len(order))):
            if nxt not in previous:
                previous[nxt] = here
                queue.append(nxt)
    if dst not in previous:
        raise KeyError(f"no route {src}->{dst} over the registered conversions")
    path = [dst]
    while (back := previous[path[-1]]) is not None:
        path.append(back)
    return path[::-1]


def resolve(chain: str) -> str:
    """The full chain a study entry stands for: every pair without a direct tool is
    replaced by its :func:`route`; a quantize mark stays on the step it was written on
    (so it applies to the hop that produces that framework)."""
    steps = parse_chain(chain)
    out: list[Step] = [steps[0]]
    for prev, step in zip(steps, steps[1:], strict=False):
        if (prev.framework, step.framework) in hops():
            out.append(step)
            continue
        via = route(prev.framework, step.framework)[1:-1]
        out.extend(Step(fw) for fw in via)
        out.append(step)
    return format_chain(out)
