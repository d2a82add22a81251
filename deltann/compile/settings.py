"""Named TVM Relax optimization settings, each an explicit list of Relax passes composed
from the pass catalogue (:mod:`deltann.compile.catalogue`).

This is the one place the settings are defined; ``deltann passes`` prints the lists.
Passes before ``LegalizeOps`` act on high-level Relax operators; the rest act on TIR
kernels. Every setting ends with the target's own lowering tail (``LOWERING``: dataflow
lowering, memory planning, VM codegen), which is not optional and not part of any
comparison.

Relay-era correspondence (the seed's opt levels): ``basic`` ~ opt_level 0 (one kernel
per operator, inference simplification only), ``default`` ~ opt_level 2 (constant
folding and operator fusion), ``extended`` ~ opt_level 4 (adds batch-norm folding, the
channel-last layout of AlterOpLayout, CSE, parallel-matmul combining, fast math).

Scheduling is part of lowering, not an optimization level: every named setting ends
with the target's tuning-free schedule (``DefaultSchedule``: deltann's parallel,
vectorised, register-tiled CPU loops on ``llvm``, TVM's dlight rules on GPU targets;
:mod:`deltann.compile.schedules`). Why: in Relay every operator was lowered through its
TOPI strategy, with a real schedule, whatever the ``opt_level``; the seed's time tables
compare graph-level passes over scheduled kernels. Without a schedule TVM 0.27 emits
naive single-threaded loops, far slower than onnxruntime, and a
table of ``basic`` against ``extended`` would measure "scheduled vs unscheduled",
dwarfing every pass.

The unscheduled build stays available for those who study it: the ``unscheduled``
setting (``basic`` without the schedule) and the ablation entry
``extended-DefaultSchedule``.

Ablation settings are named from a base setting and one catalogue entry:
``basic+FastMath`` (that entry alone on top of ``basic``) and ``extended-OpFusion``
(``extended`` without it, and without the entries that share its Relax passes:
``extended-CombineParallelDense`` drops CombineParallelMatmul). Both bases are
scheduled, so ``basic+P`` and ``extended-P`` measure P over scheduled kernels, as the
seed's Table IV did. :func:`passes_of` resolves any such name.
"""

from __future__ import annotations

from deltann.compile import catalogue

#: The catalogue entry of the target's tuning-free schedule, in every named setting but
#: ``unscheduled``.
SCHEDULE = "DefaultSchedule"

#: ``basic`` without the schedule: naive loops, for those who study them.
UNSCHEDULED = "unscheduled"

#: Catalogue entries enabled in each named setting.
ENABLED: dict[str, frozenset[str]] = {
    "basic": frozenset({"SimplifyInference", SCHEDULE}),
    "default": frozenset({"SimplifyInference", "FoldConstant", "OpFusion", SCHEDULE}),
    "extended": frozenset({
        "SimplifyInference", "FoldConstant", "OpFusion", "FoldScaleAxis", "EliminateCommonSubexpr",
        "CombineParallelDense", "CombineParallelBatchMatmul", "FastMath", "AlterOpLayout", SCHEDULE,
    }),
    UNSCHEDULED: frozenset({"SimplifyInference"}),
}

SETTINGS: dict[str, tuple[str, ...]] = {name: catalogue.compose(enabled) for name, enabled in ENABLED.items()}

#: The MetaSchedule setting: ``extended`` with the tuning database applied right before
#: the tuning-free schedule, which then schedules only the kernels without a record
#: (:mod:`deltann.compile.metaschedule`; budget from the study's ``[tuning]``). Not a catalogue
#: entry and not an ablation base: it needs a tuning run, which an ablation should not.
TUNED = "tuned"
#: The Relax pass that applies a MetaSchedule database (it reads ``Database.current()``).
APPLY_DATABASE = "MetaScheduleApplyDatabase"
_SCHEDULE = SETTINGS["extended"].index(*catalogue.get(SCHEDULE).post)
SETTINGS[TUNED] = SETTINGS["extended"][:_SCHEDULE] + (APPLY_DATABASE,) + SETTINGS["extended"][_SCHEDULE:]

#: Always applied after the setting's passes: TVM's own per-target lowering.
LOWERING = ("library_dispatch_passes (before)", "dlight's default GPU schedule (GPU targets)", "dataflow_lower_passes",
            "finalize_passes")

#: The pseudo-setting of a framework's own runtime (no compiler).
NATIVE = "native"

#: Settings that ablation builds on: entries are added to the first, removed from the second.
ABLATION_BASES = ("basic", "extended")


def names() -> list[str]:
    return list(SETTINGS)


def ablation_names() -> list[str]:
    """``basic+X`` for every mapped catalogue entry X not in basic, then ``extended-X``
    for every entry in extended (the seed's Table IV, both directions), then
    ``unscheduled``: basic without the schedule, what the schedule does on its own."""
    low, high = ABLATION_BASES
    added = [f"{low}+{n}" for n in catalogue.names(mapped_only=True) if n not in ENABLED[low]]
    removed = [f"{high}-{n}" for n in catalogue.names(mapped_only=True) if n in ENABLED[high]]
    return added + removed + [UNSCHEDULED]


def without(base: str, entry: str) -> str | None:
    """The named setting that is ``base`` without catalogue ``entry`` (``basic`` without
    DefaultSchedule: ``unscheduled``), or None: the "alone" side of Table IV for an entry
    ``base`` already has."""
    wanted = ENABLED[base] - catalogue.aliases(entry)
    return next((name for name, enabled in ENABLED.items() if enabled == wanted and name != base), None)


def is_tuned(name: str) -> bool:
    """Whether a setting needs a MetaSchedule tuning database (deltann.compile.metaschedule)."""
    return APPLY_DATABASE in passes_of(name)


def enabled_of(name: str) -> frozenset[str]:
    """Catalogue entries of a setting name: a named setting, ``base+Entry`` or ``base-Entry``
    (``tuned``: those of ``extended``, whose passes it runs around its database)."""
    if name == TUNED:
        return ENABLED["extended"]
    if name in ENABLED:
        return ENABLED[name]
    for sign in "+-":
        base, sep, entry = name.partition(sign)
        if sep and base in ENABLED:
            catalogue.get(entry)  # raises KeyError naming the known entries
            return ENABLED[base] | {entry} if sign == "+" else ENABLED[base] - catalogue.aliases(entry)
    raise KeyError(f"unknown setting {name!r}; allowed: {', '.join(names())} or <setting>+<pass> / <setting>-<pass>")


def passes_of(name: str) -> tuple[str, ...]:
    """The explicit Relax pass list of any setting name (see :func:`enabled_of`)."""
    return SETTINGS[name] if name in SETTINGS else catalogue.compose(enabled_of(name))


def is_known(name: str) -> bool:
    try:
        enabled_of(name)
    except KeyError:
        return False
    return True


def expand(settings: list[str], ablation: bool) -> list[str]:
    """A study's settings, followed by the ablation settings when it asks for them."""
    out = list(settings)
    if ablation:
        out += [s for s in ablation_names() if s not in out]
    return out
