"""Conversions between frameworks: one module per hop (``torch_onnx.py`` is
``torch->onnx``), each registering a :class:`Hop`. Adding a conversion is adding a file
and one import line in :func:`_load_builtin`."""

from __future__ import annotations

from deltann.convert.base import FRAMEWORKS, QUANTIZE, Hop

__all__ = ["FRAMEWORKS", "QUANTIZE", "Hop", "get", "hops", "register"]

_HOPS: dict[tuple[str, str], Hop] = {}
_LOADED = False


def register(hop: Hop) -> Hop:
    _HOPS[(hop.src, hop.dst)] = hop
    return hop


def _load_builtin() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        from deltann.convert import torch_onnx  # noqa: F401


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
