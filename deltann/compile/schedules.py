"""Tuning-free CPU schedules: parallel outer loops and vectorised inner loops for every
TIR kernel of a legalised Relax module.

Why: TVM 0.27's Relax CPU pipeline emits naive single-threaded scalar loops (no
schedules), 30-110x slower than onnxruntime, and ``tvm.s_tir.dlight`` has CPU rules for
GEMV and reductions only. MetaSchedule fixes that but costs minutes to hours of tuning
per model. This module is one deterministic dlight :class:`ScheduleRule` applied to
every kernel:

- injective blocks are inlined into their (non-reduction) neighbours;
- a reduction block (conv2d, dense, pooling, mean) gets its innermost spatial loop
  split into a vector lane (one register of the target: 16 floats with AVX-512, 8 with
  AVX2, 4 otherwise), the reduction loops moved above that lane, a register tile of up
  to 8 output columns (or 4 channel vectors) around it accumulated in a local buffer,
  its init hoisted out of the reduction (``decompose_reduction``), the elementwise
  epilogue folded into the write-back, the outer spatial loops fused into one parallel
  loop;
- an injective block gets all its loops fused, split into a vector lane, parallel
  outside; one whose innermost axis is short and holds no vector (3 channels) gets its
  outer loops parallel and that axis unrolled instead.

It pays off most with channel-last layouts (``AlterOpLayout`` → NHWC/HWIO), where the
innermost spatial loop is the output channel, contiguous in output and weights. Any
kernel the rule cannot schedule is left as it was (logged at debug level), so the pass
never fails a build that would build without it. Only ``llvm`` targets are touched.

Known gap: prime output widths (InceptionV3's 149, 73, 71, 17 columns) get no column
tile, only channel tiles (71x71 3x3 conv: ~60 GFLOP/s against ~180 elsewhere, one
thread). Splitting such widths with TIR's ``loop_partition`` into a multiple of 8 and a
remainder was tried and measured 6-10x slower: the partition's wrapper blocks keep the
accumulator buffer from being compacted to one tile.

ReLU6 (clip) has no ConvertLayout rule, and the ONNX frontend emits it already legalised
(``call_tir(maximum/minimum)``); ``ClipToMinMax`` (:mod:`deltann.compile.rewrites`, run
before ConvertLayout) raises both forms to Relax maximum/minimum, so an NHWC ReLU6 no
longer sits between two transposes and fuses into its convolution's epilogue here.

The target's ``mcpu`` matters more than anything here: generic ``llvm`` compiles for
SSE2; the same schedule with ``mcpu`` set to this machine's CPU (AVX-512) measured 5x
faster on a 3x3 conv (176 vs 37 GFLOP/s, one thread).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("deltann.compile")

#: Vector lanes tried, largest first, when the target's features are unknown.
LANES = (4, 2)


def lanes_for(target: Any) -> tuple[int, ...]:
    """float32 lanes of one vector register of ``target``, then smaller fallbacks. One
    register, not more: the register tile below keeps up to 8 accumulators live, which
    must fit 16 (SSE/AVX2) or 32 (AVX-512) registers. Generic ``llvm`` (no ``mcpu``)
    compiles for SSE2: 4 lanes (measured 15% faster there than 16)."""
    from tvm.target import codegen

    try:
        if codegen.target_has_features("avx512f", target):
            return (16, 8, 4)
        if codegen.target_has_features("avx2", target):
            return (8, 4)
    except Exception:  # noqa: BLE001 - not an x86 LLVM target
        pass
    return LANES


def _lane(extent: int, lanes_tried: tuple[int, ...]) -> int:
    for lanes in lanes_tried:
        if extent % lanes == 0:
            return lanes
    return 1


def _const(extent: Any) -> int | None:
    value = getattr(extent, "value", None)
    return int(value) if value is not None else None


def _kinds(sch: Any, block: Any) -> list[str] | None:
    """'S'/'R' per loop of ``block`` when its loops map one-to-one onto its iteration
    variables (true for kernels straight out of LegalizeOps), else None."""
    from tvm import tirx

    iters = sch.get(block).iter_vars
    loops = sch.get_loops(block)
    if len(iters) != len(loops):
        return None
    kinds = []
    for it in iters:
        if it.iter_type == tirx.IterVar.DataPar:
            kinds.append("S")
        elif it.iter_type == tirx.IterVar.CommReduce:
            kinds.append("R")
        else:
            return None
    return kinds


def _is_reduction(sch: Any, block: Any) -> bool:
    from tvm import tirx

    return any(it.iter_type == tirx.IterVar.CommReduce for it in sch.get(block).iter_vars)


def _inline(sch: Any, root: Any) -> None:
    """Inline injective blocks into non-reduction consumers or producers. A padding
    block feeding a conv stays: inlined, it puts a branch in the conv's inner loop."""
    from tvm.s_tir import ScheduleError

    changed = True
    while changed:
        changed = False
        for block in sch.get_child_blocks(root):
            if _is_reduction(sch, block):
                continue
            consumers = sch.get_consumers(block)
            if consumers and not any(_is_reduction(sch, c) for c in consumers):
                try:
                    sch.compute_inline(block)
                    changed = True
                    break
                except ScheduleError:  # not inlinable that way: try the other
                    pass
            producers = sch.get_producers(block)
            if producers and not any(_is_reduction(sch, p) for p in producers):
                try:
                    sch.reverse_compute_inline(block)
                    changed = True
                    break
                except ScheduleError:  # stays a separate loop nest
                    pass


