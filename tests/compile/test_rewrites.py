"""ClipToMinMax: ReLU6 stays channel-last under ConvertLayout; FoldExplicitPadding: pads become
conv padding; outputs unchanged (real TVM passes on a tiny ONNX Conv-Clip-Conv model, a
hand-built Relax clip and a torch model with 'same' pads, no mocks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deltann.compile import rewrites, schedules
from deltann.compile import settings as compile_settings

SHAPE = (1, 3, 8, 8)


def _relu6_onnx(path: Path) -> Path:
    """Conv -> Clip(0, 6) (opset 17: bounds as inputs, as torch exports ReLU6) -> Conv."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "relu6", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def relu6_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from deltann.compile.frontends import from_onnx

    path = _relu6_onnx(tmp_path_factory.mktemp("relu6") / "relu6.onnx")
    return path, from_onnx(path)


def _ops(mod: Any) -> dict[str, int]:
    import tvm
    from tvm import relax

    ops: dict[str, int] = {}

    def visit(e: Any) -> None:
        if isinstance(e, relax.Call):
            name = e.op.name if isinstance(e.op, tvm.ir.Op) else "call:" + e.op.name_hint
            ops[name] = ops.get(name, 0) + 1

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return ops


def _pre(mod: Any, passes: tuple[str, ...]) -> Any:
    """``passes`` up to LegalizeOps: the graph ConvertLayout left."""
    import tvm

    from deltann.compile.pipeline import make_pass

    with tvm.target.Target("llvm"):
        return tvm.transform.Sequential([make_pass(p) for p in passes[:passes.index("LegalizeOps")]])(mod)


def test_no_transposes_around_relu6(relu6_model: tuple[Path, Any]) -> None:
    _, mod = relu6_model
    extended = compile_settings.SETTINGS["extended"]
    assert extended.index("ClipToMinMax") < extended.index("ConvertLayout")
    before = _ops(_pre(mod, tuple(p for p in extended if p != "ClipToMinMax")))
    after = _ops(_pre(mod, extended))
    # input to NHWC and output back to NCHW stay; the NCHW round trip around the clip goes
    assert before["relax.permute_dims"] == 4 and before["relax.call_tir"] == 2
    assert after["relax.permute_dims"] == 2 and "relax.call_tir" not in after
    assert after["relax.maximum"] == after["relax.minimum"] == 1


def test_extended_keeps_outputs(relu6_model: tuple[Path, Any]) -> None:
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from deltann.compile.pipeline import build

    path, mod = relu6_model
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32) * 3
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    vm = relax.VirtualMachine(build(mod, compile_settings.SETTINGS["extended"], tvm.target.Target("llvm")), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    out = (out if hasattr(out, "numpy") else out[0]).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-5)
    assert np.abs(ref).max() > 1e-2  # not a trivially small output


