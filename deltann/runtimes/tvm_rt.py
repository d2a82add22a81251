"""TVM Relax as a runtime: a unit's build through the one TVM path
(:mod:`deltann.compile.pipeline`: frontend import, the board's target, build, VM), kept
in the board's compiled-module cache, and run on the Relax VM."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deltann.compile import pipeline
from deltann.core import runtime_registry as registry
from deltann.core.runner import Runner
from deltann.runtimes import layers

log = logging.getLogger("deltann.runtimes")


class TvmBuild:
    """Import + build, timed separately from loading (stage ``build``).

    With ``cache_dir`` the compiled module is kept as a shared library named by
    ``cache_key`` (a unit's content key) and the target as this board resolved it, and a
    later build of the same unit on this board (its timing session, a rerun) loads it in
    milliseconds instead of compiling again (EfficientNet-Lite0 ``extended``: ~20 s)."""

    def __init__(self, frontend: str, payload: Any, input_shape: tuple[int, ...], passes: tuple[str, ...],
                 target_json: str, host_json: str, tuning: str = "", *, cache_dir: Path | None = None,
                 cache_key: str = "") -> None:
        self.frontend, self.payload, self.input_shape = frontend, payload, input_shape
        self.passes, self.target_json, self.host_json = passes, target_json, host_json
        self.tuning = tuning  # MetaSchedule records (JSON, compile.metaschedule) for setting ``tuned``
        self.cache_dir, self.cache_key = cache_dir, cache_key
        self.executable: Any = None
        self.resolved_target = ""  # the target as built, host included ("native" resolved on the board)
        self.cached = False  # loaded from the board's compiled-module cache
        self.import_s = 0.0
        self.compile_s = 0.0
        # kernels without a real schedule for the target (compile.pipeline.build_counted);
        # None when unknown (a cached module built by a deltann that did not record it)
        self.unscheduled: int | None = None

    def _cache_file(self) -> Path | None:
        if self.cache_dir is None or not self.cache_key:
            return None
        digest = hashlib.sha256(f"{self.resolved_target}\n{self.tuning}".encode()).hexdigest()[:16]
        return self.cache_dir / f"{self.cache_key}-{digest}.so"

    def __call__(self) -> Any:
        import tvm

        target = pipeline.make_target(self.target_json, self.host_json)
        self.resolved_target = str(target)
        cached = self._cache_file()
        if cached is not None and cached.is_file():
            start = time.perf_counter()
            try:
                self.executable = tvm.runtime.load_module(str(cached))
            except Exception as exc:  # noqa: BLE001 - a damaged cache file: build again
                log.warning("compiled module %s unreadable (%s); building again", cached, exc)
            else:
                self.cached, self.compile_s = True, time.perf_counter() - start
                self.unscheduled = _read_count(cached)
                return self.executable
        built = pipeline.compile_payload(self.frontend, self.payload, self.input_shape, self.passes, target, self.tuning)
        self.executable, self.unscheduled = built.executable, len(built.unscheduled)
        self.import_s, self.compile_s = built.import_s, built.compile_s
        if cached is not None:
            self._keep(cached)
        return self.executable

    def _keep(self, path: Path) -> None:
        """Export to ``path`` atomically. Exporting links with the system's C compiler; a
        board without one keeps nothing and builds again when it needs the module."""
        tmp = ""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".so")
            os.close(fd)
            self.executable.export_library(tmp)
            os.replace(tmp, path)
            if self.unscheduled is not None:
                path.with_suffix(".json").write_text(json.dumps({"unscheduled": self.unscheduled}))
        except Exception as exc:  # noqa: BLE001 - caching is an optimisation, never a failure
            if tmp:
                Path(tmp).unlink(missing_ok=True)
            log.warning("cannot keep the compiled module in %s (%s: %s); it will be built again when needed",
                        path.parent, type(exc).__name__, " ".join(str(exc).split())[:200])


def _read_count(module: Path) -> int | None:
    """The ``unscheduled`` count kept beside a cached module, or None."""
    try:
        return int(json.loads(module.with_suffix(".json").read_text())["unscheduled"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class TvmRunner(Runner):
    name = "tvm"
    dist = "apache-tvm"
    compiles = True
    #: framework -> TVM Relax frontend that imports it (the most direct one). Keras and
    #: TF models reach TVM through their TFLite or ONNX variants: Relax has no Keras or
    #: TF frontend.
    frontends = {"torch": "torch.export", "onnx": "onnx", "tflite": "tflite"}

    def __init__(self, executable: Any, device: str = "", layout: str = "NCHW") -> None:
        super().__init__(layout)
        self.executable = executable
        self.device_name = device  # the target's kind (the builds' target); "" = the CPU
        self.vm: Any = None

    def activate_impl(self) -> None:
        self.vm = pipeline.Vm(self.executable, self.device_name or pipeline.CPU_KIND)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return self.vm.first(x)  # a tuple of outputs: logits come first

    def prepare_impl(self, x: np.ndarray) -> Callable[[], Any]:
        # The input is staged on the device once; the timed call is the VM's ``main`` alone,
        # as TVM's own time_evaluator calls it.
        arg, main = self.vm.tensor(x), self.vm.vm["main"]
        return lambda: main(arg)

    def deactivate_impl(self) -> None:
        self.vm = None

    @classmethod
    def from_artifact(cls, payload: Any, layout: str = "NCHW", meta: dict[str, Any] | None = None, *,
                      target: str = "") -> Runner:
        return cls(payload, device=json.loads(target)["kind"] if target else "llvm", layout=layout)

    @classmethod
    def capture(cls, payload: Any, x: np.ndarray, layout: str, *, meta: dict[str, Any] | None = None,
                **options: Any) -> layers.Trace:
        """A build's layers through the frontend it was imported by (``frontend``, told
        from the payload when empty): every layer exposed, or with ``kernels`` one layer
        per kernel as built (:mod:`deltann.runtimes.layers`)."""
        frontend = options.get("frontend") or _frontend_of(payload)
        passes, tuning = tuple(options.get("passes") or ()), options.get("tuning", "")
        target_json, host_json = options.get("target_json") or '{"kind": "llvm"}', options.get("host_json", "")
        torch_export = frontend == cls.frontends["torch"]
        if options.get("kernels") and frontend in cls.frontends.values():
            return layers.capture_tvm_kernels(frontend, payload, x, passes, target_json, host_json,
                                              "NCHW" if torch_export else layout, tuning)
        if torch_export:
            return layers.capture_tvm_torch(payload, x, passes, target_json, host_json, tuning)
        if frontend == cls.frontends["onnx"]:
            return layers.capture_tvm(Path(payload), x, passes, target_json, host_json, layout, tuning)
        if frontend == cls.frontends["tflite"]:
            return layers.capture_tvm_tflite(Path(payload), x, passes, target_json, host_json, layout, tuning)
        raise ValueError(f"no per-layer TVM capture through frontend {frontend!r} ({payload}); "
                         f"have: {', '.join(cls.frontends.values())}")


def _frontend_of(payload: Any) -> str:
    """The frontend deltann's planner uses for an artifact, told from the payload when a
    caller has no ``builds`` row: a module is torch's, a file the frontend of the
    framework its suffix names."""
    if not isinstance(payload, (str, Path)):
        return TvmRunner.frontends["torch"]
    return TvmRunner.frontends.get(registry.framework_of_suffix(Path(payload).suffix) or "", "")


registry.register(TvmRunner)
