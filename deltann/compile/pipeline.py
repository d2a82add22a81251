"""Turn a named setting's pass list into a TVM pipeline and build it for a target."""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("deltann.compile")


def make_pass(name: str) -> Any:
    """A pass by the name a setting lists: deltann's own (:data:`schedules.PASSES`) or
    ``tvm.relax.transform.<name>(**catalogue.PASS_ARGS.get(name, {}))``."""
    from tvm import relax

    from deltann.compile import catalogue, schedules

    if name in schedules.PASSES:
        return schedules.PASSES[name]()
    factory = getattr(relax.transform, name, None)
    if factory is None:
        raise ValueError(f"TVM has no Relax pass {name!r}")
    return factory(**catalogue.PASS_ARGS.get(name, {}))


def resolve_native(spec: dict[str, Any]) -> dict[str, Any]:
    """``mcpu = "native"`` in the device catalogue means "the CPU of the board that
    builds": resolved here, on the board, with LLVM's host detection. Why: the
    tuning-free schedules are ~5x faster with the real CPU's vector width than with
    generic llvm (SSE2), and a catalogue kind cannot name one CPU for all its boards."""
    if spec.get("kind") == "llvm" and spec.get("mcpu") == "native":
        from tvm.target import codegen

        return {**spec, "mcpu": codegen.llvm_get_system_cpu()}
    return spec


def host_of(target: dict[str, Any], host: dict[str, Any] | None) -> dict[str, Any] | None:
    """The host part of a kind's target. On a CPU target (``llvm``) the kernels are host
    code, so the host *is* the target: a host that leaves out the CPU (``{kind = "llvm"}``)
    takes the target's keys, and one that names another CPU or triple is refused. Why:
    TVM compiles every CPU kernel with the host's LLVM target, so a host without ``mcpu``
    made every kernel generic x86-64 (SSE2) whatever the target said (issue 13: 2-3x
    slower). On an accelerator target the host is the board's CPU side, as given."""
    if target.get("kind") != "llvm":
        return host
    if host is None:
        return dict(target)
    clash = {k: (v, target.get(k)) for k, v in host.items() if k in target and target[k] != v}
    extra = sorted(set(host) - set(target))
    if clash or extra or host.get("kind") != "llvm":
        named = ", ".join([f"{k} = {a!r} (target: {b!r})" for k, (a, b) in clash.items()] + [f"{k}" for k in extra])
        raise ValueError(f"a CPU target's host must be the target itself or left out; the host sets {named}")
    return dict(target)


def make_target(target_json: str, host_json: str) -> Any:
    """The TVM target a board builds for: ``mcpu = "native"`` resolved on this board, the
    host part as :func:`host_of` says."""
    import tvm

    target = json.loads(target_json)
    host = host_of(target, json.loads(host_json) if host_json else None)
    return tvm.target.Target(resolve_native(target), host=resolve_native(host) if host is not None else None)


def _backend(target: Any) -> str:
    """The ``tvm.relax.backend`` package serving ``target`` (as relax.pipeline dispatches)."""
    kind = target.kind.name
    if kind == "llvm":
        return "cpu_generic"
    if kind in ("cuda", "rocm"):
        return kind
    if kind == "opencl" and "adreno" in target.keys:
        return "adreno"
    return "gpu_generic"


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
    if "gpu" not in target.keys:
        return []
    from tvm.s_tir import dlight as dl

    return [dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
                                    dl.gpu.Fallback())]


def lower(mod: Any, passes: tuple[str, ...], target: Any, database: Any = None) -> Any:
    """The module as :func:`build` compiles it: TVM's library dispatch for ``target``,
    ``passes`` in order, then TVM's lowering tail (see
    :data:`deltann.compile.settings.LOWERING`). ``database``: the MetaSchedule database
    that ``MetaScheduleApplyDatabase`` (setting ``tuned``, :mod:`deltann.compile.tuning`)
    reads; required when that pass is listed."""
    import contextlib

    import tvm
    from tvm import relax

    from deltann.compile.settings import APPLY_DATABASE

    if database is None and APPLY_DATABASE in passes:
        raise ValueError(f"setting with {APPLY_DATABASE} built without a tuning database; tune first "
                         "(deltann.compile.tuning)")
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

    from deltann.compile import schedules

    lowered = lower(mod, passes, target, database)
    missing = schedules.kernels_without_schedule(lowered, target)
    if missing and schedules.SCHEDULING.intersection(passes):
        log.info("%d kernel(s) without a %s schedule: %s", len(missing),
                 "vector" if target.kind.name == "llvm" else "device", ", ".join(missing[:8]))
    return tvm.compile(lowered, target=target, relax_pipeline=None), missing
