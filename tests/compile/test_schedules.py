"""DefaultSchedule: real builds, outputs unchanged, loops really parallel/vectorised, in
every setting but ``unscheduled``."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from deltann.compile import catalogue, schedules
from deltann.compile import settings as compile_settings


def _run(mod: Any, passes: tuple[str, ...], x: np.ndarray, target: Any = None) -> np.ndarray:
    import tvm
    from tvm import relax

    from deltann.compile.pipeline import build

    ex = build(mod, passes, target or tvm.target.Target("llvm"))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    return (out if hasattr(out, "numpy") else out[0]).numpy()


def _conv_zoo() -> Any:
    """Convolutions whose shapes take every branch of the rule: a prime width (17: channel
    tile), a width with a divisor (16: column tile), depthwise, strided, pooling, dense."""
    import torch
    from torch import nn

    class ConvZoo(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 32, 3, padding=1)
            self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
            self.b = nn.Conv2d(32, 24, 1)
            self.s = nn.Conv2d(24, 16, 3, stride=2, padding=1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.a(x))
            h = torch.clamp(self.dw(h), 0, 6) + h
            h = nn.functional.max_pool2d(self.b(h), 3, stride=1, padding=1)
            h = torch.relu(self.s(h))
            return self.fc(h.mean(dim=(2, 3)))

    torch.manual_seed(0)
    return ConvZoo().eval()


def _conv_zoo_params(model: Any, shape: tuple[int, ...]) -> Any:
    """The conv zoo with its weights as function inputs (not constants), bound back to
    their values as arguments by :func:`_run_params`."""
    import torch
    import tvm.relax.frontend.torch as relax_torch

    program = torch.export.export(model, (torch.zeros(shape),))
    return relax_torch.from_exported_program(program, keep_params_as_input=True)


@pytest.mark.parametrize("width", [17, 16])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_schedule_keeps_outputs(width: int, layout: str) -> None:
    """NHWC (AlterOpLayout) and NCHW convolutions (channel-last inside the kernel, weights
    stored HWIO at build time) agree with torch and with the unscheduled build."""
    import torch

    from deltann.compile.frontends import from_torch

    model = _conv_zoo()
    x = np.random.default_rng(1).standard_normal((1, 3, width, width)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    mod = from_torch(model, x.shape)
    graph = (compile_settings.ENABLED["default"] - {"DefaultSchedule"}) | ({"AlterOpLayout"} if layout == "NHWC"
                                                                           else set())
    plain = _run(mod, catalogue.compose(graph), x)
    scheduled = _run(mod, catalogue.compose(graph | {"DefaultSchedule"}), x)
    np.testing.assert_allclose(plain, ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(scheduled, plain, atol=1e-5, rtol=1e-5)
    assert np.abs(ref).max() > 1e-2  # not a trivially small output


def test_nchw_weights_are_stored_channel_last_only_when_constant() -> None:
    """Constant weights: the NCHW conv kernels read them HWIO, transposed once at build
    time (no copy block in the kernel). Weights passed as inputs: each kernel copies them
    HWIO on every call. Both compute what torch does."""
    import torch
    import tvm
    from tvm import relax

    from deltann.compile.frontends import from_torch
    from deltann.compile.pipeline import build, lower

    model = _conv_zoo()
    shape = (1, 3, 16, 16)
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    target = tvm.target.Target("llvm")
    passes = compile_settings.passes_of("basic")

    def conv_kernels(mod: Any) -> dict[str, str]:
        return {gv.name_hint: f.script() for gv, f in mod.functions_items()
                if isinstance(f, tvm.tirx.PrimFunc) and "conv2d_nchw" in f.script()}

    constant = conv_kernels(lower(from_torch(model, shape), passes, target))
    assert len(constant) == 4  # a, dw, b, s
    assert not any(re.search(r"weight\w*_global", s) for s in constant.values())  # no per-call weight copy
    inputs = _conv_zoo_params(model, shape)
    as_inputs = conv_kernels(lower(inputs, passes, target))
    assert len(as_inputs) == 4 and all(re.search(r"weight\w*_global", s) for s in as_inputs.values())
    params = [tvm.runtime.tensor(p.detach().numpy()) for p in model.parameters()]
    vm = relax.VirtualMachine(build(inputs, passes, target), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x), *params)
    np.testing.assert_allclose((out if hasattr(out, "numpy") else out[0]).numpy(), ref, atol=1e-4, rtol=1e-4)


def _kernel_weights(mod: Any) -> dict[str, tuple[int, ...]]:
    """Each conv / matmul kernel of a lowered module -> the shape of its weight parameter
    (the second: a fused kernel takes its data, then its weight)."""
    import tvm

    return {gv.name_hint: tuple(int(d) for d in f.params[1].shape) for gv, f in mod.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc) and ("conv2d" in gv.name_hint or "matmul" in gv.name_hint)}


@pytest.mark.parametrize(("mcpu", "lanes"), [("", 4), ("core-avx2", 8), ("skylake-avx512", 16)])
def test_channel_last_weights_are_stored_in_blocks_of_one_vector(mcpu: str, lanes: int) -> None:
    """NHWC convolutions (depthwise too) and the dense layer read constant weights stored in
    blocks of one vector register of output channels, block outermost ([o / lanes, kh, kw,
    i, lanes]; [n / lanes, k, lanes]), where the register divides the channels into more
    than one block; other channel counts keep their layout. Weights passed as inputs keep
    theirs (nothing to store at build time). Lowered only: the AVX targets need not run
    here."""
    import tvm

    from deltann.compile.frontends import from_torch
    from deltann.compile.pipeline import lower

    model = _conv_zoo()  # convs 3->32 (3x3), depthwise 32 (3x3), 32->24 (1x1), 24->16 (3x3, /2); dense 16->10
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu} if mcpu else "llvm")
    passes = compile_settings.passes_of("extended")
    weights = _kernel_weights(lower(from_torch(model, (1, 3, 16, 16)), passes, target))
    expected = {}
    for o, shape in ((32, (3, 3, 3)), (32, (3, 3, 1)), (24, (1, 1, 32)), (16, (3, 3, 24))):
        expected[shape] = (o // lanes, *shape, lanes) if o % lanes == 0 and o > lanes else (*shape, o)
    convs = [s for n, s in weights.items() if "conv2d" in n]
    assert {(s[1:4] if len(s) == 5 else s[:3]): s for s in convs} == expected
    dense = [s for n, s in weights.items() if "matmul" in n or "dense" in n]
    assert dense == [(16, 10)]  # 10 classes: no register divides them
    inputs = _kernel_weights(lower(_conv_zoo_params(model, (1, 3, 16, 16)), passes, target))
    assert len(inputs) == 5 and all(len(s) < 5 for s in inputs.values())


def test_a_blocked_matmul_weight_computes_what_numpy_does() -> None:
    """A dense layer whose classes a vector divides (16 -> 32, 4 lanes on generic llvm):
    its constant weight stored [32 / 4, 16, 4] at build time; the build's output is numpy's."""
    import tvm
    from tvm import relax

    rng = np.random.default_rng(4)
    w = rng.standard_normal((16, 32)).astype(np.float32)
    bias = rng.standard_normal(32).astype(np.float32)
    x = rng.standard_normal((2, 16)).astype(np.float32)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((2, 16), "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = bb.emit(relax.op.add(relax.op.matmul(xv, relax.const(w)), relax.const(bias)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    from deltann.compile.pipeline import lower

    passes = compile_settings.passes_of("extended")
    assert list(_kernel_weights(lower(bb.get(), passes, tvm.target.Target("llvm"))).values()) == [(8, 16, 4)]
    np.testing.assert_allclose(_run(bb.get(), passes, x), x @ w + bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frontend", ["torch.export", "onnx"])
def test_basic_schedules_every_kernel_and_unscheduled_none(frontend: str, tmp_path: Any) -> None:
    """The criterion: a kernel is scheduled when some loop of it is parallel, vectorised,
    unrolled or bound to GPU threads (schedules.unscheduled_kernels); ``tirx.is_scheduled``
    only says a rule ran. Every kernel of a ``basic`` build of the tiny model is scheduled
    (and so in ``default``), none of ``unscheduled``."""
    import torch
    import tvm

    from deltann import zoo
    from deltann.compile.frontends import import_relax
    from deltann.compile.pipeline import lower

    spec = zoo.get("tiny_cnn")
    model = spec.loaders["torch"]()
    shape = tuple(spec.input_shape)
    if frontend == "onnx":
        payload = tmp_path / "tiny.onnx"
        torch.onnx.export(model, (torch.zeros(shape),), str(payload), dynamo=False, opset_version=17)
        payload = str(payload)
    else:
        payload = model
    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})

    def kernels(setting: str) -> tuple[list[str], list[str]]:
        mod = lower(import_relax(frontend, payload, shape), compile_settings.passes_of(setting), target)
        funcs = [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
        return funcs, schedules.unscheduled_kernels(mod)

    for setting in ("basic", "default"):
        funcs, naive = kernels(setting)
        assert any("conv2d" in f for f in funcs) and naive == [], (setting, naive)
    funcs, naive = kernels(compile_settings.UNSCHEDULED)
    looped = [f for f in funcs if f not in {"tir_isnan", "where"}]  # scalar kernels have no loop
    assert naive and set(naive) >= {f for f in looped if "conv2d" in f or "add" in f}


def test_every_kernel_is_scheduled_and_parallel(pass_zoo_mod: Any) -> None:
    import tvm

    from deltann.compile.pipeline import make_pass

    with tvm.target.Target("llvm"):
        mod = tvm.transform.Sequential([make_pass(p) for p in compile_settings.SETTINGS["extended"]])(pass_zoo_mod)
    funcs = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert funcs and all(f.attrs.get("tirx.is_scheduled") for f in funcs)
    conv = [f.script() for f in funcs if "conv2d_nhwc" in f.script()]
    assert conv and all("T.parallel" in s and "T.vectorized" in s for s in conv)


def test_lanes_follow_the_target() -> None:
    import tvm

    assert schedules.lanes_for(tvm.target.Target({"kind": "llvm"}))[0] == 4  # generic x86-64: SSE2
    assert schedules.lanes_for(tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"}))[0] == 16
    assert schedules.lanes_for(tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}))[0] == 8


@pytest.mark.parametrize("setting", ["basic", "default", "extended"])
def test_settings_match_torch(setting: str, pass_zoo_mod: Any, pass_zoo_input: np.ndarray,
                              pass_zoo_reference: np.ndarray) -> None:
    """All three settings build and agree with torch; extended's FastMath within 1e-4."""
    out = _run(pass_zoo_mod, compile_settings.SETTINGS[setting], pass_zoo_input)
    np.testing.assert_allclose(out, pass_zoo_reference, atol=1e-4, rtol=1e-4)