#: Innermost extents below this that cannot hold a vector are unrolled (see below).
UNROLL_MAX = 16


def _schedule_injective(sch: Any, block: Any, lanes_tried: tuple[int, ...]) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = _const(sch.get(loops[-1]).extent)
    if len(loops) > 1 and inner is not None and inner < UNROLL_MAX and _lane(inner, lanes_tried) == 1:
        # A short innermost axis with no vector in it (the 3 channels of an NCHW->NHWC
        # input transpose): fused with the others, every vector lane would compute its
        # own indices by division by that odd extent (MobileNetV2's input transpose
        # measured ~15x slower that way than like this). Parallel outer loops, the next
        # loop serial (LLVM vectorises it where it can), the short axis unrolled.
        outer = loops[:-2] if len(loops) > 2 else loops[:1]
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        sch.unroll(loops[-1])
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    extent = _const(sch.get(fused).extent)
    if extent is None:
        return
    lanes = _lane(extent, lanes_tried)
    if lanes > 1 and extent > lanes:
        outer, inner = sch.split(fused, [None, lanes])
        sch.parallel(outer)
        sch.vectorize(inner)
    elif lanes > 1:
        sch.vectorize(fused)
    else:
        sch.parallel(fused)


#: Register-tile sizes tried for the second-innermost spatial loop (output columns in
#: NHWC), largest first: that many accumulators share each weight vector load.
TILES = (8, 7, 6, 5, 4, 3, 2)

#: Channel-vector tiles (innermost spatial loop, in vectors): that many accumulators
#: share each broadcast input value; combined with a column tile within the budget.
CTILES = (8, 6, 4, 3, 2)

#: Accumulator registers a tile may keep live: 16 of AVX-512's 32 vector registers, 8 of
#: SSE/AVX2's 16 (the rest hold the broadcast inputs, weights and addresses).
ACCUMULATORS_WIDE = 16
ACCUMULATORS = 8


def _tile(extent: int | None, tiles: tuple[int, ...], budget: int) -> int:
    """The largest of ``tiles`` within ``budget`` that divides ``extent`` (a guarded,
    non-dividing tile measured 2-3x slower: the guard stays in the unrolled inner loop)."""
    if extent is None:
        return 1
    for t in tiles:
        if t <= budget and extent % t == 0:
            return t
    return 1


