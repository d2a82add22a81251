"""Configuration names as a person writes them.

A study's variant ``onnx->tflite`` is stored under the route it really took,
``onnx->tf->tflite`` (see :func:`deltann.convert.resolve`), so the tables name
``onnx->tf->tflite [litert]``. A command that takes a configuration (``compare``,
``localize``, ``repro``) accepts either: the name the user wrote in the study is resolved
to the stored one here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import polars as pl

from deltann import convert
from deltann.errors import StoreError


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


def split_device(name: str) -> tuple[str, str | None]:
    """``'torch [torch]@gpu-xavier'`` -> ``('torch [torch]', 'gpu-xavier')``."""
    config, at, device = name.rpartition("@")
    return (config, device) if at and "]" not in device else (name, None)


def build_row(builds: pl.DataFrame, name: str, model: str | None) -> dict[str, Any]:
    """The latest successful ``builds`` row of configuration ``name`` (optionally
    ``@device``; the study's own chain name works too, see :mod:`deltann.analysis.names`)."""
    config, device = split_device(name)
    config = resolve(config, builds["config"].unique().to_list())
    rows = builds.filter(pl.col("config") == config)
    if device is not None:
        rows = rows.filter(pl.col("device") == device)
    if model is not None:
        rows = rows.filter(pl.col("model") == model)
    if rows.is_empty():
        known = builds.select("config").unique()["config"].sort().to_list()
        raise StoreError(f"no successful build of {name!r}; configurations: {', '.join(known) or 'none'}")
    for col in ("model", "device"):
        values = rows[col].unique().sort().to_list()
        if len(values) > 1:
            flag = "--model" if col == "model" else "'@device' after the configuration"
            raise StoreError(f"{name!r} ran for several {col}s ({', '.join(values)}); pick one with {flag}")
    return rows.sort("finished_at").row(-1, named=True)
