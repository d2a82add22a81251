"""Every frontend builds a small EfficientNet-like network into vector-scheduled kernels
(issue 19): the same network through ONNX (exported with a dynamic batch, as users'
files often are), torch.export and TFLite (deltann's onnx->tf->tflite hops), each built
under ``extended`` for this machine's target, leaves no kernel without a vector schedule
and agrees with torch. Real exporters, converters and TVM builds; no timings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deltann.compile import schedules
from deltann.compile import settings as compile_settings

SHAPE = (1, 3, 32, 32)


def small_net() -> Any:
    """What made frontends differ: a stride-2 conv after an explicit asymmetric 'same'
    pad, ReLU6, a depthwise conv, a residual add, mean and a dense head."""
    import torch
    from torch import nn

    class Small(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, stride=2)
            self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.pw = nn.Conv2d(16, 16, 1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.clamp(self.stem(nn.functional.pad(x, (0, 1, 0, 1))), 0, 6)
            h = self.pw(torch.clamp(self.dw(h), 0, 6)) + h
            return self.fc(h.mean(dim=(2, 3)))

    torch.manual_seed(0)
    return Small().eval()


@pytest.fixture(scope="module")
def forms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The network in each frontend's form, its input and torch's output."""
    import torch

    from deltann.convert.chain_spec import Produced
    from deltann.convert.onnx_tf import onnx_to_tf
    from deltann.convert.tf_tflite import tf_to_tflite

    tmp = tmp_path_factory.mktemp("frontends")
    model = small_net()
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    onnx_path = tmp / "small.onnx"
    torch.onnx.export(model, (torch.zeros(SHAPE),), str(onnx_path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    static = tmp / "static.onnx"  # for onnx2tf, which wants a fixed batch
    torch.onnx.export(model, (torch.zeros(SHAPE),), str(static), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])
    for folder in ("tf", "tflite"):
        (tmp / folder).mkdir()
    saved = onnx_to_tf(Produced(static, "NCHW"), None, tmp / "tf", "none")
    lite = tf_to_tflite(saved, None, tmp / "tflite", "none").payload
    return {"onnx": onnx_path, "torch.export": model, "tflite": Path(lite), "x": x, "ref": ref}


@pytest.mark.parametrize("frontend", ["onnx", "torch.export", "tflite"])
def test_extended_leaves_no_kernel_without_vector_schedule(forms: dict[str, Any], frontend: str) -> None:
    import tvm
    from tvm import relax

    from deltann.compile.frontends import import_relax
    from deltann.compile.pipeline import build_counted, lower, make_target
    from deltann.runtimes.tvm_rt import TvmRunner

    n, c, h, w = SHAPE
    shape, layout = ((n, h, w, c), "NHWC") if frontend == "tflite" else (SHAPE, "NCHW")
    target = make_target('{"kind": "llvm", "mcpu": "native"}', "")
    mod = import_relax(frontend, forms[frontend], shape)
    passes = compile_settings.passes_of("extended")
    lowered = lower(mod, passes, target)
    kernels = [gv.name_hint for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert any("conv2d" in k for k in kernels)
    assert schedules.kernels_without_schedule(lowered, target) == []
    assert not any("pad" in k for k in kernels), kernels  # the explicit pad became the conv's padding
    exe, missing = build_counted(mod, passes, target)
    assert missing == []
    with TvmRunner(exe, layout=layout) as runner:
        out = runner.infer(forms["x"])
    np.testing.assert_allclose(np.asarray(out).reshape(forms["ref"].shape), forms["ref"], rtol=1e-4, atol=1e-4)
    assert isinstance(mod["main"], relax.Function)


def test_unscheduled_build_counts_its_kernels(forms: dict[str, Any]) -> None:
    """The count is not trivially zero: the naive build's kernels all lack a schedule."""
    from deltann.compile.frontends import import_relax
    from deltann.compile.pipeline import build_counted, make_target

    target = make_target('{"kind": "llvm"}', "")
    _, missing = build_counted(import_relax("torch.export", forms["torch.export"], SHAPE),
                               compile_settings.passes_of(compile_settings.UNSCHEDULED), target)
    assert any("conv2d" in k for k in missing)


def test_dynamic_onnx_input_is_built_static(forms: dict[str, Any]) -> None:
    """A dynamic batch becomes the artifact's own batch of 1; without the shape the module
    stays symbolic (what made ONNX builds slow)."""
    from deltann.compile.frontends import from_onnx

    static = from_onnx(forms["onnx"], SHAPE)
    dynamic = from_onnx(forms["onnx"])
    assert [int(d) for d in static["main"].params[0].ty.shape] == list(SHAPE)
    assert not isinstance(dynamic["main"].params[0].ty.shape[0], int) and \
        getattr(dynamic["main"].params[0].ty.shape[0], "value", None) is None


def test_onnx_static_dimension_that_disagrees_is_a_clear_error(forms: dict[str, Any]) -> None:
    from deltann.compile.frontends import from_onnx

    with pytest.raises(ValueError, match=r"small\.onnx.*dimension 2 is 32, not 64.*input_size"):
        from_onnx(forms["onnx"], (1, 3, 64, 64))