def _schedule_reduction(sch: Any, block: Any, kinds: list[str], lanes_tried: tuple[int, ...]) -> None:
    """Outer spatial loops parallel; inside them the reduction loops; innermost a small
    register tile (second-innermost spatial loop, unrolled) times a vector lane
    (innermost spatial loop), accumulated in a local buffer so LLVM keeps it in
    registers."""
    loops = sch.get_loops(block)
    spatial = [lp for lp, k in zip(loops, kinds, strict=True) if k == "S"]
    reduce = [lp for lp, k in zip(loops, kinds, strict=True) if k == "R"]
    if not spatial:
        return  # a full reduction to a scalar: leave it serial
    inner: list[Any] = []
    lanes = _lane(_const(sch.get(spatial[-1]).extent) or 0, lanes_tried)
    vi = None
    if lanes > 1:
        vo, vi = sch.split(spatial[-1], [None, lanes])
        spatial = spatial[:-1] + [vo]
        inner = [vi]
    tiles: list[Any] = []  # unrolled register-tile loops, outermost first
    if vi is not None and reduce:
        budget = ACCUMULATORS_WIDE if lanes >= 16 else ACCUMULATORS
        wtile = _tile(_const(sch.get(spatial[-2]).extent), TILES, budget) if len(spatial) >= 2 else 1
        ctile = _tile(_const(sch.get(spatial[-1]).extent), CTILES, budget // wtile)
        if ctile > 1:  # a few channel vectors share each input value
            co, ci = sch.split(spatial[-1], [None, ctile])
            spatial = spatial[:-1] + [co]
            tiles = [ci]
        if wtile > 1:  # a row of output columns shares each weight vector
            wo, wi = sch.split(spatial[-2], [None, wtile])
            spatial = spatial[:-2] + [wo, spatial[-1]]
            tiles = [wi, *tiles]
        inner = [*tiles, vi]
    sch.reorder(*spatial, *reduce, *inner)
    parallel = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    # parallel/vectorize need a complete reduction block, i.e. before its init is split off
    sch.parallel(parallel)
    if vi is not None:
        sch.vectorize(vi)
    for loop in tiles:
        sch.unroll(loop)
    if not reduce:
        return
    if tiles:
        local = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(local, parallel)
        _fold_epilogue(sch, local)
        wb = sch.get_loops(local)[1:]
        if wb:
            fused = sch.fuse(*wb) if len(wb) > 1 else wb[0]
            _vectorize_tail(sch, fused, lanes_tried)
    init = sch.decompose_reduction(block, reduce[0])
    if vi is not None:
        init_loops = sch.get_loops(init)
        sch.vectorize(init_loops[-1])
        for loop in init_loops[len(init_loops) - 1 - len(tiles):-1]:
            sch.unroll(loop)


def _fold_epilogue(sch: Any, writeback: Any) -> None:
    """Inline the elementwise epilogue (bias, activation, residual add) into the tile's
    write-back, so the output is written once, while it is still in cache."""
    from tvm.s_tir import ScheduleError

    while True:
        consumers = sch.get_consumers(writeback)
        if len(consumers) != 1:
            return
        try:
            sch.reverse_compute_inline(consumers[0])
        except ScheduleError:  # not elementwise: stays its own loop nest
            return


def _vectorize_tail(sch: Any, loop: Any, lanes_tried: tuple[int, ...]) -> None:
    extent = _const(sch.get(loop).extent)
    lanes = _lane(extent or 0, lanes_tried)
    if lanes > 1 and extent is not None and extent > lanes:
        _, inner = sch.split(loop, [None, lanes])
        sch.vectorize(inner)
    elif lanes > 1:
        sch.vectorize(loop)


def schedule_func(func: Any, lanes_tried: tuple[int, ...] = LANES) -> Any | None:
    """A scheduled copy of one PrimFunc, or None when the rule does not apply."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        root = sch.get_sblock("root")
        _inline(sch, root)
        # By name: scheduling a block may inline the ones after it (its epilogue).
        for name in [sch.get(b).name_hint for b in sch.get_child_blocks(root)]:
            current = {sch.get(b).name_hint: b for b in sch.get_child_blocks(root)}
            if name not in current:  # inlined into an earlier block's write-back
                continue
            block = current[name]
            kinds = _kinds(sch, block)
            if kinds is None:
                continue
            if "R" in kinds:
                _schedule_reduction(sch, block, kinds, lanes_tried)
            else:
                _schedule_injective(sch, block, lanes_tried)
    except Exception as exc:  # noqa: BLE001 - the kernel keeps its naive loops: the result is None, logged
        log.debug("DefaultCpuSchedule left %s unscheduled: %s", func.attrs.get("global_symbol", "?"), exc)
        return None
    return sch


def default_cpu_schedule() -> Any:
    """The module pass (``DefaultCpuSchedule`` in the settings): the rule above through
    dlight's ``ApplyDefaultSchedule``, which skips kernels already scheduled."""
    from tvm.s_tir import dlight
    from tvm.target import Target

    class _ParallelVectorize(dlight.ScheduleRule):
        def apply(self, func: Any, target: Target, tunable: bool) -> Any:
            if target.kind.name != "llvm":
                return None
            return schedule_func(func, lanes_for(target))

    return dlight.ApplyDefaultSchedule(_ParallelVectorize())


def clip_to_min_max() -> Any:
    """``ClipToMinMax`` (:mod:`deltann.compile.rewrites`): clips as maximum/minimum, which
    ConvertLayout keeps channel-last and FuseOps fuses into the convolution before them."""
    from deltann.compile import rewrites

    return rewrites.clip_to_min_max()


#: deltann's own passes, by the name a setting lists them under.
PASSES: dict[str, Callable[[], Any]] = {"DefaultCpuSchedule": default_cpu_schedule, "ClipToMinMax": clip_to_min_max}