def _legalized(mod: Any) -> Any:
    import tvm

    from deltann.compile.pipeline import make_pass

    with tvm.target.Target("llvm"):
        return tvm.transform.Sequential([make_pass(p) for p in compile_settings.SETTINGS["default"]
                                         if p not in schedules.SCHEDULING])(mod)


@pytest.mark.parametrize("target", [{"kind": "cuda", "arch": "sm_72"}, {"kind": "opencl", "device": "mali"}])
def test_gpu_targets_get_tvms_dlight_rules(target: dict[str, str], pass_zoo_mod: Any) -> None:
    """The device catalogue's GPU kinds (gpu-xavier: CUDA; arm-hikey: Mali over OpenCL):
    every kernel bound to GPU threads, as TVM's own GPU pipelines do. Lowering only: this
    machine has no GPU and TVM no CUDA/OpenCL code generator, so nothing is compiled."""
    import tvm

    mod = _legalized(pass_zoo_mod)
    with tvm.target.Target(target):  # building the target object needs no GPU
        out = schedules.default_schedule()(mod)
    funcs = [f for _, f in out.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert funcs and schedules.unscheduled_kernels(out) == []
    assert all("threadIdx" in f.script() or "blockIdx" in f.script() for f in funcs if "for " in f.script())
    assert schedules.unscheduled_kernels(mod)  # it was naive before


def test_targets_with_no_tuning_free_schedule_are_left_alone(pass_zoo_mod: Any) -> None:
    import tvm

    mod = _legalized(pass_zoo_mod)
    with tvm.target.Target("c"):
        out = schedules.default_schedule()(mod)
    tvm.ir.assert_structural_equal(out, mod)


def test_a_kernel_the_rule_cannot_schedule_keeps_its_loops(pass_zoo_mod: Any, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import tvm

    def refuse(*args: Any) -> None:
        raise tvm.s_tir.ScheduleError("refused for the test")

    monkeypatch.setattr(schedules, "_schedule_reduction", refuse)
    mod = _legalized(pass_zoo_mod)
    with tvm.target.Target("llvm"), caplog.at_level(logging.DEBUG, logger="deltann.compile"):
        out = schedules.default_schedule()(mod)
    funcs = {gv.name_hint: f for gv, f in out.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    conv = [n for n in funcs if n.startswith("fused_conv2d")]
    assert conv and not any(funcs[n].attrs.get("tirx.is_scheduled") for n in conv)
    assert any(f.attrs.get("tirx.is_scheduled") for f in funcs.values())  # injective kernels still are
    assert "refused for the test" in caplog.text


@pytest.mark.parametrize(("shape", "axes"), [((1, 3, 20, 24), (0, 2, 3, 1)), ((2, 5, 7), (0, 2, 1)),
                                             ((1, 32, 6, 5), (0, 2, 3, 1)), ((1, 3, 5, 37), (0, 2, 3, 1))])
def test_injective_kernels_keep_their_values(shape: tuple[int, ...], axes: tuple[int, ...]) -> None:
    """Transposes as ConvertLayout inserts them: a short innermost axis with no vector in
    it (3 or 5 channels) gets parallel outer loops and that axis unrolled, not a fused
    loop split into vector lanes, and the vector runs along the axis the source is
    contiguous in when that holds one (24 columns, 37 as 32 and a tail; 7 does not); a
    channel axis of 32 keeps
    the fused vector schedule.
    Either way the built kernel moves every value where numpy's transpose does."""
    import tvm
    from tvm import te, topi
    from tvm.driver import build as tvm_build

    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    a = te.placeholder(shape, "float32", name="a")
    func = te.create_prim_func([a, topi.transpose(a, list(axes))])
    sch = schedules.schedule_func(func, schedules.lanes_for(target))
    assert sch is not None
    script = sch.mod.script()
    assert "T.parallel" in script
    short = shape[axes[-1]] < 16 and shape[axes[-1]] % 2 != 0
    reads_vector = shape[-1] >= 16  # whole registers along the source's rows (37: 32 + a tail loop)
    assert ("T.unroll" in script) == short and ("T.vectorized" in script) == (not short or reads_vector)
    lib = tvm_build(sch.mod, target=tvm.target.Target("llvm"))  # any x86-64 runs it; lanes don't change values
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros([shape[i] for i in axes], np.float32))
    lib[lib.entry_name](tvm.runtime.tensor(x), out)
    np.testing.assert_array_equal(out.numpy(), x.transpose(axes))


@pytest.mark.parametrize(("width", "tile"), [(13, 13), (17, 1), (16, 4), (29, 1)])
def test_a_short_prime_row_is_tiled_whole(width: int, tile: int) -> None:
    """An NHWC convolution whose output width no register tile divides gets the whole row as
    its tile when the row's accumulators fit the stack tile (AVX-512, 16 lanes: 15 at most,
    so 13 columns), else channel tiles only (17, 29: a model computes those wider, see
    computed_width); a width with a divisor keeps its tile (16: 4 x 2, 8 x 2 is 16
    accumulators). Values unchanged."""
    import tvm
    from tvm import te, topi
    from tvm.driver import build as tvm_build

    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    a = te.placeholder((1, width, width, 32), "float32", name="a")
    w = te.placeholder((1, 3, 32, 32), "float32", name="w")
    func = te.create_prim_func([a, w, topi.nn.conv2d_nhwc(a, w, 1, (0, 1), 1)])
    sch = schedules.schedule_func(func, schedules.lanes_for(target))
    assert sch is not None
    unrolled = [int(sch.get(lp).extent) for b in sch.get_child_blocks(sch.get_sblock("root"))
                for lp in sch.get_loops(b) if sch.get(lp).kind == tvm.tirx.ForKind.UNROLLED]
    assert (tile in unrolled) if tile > 1 else (width not in unrolled)
    lib = tvm_build(sch.mod, target=tvm.target.Target("llvm"))
    rng = np.random.default_rng(0)
    x, k = rng.standard_normal((1, width, width, 32)).astype(np.float32), rng.standard_normal((1, 3, 32, 32)).astype(
        np.float32)
    out = tvm.runtime.tensor(np.zeros((1, width, width, 32), np.float32))
    lib[lib.entry_name](tvm.runtime.tensor(x), tvm.runtime.tensor(k), out)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
    ref = sum(padded[:, :, j:j + width, :] @ k[0, j] for j in range(3))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("channels", "tile", "absent"), [
    (48, (4, 3), {8, 7}), (24, (7, 3), {8}), (32, (7, 2), {8, 3}), (96, (2, 6), {8, 7}), (144, (4, 3), {8, 7, 9}),
])
def test_register_tiles_write_whole_pixels_or_share_broadcasts(channels: int, tile: tuple[int, int],
                                                               absent: set[int]) -> None:
    """A 1x1 NHWC convolution at 56 columns, AVX-512. Up to 6 channel vectors the tile
    holds them all (whole pixels), within 15 accumulators of 16 lanes (the tile stays
    under TVM's stack limit): 48 channels as 4 columns x 3 vectors, 32 as 7 x 2, 96 as
    2 x 6; 24 channels as 7 x 3 (3 vectors of the 8 lanes that 24 allows: 21 of those fit).
    More (144: 9 vectors): 4 columns x 3 vectors, which load less per multiply-add than
    8 x 1 (a broadcast for each) or 7 x 1 (2 of 9 vectors do not divide it). Values
    unchanged."""
    import tvm
    from tvm import te, topi
    from tvm.driver import build as tvm_build

    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    a = te.placeholder((1, 56, 56, 16), "float32", name="a")
    w = te.placeholder((1, 1, 16, channels), "float32", name="w")
    func = te.create_prim_func([a, w, topi.nn.conv2d_nhwc(a, w, 1, 0, 1)])
    sch = schedules.schedule_func(func, schedules.lanes_for(target))
    assert sch is not None
    unrolled = {int(sch.get(lp).extent) for b in sch.get_child_blocks(sch.get_sblock("root"))
                for lp in sch.get_loops(b) if sch.get(lp).kind == tvm.tirx.ForKind.UNROLLED}
    assert set(tile) <= unrolled and absent.isdisjoint(unrolled), unrolled
    lib = tvm_build(sch.mod, target=tvm.target.Target("llvm"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 56, 56, 16)).astype(np.float32)
    k = rng.standard_normal((1, 1, 16, channels)).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros((1, 56, 56, channels), np.float32))
    lib[lib.entry_name](tvm.runtime.tensor(x), tvm.runtime.tensor(k), out)
    np.testing.assert_allclose(out.numpy(), x @ k[0, 0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("width", "vectors", "regs", "tile"), [
    (14, 16, schedules.WIDE, (7, 2)),  # ResNet101's 14x14x256: no 2 x 8
    (28, 8, schedules.WIDE, (7, 2)),  # 28x28x128: no 4 x 4
    (56, 4, schedules.WIDE, (4, 4)),  # 56x56x64: whole pixels
    (17, 4, schedules.WIDE, (17, 1)),  # a short prime row, whole
    (112, 6, schedules.NARROW, (4, 3)),  # 16 registers: 2 x 6 whole pixels and 6 weights would spill
    (56, 3, schedules.NARROW, (4, 3)),  # whole pixels, 4 at a time
    (112, 12, schedules.NARROW, (4, 3)),  # 96 channels with AVX2: 4 columns x 3 vectors, not 8 x 1
    (28, 24, schedules.NARROW, (4, 3)),
    (14, 72, schedules.NARROW, (2, 4)),  # 2 x 6: 12 accumulators + 6 weight vectors > 16 registers
    (147, 8, schedules.NARROW, (3, 2)),  # 3 x 4: 12 accumulators + 4 weights + a broadcast > 16
    (7, 40, schedules.NARROW, (7, 1)),  # 7 columns: only 7 divides the row
    (13, 4, schedules.NARROW, (1, 4)),  # a prime row over 12: channel vectors only (see computed_width)
    (14, 14, schedules.NARROW, (7, 1)),  # EfficientNet-Lite0's 672->112 at 14x14: 2 x 2 reread the weights
    (14, 10, schedules.NARROW, (2, 5)),  # 80 channels: 5 vectors, though no power of two
    (35, 8, schedules.NARROW, (5, 2)),  # InceptionV3's 35x35: 5 x 2 loads less than 7 x 1
    (1, 125, schedules.NARROW, (1, 5)),  # a 1000-class head: 5 accumulators, not one chain
])
def test_register_tiles_prefer_whole_pixels_then_columns(width: int, vectors: int, regs: schedules.Registers,
                                                         tile: tuple[int, int]) -> None:
    """Whole pixels where they fit; else the tile that loads least per multiply-add, a
    weight vector costing more than a broadcast input (AVX-512: twice as much as AVX2)."""
    assert schedules._register_tile(width, vectors, regs) == tile


@pytest.mark.parametrize(("kernel", "padding"), [(1, 0), (3, 1)])
def test_a_zero_width_pad_is_no_copy_of_the_input(kernel: int, padding: int) -> None:
    """LegalizeOps writes a padding block before every convolution; one of zero width (a
    1x1 conv) is a plain copy of the conv's input and is inlined into it (no second loop
    nest, no copy buffer), while a real padding stays its own block (inlined, its branch
    would sit in the conv's inner loop). Values unchanged either way."""
    import tvm
    from tvm import te, topi
    from tvm.driver import build as tvm_build

    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    a = te.placeholder((1, 14, 14, 32), "float32", name="a")
    w = te.placeholder((kernel, kernel, 32, 48), "float32", name="w")
    func = te.create_prim_func([a, w, topi.nn.conv2d_nhwc(a, w, 1, padding, 1)])
    sch = schedules.schedule_func(func, schedules.lanes_for(target))
    assert sch is not None
    blocks = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    assert ("pad_temp" in blocks) == (padding > 0), blocks
    lib = tvm_build(sch.mod, target=tvm.target.Target("llvm"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 14, 14, 32)).astype(np.float32)
    k = rng.standard_normal((kernel, kernel, 32, 48)).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros((1, 14, 14, 48), np.float32))
    lib[lib.entry_name](tvm.runtime.tensor(x), tvm.runtime.tensor(k), out)
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    ref = sum(padded[:, i:i + 14, j:j + 14, :] @ k[i, j] for i in range(kernel) for j in range(kernel))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_only_a_copy_at_the_same_indices_counts_as_a_copy() -> None:
    """What the rule inlines into a conv as a plain copy: an element-for-element copy, not
    a transpose and not a shifted read (each would make the conv's inner loop read with
    another stride or offset)."""
    from tvm import s_tir, te

    a = te.placeholder((4, 6, 8), "float32", name="a")
    made = {"copy": te.compute((4, 6, 8), lambda i, j, k: a[i, j, k]),
            "transpose": te.compute((4, 8, 6), lambda i, k, j: a[i, j, k]),
            "shifted": te.compute((4, 5, 8), lambda i, j, k: a[i, j + 1, k])}
    found = {}
    for name, out in made.items():
        sch = s_tir.Schedule(te.create_prim_func([a, out]))
        (block,) = sch.get_child_blocks(sch.get_sblock("root"))
        found[name] = schedules._is_copy(sch, block)
    assert found == {"copy": True, "transpose": False, "shifted": False}


