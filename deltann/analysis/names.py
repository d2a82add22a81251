"""Configuration names as a person writes them.

A study's variant ``onnx->tflite`` is stored under the route it really took,
``onnx->tf->tflite`` (see :func:`deltann.convert.resolve`), so the tables name
``onnx->tf->tflite [litert]``. A command that takes a configuration (``compare``,
``localize``, ``repro``) accepts either: the name the user wrote in the study is resolved
to the stored one here."""

from __future__ import annotations

from collections.abc import Iterable


def split_config(name: str) -> tuple[str, str]:
    """``'torch->onnx [tvm:basic]'`` -> ``('torch->onnx', 'tvm:basic')``; a name without a
    bracket is all variant."""
    variant, bracket, how = name.strip().partition(" [")
    return variant.strip(), how.rstrip("]").strip() if bracket else ""


def canonical(name: str) -> str:
    """The stored name of a configuration: its variant resolved to the route it takes
    (``onnx->tflite [litert]`` -> ``onnx->tf->tflite [litert]``). A name that is not a
    chain (a typo) comes back unchanged, so the caller's "unknown configuration" error
    shows what the user wrote."""
    from deltann import convert

    variant, how = split_config(name)
    try:
        variant = convert.resolve(variant)
    except (KeyError, ValueError):
        return name
    return f"{variant} [{how}]" if how else variant


def resolve(name: str, known: Iterable[str]) -> str:
    """``name`` if it is one of ``known``, else its :func:`canonical` form when that is;
    otherwise ``name`` unchanged (the caller reports it with the known names)."""
    known = set(known)
    if name in known:
        return name
    full = canonical(name)
    return full if full in known else name
