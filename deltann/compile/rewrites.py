"""deltann's own Relax rewrites, run before ``LegalizeOps`` like TVM's passes.

``ClipToMinMax`` (in the ``AlterOpLayout`` catalogue entry, right before
``ConvertLayout``): ReLU6 and any clip with constant bounds becomes ``relax.maximum``
then ``relax.minimum``. Why: ``ConvertLayout`` has a layout rule for those two (binary
elementwise) but none for ``relax.clip``, and it cannot see into the ONNX frontend's
Clip at all, which arrives already lowered (``call_tir`` of a TIR ``maximum``/``minimum``
kernel against a 0-d bound). Either way every clip of an NHWC network sat between a
transpose back to NCHW and one to NHWC again, and each clip was its own kernel instead
of being fused into the convolution before it (MobileNetV2: two transposes per ReLU6).
Only these exact forms are rewritten; the result is
bit-identical (max/min against the same bound).

``PadConvolutionWidths`` (same entry, after ``ConvertLayout``): a channel-last
convolution whose width no register tile divides is computed a few columns wider and
sliced back (:func:`pad_convolution_widths`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _mutated(mutator: Any, mod: Any) -> Any:
    """``mod`` with each of its Relax functions rewritten by ``mutator`` (a
    ``PyExprMutator`` made over ``mod``)."""
    from tvm import relax

    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.finalize()


def _elementwise_scalar_op(func: Any) -> str | None:
    """``"maximum"``/``"minimum"`` when ``func`` is a PrimFunc ``out[i] = max/min(a[i], b[()])``
    over the whole of ``a`` (same shape and dtype as ``out``, ``b`` 0-d), else None. That
    is what ``emit_te(topi.maximum/minimum, x, bound)`` gives (ONNX Clip)."""
    from tvm import s_tir, tirx
    from tvm.ir.expr import TensorLoad

    if not isinstance(func, tirx.PrimFunc) or len(func.params) != 3:
        return None
    # TVM 0.27: a PrimFunc's buffer parameters are Vars typed BufferType
    types = [getattr(p, "ty", None) for p in func.params]
    if not all(isinstance(t, tirx.buffer.BufferType) for t in types):
        return None
    a, b, out = func.params
    ta, tb, tout = types
    if len(tb.shape) != 0 or not (ta.dtype == tb.dtype == tout.dtype) or len(ta.shape) != len(tout.shape):
        return None
    if not all(_int(x) is not None and _int(x) == _int(y) for x, y in zip(ta.shape, tout.shape, strict=True)):
        return None
    # exactly: root block > one loop per axis over the whole extent > one block whose
    # iteration variables are those loops, in order, and whose body is one store
    node = func.body
    if isinstance(node, s_tir.SBlockRealize):
        if node.block.alloc_buffers or node.block.match_buffers or node.block.init is not None:
            return None
        node = node.block.body
    loops = []
    while isinstance(node, tirx.For):
        loops.append(node)
        node = node.body
    if not isinstance(node, s_tir.SBlockRealize) or _int(node.predicate) != 1 or len(loops) != len(tout.shape):
        return None
    if any(_int(lp.min) != 0 or _int(lp.extent) != _int(n) for lp, n in zip(loops, tout.shape, strict=True)):
        return None
    block = node.block
    if block.init is not None or block.alloc_buffers or block.match_buffers:
        return None
    if len(node.iter_values) != len(loops) or not all(
        v.same_as(lp.loop_var) for v, lp in zip(node.iter_values, loops, strict=True)
    ):
        return None
    if any(iv.iter_type != tirx.IterVar.DataPar for iv in block.iter_vars):
        return None
    ivars = [iv.var for iv in block.iter_vars]
    store = block.body
    if not isinstance(store, tirx.BufferStore) or not store.buffer.same_as(out):
        return None
    if len(store.indices) != len(ivars) or not all(i.same_as(v) for i, v in zip(store.indices, ivars, strict=True)):
        return None
    value = store.value
    kind = "maximum" if isinstance(value, tirx.Max) else "minimum" if isinstance(value, tirx.Min) else None
    if kind is None:
        return None

    def is_a(e: Any) -> bool:
        return (isinstance(e, TensorLoad) and e.source.same_as(a) and len(e.indices) == len(ivars)
                and all(i.same_as(v) for i, v in zip(e.indices, ivars, strict=True)))

    def is_b(e: Any) -> bool:
        return isinstance(e, TensorLoad) and e.source.same_as(b) and len(e.indices) == 0

    if (is_a(value.a) and is_b(value.b)) or (is_b(value.a) and is_a(value.b)):
        return kind
    return None


def _number(expr: Any) -> float | None:
    """A clip bound's value: TVM 0.27 keeps it as a FloatImm/IntImm argument."""
    value = getattr(expr, "value", None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(expr: Any) -> int | None:
    value = getattr(expr, "value", None)
    return int(value) if isinstance(value, int) else None


def clip_to_min_max() -> Any:
    """The module pass (``ClipToMinMax`` in the settings): see the module docstring.

    Rewritten: ``relax.clip(x, lo, hi)`` with constant bounds (torch frontend) and
    ``call_tir(f, (x, bound))`` where ``f`` is a scalar-bound elementwise max/min kernel
    (ONNX frontend). Kernels no longer called are removed."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    clip_op = tvm.ir.Op.get("relax.clip")
    call_tir_op = tvm.ir.Op.get("relax.call_tir")

    @mutator
    class _Rewriter(PyExprMutator):
        def __init__(self, mod: Any) -> None:
            super().__init__(mod)
            self.mod_ = mod
            self.kinds: dict[Any, str | None] = {}

        def _kind(self, gv: Any) -> str | None:
            if gv not in self.kinds:
                self.kinds[gv] = _elementwise_scalar_op(self.mod_[gv])
            return self.kinds[gv]

        def visit_call_(self, call: Any) -> Any:
            call = self.visit_expr_post_order(call)
            if call.op.same_as(clip_op):
                x, lo, hi = call.args
                dtype = x.ty.dtype
                lo_v, hi_v = _number(lo), _number(hi)
                if lo_v is None or hi_v is None or not str(dtype).startswith("float"):
                    return call
                low = self.builder_.emit(relax.op.maximum(x, relax.const(lo_v, dtype)))
                return relax.op.minimum(low, relax.const(hi_v, dtype))
            if call.op.same_as(call_tir_op) and len(call.args) == 2:
                gv, args = call.args
                if not isinstance(gv, relax.GlobalVar) or not isinstance(args, relax.Tuple) or len(args.fields) != 2:
                    return call
                kind = self._kind(gv)
                if kind is None:
                    return call
                x, bound = args.fields
                # the kernel's own checks say x, bound and the result agree in shape and dtype
                return getattr(relax.op, kind)(x, bound)
            return call

    @tvm.transform.module_pass(opt_level=0, name="ClipToMinMax")
    def _pass(mod: Any, _ctx: Any) -> Any:
        rewriter = _Rewriter(mod)
        out = _mutated(rewriter, mod)
        replaced = [gv for gv, kind in rewriter.kinds.items() if kind is not None]
        if replaced:
            used: set[str] = set()
            for _, func in out.functions_items():
                if isinstance(func, relax.Function):
                    relax.analysis.post_order_visit(
                        func, lambda e: used.add(e.name_hint) if isinstance(e, relax.GlobalVar) else None)
            for gv in replaced:
                if gv.name_hint not in used:
                    del out[gv.name_hint]
        return out

    return _pass


def _zero_pad_widths(func: Any) -> list[int] | None:
    """``[lo0, hi0, lo1, hi1, ...]`` when ``func`` is exactly the kernel
    ``emit_te(topi.nn.pad, x, before, after, 0.0)`` gives (the ONNX frontend's Pad), else
    None. The widths are read off the kernel's load indices and shapes, then the kernel is
    checked to be structurally equal to the one the frontend makes for those widths."""
    import tvm_ffi
    from tvm import tirx

    if not isinstance(func, tirx.PrimFunc) or len(func.params) != 2:
        return None
    types = [getattr(p, "ty", None) for p in func.params]
    if not all(isinstance(t, tirx.buffer.BufferType) for t in types):
        return None
    src, out = types
    in_shape, out_shape = [_int(d) for d in src.shape], [_int(d) for d in out.shape]
    if None in in_shape or None in out_shape or len(in_shape) != len(out_shape) or src.dtype != out.dtype:
        return None
    loads: list[Any] = []
    _collect_loads(func.body, loads)
    if len(loads) != 1 or len(loads[0].indices) != len(in_shape):
        return None
    before = []
    for index in loads[0].indices:
        if isinstance(index, tirx.Var):
            before.append(0)
        elif isinstance(index, tirx.Sub) and isinstance(index.a, tirx.Var) and _int(index.b) is not None:
            before.append(_int(index.b))
        else:
            return None
    after = [o - i - b for o, i, b in zip(out_shape, in_shape, before, strict=True)]
    if any(v < 0 for v in before + after):
        return None
    expected = _topi_pad(src, before, after)
    if expected is None or not tvm_ffi.structural_equal(func.without_attr("global_symbol"), expected,
                                                        map_free_vars=True):
        return None
    return [v for pair in zip(before, after, strict=True) for v in pair]


def _topi_pad(src: Any, before: list[int], after: list[int]) -> Any:
    """The kernel the ONNX frontend emits for a zero Pad of a tensor typed ``src``, made
    the way it makes it (``BlockBuilder.emit_te``), without its symbol."""
    from tvm import relax, tirx, topi

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([int(d) for d in src.shape], str(src.dtype)))
    with bb.function("main", [x]):
        out = bb.emit_te(topi.nn.pad, x, before, after, 0.0)
        bb.emit_func_output(out)
    kernels = [f for _, f in bb.get().functions_items() if isinstance(f, tirx.PrimFunc)]
    return kernels[0].without_attr("global_symbol") if len(kernels) == 1 else None


def _collect_loads(body: Any, loads: list[Any]) -> None:
    """Every tensor load in ``body`` appended to ``loads``."""
    import tvm_ffi
    from tvm.ir.expr import TensorLoad

    tvm_ffi.structural_walk(body, [(TensorLoad, loads.append)], order="post")


def _conv_padding(pad: Any, conv: Any) -> list[int] | None:
    """The conv2d padding (top, left, bottom, right) that ``pad`` feeding ``conv`` adds, or
    None when ``pad`` is not a zero, constant-mode pad of the convolution's two spatial
    axes only (batch and channel axes unpadded)."""
    layout = str(conv.attrs.data_layout)
    if len(layout) != 4 or "H" not in layout or "W" not in layout:
        return None
    if str(pad.attrs.pad_mode) != "constant" or float(pad.attrs.pad_value) != 0.0:
        return None
    width = [int(v) for v in pad.attrs.pad_width]
    if len(width) != 8 or any(v < 0 for v in width):
        return None
    for axis, name in enumerate(layout):
        if name not in "HW" and (width[2 * axis] or width[2 * axis + 1]):
            return None
    h, w = layout.index("H"), layout.index("W")
    return [width[2 * h], width[2 * w], width[2 * h + 1], width[2 * w + 1]]


def fold_explicit_padding() -> Any:
    """``FoldExplicitPadding`` (Relay's pass of that name, which Relax lacks): a zero
    ``nn.pad`` of the spatial axes whose result feeds a ``conv2d`` becomes that
    convolution's own padding. Why: frontends emit TF-style 'same' padding (EfficientNet-
    Lite's stride-2 convolutions; TFLite's asymmetric SAME) as a separate pad before the
    convolution. That pad is one more kernel and one more copy of the activation, and in an
    NHWC build it is worse: ``ConvertLayout`` has no layout rule for ``nn.pad``, so every
    such pad sat between a transpose back to NCHW and one to NHWC again (EfficientNet-Lite0
    through torch.export: 13 transpose-pad-transpose kernels that the ONNX import, whose
    pads onnxruntime's folding had already merged, did not have). The convolution reads the
    same zeros through its own padding; the result is bit-identical. A pad with other users
    stays for them (dead ones are removed)."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    pad_op = tvm.ir.Op.get("relax.nn.pad")
    conv_op = tvm.ir.Op.get("relax.nn.conv2d")
    call_tir_op = tvm.ir.Op.get("relax.call_tir")

    @mutator
    class _Folder(PyExprMutator):
        def __init__(self, mod: Any) -> None:
            super().__init__(mod)
            self.mod_ = mod
            self.widths: dict[Any, list[int] | None] = {}

        def _tir_pad(self, call: Any) -> Any:
            """The ONNX frontend's Pad (a ``call_tir`` of topi's pad kernel) raised to
            ``relax.nn.pad``, or None."""
            if not (call.op.same_as(call_tir_op) and len(call.args) == 2 and isinstance(call.args[0], relax.GlobalVar)
                    and isinstance(call.args[1], relax.Tuple) and len(call.args[1].fields) == 1):
                return None
            gv = call.args[0]
            if gv not in self.widths:
                self.widths[gv] = _zero_pad_widths(self.mod_[gv])
            width = self.widths[gv]
            return None if width is None else relax.op.nn.pad(call.args[1].fields[0], width)

        def visit_call_(self, call: Any) -> Any:
            call = self.visit_expr_post_order(call)
            if not call.op.same_as(conv_op) or not isinstance(call.args[0], relax.Var):
                return call
            pad = self.lookup_binding(call.args[0])
            if isinstance(pad, relax.Call) and pad.op.same_as(call_tir_op):
                pad = self._tir_pad(pad)
            if not (isinstance(pad, relax.Call) and pad.op.same_as(pad_op)):
                return call
            extra = _conv_padding(pad, call)
            if extra is None:
                return call
            a = call.attrs
            padding = [int(p) + e for p, e in zip(a.padding, extra, strict=True)]
            return relax.op.nn.conv2d(pad.args[0], call.args[1], strides=a.strides, padding=padding,
                                      dilation=a.dilation, groups=int(a.groups), data_layout=a.data_layout,
                                      kernel_layout=a.kernel_layout, out_layout=a.out_layout,
                                      out_dtype=a.out_dtype)

    @tvm.transform.module_pass(opt_level=0, name="FoldExplicitPadding")
    def _pass(mod: Any, _ctx: Any) -> Any:
        return relax.transform.DeadCodeElimination()(_mutated(_Folder(mod), mod))

    return _pass


def pad_convolution_widths(width_for: Callable[[int, int], int]) -> Any:
    """The module pass ``PadConvolutionWidths`` (in the ``AlterOpLayout`` catalogue entry,
    after ``ConvertLayout``): a channel-last ``conv2d`` (NHWC, one group, static shapes) of
    W output columns and C output channels for which ``width_for(W, C)`` is wider gets that
    many more columns of right padding (times its stride) and a ``strided_slice`` back to
    its W columns. FuseOps puts the slice into the convolution's kernel, whose write-back
    then stores W columns only; the values are bit-identical (each column is the same sum,
    the extra ones are dropped). Why: see :func:`deltann.compile.schedules.computed_width`."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    conv_op = tvm.ir.Op.get("relax.nn.conv2d")

    @mutator
    class _Widener(PyExprMutator):
        def visit_call_(self, call: Any) -> Any:
            call = self.visit_expr_post_order(call)
            if not call.op.same_as(conv_op):
                return call
            a = call.attrs
            if a.data_layout != "NHWC" or a.out_layout != "NHWC" or int(a.groups) != 1 or len(a.padding) != 4:
                return call
            shape = getattr(self.builder_.normalize(call).ty, "shape", None)
            dims = [_int(d) for d in shape] if shape is not None else [None]
            if len(dims) != 4 or None in dims:
                return call
            width, channels = dims[2], dims[3]
            wider = width_for(width, channels)
            if wider <= width:
                return call
            top, left, bottom, right = (int(p) for p in a.padding)
            padding = [top, left, bottom, right + (wider - width) * int(a.strides[1])]
            conv = self.builder_.emit(relax.op.nn.conv2d(
                call.args[0], call.args[1], strides=a.strides, padding=padding, dilation=a.dilation, groups=1,
                data_layout="NHWC", kernel_layout=a.kernel_layout, out_layout="NHWC", out_dtype=a.out_dtype))
            return relax.op.strided_slice(conv, axes=[2], begin=[0], end=[width])

    @tvm.transform.module_pass(opt_level=0, name="PadConvolutionWidths")
    def _pass(mod: Any, _ctx: Any) -> Any:
        return _mutated(_Widener(mod), mod)

    return _pass
