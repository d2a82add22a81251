"""ClipToMinMax: ReLU6 stays channel-last under ConvertLayout, outputs unchanged (real TVM
passes on a tiny ONNX Conv-Clip-Conv model and a hand-built Relax clip, no mocks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deltann.compile import rewrites
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
