"""Runner: the one interface every runtime implements (after Polygraphy's BaseRunner).

``activate`` loads (and for TVM, builds), ``infer`` maps one NCHW float32 batch to
logits in the model's own label space, ``prepare`` stages one input and returns the call
that every timing path times (``measure``: TVM's ``time_evaluator`` protocol; the
interleaved sessions of :mod:`deltann.runtimes.interleave`), ``deactivate`` frees. An NHWC artifact (TF, Keras, TFLite
and what is converted from them) gets the same tensor transposed here, so input hashes
are always of the canonical NCHW tensor; the layout is the artifact's recorded metadata. Subclasses write only the ``*_impl``
methods; the public ones check state and record how long activation took.

A runner class also declares what the rest of deltann asks about its runtime (name,
framework, distributions, file types, layout, thread policy, compiling or not) and
captures per-layer outputs (:meth:`Runner.capture`); :mod:`deltann.core.runtime_registry`
finds it by name, so nothing outside the runtime modules branches on a runtime's name.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from deltann.core.trace import Trace


def time_evaluator_protocol(
    fn: Callable[[], Any], *, warmup: int, number: int, repeat: int, min_repeat_ms: int
) -> list[int]:
    """Time ``fn`` exactly as TVM's ``time_evaluator`` does (src/runtime/profiling.cc):
    ``warmup`` extra calls plus one discarded call, then ``repeat`` samples, each the mean
    over ``number`` calls, where ``number`` grows by max(golden ratio, what reaches
    ``min_repeat_ms``) until one sample lasts at least ``min_repeat_ms`` and keeps its
    grown value for later samples. Returns per-call nanoseconds, one per sample."""
    for _ in range(warmup + 1):
        fn()
    samples: list[int] = []
    duration_ms = 0.0
    for _ in range(repeat):
        duration_ms = 0.0
        while True:
            if duration_ms > 0.0:
                number = int(max(min_repeat_ms / (duration_ms / number) + 1, number * 1.618))
            start = time.perf_counter_ns()
            for _ in range(number):
                fn()
            elapsed = time.perf_counter_ns() - start
            duration_ms = elapsed / 1e6
            if duration_ms >= min_repeat_ms:
                break
        samples.append(math.floor(elapsed / number))
    return samples


def thread_env(threads: int) -> dict[str, str]:
    """The board's thread policy as environment variables: torch and onnxruntime (through
    :func:`thread_count`) read ``OMP_NUM_THREADS``, TVM reads ``TVM_NUM_THREADS`` (its own
    default is half the logical cores on x86). Set before a framework starts its pool:
    for a board actor through Ray's ``runtime_env``, for a benchmark at its top."""
    return {"OMP_NUM_THREADS": str(threads), "TVM_NUM_THREADS": str(threads)}


def thread_count() -> int:
    """Threads a runtime may use on this board: ``OMP_NUM_THREADS`` (which the board
    actor sets, and torch and TVM read) or, outside an actor, every core."""
    import os

    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)


