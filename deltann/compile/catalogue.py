"""The pass catalogue: the seed's eleven Relay passes and their TVM 0.27 Relax
counterparts, in one table that the settings are built from.

Why a table in code: the seed's Tables III-IV name Relay passes, and TVM 0.27 has Relax
only. Each Relay pass maps to an ordered list of Relax passes, split by where they act
(``pre``: on high-level Relax operators, before ``LegalizeOps``; ``post``: on TIR
kernels, after it), or to nothing, with the reason. Two more entries are not the seed's
but are part of every named setting and can be ablated like the others:
``SimplifyInference`` (as in Relay's opt_level 0) and ``DefaultSchedule``, the target's
tuning-free schedule (:mod:`deltann.compile.schedules`). The schedule is part of
lowering, not an optimization: every Relay build lowered each operator through a TOPI
schedule whatever its opt_level, so the settings (:mod:`deltann.compile.settings`)
differ in graph-level passes only, all of them over scheduled kernels.

The composition rule (:func:`compose`) is fixed: ``pre`` passes of the enabled entries in
catalogue order, then ``LegalizeOps`` + ``AnnotateTIROpPattern``, then ``post`` passes in
catalogue order. Catalogue order is chosen so that every subset builds (e.g.
``FoldBatchnormToConv2D`` directly followed by ``ConvertLayout`` segfaults in TVM 0.27;
the FoldScaleAxis entry ends with a ``FoldConstant`` so that never happens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deltann.compile import schedules

#: Always between the ``pre`` and ``post`` passes: operators become TIR kernels here.
LEGALIZE: tuple[str, ...] = ("LegalizeOps", "AnnotateTIROpPattern")


@dataclass(frozen=True)
class PassEntry:
    """One row of the catalogue."""

    name: str  # the seed's (Relay) name, or our own name for the extra entries
    pre: tuple[str, ...]  # Relax passes before LegalizeOps, in order
    post: tuple[str, ...]  # passes after LegalizeOps, in order
    note: str  # how the counterpart differs, or why there is none
    seed: bool = True  # one of the seed's eleven passes

    @property
    def passes(self) -> tuple[str, ...]:
        return self.pre + self.post

    @property
    def mapped(self) -> bool:
        return bool(self.pre or self.post)


# Catalogue order is composition order (see module docstring).
CATALOGUE: tuple[PassEntry, ...] = (
    PassEntry(
        "FoldScaleAxis", ("FoldBatchnormToConv2D", "FoldConstant"), (),
        "~ FoldBatchnormToConv2D: folds batch-norm into conv weights (Relay folded any scale axis). "
        "First in order: SimplifyInference would decompose the batch-norms it looks for. The "
        "FoldConstant after it materialises the folded weights and keeps a following ConvertLayout "
        "from segfaulting",
    ),
    PassEntry(
        "SimplifyInference", ("DecomposeOpsForInference",), (),
        "batch-norm/dropout/layer-norm to arithmetic; in every setting, as in Relay's opt_level 0", seed=False,
    ),
    PassEntry(
        "AlterOpLayout", ("ClipToMinMax", "FoldExplicitPadding", "ConvertLayout", "PadConvolutionWidths"), (),
        "~ ConvertLayout(conv2d: NHWC data, HWIO weights): output channels innermost in output and "
        "weights, the axis DefaultSchedule vectorises, for the whole graph (without it each NCHW "
        "convolution transposes its input inside its kernel and scatters its output back); Relay's "
        "AlterOpLayout asked each schedule for "
        "its preferred (blocked) layout, Relax takes one layout per op from a table. Before it, "
        "deltann's ClipToMinMax turns clips (ReLU6) into maximum/minimum, which ConvertLayout keeps "
        "channel-last (it has no rule for clip: a transpose pair around every ReLU6), and "
        "FoldExplicitPadding (Relay's pass of that name) makes a zero pad before a convolution its "
        "padding (no rule for nn.pad either: a transpose pair around every 'same' pad). After it, "
        "deltann's PadConvolutionWidths computes a channel-last convolution whose width no register "
        "tile divides (a prime width) a few columns wider, from zero padding, storing its own columns",
    ),
    PassEntry(
        "CanonicalizeOps", (), (),
        "none: Relay's CanonicalizeOps split bias_add into expand_dims+add; Relax frontends emit "
        "plain add already, so there is nothing to canonicalise",
    ),
    PassEntry(
        "CanonicalizeCast", (), (),
        "none: Relay's CanonicalizeCast moved casts into fusion groups; Relax FuseOps fuses "
        "astype as any elementwise op",
    ),
    PassEntry("FoldConstant", ("FoldConstant",), ("FoldConstant",),
              "FoldConstant, on operators and again on the legalised TIR calls"),
    PassEntry("EliminateCommonSubexpr", ("EliminateCommonSubexpr",), (), "EliminateCommonSubexpr"),
    PassEntry(
        "CombineParallelConv2D", (), (),
        "none: Relax has no pass that merges sibling conv2d (Inception branches) into one",
    ),
    PassEntry(
        "CombineParallelDense", ("CombineParallelMatmul",), (),
        "CombineParallelMatmul (one Relax pass for dense and batch_matmul: matmul covers both). "
        "It combines only matmuls whose weights are function parameters: on deltann's imports, "
        "which bind weights as constants, it is a no-op (tested)",
    ),
    PassEntry(
        "CombineParallelBatchMatmul", ("CombineParallelMatmul",), (),
        "CombineParallelMatmul (the same Relax pass as CombineParallelDense, and the same no-op on "
        "weights bound as constants)",
    ),
    PassEntry("FastMath", ("FastMathTransform",), (),
              "FastMathTransform: exp/tanh/erf to fast approximations (changes logits slightly)"),
    PassEntry("OpFusion", (), ("FuseOps", "FuseTIR"),
              "FuseOps + FuseTIR: group operators by pattern, then merge each group into one kernel"),
    PassEntry(
        "DefaultSchedule", (), ("DefaultSchedule",),
        "the target's tuning-free schedule, last in every setting (part of lowering, as TOPI's "
        "schedules were in every Relay build, whatever the opt_level): on llvm deltann's rule "
        "(parallel outer loops, vectorised inner loops, register tiles; NCHW convolutions computed "
        "channel-last inside their kernel, constant weights stored so at build time), on GPU targets "
        "TVM's dlight rules. Without it: the 'unscheduled' setting and 'extended-DefaultSchedule'",
        seed=False,
    ),
)

SEED_NAMES: tuple[str, ...] = (
    "OpFusion", "FoldConstant", "FoldScaleAxis", "AlterOpLayout", "CanonicalizeOps", "CanonicalizeCast",
    "EliminateCommonSubexpr", "CombineParallelConv2D", "CombineParallelDense", "CombineParallelBatchMatmul",
    "FastMath",
)

#: Arguments of the Relax passes that need some (every other pass is built with none).
PASS_ARGS: dict[str, dict[str, object]] = {
    "ConvertLayout": {"desired_layouts": {"relax.nn.conv2d": ["NHWC", "HWIO"]}},
}

_BY_NAME: dict[str, PassEntry] = {e.name: e for e in CATALOGUE}


def get(name: str) -> PassEntry:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown catalogue pass {name!r}; known: {', '.join(_BY_NAME)}") from None


def aliases(name: str) -> set[str]:
    """Entries with exactly the same Relax passes as ``name`` (itself included): removing
    CombineParallelDense must also remove CombineParallelBatchMatmul, or the one Relax pass
    they share would stay in."""
    entry = get(name)
    return {e.name for e in CATALOGUE if e.mapped and (e.pre, e.post) == (entry.pre, entry.post)} | {name}


def names(*, mapped_only: bool = False) -> list[str]:
    """Catalogue names in composition order (all, or only those with a Relax counterpart)."""
    return [e.name for e in CATALOGUE if e.mapped or not mapped_only]


def compose(enabled: set[str] | frozenset[str]) -> tuple[str, ...]:
    """The explicit Relax pass list of the catalogue entries in ``enabled`` (see the module
    docstring for the order). A Relax pass that two enabled entries share
    (CombineParallelMatmul) appears once."""
    unknown = set(enabled) - set(_BY_NAME)
    if unknown:
        raise KeyError(f"unknown catalogue pass(es) {sorted(unknown)}; known: {', '.join(_BY_NAME)}")
    chosen = [e for e in CATALOGUE if e.name in enabled]

    def dedup(entries: list[tuple[str, ...]]) -> list[str]:
        out: list[str] = []
        for group in entries:
            if out and out[-len(group):] == list(group):
                continue  # the same group twice in a row (shared counterpart)
            out.extend(group)
        return out

    return tuple(dedup([e.pre for e in chosen if e.pre]) + list(LEGALIZE) + dedup([e.post for e in chosen if e.post]))


def make_pass(name: str) -> Any:
    """A pass by the name a setting lists: deltann's own (:data:`schedules.PASSES`) or
    ``tvm.relax.transform.<name>(**PASS_ARGS.get(name, {}))``."""
    from tvm import relax

    if name in schedules.PASSES:
        return schedules.PASSES[name]()
    factory = getattr(relax.transform, name, None)
    if factory is None:
        raise ValueError(f"TVM has no Relax pass {name!r}")
    return factory(**PASS_ARGS.get(name, {}))
