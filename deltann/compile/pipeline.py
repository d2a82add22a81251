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


def make_target(target_json: str, host_json: str) -> Any:
    import tvm

    target = resolve_native(json.loads(target_json))
    host = resolve_native(json.loads(host_json)) if host_json else None
    return tvm.target.Target(target, host=host)


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
        seq = tvm.transform.Sequential(dispatch + chosen + [relax.transform.LegalizeOps()] + lowering)
        return seq(mod)


def build(mod: Any, passes: tuple[str, ...], target: Any, database: Any = None) -> Any:
    """Lower ``mod`` under ``passes`` for ``target`` (:func:`lower`) and build a VM
    executable. Kernels a scheduled setting leaves as naive loops are logged."""
    import tvm

    from deltann.compile import schedules

    lowered = lower(mod, passes, target, database)
    if schedules.SCHEDULING.intersection(passes):
        naive = schedules.unscheduled_kernels(lowered)
        if naive:
            log.info("%d kernel(s) left as naive loops: %s", len(naive), ", ".join(naive[:8]))
    return tvm.compile(lowered, target=target, relax_pipeline=None)