def test_relax_clip_with_constant_bounds() -> None:
    """The torch frontend's form: ``relax.clip(x, 0, 6)`` becomes maximum/minimum too."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    w = relax.const(np.ones((4, 3, 1, 1), np.float32))
    with bb.function("main", [x]):
        with bb.dataflow():
            c = bb.emit(relax.op.nn.conv2d(x, w))
            r = bb.emit(relax.op.clip(c, 0.0, 6.0))
            out = bb.emit_output(relax.op.nn.conv2d(r, relax.const(np.ones((4, 4, 1, 1), np.float32))))
        bb.emit_func_output(out)
    mod = bb.get()
    with tvm.target.Target("llvm"):
        after = rewrites.clip_to_min_max()(mod)
    ops = _ops(after)
    assert "relax.clip" not in ops and ops["relax.maximum"] == ops["relax.minimum"] == 1
    xv = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32) * 4
    results = []
    for m in (mod, after):
        vm = relax.VirtualMachine(tvm.compile(m, target="llvm"), tvm.cpu())
        results.append(vm["main"](tvm.runtime.tensor(xv)).numpy())
    np.testing.assert_array_equal(results[0], results[1])


def test_only_scalar_bound_max_min_kernels_are_recognised() -> None:
    from tvm import te, topi

    a = te.placeholder((1, 4, 2, 2), "float32", name="a")
    scalar = te.placeholder((), "float32", name="s")
    full = te.placeholder((1, 4, 2, 2), "float32", name="b")
    assert rewrites._elementwise_scalar_op(te.create_prim_func([a, scalar, topi.maximum(a, scalar)])) == "maximum"
    assert rewrites._elementwise_scalar_op(te.create_prim_func([a, scalar, topi.minimum(a, scalar)])) == "minimum"
    assert rewrites._elementwise_scalar_op(te.create_prim_func([a, full, topi.maximum(a, full)])) is None
    assert rewrites._elementwise_scalar_op(te.create_prim_func([a, scalar, topi.add(a, scalar)])) is None


def _padded_conv_module() -> tuple[Any, Any]:
    """(torch module, its Relax import): TF-style 'same' padding as a separate F.pad
    (asymmetric, as for a stride-2 conv) before a conv, and a second pad that also feeds an
    add (it must stay for that user)."""
    import torch
    from torch import nn

    from deltann.compile.frontends import from_torch

    class Padded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, stride=2)
            self.b = nn.Conv2d(8, 8, 3, groups=8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(nn.functional.pad(x, (0, 1, 0, 1)))
            p = nn.functional.pad(h, (1, 1, 1, 1))
            return self.b(p) + p[:, :, 1:-1, 1:-1]

    torch.manual_seed(0)
    model = Padded().eval()
    return model, from_torch(model, SHAPE)


def test_fold_explicit_padding_merges_pads_into_convs() -> None:
    """Each zero pad before a conv becomes its padding: no pad before the first conv is
    left, the second stays only for its other user, and the outputs are unchanged."""
    import torch

    model, mod = _padded_conv_module()
    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    import tvm

    assert _ops(mod)["relax.nn.pad"] == 2
    folded = rewrites.fold_explicit_padding()(mod)
    assert _ops(folded).get("relax.nn.pad", 0) == 1  # kept for the add
    paddings = []
    from tvm import relax

    relax.analysis.post_order_visit(folded["main"].body, lambda e: paddings.append(tuple(int(v) for v in e.attrs.padding))
                                    if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.nn.conv2d"
                                    else None)
    assert sorted(paddings) == [(0, 0, 1, 1), (1, 1, 1, 1)]
    extended = compile_settings.SETTINGS["extended"]
    assert extended.index("FoldExplicitPadding") < extended.index("ConvertLayout")
    vm = relax.VirtualMachine(tvm.compile(folded, target="llvm"), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    np.testing.assert_allclose((out if hasattr(out, "numpy") else out[0]).numpy(), ref, rtol=1e-5, atol=1e-5)


def test_extended_has_no_pad_kernel_between_transposes() -> None:
    """In the NHWC build a pad before a conv was a transpose-pad-transpose kernel of its own
    (ConvertLayout has no rule for nn.pad); with FoldExplicitPadding the first one is gone."""
    import tvm

    from deltann.compile.pipeline import lower

    _, mod = _padded_conv_module()
    extended = compile_settings.SETTINGS["extended"]
    target = tvm.target.Target("llvm")
    with_fold = [gv.name_hint for gv, _ in lower(mod, extended, target).functions_items()]
    without = [gv.name_hint for gv, _ in lower(mod, tuple(p for p in extended if p != "FoldExplicitPadding"),
                                               target).functions_items()]
    assert sum("pad" in k for k in with_fold) < sum("pad" in k for k in without)


def _conv_module(width: int, channels: int, kernel: tuple[int, int], stride: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """A Relax NCHW conv (+ bias, ReLU) of a ``width``-column input, its weights and bias."""
    from tvm import relax

    rng = np.random.default_rng(3)
    w = rng.standard_normal((channels, 8, *kernel)).astype(np.float32)
    b = rng.standard_normal((channels,)).astype(np.float32)
    pad = [kernel[0] // 2, kernel[1] // 2] * 2
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 9, width), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), strides=stride, padding=pad))
            y = bb.emit(relax.op.nn.relu(relax.op.add(y, relax.const(b.reshape(1, channels, 1, 1)))))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get(), w, b


@pytest.mark.parametrize(("width", "kernel", "stride", "computed"), [
    (17, (1, 7), 1, 18),   # InceptionV3's 17x17 1x7 convs: a prime row, 3 x 4 tiles at 18
    (33, (3, 3), 2, 18),   # stride 2: 17 output columns from 33, the padding grows by 2 per column
    (16, (3, 3), 1, 16),   # a column tile divides 16: as it was
])
def test_a_prime_width_conv_is_computed_wider_and_stores_its_own_columns(
        width: int, kernel: tuple[int, int], stride: int, computed: int) -> None:
    """Under ``extended`` on a CPU target, a channel-last conv whose width no column tile
    divides is computed a few columns wider (its kernel's accumulators span ``computed``
    columns) and stores only its own: the output has the conv's shape and equals the build
    without PadConvolutionWidths (and numpy). Generic llvm: SSE's 4 lanes, 16 channels."""
    import tvm
    from tvm import relax

    from deltann.compile.pipeline import build, lower

    mod, w, b = _conv_module(width, 16, kernel, stride)
    extended = compile_settings.SETTINGS["extended"]
    without = tuple(p for p in extended if p != "PadConvolutionWidths")
    target = tvm.target.Target("llvm")
    (conv,) = [f for gv, f in lower(mod, extended, target).functions_items() if "conv2d" in gv.name_hint]
    tile = [buf for buf in conv.body.block.alloc_buffers if buf.name.endswith("_" + schedules.TILE_SCOPE)]
    assert [int(buf.shape[2]) for buf in tile] == [computed]
    x = np.random.default_rng(4).standard_normal((1, 8, 9, width)).astype(np.float32)
    outs = []
    for passes in (extended, without):
        vm = relax.VirtualMachine(build(mod, passes, target), tvm.cpu())
        out = vm["main"](tvm.runtime.tensor(x))
        outs.append((out if hasattr(out, "numpy") else out[0]).numpy())
    import torch

    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride,
                                     (kernel[0] // 2, kernel[1] // 2)).relu().numpy()
    assert outs[0].shape == ref.shape
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], ref, rtol=1e-4, atol=1e-4)
    assert extended.index("ConvertLayout") < extended.index("PadConvolutionWidths")
