"""The one TVM path: import a payload through its frontend, resolve the board's target
(host included), build under a setting's pass list (and tuning records), and run the
result on the Relax VM on the target's device.

Why one module: runs, tuning, localize, bisect and the benches all build and run TVM
modules, and a target bug once lived in one of several copies of this path (issue 13:
a host without the CPU). Every ``tvm.compile`` and ``relax.VirtualMachine`` of deltann is
here (tests/compile/test_one_path.py scans for others), and so is every check of a
target's kind by name (``cuda``, ``opencl``, ...), the host devices a board's container
is handed included; the kind facts that need no TVM (:mod:`deltann.core.targets`) sit in
the foundation, where the device catalogue reads them."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from deltann.compile import schedules
from deltann.compile.catalogue import make_pass
from deltann.compile.frontends import import_relax
from deltann.compile.metaschedule import database_from_json
from deltann.compile.settings import APPLY_DATABASE
from deltann.core.targets import CPU_KIND, DEFAULT_TARGET, host_of, is_cpu, is_gpu, is_native, kind_of

__all__ = ["CPU_KIND", "DEFAULT_TARGET", "host_of", "is_cpu", "is_gpu", "is_native", "kind_of", "make_pass"]

log = logging.getLogger("deltann.compile")


def resolve_native(spec: dict[str, Any]) -> dict[str, Any]:
    """``mcpu = "native"`` in the device catalogue means "the CPU of the board that
    builds": resolved here, on the board, with LLVM's host detection. Why: the
    tuning-free schedules need the real CPU's vector width (generic llvm is SSE2), and
    a catalogue kind cannot name one CPU for all its boards."""
    if is_native(spec):
        from tvm.target import codegen

        return {**spec, "mcpu": codegen.llvm_get_system_cpu()}
    return spec


def make_target(target_json: str, host_json: str) -> Any:
    """The TVM target a board builds for: ``mcpu = "native"`` resolved on this board, the
    host part as :func:`host_of` says."""
    import tvm

    target = json.loads(target_json)
    host = host_of(target, json.loads(host_json) if host_json else None)
    return tvm.target.Target(resolve_native(target), host=resolve_native(host) if host is not None else None)


def _backend(target: Any) -> str:
    """The ``tvm.relax.backend`` package serving ``target`` (as relax.pipeline dispatches)."""
    kind = kind_of(target)
    if is_cpu(kind):
        return "cpu_generic"
    if kind in ("cuda", "rocm"):
        return kind
    if kind == "opencl" and "adreno" in target.keys:
        return "adreno"
    return "gpu_generic"


def host_device_of(target: Any) -> str:
    """The host device a board's container must be handed to run ``target``: ``"gpu"``
    (the NVIDIA GPUs, for ``cuda``), ``"opencl-device"`` (the board's OpenCL device, for
    ``opencl``), or ``""`` (nothing beyond the CPU)."""
    kind = kind_of(target)
    if kind == "cuda":
        return "gpu"
    if kind == "opencl":
        return "opencl-device"
    return ""


def _dataflow_lower_passes(target: Any) -> list[Any]:
    # TVM 0.27 quirk: relax.pipeline.dataflow_lower_passes looks the function up on
    # relax.backend.<backend>, whose __init__ does not export it; the function itself
    # lives in relax.backend.<backend>.pipeline.
    import importlib

    from tvm import relax

    try:
        return relax.pipeline.dataflow_lower_passes(target)
    except AttributeError:
        module = importlib.import_module(f"tvm.relax.backend.{_backend(target)}.pipeline")
        return module.dataflow_lower_passes(target)


def gpu_schedule(target: Any) -> list[Any]:
    """dlight's default GPU rules for a GPU target, or nothing for a CPU target: the
    thread binding without which a kernel is compiled as host code and a ``cuda`` or
    ``opencl`` build holds no device kernel at all (tests/compile/test_gpu_targets.py).
    A setting's ``DefaultSchedule`` schedules GPU kernels with the same rules first
    (dlight skips what is scheduled); this makes ``unscheduled`` GPU builds runnable too,
    with the plainest binding."""
    if not is_gpu(target):
        return []
    from tvm.s_tir import dlight as dl

    return [dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
                                    dl.gpu.Fallback())]


def lower(mod: Any, passes: tuple[str, ...], target: Any, database: Any = None) -> Any:
    """The module as :func:`build` compiles it: TVM's library dispatch for ``target``,
    ``passes`` in order, then TVM's lowering tail (see
    :data:`deltann.compile.settings.LOWERING`). ``database``: the MetaSchedule database
    that ``MetaScheduleApplyDatabase`` (setting ``tuned``, :mod:`deltann.compile.metaschedule`)
    reads; required when that pass is listed."""
    import contextlib

    import tvm
    from tvm import relax

    if database is None and APPLY_DATABASE in passes:
        raise ValueError(f"setting with {APPLY_DATABASE} built without a tuning database; tune first "
                         "(deltann.compile.metaschedule)")
    dispatch = relax.pipeline.library_dispatch_passes(target)
    lowering = _dataflow_lower_passes(target) + relax.pipeline.finalize_passes(target)
    with target, (database if database is not None else contextlib.nullcontext()):
        # LegalizeOps is idempotent: a setting that omits it still gets a buildable module.
        # Passes are made inside the target scope: MetaScheduleApplyDatabase reads it.
        chosen = [make_pass(p) for p in passes]
        seq = tvm.transform.Sequential(dispatch + chosen + [relax.transform.LegalizeOps()] + gpu_schedule(target)
                                       + lowering)
        return seq(mod)


def build(mod: Any, passes: tuple[str, ...], target: Any, database: Any = None) -> Any:
    """Lower ``mod`` under ``passes`` for ``target`` (:func:`lower`) and build a VM
    executable (:func:`build_counted` without its count)."""
    return build_counted(mod, passes, target, database)[0]


def build_counted(mod: Any, passes: tuple[str, ...], target: Any, database: Any = None) -> tuple[Any, list[str]]:
    """(VM executable, names of its kernels without a real schedule for ``target``:
    :func:`deltann.compile.schedules.kernels_without_schedule`). The names are what a
    build reports (the ``builds`` table's ``unscheduled`` column, bench/compile.py); a
    scheduled setting that leaves some is logged."""
    import tvm

    lowered = lower(mod, passes, target, database)
    missing = schedules.kernels_without_schedule(lowered, target)
    if missing and schedules.SCHEDULING.intersection(passes):
        log.info("%d kernel(s) without a %s schedule: %s", len(missing),
                 "vector" if is_cpu(target) else "device", ", ".join(missing[:8]))
    return tvm.compile(lowered, target=target, relax_pipeline=None), missing


def resolved_spec(target_json: str, host_json: str) -> dict[str, Any]:
    """``{"target": ..., "host": ...}`` with ``mcpu = "native"`` resolved on this board and
    the host as the catalogue gives it (None when left out): what a tuning database is
    keyed by (:func:`deltann.fleet.tuning_driver.tuning_key`) and what :func:`tuning_target_of`
    reads back on the boards that tune."""
    return {"target": resolve_native(json.loads(target_json)),
            "host": resolve_native(json.loads(host_json)) if host_json else None}


def tuning_target_of(resolved_json: str) -> Any:
    """The TVM target a board tunes for, from :func:`resolved_spec`'s JSON, with the host
    made one with the target as :func:`host_of` makes it for builds: MetaSchedule
    compiles every candidate it measures with the host's LLVM target, so a catalogue host
    without ``mcpu`` had every candidate timed as generic x86-64 code (the built
    module's ``target-cpu``: "generic") while the tuned build runs this CPU's code. The
    tuning key still reads the spec as stored (:func:`resolved_spec`)."""
    import tvm

    spec = json.loads(resolved_json)
    host = host_of(spec["target"], spec["host"])
    return tvm.target.Target(spec["target"], host=host) if host else tvm.target.Target(spec["target"])


def device(target: Any, *, check: bool = False) -> Any:
    """The device a target runs on here: ``llvm`` -> ``cpu``; ``cuda``, ``opencl``,
    ``vulkan``, ... by their own name. ``check``: a one-line error where this machine has
    no such device (a board's build runs on a board of its kind)."""
    import tvm

    kind = kind_of(target)
    dev = tvm.device("cpu" if is_cpu(kind) else kind, 0)
    if check and not dev.exist:
        raise RuntimeError(f"target {kind!r} has no device on this machine: run this build on a board of its kind "
                           "(deltann localize runs both sides where it is started)")
    return dev


class Vm:
    """A built module on the Relax VM, on its target's device (:func:`device`).

    ``target``: a ``tvm.target.Target``, a spec dict or a kind name; ``vm`` and ``dev``
    are TVM's own objects for callers that instrument or time the VM."""

    def __init__(self, executable: Any, target: Any, *, check: bool = False) -> None:
        from tvm import relax

        self.dev = device(target, check=check)
        self.vm = relax.VirtualMachine(executable, self.dev)

    def tensor(self, x: Any) -> Any:
        """``x`` (a numpy array) staged on the VM's device."""
        import numpy as np
        import tvm

        return tvm.runtime.tensor(np.ascontiguousarray(x), device=self.dev)

    def outputs(self, x: Any) -> list[Any]:
        """Every output of ``main`` for ``x`` (one tensor, or a tuple's items), on the device."""
        out = self.vm["main"](self.tensor(x))
        return [out] if hasattr(out, "numpy") else list(out)

    def first(self, x: Any) -> Any:
        """``main``'s first output for ``x`` as numpy (an image model's logits come first)."""
        return self.outputs(x)[0].numpy()


@dataclass
class Compiled:
    """A payload built for a target: the VM executable, the names of its kernels without
    a real schedule (:func:`build_counted`), and the seconds import and compile took."""

    executable: Any
    unscheduled: list[str]
    import_s: float
    compile_s: float


def compile_payload(frontend: str, payload: Any, input_shape: tuple[int, ...], passes: tuple[str, ...],
                    target: Any, tuning: str = "") -> Compiled:
    """Import ``payload`` through ``frontend`` (:func:`deltann.compile.frontends.import_relax`)
    and build it under ``passes`` for ``target`` (from :func:`make_target`). ``tuning``: the
    ``tuned`` setting's MetaSchedule records (JSON, :mod:`deltann.compile.metaschedule`), "" for none."""
    start = time.perf_counter()
    mod = import_relax(frontend, payload, input_shape)
    import_s = time.perf_counter() - start
    start = time.perf_counter()
    executable, missing = build_counted(mod, tuple(passes), target, database=database_from_json(tuning))
    return Compiled(executable, missing, import_s, time.perf_counter() - start)
