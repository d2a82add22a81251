"""The target's tuning-free schedule (``DefaultSchedule``, last in every setting): on
``llvm``, parallel outer loops and vectorised inner loops for every TIR kernel of a
legalised Relax module; on GPU targets, TVM's own dlight rules.

Why: TVM 0.27's Relax CPU pipeline emits naive single-threaded scalar loops (no
schedules), far slower than onnxruntime, and ``tvm.s_tir.dlight`` has CPU rules for
GEMV and reductions only. MetaSchedule fixes that but costs minutes to hours of tuning
per model. Every Relay build had a schedule for each operator (TOPI's, at every
opt_level), so every deltann setting has this one (:mod:`deltann.compile.settings`).
On ``llvm`` it is one deterministic dlight :class:`ScheduleRule` applied to every kernel:

- injective blocks are inlined into their (non-reduction) neighbours, and a padding
  into a depthwise conv or pooling that reads it (:func:`_inline`);
- a reduction block (conv2d, dense, pooling, mean) gets its innermost spatial loop
  split into a vector lane (one register of the target: 16 floats with AVX-512, 8 with
  AVX2, 4 otherwise), the reduction loops moved above that lane, a register tile of
  output columns x channel vectors around it (whole pixels where the output has few
  channels; :func:`_register_tile`) accumulated in a buffer on the stack
  (:data:`TILE_SCOPE`), which LLVM keeps in registers, its init hoisted out of the
  reduction (``decompose_reduction``), the elementwise epilogue folded into the
  write-back, the outer spatial loops fused into one parallel loop;
- an injective block gets all its loops fused, split into a vector lane, parallel
  outside; one whose innermost axis is short and holds no vector (3 channels) gets its
  outer loops parallel and that axis unrolled instead.

It pays off most with channel-last layouts, where the innermost spatial loop is the
output channel, contiguous in output and weights. ``AlterOpLayout`` (NHWC/HWIO, in
``extended``) gives those to the whole graph, and its constant weights are stored in
blocks of one vector of output channels (:func:`prepack_weights`), so that a register
tile reads its weights as one contiguous run; without it (``basic``, ``default``) each
NCHW convolution computes channel-last inside its own kernel (:func:`_channels_last`,
what TOPI's x86 ``conv2d_nchw`` did with NCHWc): its padded input is written
[n, h, w, c], its weights are read [ry, rx, i, o] (constant weights stored so at build
time, :func:`prepack_weights`) and its output tile is scattered back to NCHW. What
``AlterOpLayout`` still saves over that is the per-convolution transpose of the input,
the scattered write-back and the NCHW elementwise kernels between them. Any kernel the
rule cannot schedule is left as it was (logged at debug level), so the pass never fails
a build that would build without it; :func:`unscheduled_kernels` lists such kernels.

Prime output widths longer than a register file holds (InceptionV3's 17 on AVX2, 71, 73
and 149) have no column tile: such a convolution is computed a few columns wider, from
zero padding, and only its own columns stored (:func:`computed_width`, applied before
legalisation by ``PadConvolutionWidths``). Splitting such widths with TIR's
``loop_partition`` into a multiple of 8 and a remainder was tried and was slower: the
partition's wrapper blocks keep the accumulator buffer from being compacted to one tile.

ReLU6 (clip) has no ConvertLayout rule, and the ONNX frontend emits it already legalised
(``call_tir(maximum/minimum)``); ``ClipToMinMax`` (:mod:`deltann.compile.rewrites`, run
before ConvertLayout) raises both forms to Relax maximum/minimum, so an NHWC ReLU6 no
longer sits between two transposes and fuses into its convolution's epilogue here.

The target's ``mcpu`` matters more than anything here: generic ``llvm`` compiles for
SSE2, so the vector lanes above only exist with ``mcpu`` set to the board's CPU (the
catalogue's ``mcpu = "native"``).

One file because the rule's parts (inlining, tiling, the channel-last rewrite of NCHW
convolutions, weight prepacking, the checks of what got a schedule) serve this one
schedule and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from deltann.compile import rewrites
from deltann.core.targets import is_cpu, is_gpu

log = logging.getLogger("deltann.compile")

#: Vector lanes tried, largest first, when the target's features are unknown.
LANES = (4, 2)


def lanes_for(target: Any) -> tuple[int, ...]:
    """float32 lanes of one vector register of ``target``, then smaller fallbacks. One
    register, not more: the register tile below keeps up to 12 (SSE/AVX2: 16 registers)
    or 15 to 21 (AVX-512: 32) accumulators live (:data:`NARROW`, :data:`WIDE`). Generic
    ``llvm`` (no ``mcpu``) compiles for SSE2: 4 lanes (measured 15% faster there than
    16). The last fallback is 2 lanes, so that an axis no full register divides (a
    10-class head) still gets vector code rather than scalar loops."""
    from tvm.target import codegen

    try:
        if codegen.target_has_features("avx512f", target):
            return (16, 8, 4, 2)
        if codegen.target_has_features("avx2", target):
            return (8, 4, 2)
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


def _is_copy(sch: Any, block: Any) -> bool:
    """The block copies a buffer element for element, at the same indices (a "padding" of
    zero width, as LegalizeOps writes one before every convolution, 1x1 ones included);
    a transpose or a shifted read is no such copy."""
    from tvm import ir, tirx

    body = sch.get(block).body
    if not (isinstance(body, tirx.BufferStore) and isinstance(body.value, ir.TensorLoad)):
        return False
    written, read = list(body.indices), list(body.value.indices)
    return len(written) == len(read) and all(w.same_as(r) for w, r in zip(written, read, strict=True))


def _is_padding(sch: Any, block: Any) -> bool:
    """The block writes ``if_then_else(inside, input, pad value)``: a padding (LegalizeOps
    writes one before every padded convolution and pooling)."""
    from tvm import ir, tirx

    body = sch.get(block).body
    return (isinstance(body, tirx.BufferStore) and isinstance(body.value, ir.Call)
            and getattr(body.value.op, "name", "") in ("prim.if_then_else", "tir.if_then_else"))


def _window_reduction(sch: Any, block: Any, source: Any) -> bool:
    """A reduction over a window of ``source`` only: a depthwise convolution or a pooling,
    whose inner loop is a few taps per output, not a sum over input channels. Told by its
    reads of ``source``: a reduction axis that indexes it on its own (``x[n, h + ry,
    w + rx, rc]``'s ``rc``) sums over channels; a window's axes only offset spatial ones
    (``h + ry``). Counting the reduction axes instead took a 1x7 conv over 192 channels
    (two axes longer than one) for a window and put the padding's branch in its inner loop."""
    from tvm import tirx

    sblock = sch.get(block)
    axes = [it.var for it in sblock.iter_vars if it.iter_type == tirx.IterVar.CommReduce]
    alone = any(r.min.same_as(v) for read in sblock.reads if read.source.same_as(source)
                for r in read.region for v in axes)
    return bool(axes) and not alone


def _pads_rows_only(sch: Any, block: Any) -> bool:
    """The padding's condition tests none of the last two axes of what it writes (NHWC:
    rows only, as a 7x1 conv's padding): inlined, its branch depends on loops outside a
    register tile (columns x channels), so it is taken once per row of taps, not per tap."""
    sblock = sch.get(block)
    cond = sblock.body.value.args[0]
    return not any(_uses(cond, it.var) for it in sblock.iter_vars[-2:])


def _inlines_into_reductions(sch: Any, block: Any, consumers: list[Any]) -> bool:
    """Whether ``block`` goes into its consumers although some are reductions (see
    :func:`_inline`): a plain copy, a padding of window reductions only, or a padding of
    rows only; never into an NCHW conv."""
    padded = sch.get(block).writes[0].source
    fits = _is_copy(sch, block) or (_is_padding(sch, block) and (
        all(_window_reduction(sch, c, padded) for c in consumers) or _pads_rows_only(sch, block)))
    return fits and not any(_nchw_conv(sch, c) for c in consumers)


def _inline(sch: Any, root: Any) -> None:
    """Inline injective blocks into non-reduction consumers or producers, plain copies
    into any consumer, and paddings into window reductions. A padding block feeding a
    conv over channels stays: inlined, it puts a branch in the conv's inner loop, run
    once per input channel. Before a depthwise conv or a pooling that branch costs less
    than the padded copy: a second pass over memory and a parallel launch of its own
    (MobileNetV2's and EfficientNet-Lite0's depthwise kernels, timed alone with caches
    flushed: 13-45 % faster inlined, the whole models 7-10 % in paired runs; MobileNetV2's
    first conv, 3 channels summed, 1.6x slower inlined). A zero-width padding is a copy
    of the conv's whole input and goes (except before an NCHW conv, where
    :func:`_channels_last` makes that copy its channel-last input)."""
    from tvm.s_tir import ScheduleError

    changed = True
    while changed:
        changed = False
        for block in sch.get_child_blocks(root):
            if _is_reduction(sch, block):
                continue
            consumers = sch.get_consumers(block)
            if consumers and (not any(_is_reduction(sch, c) for c in consumers)
                              or _inlines_into_reductions(sch, block, consumers)):
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
    """All loops fused, split into a vector lane that divides the innermost axis, parallel
    outside. The lane divides that axis, not just the fused extent, so that no vector
    straddles two rows: one that did had each lane's indices computed apart (NCHW
    elementwise kernels over 56 or 28 columns measured 4-6x slower that way than over
    channels in NHWC). An innermost axis that holds no vector gets parallel outer loops
    instead, and is unrolled when short."""
    loops = sch.get_loops(block)
    if not loops:
        return
    # trailing unit axes (a bias reshaped to [1, c, 1, 1]) do not break a row: the row is
    # the last axis longer than one
    last = len(loops) - 1
    while last > 0 and _const(sch.get(loops[last]).extent) == 1:
        last -= 1
    inner = _const(sch.get(loops[last]).extent)
    if inner is None:
        return
    lanes = _lane(inner, lanes_tried)
    if lanes == 1 and len(loops) > 1:
        if inner < UNROLL_MAX:
            # A short innermost axis with no vector in it (the 3 channels of an NCHW->NHWC
            # input transpose, 7 or 14 columns): parallel outer loops, the next loop serial
            # (LLVM vectorises it where it can), the short axis unrolled (fused into vector
            # lanes, MobileNetV2's input transpose measured ~15x slower).
            outer = loops[:-2] if len(loops) > 2 else loops[:1]
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
            sch.unroll(loops[-1])
        else:
            outer = loops[:-1]
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    extent = _const(sch.get(fused).extent)
    if extent is None:
        return
    if lanes > 1 and extent > lanes:
        outer, vec = sch.split(fused, [None, lanes])
        sch.parallel(outer)
        sch.vectorize(vec)
    elif lanes > 1:
        sch.vectorize(fused)
    else:
        sch.parallel(fused)


@dataclass(frozen=True)
class Registers:
    """What a register tile may use of a vector register file.

    ``accumulators``: registers a tile may keep live; ``row``: a row of output columns
    that no tile divides (a prime width) is tiled whole when at most this long;
    ``tiles``: column-tile sizes tried for the second-innermost spatial loop (output
    columns in NHWC), in order of preference: that many accumulators share each weight
    vector load; ``registers``: the vector registers there are (16 with AVX2, 32 with
    AVX-512); ``vector_bytes``: the length of a kernel's vectors (:meth:`on_stack`)."""

    accumulators: int
    row: int
    tiles: tuple[int, ...]
    registers: int
    vector_bytes: int

    def channel_vectors(self, columns: int) -> int:
        """The most channel vectors c a tile of ``columns`` may have with its accumulators
        (``columns`` x c), its c weight vectors and the broadcast input all in registers.
        Why: LLVM loads a tile's weight vectors together, and on AVX2 a 2 x 6 tile (12
        accumulators and 6 weights in 16 registers) spilled accumulators to the stack
        inside the reduction loop; 2 x 4 instead (EfficientNet-Lite0's 1x1 convs at 14x14;
        whole models extended, AVX2, paired: EfficientNet-Lite0 0.951, MobileNetV2 0.955).
        The broadcast counts since the tile lives on the stack (:data:`TILE_SCOPE`): a
        3 x 4 tile (12 + 4 + 1 = 17 registers) then kept one accumulator in memory, a
        store and a reload in every step of the reduction (InceptionV3's 3x3 convs at
        147x147 1.7x slower); as 3 x 2, InceptionV3 0.909, the other zoo models 1.00.
        AVX-512's tiles all fit its 32 registers."""
        return (self.registers - 1) // (columns + 1)

    def holds(self, columns: int, vectors: int) -> bool:
        return vectors <= self.channel_vectors(columns)

    def loads(self, columns: int, vectors: int) -> float:
        """What a tile of ``columns`` x ``vectors`` loads per multiply-add: a weight vector
        per ``columns`` of them, a broadcast input value per ``vectors``, the weight vector
        costing ``vector_bytes`` / 16 broadcasts. Why: a layer's weights outgrow L1 and
        come from L2 once for every tile of pixels, a broadcast reads 4 bytes of the
        input tile in L1. Measured (AVX2, Zen 3, 1x1 convs at 14x14 alone, against
        onnxruntime's node at 184 and 102 us): 672->112 channels as 2 x 2 (1.5) 295 us,
        as 7 x 1 (1.29) 196 us; 480->80 as 2 x 2 150 us, 7 x 1 133 us, 2 x 5 (1.2) 85 us;
        96->576 as 2 x 4 (1.25) 119 us, 7 x 1 150 us. Whole models extended, AVX2, paired
        against the rule before (the first dividing column tile, then channel vectors of
        8, 6, 4, 3 or 2): EfficientNet-Lite0 0.939, InceptionV3 0.953 (35x35 layers 5 x 2,
        not 7 x 1), MobileNetV2 1.013 and ResNet101 1.011 (only their classifier's tile
        changed, 1 x 5 accumulators, not one chain). It keeps AVX-512 from small column
        tiles with many channel vectors (2 x 8 made ResNet101 1.23x slower)."""
        return self.vector_bytes / 16 / columns + 1 / vectors

    def on_stack(self, vector_bytes: int) -> Registers:
        """These registers for a kernel whose vectors are ``vector_bytes`` long, the tile
        kept under :data:`STACK_BYTES` (at most 15 accumulators of AVX-512's 64 bytes; 8
        lanes of 4 bytes keep the 21), the whole-row limit with it."""
        most = (STACK_BYTES - 1) // vector_bytes
        return replace(self, accumulators=min(self.accumulators, most), row=min(self.row, most),
                       vector_bytes=vector_bytes)


#: The scope of a register tile's accumulator buffer. TVM's ``LowerTVMBuiltin`` turns a
#: CPU buffer into a stack ``alloca`` only when its scope is ``global`` and it is smaller
#: than :data:`STACK_BYTES` (``runtime::kMaxStackAlloca``); any other (``local``
#: included) becomes a ``TVMBackendAllocWorkspace``/``FreeWorkspace`` pair in every
#: iteration of the parallel loop, behind a pointer LLVM cannot keep in registers: a
#: depthwise conv, whose padding branch sits inside the tile, stored every accumulator
#: after every multiply-add. On the stack LLVM promotes the tile to registers. Kernel
#: alone (AVX2, Zen 3): MobileNetV2's 3x3 depthwise conv over 56x56x144 198 -> 102 us
#: (onnxruntime's node 125); whole models extended, paired against ``local``:
#: MobileNetV2 0.588, EfficientNet-Lite0 0.811, ResNet101 0.946.
TILE_SCOPE = "global"

#: Bytes under which TVM puts a ``global`` CPU buffer on the stack (kMaxStackAlloca).
STACK_BYTES = 1024


#: AVX-512's 32 registers: 21 accumulators (7 columns x 3 channel vectors, with 3 weight
#: vectors and a broadcast beside them; 8 x 3 measured slower), largest column tile
#: first, for its 8-lane kernels (24 or 40 channels); 16-lane ones keep their tile under
#: :data:`STACK_BYTES`: 15 accumulators (:meth:`Registers.on_stack`; 7 x 2, 5 x 3, 4 x 3).
#: A prime row of up to 24 columns (15 of 16 lanes) is tiled whole (InceptionV3's 17x17
#: convolutions, one thread, before the stack limit: a 1x7 conv 192->192 3.7 -> 1.4 ms,
#: a 1x1 conv 768->192 1.7 -> 0.8 ms; 16 lanes now compute them 18 wide).
WIDE = Registers(21, 24, (8, 7, 6, 5, 4, 3, 2), 32, 64)

#: SSE/AVX2's 16 registers: 12 accumulators, column tiles that leave room for at least
#: two channel vectors first (6 x 2, 4 x 3, 3 x 3: a weight load is a whole 64-byte
#: line with AVX2's 8 lanes, and each broadcast input feeds two or more accumulators),
#: 8, 7 and 5 columns only where nothing else divides the row. Measured on AVX2 (Zen 3,
#: 2 threads, whole models extended, paired, against 8 accumulators largest column first:
#: 8 x 1 on most layers): MobileNetV2 0.946, EfficientNet-Lite0 0.975, ResNet101 0.927,
#: InceptionV3 0.965; 12 accumulators largest column first: 0.988-1.004 (the tile stays
#: 8 x 1); 16: 1.08-1.10 slower (spills). A prime row longer than 12 is computed a few
#: columns wider instead (:func:`computed_width`): InceptionV3's 17x17 layers at 18
#: columns, 6 x 2 tiles, ran 0.55-0.74 of their time as 17 whole columns (17 accumulators
#: in 16 registers) and half their time as 1 column x 8 channel vectors.
NARROW = Registers(12, 12, (6, 4, 3, 2, 8, 7, 5), 16, 32)


def _registers(lanes_tried: tuple[int, ...], vector_bytes: int) -> Registers:
    """The register file of a target with ``lanes_tried`` (32 vector registers with
    AVX-512, whatever a kernel's lane width), for a tile of ``vector_bytes`` vectors."""
    return (WIDE if lanes_tried[0] >= 16 else NARROW).on_stack(vector_bytes)


#: Channel vectors an output may have and still be tiled whole (96 channels with AVX-512).
#: 9 (144 channels) measured no better than 6 on MobileNetV2 and EfficientNet-Lite0.
WHOLE_CHANNELS = 6


def _divisor(extent: int | None, budget: int) -> int:
    """The largest divisor of ``extent`` within ``budget`` (1 for an unknown extent)."""
    if extent is None:
        return 1
    return max(d for d in range(1, min(extent, max(budget, 1)) + 1) if extent % d == 0)


def _register_tile(wext: int | None, cext: int | None, regs: Registers) -> tuple[int, int]:
    """(output columns, channel vectors) of a reduction's register tile, at most
    ``regs.accumulators`` accumulators, column tiles in the order ``regs.tiles`` prefers.

    An output with at most :data:`WHOLE_CHANNELS` channel vectors gets all of them, with
    the first column tile (at least 2) that fits beside them: each tile then writes whole
    pixels, one contiguous run of the output. Why: in a model a large output is written to
    memory no longer in the caches, and there a tile that writes a few vectors of many
    pixels (8 x 2 of 6) and comes back for the rest ran 1.7x slower than one that writes
    whole pixels (MobileNetV2's 1x1 conv 16->96 at 112x112, output flushed: 620 -> 368 us;
    warm, all tiles ran alike, 358-375 us).

    Otherwise: of the column tiles that divide the row (a short row no tile divides, up
    to ``regs.row``: the whole row), each with the most channel vectors that divide the
    output and fit beside it, the tile that loads least per multiply-add
    (:meth:`Registers.loads`); the first in ``regs.tiles``' order on a tie."""
    columns = [t for t in regs.tiles if wext is not None and wext % t == 0]
    if not columns:
        columns = [wext] if wext is not None and 1 < wext <= regs.row else [1]
    if cext is not None and 1 < cext <= WHOLE_CHANNELS:
        fits = [t for t in columns if 1 < t and t * cext <= regs.accumulators and regs.holds(t, cext)]
        if fits:
            return fits[0], cext
    tiles = [(w, _divisor(cext, min(regs.accumulators // w, regs.channel_vectors(w)))) for w in columns]
    return min(tiles, key=lambda tile: regs.loads(*tile))


#: How much wider than its output a convolution may be computed (:func:`computed_width`).
WIDER = 0.1


def computed_width(width: int, channels: int, lanes_tried: tuple[int, ...]) -> int:
    """The number of output columns a channel-last convolution of ``width`` columns and
    ``channels`` output channels is best computed at, on a target with ``lanes_tried``
    (:func:`lanes_for`): ``width`` itself when a column tile divides it (or it is short
    enough to be tiled whole: :attr:`Registers.row`); else, for a prime row such as
    InceptionV3's 17, 71, 73 and 149, the width up to :data:`WIDER` more whose register
    tile holds the most accumulators (the smallest such). Its extra columns are computed
    from zero padding and never stored (``PadConvolutionWidths``,
    :mod:`deltann.compile.rewrites`). Why: without a column tile each weight vector loaded
    serves one output column; InceptionV3's 3x3 conv 80->192 at 71x71 and its 17x17 layers
    ran 2.5-3.3x onnxruntime's time per call so (AVX2, in the model)."""
    lanes = _lane(channels, lanes_tried)
    regs = _registers(lanes_tried, lanes * 4)
    vectors = channels // lanes if lanes > 1 else None
    if _register_tile(width, vectors, regs)[0] > 1:
        return width
    best, most = width, 0
    for wider in range(width + 1, width + max(1, int(width * WIDER)) + 1):
        columns, vecs = _register_tile(wider, vectors, regs)
        if columns > 1 and columns * vecs > most:
            best, most = wider, columns * vecs
    return best


def _schedule_reduction(sch: Any, block: Any, kinds: list[str], lanes_tried: tuple[int, ...],
                        channel_first: bool = False) -> None:
    """Outer spatial loops parallel; inside them the reduction loops; innermost a small
    register tile (second-innermost spatial loop, unrolled) times a vector lane
    (innermost spatial loop), accumulated in a buffer on the stack (:data:`TILE_SCOPE`)
    so LLVM keeps it in registers. ``channel_first``: the block writes NCHW but runs
    channel-last (:func:`_channels_last`); its tile is laid out channel-last too, so that each
    vector of accumulators is contiguous."""
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
        wext = _const(sch.get(spatial[-2]).extent) if len(spatial) >= 2 else None
        regs = _registers(lanes_tried, lanes * sch.get(block).writes[0].source.dtype.bits // 8)
        wtile, ctile = _register_tile(wext, _const(sch.get(spatial[-1]).extent), regs)
        if ctile > 1:  # a few channel vectors share each input value
            co, ci = sch.split(spatial[-1], [None, ctile])
            spatial = spatial[:-1] + [co]
            tiles = [ci]
        if wtile > 1:  # a row of output columns shares each weight vector
            wo, wi = sch.split(spatial[-2], [None, wtile])
            spatial = spatial[:-2] + [wo, spatial[-1]]
            tiles = [wi, *tiles]
        inner = [*tiles, vi]
    if tiles and len(spatial) >= 3 and not channel_first and _weights_outweigh_inputs(sch, block):
        spatial = [spatial[-1], *spatial[:-1]]  # channel tiles outermost, pixels inside
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
        writeback = sch.cache_write(block, 0, TILE_SCOPE)
        if channel_first:
            sch.transform_layout(block, ("write", 0), _nhwc)
        sch.reverse_compute_at(writeback, parallel)
        _fold_epilogue(sch, writeback)
        wb = sch.get_loops(writeback)[1:]
        if wb and channel_first:
            # NCHW: each channel's run of the tile's columns is contiguous: one vector store
            # each (fused with the channels, every vector was a scatter: ~2x slower)
            _vectorize_tail(sch, wb[-1], lanes_tried)
        elif wb:
            fused = sch.fuse(*wb) if len(wb) > 1 else wb[0]
            _vectorize_tail(sch, fused, lanes_tried)
    init = sch.decompose_reduction(block, reduce[0])
    if vi is not None:
        init_loops = sch.get_loops(init)
        sch.vectorize(init_loops[-1])
        for loop in init_loops[len(init_loops) - 1 - len(tiles):-1]:
            sch.unroll(loop)


def _weights_outweigh_inputs(sch: Any, block: Any) -> bool:
    """The block's largest read that no output pixel indexes (a channel-last conv's
    weights) is larger than its largest read that one does (its input). Then the parallel
    loop runs channel tiles outermost, pixels inside: each thread streams the weights of
    one channel tile once, over all pixels, instead of all the weights once per tile of
    pixels (ResNet101's 3x3 conv 256->256 at 14x14: 2.4 MB of weights, past a Zen 3 core's
    512 KB L2, read 98 times per call: 2.3 -> 1.4 ms. Whole models extended, AVX2 (Zen 3,
    2 threads), paired against pixels outermost: ResNet101 0.849, MobileNetV2 0.997,
    EfficientNet-Lite0 0.981, InceptionV3 0.986; channel tiles outermost on every
    reduction made MobileNetV2 1.04 slower)."""
    import math

    sblock = sch.get(block)
    out = sblock.writes[0]
    indices = [r.min for r in out.region]
    pixels = [it.var for it in sblock.iter_vars if any(_uses(i, it.var) for i in indices[:-1])
              and _const(it.dom.extent) != 1]
    largest = {True: 0, False: 0}
    for read in sblock.reads:
        if read.source.same_as(out.source):
            continue
        by_pixel = any(_uses(r.min, v) for r in read.region for v in pixels)
        size = math.prod(_const(d) or 0 for d in read.source.shape)
        largest[by_pixel] = max(largest[by_pixel], size)
    return largest[False] > largest[True] > 0


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


def _uses(expr: Any, var: Any) -> bool:
    from tvm import tirx

    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


#: Index maps of the channel-last layouts (see :func:`_channels_last`).
def _nhwc(n: Any, c: Any, h: Any, w: Any) -> tuple[Any, ...]:
    return n, h, w, c


def _hwio(o: Any, i: Any, kh: Any, kw: Any) -> tuple[Any, ...]:
    return kh, kw, i, o


@dataclass(frozen=True)
class _NchwConv:
    """A channel-first convolution block: its data and weight buffers, and the weights'
    layout (``OIHW`` as LegalizeOps writes it, ``HWIO`` once :func:`prepack_weights` has
    stored them channel-last)."""

    data: Any
    weight: Any
    weight_layout: str


def _nchw_conv(sch: Any, block: Any) -> _NchwConv | None:
    """The block as a channel-first convolution (conv2d_nchw, group and depthwise
    conv2d_nchw as LegalizeOps writes them), or None. Told by structure, not by name:
    output [n, c, h, w] written at the block's four spatial iterators in order; data read
    at [n, channel, h.., w..]; weights read at [c, i, ry, rx] (OIHW) or [ry, rx, i, c]
    (HWIO), c being the output's channel. An NHWC convolution never matches: its output's
    second axis (h) indexes no weight."""
    from tvm import tirx

    sblock = sch.get(block)
    spatial = [it.var for it in sblock.iter_vars if it.iter_type == tirx.IterVar.DataPar]
    reduce = [it.var for it in sblock.iter_vars if it.iter_type == tirx.IterVar.CommReduce]
    if len(spatial) != 4 or len(reduce) != 3 or len(sblock.iter_vars) != 7 or len(sblock.writes) != 1:
        return None
    out = sblock.writes[0]
    if len(out.region) != 4 or not all(r.min.same_as(v) for r, v in zip(out.region, spatial, strict=True)):
        return None
    n, c, h, w = spatial

    def is_reduce(e: Any) -> bool:
        return any(e.same_as(r) for r in reduce)

    data = weight = None
    layout = ""
    for read in sblock.reads:
        idx = [r.min for r in read.region]
        if read.source.same_as(out.source) or len(idx) != 4:
            continue
        if idx[0].same_as(c) and is_reduce(idx[2]) and is_reduce(idx[3]):
            weight, layout = read.source, "OIHW"
        elif idx[3].same_as(c) and is_reduce(idx[0]) and is_reduce(idx[1]):
            weight, layout = read.source, "HWIO"
        elif idx[0].same_as(n) and _uses(idx[2], h) and _uses(idx[3], w) and not _uses(idx[1], h):
            data = read.source
    if data is None or weight is None:
        return None
    return _NchwConv(data, weight, layout)


def _channels_last(sch: Any, block: Any) -> list[str]:
    """Make a channel-first convolution compute channel-last inside its kernel, as TOPI's
    x86 ``conv2d_nchw`` did (it packed data and kernel to NCHWc inside the operator): the
    padded input is written [n, h, w, c], weights read [ry, rx, i, o] (stored so by
    :func:`prepack_weights` when they are constants, else copied so here), and the loops
    run (n, h, w, c, ry, rx, rc), so that the reduction rule vectorises output channels
    and register-tiles columns exactly as for an NHWC convolution; the output stays NCHW
    (the tile's write-back scatters it). Why: without a layout pass (``basic``,
    ``default``) every convolution is NCHW, whose innermost axis (7 to 112 columns)
    rarely holds whole vectors, while channels nearly always do. Returns the names of the
    copy blocks it made (their loops in the new layout's order), for
    :func:`_schedule_transpose`; empty when the block is no such convolution."""
    conv = _nchw_conv(sch, block)
    if conv is None:
        return []
    producers = {sch.get(p).writes[0].source.name: p for p in sch.get_producers(block)}
    pad = producers.get(conv.data.name)
    if pad is None:  # no padding block (data read straight from the parameter): copy it
        pad = sch.cache_read(block, conv.data, "global")
    sch.transform_layout(pad, ("write", 0), _nhwc)
    copies = [pad]
    if conv.weight_layout == "OIHW":  # weights that are not constants: copied on every call
        copy = sch.cache_read(block, conv.weight, "global")
        sch.transform_layout(copy, ("write", 0), _hwio)
        copies.append(copy)
    for copy in copies:  # loops in the order of the written layout
        a, b, c, d = sch.get_loops(copy)
        sch.reorder(*((a, c, d, b) if copy is pad else (c, d, b, a)))
    n, c, h, w, rc, ry, rx = sch.get_loops(block)
    sch.reorder(n, h, w, c, ry, rx, rc)
    return [sch.get(copy).name_hint for copy in copies]


def _is_transpose(sch: Any, block: Any) -> bool:
    """An injective block that copies one buffer with its axes permuted, the innermost
    axis written not the innermost read (``permute_dims``, ConvertLayout's transposes,
    ONNX Gemm's transposed weight without FoldConstant)."""
    sblock = sch.get(block)
    ivars = [it.var for it in sblock.iter_vars]
    if len(sblock.reads) != 1 or len(sblock.writes) != 1 or len(ivars) < 2:
        return False
    read = [r.min for r in sblock.reads[0].region]
    write = [r.min for r in sblock.writes[0].region]
    if len(read) != len(ivars) or not all(w.same_as(v) for w, v in zip(write, ivars, strict=True)):
        return False
    if sorted(k for v in read for k, iv in enumerate(ivars) if v.same_as(iv)) != list(range(len(ivars))):
        return False
    return not read[-1].same_as(ivars[-1])


def _schedule_transpose(sch: Any, block: Any, lanes_tried: tuple[int, ...]) -> None:
    """A layout copy whose loops run in the order it writes (channels innermost) and
    whose reads stride over them: the last two loops tiled lanes x lanes, the channel
    lane vectorised, outer loops parallel. Each tile reads a lanes-wide run of every
    source row it touches and writes whole vectors, so each cache line is used whole
    (an untiled copy measured ~4x slower on EfficientNet-Lite0's 96x114x114 input)."""
    loops = sch.get_loops(block)
    lanes = _lane(_const(sch.get(loops[-1]).extent) or 0, lanes_tried)
    rows = _const(sch.get(loops[-2]).extent) if len(loops) >= 2 else None
    if lanes == 1 and _vectorize_read_axis(sch, block, lanes_tried):
        return
    if lanes == 1 or rows is None or rows < lanes:
        _schedule_injective(sch, block, lanes_tried)
        return
    *outer, a, b = loops
    bo, bi = sch.split(b, [None, lanes])
    ao, ai = sch.split(a, [None, lanes])  # may not divide: a guard on ai, outside the vector
    sch.reorder(*outer, ao, bo, ai, bi)
    if outer:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    else:
        sch.parallel(ao)
    sch.vectorize(bi)


def _vectorize_read_axis(sch: Any, block: Any, lanes_tried: tuple[int, ...]) -> bool:
    """A transpose whose written innermost axis is too short for a vector (the 3 channels of
    an NCHW image turned NHWC, the first kernel of every NCHW model in ``extended``): the
    vector runs along the axis the source is contiguous in instead (image columns),
    with the short axis unrolled around it; each lane reads a whole vector and writes
    with the short axis' stride. The loops outside are fused and parallel. Returns False
    (nothing changed) when that axis is shorter than a register."""
    sblock = sch.get(block)
    loops = sch.get_loops(block)
    ivars = [it.var for it in sblock.iter_vars]
    read_last = sblock.reads[0].region[-1].min
    axis = next((k for k, v in enumerate(ivars) if read_last.same_as(v)), None)
    if axis is None or axis == len(loops) - 1:
        return False
    extent = _const(sch.get(loops[axis]).extent)
    short = _const(sch.get(loops[-1]).extent)
    if extent is None or short is None or short >= UNROLL_MAX or extent < lanes_tried[0]:
        return False
    lanes = _lane(extent, lanes_tried)
    outer = [lp for k, lp in enumerate(loops[:-1]) if k != axis]
    sch.reorder(*outer, loops[axis], loops[-1])
    if outer:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    parts = [loops[axis]]
    if lanes == 1:
        # No lane divides the axis (InceptionV3's 299 columns): whole registers over the
        # longest multiple of one, the few columns left in a loop of their own (a guarded
        # last vector measured 7x slower: the guard scalarises every lane).
        lanes = lanes_tried[0]
        parts = sch.loop_partition(loops[axis], [extent - extent % lanes, None])
    for k, part in enumerate(parts):
        block_loops = sch.get_loops(sch.get_child_blocks(part)[0]) if k else None
        if k:  # the tail: the short axis unrolled
            sch.unroll(block_loops[-1])
            continue
        inner_short = sch.get_loops(sch.get_child_blocks(part)[0])[-1]
        ao, ai = sch.split(part, [None, lanes])
        sch.reorder(ao, inner_short, ai)
        sch.unroll(inner_short)
        sch.vectorize(ai)
    if not outer:
        sch.parallel(sch.get_loops(sch.get_child_blocks(parts[0])[0])[0])
    return True


@dataclass(frozen=True)
class _Pack:
    """How :func:`prepack_weights` stores one kernel's constant weight parameter: its
    index, the TIR index map of the new layout and the same on a numpy array."""

    param: int
    index_map: Callable[..., tuple[Any, ...]]
    numpy: Callable[[Any], Any]


def _blocked(ndim: int, block: int) -> tuple[Callable[..., tuple[Any, ...]], Callable[[Any], Any]] | None:
    """The layout of a weight whose last axis is the output channel, in blocks of ``block``
    channels outermost: [..., o] -> [o // block, ..., o % block] (HWIO -> O'HWIo, a
    matmul's [k, n] -> [n', k, n]), as an index map and on a numpy array; None for other
    ranks than 2 and 4 (an index map names its axes: one function per rank)."""
    import numpy as np

    def rank2(k: Any, o: Any) -> tuple[Any, ...]:
        return o // block, k, o % block

    def rank4(h: Any, w: Any, i: Any, o: Any) -> tuple[Any, ...]:
        return o // block, h, w, i, o % block

    def on_array(w: Any) -> Any:
        return np.ascontiguousarray(np.moveaxis(w.reshape(*w.shape[:-1], w.shape[-1] // block, block), -2, 0))

    maps = {2: rank2, 4: rank4}
    return (maps[ndim], on_array) if ndim in maps else None


def _channel_weight(sch: Any, block: Any, params: Any) -> tuple[Any, int] | None:
    """(the buffer, its output-channel extent) of a reduction block's weight: a parameter
    read at [r.., o] where o is the output's last axis and every other index one
    reduction variable (NHWC convolutions' HWIO weights, a matmul's [k, n]); None when
    the block has no such read."""
    from tvm import tirx

    sblock = sch.get(block)
    spatial = [it.var for it in sblock.iter_vars if it.iter_type == tirx.IterVar.DataPar]
    reduce = [it.var for it in sblock.iter_vars if it.iter_type == tirx.IterVar.CommReduce]
    if not spatial or len(sblock.writes) != 1 or not sblock.writes[0].region[-1].min.same_as(spatial[-1]):
        return None
    buffers = {p.name for p in params}
    for read in sblock.reads:
        idx = [r.min for r in read.region]
        if read.source.name not in buffers or len(idx) < 2 or not idx[-1].same_as(spatial[-1]):
            continue
        if all(any(i.same_as(r) for r in reduce) for i in idx[:-1]):
            return read.source, _const(read.source.shape[-1]) or 0
    return None


def _prepackable(func: Any, lanes: int) -> _Pack | None:
    """How to store the weights of ``func`` when it is an unscheduled kernel with one
    reduction that reads them straight from a parameter (see :func:`prepack_weights`):
    a channel-first convolution's OIHW weights channel-last (HWIO), or a channel-last
    kernel's weights (HWIO, [k, n]) in blocks of ``lanes`` output channels; else None."""
    import numpy as np
    from tvm import s_tir, tirx

    if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled"):
        return None
    try:
        sch = s_tir.Schedule(func)
        reductions = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if _is_reduction(sch, b)]
        if len(reductions) != 1:
            return None
        conv = _nchw_conv(sch, reductions[0])
        weight = _channel_weight(sch, reductions[0], func.params)
    except Exception:  # noqa: BLE001 - not a kernel this rule reads (no root block, ...): left as is
        return None
    if conv is not None and conv.weight_layout == "OIHW":
        buffer = conv.weight
        index_map: Callable[..., tuple[Any, ...]] = _hwio
        on_array: Callable[[Any], Any] = lambda w: np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # noqa: E731
    elif (weight is not None and lanes > 1 and weight[1] > lanes and weight[1] % lanes == 0
          and (blocked := _blocked(len(weight[0].shape), lanes)) is not None):
        buffer = weight[0]
        index_map, on_array = blocked
    else:
        return None
    for k, param in enumerate(func.params):
        if param.same_as(buffer):  # a kernel's parameters are its buffers
            return _Pack(k, index_map, on_array)
    return None


def prepack_weights(mod: Any, lanes: int = 1) -> Any:
    """Store constant weights at build time in the layout their kernel reads best, and make
    the kernels read them so, as MetaSchedule's layout rewrite does; the graph is not
    touched otherwise. Only kernels whose every call passes a constant weight are changed
    (a kernel shared with a call whose weights are inputs keeps them as they are).

    - Channel-first convolutions: OIHW -> HWIO, the layout :func:`_channels_last`
      computes in, without a copy of the weights on every call (activations stay NCHW:
      that is ``AlterOpLayout``'s part, in ``extended``).
    - Channel-last convolutions and matmuls (weights [.., o], o the output's last axis):
      in blocks of one vector register (``lanes``) of output channels, block outermost
      ([o // lanes, .., o % lanes]), so that a register tile reads its channels' weights
      as one contiguous run instead of one vector every row of o channels. Why: in a
      model the weights come from memory, not from the caches (MobileNetV2's 14 MB of
      them per run), and with HWIO the tile of a 1x1 conv 320->1280 reads 320 vectors
      5 KB apart, each a separate cache line and, every few, another page; on AVX2 it
      also used half of each line it fetched."""
    import tvm
    from tvm import relax, s_tir

    call_tir = tvm.ir.Op.get("relax.call_tir")
    candidates = {gv.name_hint: pack for gv, f in mod.functions_items() if (pack := _prepackable(f, lanes)) is not None}
    if not candidates:
        return mod
    constant_only = dict.fromkeys(candidates, True)

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir) and isinstance(expr.args[0], relax.GlobalVar):
            name = expr.args[0].name_hint
            if name in candidates:
                args = expr.args[1]
                k = candidates[name].param
                if not (isinstance(args, relax.Tuple) and isinstance(args.fields[k], tvm.ir.expr.Constant)):
                    constant_only[name] = False

    relax_funcs = [(gv, f) for gv, f in mod.functions_items() if isinstance(f, relax.Function)]
    for _, func in relax_funcs:
        relax.analysis.post_order_visit(func, visit)
    chosen = {name: pack for name, pack in candidates.items() if constant_only[name]}
    if not chosen:
        return mod

    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Repack(PyExprMutator):
        """Calls of a chosen kernel go to its repacked copy, with the weights stored so."""

        def __init__(self, mod: Any) -> None:
            # the chosen kernels are replaced under their own names (new GlobalVars: the
            # old ones' types still give the old layout)
            super().__init__(tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint not in chosen},
                                          attrs=mod.attrs))
            self.packed: dict[str, Any] = {}  # kernel name -> GlobalVar of its repacked version
            for name, pack in chosen.items():
                func = mod[name]
                sch = s_tir.Schedule(func)
                (block,) = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if _is_reduction(sch, b)]
                sch.transform_layout(block, func.params[pack.param], pack.index_map)
                self.packed[name] = self.builder_.add_func(sch.mod["main"], name)

        def visit_call_(self, call: Any) -> Any:
            call = self.visit_expr_post_order(call)
            if not (call.op.same_as(call_tir) and isinstance(call.args[0], relax.GlobalVar)
                    and call.args[0].name_hint in chosen):
                return call
            pack = chosen[call.args[0].name_hint]
            fields = list(call.args[1].fields)
            fields[pack.param] = relax.const(pack.numpy(fields[pack.param].value.numpy()))
            gv = self.packed[call.args[0].name_hint]
            return relax.Call(call.op, [gv, relax.Tuple(fields), *call.args[2:]], call.attrs, call.ty_args)

    rewriter = _Repack(mod)
    for gv, func in relax_funcs:
        rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.finalize()


def schedule_func(func: Any, lanes_tried: tuple[int, ...] = LANES) -> Any | None:
    """A scheduled copy of one PrimFunc, or None when the rule does not apply."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        root = sch.get_sblock("root")
        _inline(sch, root)
        # before scheduling, which it adds blocks for
        channel_first: set[str] = set()
        copies: set[str] = set()
        for b in sch.get_child_blocks(root):
            made = _channels_last(sch, b) if _is_reduction(sch, b) else []
            if made:
                channel_first.add(sch.get(b).name_hint)
                copies.update(made)
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
                _schedule_reduction(sch, block, kinds, lanes_tried, name in channel_first)
            elif name in copies or _is_transpose(sch, block):
                _schedule_transpose(sch, block, lanes_tried)
            else:
                _schedule_injective(sch, block, lanes_tried)
    except Exception as exc:  # noqa: BLE001 - the kernel keeps its naive loops: the result is None, logged
        log.debug("DefaultSchedule left %s unscheduled: %s", func.attrs.get("global_symbol", "?"), exc)
        return None
    return sch


def _cpu_rule() -> Any:
    """The rule above as a dlight :class:`ScheduleRule` for ``llvm`` targets."""
    from tvm.s_tir import dlight
    from tvm.target import Target

    class _ParallelVectorize(dlight.ScheduleRule):
        def apply(self, func: Any, target: Target, tunable: bool) -> Any:
            if not is_cpu(target):
                return None
            return schedule_func(func, lanes_for(target))

    return _ParallelVectorize()


def _gpu_rules() -> list[Any]:
    """TVM's own tuning-free rules for GPU targets, the list its CUDA, ROCm and generic
    GPU pipelines apply (``tvm.relax.backend.<kind>.pipeline.legalize_passes``): thread
    bindings for every kernel, ``Fallback`` for those no other rule takes."""
    from tvm.s_tir import dlight

    return [dlight.gpu.Matmul(), dlight.gpu.GEMV(), dlight.gpu.Reduction(), dlight.gpu.GeneralReduction(),
            dlight.gpu.Fallback()]


def default_schedule() -> Any:
    """The module pass (``DefaultSchedule``, last in every setting): the target's
    tuning-free schedule, through dlight's ``ApplyDefaultSchedule``, which skips kernels
    already scheduled (by a tuning database). On ``llvm``: constant conv weights stored
    channel-last (:func:`prepack_weights`), then the rule above; on GPU targets: TVM's
    own dlight rules (:func:`_gpu_rules`); on other targets nothing (their builds stay
    unscheduled, as TVM's own pipeline leaves them)."""
    import tvm
    from tvm.s_tir import dlight
    from tvm.target import Target

    @tvm.transform.module_pass(opt_level=0, name="DefaultSchedule")
    def _pass(mod: Any, _ctx: Any) -> Any:
        target = Target.current(allow_none=True)
        if target is None:
            raise ValueError("DefaultSchedule needs a target scope (`with target:`; pipeline.build opens one)")
        # a clone: ApplyDefaultSchedule replaces functions in the module it is given, which
        # would change the caller's module too
        if is_cpu(target):
            return dlight.ApplyDefaultSchedule(_cpu_rule())(prepack_weights(mod.clone(), lanes_for(target)[0]))
        if is_gpu(target):
            return dlight.ApplyDefaultSchedule(*_gpu_rules())(mod.clone())
        return mod

    return _pass


def unscheduled_kernels(mod: Any) -> list[str]:
    """Names of the kernels (PrimFuncs) of ``mod`` left as naive loops: every loop serial
    (none parallel, vectorised, unrolled or bound to GPU threads). A kernel with no loop
    at all (a scalar) is not counted. What a test, or a look at a build, uses to tell a
    scheduled build from an unscheduled one: ``tirx.is_scheduled`` only says a rule ran."""
    from tvm import tirx

    out = []
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        kinds = _loop_kinds(func)
        if kinds and all(k == tirx.ForKind.SERIAL for k in kinds):
            out.append(gv.name_hint)
    return sorted(out)


def _loop_kinds(func: Any) -> list[int]:
    import tvm_ffi
    from tvm import tirx

    kinds: list[int] = []
    tvm_ffi.structural_walk(func.body, [(tirx.For, lambda node: kinds.append(int(node.kind)))], order="post")
    return kinds


def unvectorized_kernels(mod: Any) -> list[str]:
    """Names of the kernels of ``mod`` with loops but no vectorised loop: on a CPU target,
    the kernels whose schedule does not use the CPU's vector width (a naive fallback is one
    of them). Kernels with no loop (scalars) are not counted."""
    from tvm import tirx

    out = []
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            kinds = _loop_kinds(func)
            if kinds and int(tirx.ForKind.VECTORIZED) not in kinds:
                out.append(gv.name_hint)
    return sorted(out)


def kernels_without_schedule(mod: Any, target: Any) -> list[str]:
    """The kernels of a lowered build that fell back to no real schedule for ``target``: on
    ``llvm``, those without a vectorised loop (:func:`unvectorized_kernels`); on other
    targets, those left as naive loops (:func:`unscheduled_kernels`: no thread binding).
    What the ``builds`` table's ``unscheduled`` column counts and bench/compile.py prints."""
    if is_cpu(target):
        return unvectorized_kernels(mod)
    return unscheduled_kernels(mod)


def clip_to_min_max() -> Any:
    """``ClipToMinMax`` (:mod:`deltann.compile.rewrites`): clips as maximum/minimum, which
    ConvertLayout keeps channel-last and FuseOps fuses into the convolution before them."""
    return rewrites.clip_to_min_max()


def pad_convolution_widths() -> Any:
    """``PadConvolutionWidths`` (:mod:`deltann.compile.rewrites`): a channel-last
    convolution whose width has no register tile is computed at :func:`computed_width`
    (CPU targets; elsewhere the pass changes nothing)."""
    from tvm.target import Target

    def width_for(width: int, channels: int) -> int:
        target = Target.current(allow_none=True)
        if target is None or not is_cpu(target):
            return width
        return computed_width(width, channels, lanes_for(target))

    return rewrites.pad_convolution_widths(width_for)


def fold_explicit_padding() -> Any:
    """``FoldExplicitPadding`` (:mod:`deltann.compile.rewrites`): zero pads before a
    convolution become its own padding (no pad kernel, no transpose pair around it in NHWC)."""
    return rewrites.fold_explicit_padding()


#: deltann's own passes, by the name a setting lists them under.
#: The passes that schedule (a build listing one should leave no naive kernel).
SCHEDULING = frozenset({"DefaultSchedule", "DefaultCpuSchedule"})

#: ``DefaultCpuSchedule`` is the name pass lists stored before the schedule became part of
#: every setting give it (``deltann localize`` rebuilds such rows from their own list).
PASSES: dict[str, Callable[[], Any]] = {
    "DefaultSchedule": default_schedule, "DefaultCpuSchedule": default_schedule, "ClipToMinMax": clip_to_min_max,
    "FoldExplicitPadding": fold_explicit_padding, "PadConvolutionWidths": pad_convolution_widths,
}
