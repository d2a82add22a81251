"""TVM Relax: import through a frontend, build under a setting's passes, run on the
Relax VM, time with TVM's own ``time_evaluator``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from deltann.runtimes.base import Runner


class TvmBuild:
    """Import + build, timed separately from loading (stage ``build``)."""

    def __init__(self, frontend: str, payload: Any, input_shape: tuple[int, ...], passes: tuple[str, ...],
                 target_json: str, host_json: str, tuning: str = "") -> None:
        self.frontend, self.payload, self.input_shape = frontend, payload, input_shape
        self.passes, self.target_json, self.host_json = passes, target_json, host_json
        self.tuning = tuning  # MetaSchedule records (JSON, compile.tuning) for setting ``tuned``
        self.executable: Any = None
        self.resolved_target = ""  # the target as built, e.g. mcpu "native" resolved on the board
        self.import_s = 0.0
        self.compile_s = 0.0

    def __call__(self) -> Any:
        from deltann.compile.frontends import import_relax
        from deltann.compile.pipeline import build, make_target

        start = time.perf_counter()
        mod = import_relax(self.frontend, self.payload, self.input_shape)
        self.import_s = time.perf_counter() - start
        start = time.perf_counter()
        target = make_target(self.target_json, self.host_json)
        self.resolved_target = str(target)
        from deltann.compile.tuning import database_from_json

        self.executable = build(mod, self.passes, target, database=database_from_json(self.tuning))
        self.compile_s = time.perf_counter() - start
        return self.executable


class TvmRunner(Runner):
    name = "tvm"

    def __init__(self, executable: Any, device: str = "llvm", layout: str = "NCHW") -> None:
        super().__init__(layout)
        self.executable = executable
        self.device_name = device
        self.vm: Any = None

    def activate_impl(self) -> None:
        import tvm
        from tvm import relax

        # The device a target kind runs on: llvm -> cpu; cuda, opencl, vulkan, ... by name.
        self.dev = tvm.device("cpu" if self.device_name == "llvm" else self.device_name, 0)
        self.vm = relax.VirtualMachine(self.executable, self.dev)

    def _tensor(self, x: np.ndarray) -> Any:
        import tvm

        return tvm.runtime.tensor(x, device=self.dev)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        out = self.vm["main"](self._tensor(x))
        if not hasattr(out, "numpy"):  # a tuple of outputs: logits come first
            out = out[0]
        return out.numpy()

    def measure_impl(self, x: np.ndarray, *, warmup: int, number: int, repeat: int, min_repeat_ms: int) -> list[int]:
        arg = self._tensor(x)
        for _ in range(warmup):
            self.vm["main"](arg)
        evaluator = self.vm.time_evaluator("main", self.dev, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
        return [round(s * 1e9) for s in evaluator(arg).results]

    def deactivate_impl(self) -> None:
        self.vm = None
