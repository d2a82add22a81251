"""A framework's own runtime by name (the names of :data:`NATIVE_RUNTIME`), registered
as ``runtime -> (module, class)`` so adding a runtime is one line, and nothing heavy is
imported until a runner is made."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from deltann.runtimes.base import Runner

#: runtime name -> (module under deltann.runtimes, Runner class)
RUNNERS: dict[str, tuple[str, str]] = {
    "torch": ("torch_rt", "TorchRunner"),
    "onnxruntime": ("onnxrt", "OnnxrtRunner"),
    "keras": ("keras_rt", "KerasRunner"),
    "tf": ("tf_rt", "TfRunner"),
    "litert": ("litert_rt", "LiteRTRunner"),
}


def native_runner(runtime: str, payload: Any, layout: str, meta: dict[str, Any] | None = None) -> Runner:
    """The runner of a native ``runtime`` over an artifact's payload, with the artifact's
    recorded ``layout`` and metadata (``keras_api`` for Keras files)."""
    try:
        module, cls = RUNNERS[runtime]
    except KeyError:
        raise ValueError(f"no runner for runtime {runtime!r}; known: {', '.join(RUNNERS)}") from None
    runner_cls = getattr(import_module(f"deltann.runtimes.{module}"), cls)
    if runtime == "keras":
        return runner_cls(payload, layout, (meta or {}).get("keras_api", "keras"))
    if runtime == "tf":  # a frozen GraphDef names its tensors in metadata
        return runner_cls(payload, layout, meta)
    return runner_cls(payload, layout)
