"""A framework's own runtime by name, made through the registry
(:mod:`deltann.core.runtime_registry`): nothing heavy is imported until a runner is made."""

from __future__ import annotations

from typing import Any

from deltann.core import runtime_registry as registry
from deltann.core.runner import Runner


def native_runner(runtime: str, payload: Any, layout: str, meta: dict[str, Any] | None = None) -> Runner:
    """The runner of ``runtime`` over an artifact's payload, with the artifact's recorded
    ``layout`` and metadata (``keras_api`` for Keras files, tensor names of a frozen graph)."""
    return registry.get(runtime).from_artifact(payload, layout, meta)