@pytest.mark.parametrize("op", ["depthwise", "maxpool"])
def test_a_padding_is_inlined_into_window_reductions(op: str) -> None:
    """A padding before a depthwise conv or a pooling (a few taps per output) is inlined
    into it: no padded copy of the input (before a conv that sums over input channels
    it stays: test_a_zero_width_pad_is_no_copy_of_the_input). Values match numpy."""
    import tvm
    from tvm import te, topi
    from tvm.driver import build as tvm_build

    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    a = te.placeholder((1, 14, 14, 32), "float32", name="a")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 14, 14, 32)).astype(np.float32)
    fill = -np.inf if op == "maxpool" else 0.0
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=fill)
    windows = np.stack([padded[:, i:i + 14, j:j + 14, :] for i in range(3) for j in range(3)])
    if op == "maxpool":
        out, args = topi.nn.pool2d(a, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "max", layout="NHWC"), []
        ref = windows.max(axis=0)
    else:
        w = te.placeholder((3, 3, 1, 32), "float32", name="w")
        k = rng.standard_normal((3, 3, 1, 32)).astype(np.float32)
        out, args = topi.nn.group_conv2d_nhwc(a, w, 1, 1, 1, 32), [(w, k)]
        ref = (windows * k.reshape(9, 1, 1, 1, 32)).sum(axis=0)
    func = te.create_prim_func([a, *(p for p, _ in args), out])
    sch = schedules.schedule_func(func, schedules.lanes_for(target))
    assert sch is not None
    blocks = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    assert "pad_temp" not in blocks, blocks
    lib = tvm_build(sch.mod, target=tvm.target.Target("llvm"))
    result = tvm.runtime.tensor(np.zeros(ref.shape, np.float32))
    lib[lib.entry_name](tvm.runtime.tensor(x), *(tvm.runtime.tensor(v) for _, v in args), result)
    np.testing.assert_allclose(result.numpy(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("width", "channels", "lanes", "computed"), [
    (17, 192, (8, 4, 2), 18),   # InceptionV3's 17x17 layers on AVX2: 6 x 2 at 18
    (71, 192, (8, 4, 2), 72),   # its 3x3 conv 80->192 at 71x71
    (73, 80, (8, 4, 2), 78),    # its 1x1 conv 64->80 at 73x73: 6 x 2 at 78 beats 4 x 2 at 76
    (149, 32, (8, 4, 2), 155),  # its first conv: 4 channel vectors, 5 x 2 at 155 (2 x 4 at 150)
    (56, 24, (8, 4, 2), 56),    # a column tile divides it: as it is
    (7, 512, (8, 4, 2), 7),     # short enough to be tiled whole
    (17, 192, (16, 8, 4, 2), 18),  # AVX-512: 17 x 16 lanes is over the stack tile: 6 x 2 at 18
])
def test_a_width_no_column_tile_divides_is_computed_wider(width: int, channels: int, lanes: tuple[int, ...],
                                                          computed: int) -> None:
    """computed_width: a prime row longer than the register file's whole-row limit is
    computed at the width, at most 10 % more, whose register tile has the most accumulators
    (and that tile has several columns); any other row is computed as it is."""
    assert schedules.computed_width(width, channels, lanes) == computed
    regs = schedules._registers(lanes, lanes[0] * 4)
    assert schedules._register_tile(computed, channels // lanes[0], regs)[0] > 1


@pytest.mark.parametrize(("kernel", "inlined"), [((1, 7), False), ((7, 1), True)])
def test_a_padding_of_columns_stays_before_a_conv_over_channels(kernel: tuple[int, int], inlined: bool) -> None:
    """A 1x7 conv over channels has two reduction axes longer than one, like a window, but
    sums over channels: its padding of columns stays a copy (inlined, the branch ran in its
    inner loop, once per tap: InceptionV3's 1x7 convs 2x slower). A 7x1 conv's padding of
    rows goes in (its branch is outside the register tile). Values match numpy."""
    import tvm
    from tvm import te, topi
    from tvm.driver import build as tvm_build

    a = te.placeholder((1, 17, 17, 16), "float32", name="a")
    w = te.placeholder((*kernel, 16, 24), "float32", name="w")
    pad = [kernel[0] // 2, kernel[1] // 2]
    out = topi.nn.conv2d_nhwc(a, w, 1, pad, 1)
    sch = schedules.schedule_func(te.create_prim_func([a, w, out]), (4, 2))
    assert sch is not None
    blocks = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    assert ("pad_temp" not in blocks) == inlined, blocks
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 17, 17, 16)).astype(np.float32)
    k = rng.standard_normal((*kernel, 16, 24)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
    ref = sum(padded[:, i:i + 17, j:j + 17, :] @ k[i, j] for i in range(kernel[0]) for j in range(kernel[1]))
    lib = tvm_build(sch.mod, target=tvm.target.Target("llvm"))
    result = tvm.runtime.tensor(np.zeros((1, 17, 17, 24), np.float32))
    lib[lib.entry_name](tvm.runtime.tensor(x), tvm.runtime.tensor(k), result)
    np.testing.assert_allclose(result.numpy(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("size", "weights_first"), [(14, True), (56, False)])
def test_channel_tiles_run_outermost_where_the_weights_outweigh_the_input(size: int, weights_first: bool) -> None:
    """A 3x3 conv 64->64 at 14x14 reads more weights (36,864 floats) than input (16x16x64):
    its parallel loop runs channel tiles outermost, so each thread streams one tile's
    weights once over all pixels (ResNet101's 14x14 layers: weights past the L2, read once
    per tile of pixels). At 56x56 the input is larger and pixels stay outermost. Values
    match numpy either way."""
    import tvm
    from tvm import te, topi
    from tvm.driver import build as tvm_build

    a = te.placeholder((1, size, size, 64), "float32", name="a")
    w = te.placeholder((3, 3, 64, 64), "float32", name="w")
    out = topi.nn.conv2d_nhwc(a, w, 1, 1, 1)
    sch = schedules.schedule_func(te.create_prim_func([a, w, out]), (8, 4, 2))
    assert sch is not None
    (update,) = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if sch.get(b).name_hint.endswith("update")]
    parallel = sch.get(sch.get_loops(update)[0])
    assert parallel.kind == tvm.tirx.ForKind.PARALLEL
    assert parallel.loop_var.name.startswith("ff") == weights_first, parallel.loop_var.name
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, size, size, 64)).astype(np.float32)
    k = rng.standard_normal((3, 3, 64, 64)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = sum(padded[:, i:i + size, j:j + size, :] @ k[i, j] for i in range(3) for j in range(3))
    lib = tvm_build(sch.mod, target=tvm.target.Target("llvm"))
    result = tvm.runtime.tensor(np.zeros((1, size, size, 64), np.float32))
    lib[lib.entry_name](tvm.runtime.tensor(x), tvm.runtime.tensor(k), result)
    np.testing.assert_allclose(result.numpy(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mcpu", ["znver3", "skylake-avx512"])
@pytest.mark.parametrize("groups", [1, 48])
def test_a_register_tile_lives_on_the_stack(mcpu: str, groups: int) -> None:
    """A reduction's register tile is a buffer TVM puts on the stack (LLVM then keeps it in
    registers), not a workspace allocated from the heap in every iteration of the
    parallel loop: a 3x3 NHWC conv over 48 channels and a depthwise one, with AVX2 (12
    accumulators of 8 lanes) and AVX-512 (at most 15 of 16 lanes, under 1024 bytes: 4 x 3,
    where 32 registers would hold 7 x 3). The compiled kernel allocates its padded input
    from the workspace (once a call) and nothing else; values equal numpy's."""
    import tvm
    from tvm import te, topi
    from tvm.driver import build as tvm_build

    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    a = te.placeholder((1, 28, 28, 48), "float32", name="a")
    w = te.placeholder((3, 3, 48 // groups, 48), "float32", name="w")
    conv = topi.nn.group_conv2d_nhwc(a, w, 1, 1, 1, groups) if groups > 1 else topi.nn.conv2d_nhwc(a, w, 1, 1, 1)
    sch = schedules.schedule_func(te.create_prim_func([a, w, conv]), schedules.lanes_for(target))
    assert sch is not None and "T.unroll" in sch.mod.script()  # a register tile
    lib = tvm_build(sch.mod, target=target)
    heap = re.findall(r"%(\w+) = tail call ptr %\d+\(i32 1,", lib.inspect_source("ll"))  # workspace allocations
    assert heap == (["pad_temp"] if groups == 1 else []), heap  # a depthwise conv's padding is inlined
    if mcpu != "znver3":
        return  # running it needs AVX-512
    lib = tvm_build(sch.mod, target=tvm.target.Target("llvm"))  # any x86-64 runs it; lanes don't change values
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 28, 28, 48)).astype(np.float32)
    k = rng.standard_normal((3, 3, 48 // groups, 48)).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros((1, 28, 28, 48), np.float32))
    lib[lib.entry_name](tvm.runtime.tensor(x), tvm.runtime.tensor(k), out)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    if groups > 1:
        ref = sum(padded[:, i:i + 28, j:j + 28, :] * k[i, j, 0] for i in range(3) for j in range(3))
    else:
        ref = sum(padded[:, i:i + 28, j:j + 28, :] @ k[i, j] for i in range(3) for j in range(3))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-4)