class Runner:
    """Base runner; a context manager. A runtime is one subclass, registered with
    :func:`deltann.core.runtime_registry.register`; its class attributes declare the runtime."""

    #: the runtime's name (the ``builds`` table's ``runtime``; content keys carry it)
    name: ClassVar[str] = "runner"
    #: the framework whose models this runtime runs as they are ("" for a compiler: TVM)
    framework: ClassVar[str] = ""
    #: PyPI distribution whose version identifies the runtime in content keys
    dist: ClassVar[str] = ""
    #: PyPI distribution whose version identifies a model of ``framework``
    framework_dist: ClassVar[str] = ""
    #: model file types of ``framework`` a user model may be (``.onnx``); lower case
    suffixes: ClassVar[tuple[str, ...]] = ()
    #: the layout ``framework``'s models take when a user model does not say
    default_layout: ClassVar[str] = "NCHW"
    #: a model of ``framework`` is a file read as data: loading it for a conversion needs
    #: no framework installed (ONNX, TFLite), unlike a module or a SavedModel
    data_files: ClassVar[bool] = False
    #: the runtime runs a build made on the board first (stage ``build``): TVM
    compiles: ClassVar[bool] = False
    #: a compiler's importers: framework -> the frontend its models are imported through
    frontends: ClassVar[dict[str, str]] = {}
    #: why loading a model file of ``framework`` runs code from it ("" = it does not): such
    #: a user model is refused unless the study trusts it (``trust_remote_code``)
    loads_code: ClassVar[str] = ""
    #: captured layer names carry the Keras layer's scope (``model/conv_1/BiasAdd``),
    #: which localization also matches against a Keras capture's layer names
    keras_scoped_names: ClassVar[bool] = False

    def __init__(self, layout: str = "NCHW") -> None:
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"unknown layout {layout!r}; allowed: NCHW, NHWC")
        self.layout = layout
        self.active = False
        self.activate_s = 0.0

    def to_layout(self, x: np.ndarray) -> np.ndarray:
        """The canonical NCHW float32 batch in the artifact's own layout."""
        x = np.asarray(x, dtype=np.float32)
        if self.layout == "NHWC" and x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x)

    def activate(self) -> None:
        if self.active:
            raise RuntimeError(f"{self.name} runner is already active")
        start = time.perf_counter()
        self.activate_impl()
        self.activate_s = time.perf_counter() - start
        self.active = True

    def infer(self, x: np.ndarray) -> np.ndarray:
        if not self.active:
            raise RuntimeError(f"{self.name} runner must be activated before infer")
        return np.asarray(self.infer_impl(self.to_layout(x)))

    def prepare(self, x: np.ndarray) -> Callable[[], Any]:
        """One inference on ``x`` as a call without arguments, with everything that is not
        inference (the layout transpose, staging the input on the device) done here, once.
        The timed calls of :meth:`measure` and of the interleaved sessions
        (:mod:`deltann.runtimes.interleave`) are calls of it, for every runtime alike."""
        if not self.active:
            raise RuntimeError(f"{self.name} runner must be activated before measure")
        return self.prepare_impl(self.to_layout(x))

    def measure(self, x: np.ndarray, *, warmup: int, number: int, repeat: int, min_repeat_ms: int) -> list[int]:
        """``x`` timed under :func:`time_evaluator_protocol` through :meth:`prepare`."""
        return time_evaluator_protocol(self.prepare(x), warmup=warmup, number=number, repeat=repeat,
                                       min_repeat_ms=min_repeat_ms)

    def deactivate(self) -> None:
        if self.active:
            self.deactivate_impl()
        self.active = False

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # --- the runtime as the rest of deltann sees it ----------------------------
    @classmethod
    def from_artifact(cls, payload: Any, layout: str = "NCHW", meta: dict[str, Any] | None = None, *,
                      target: str = "") -> Runner:
        """The runner over an artifact's payload (a module, a file path, or a build),
        with the artifact's recorded ``layout`` and metadata; ``target`` is the unit's
        target (JSON) for a runtime that needs it."""
        return cls(payload, layout)  # type: ignore[call-arg]

    @classmethod
    def save_payload(cls, payload: Any, layout: str, input_shape: tuple[int, ...], dst: Path) -> Path:
        """An in-memory model (a module) written as a file this runtime loads, at ``dst``
        with the file type's suffix (a repro bundle ships it); a file payload is shipped as
        it is, so by default there is nothing to save."""
        raise NotImplementedError(f"cannot save an in-memory {cls.framework or cls.name} model to a file")

    @classmethod
    def threads_used(cls) -> int:
        """Threads this runtime runs with on this board (recorded in timing rows): by
        default what :func:`thread_count` configured."""
        return thread_count()

    @classmethod
    def capture(cls, payload: Any, x: np.ndarray, layout: str, *, meta: dict[str, Any] | None = None,
                **options: Any) -> Trace:
        """Every layer's output on the canonical NCHW batch ``x`` (see
        :mod:`deltann.runtimes.layers`); ``options`` are a compiler's (passes, target)."""
        raise ValueError(f"no per-layer capture for runtime {cls.name!r}")

    # --- to implement -------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, x: np.ndarray) -> Any:
        raise NotImplementedError

    def prepare_impl(self, x: np.ndarray) -> Callable[[], Any]:
        """A call of one inference on ``x`` (already in the artifact's layout)."""
        return lambda: self.infer_impl(x)

    def deactivate_impl(self) -> None:
        pass
