"""A small torch model that gives every mapped catalogue pass something to do, imported
into Relax once per session (torch.export costs a few seconds)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

INPUT_SHAPE = (1, 3, 16, 16)


def build_torch_model() -> Any:
    import torch
    from torch import nn

    class PassZoo(nn.Module):
        """conv+batch-norm (FoldScaleAxis, SimplifyInference), conv (AlterOpLayout),
        a weight computed in forward (FoldConstant), tanh twice on the same value
        (EliminateCommonSubexpr), two matmuls on one input (CombineParallelMatmul),
        exp/tanh/erf (FastMath), elementwise chains (OpFusion)."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)  # conv -> bn, as FoldBatchnormToConv2D wants
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
            self.scale = nn.Parameter(torch.ones(16))
            # (in, out) weights used as matmul(v, w): a constant right-hand side, which is what
            # CombineParallelMatmul combines (nn.Linear's transposed weight needs FoldConstant first)
            self.w_a = nn.Parameter(torch.zeros(16, 32))
            self.w_b = nn.Parameter(torch.zeros(16, 32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.bn1(self.conv1(x)))
            h = self.conv2(h) * (self.scale * 2.0).reshape(1, 16, 1, 1)
            h = torch.tanh(h) + torch.tanh(h)
            v = h.mean(dim=(2, 3))
            a = v @ self.w_a
            b = v @ self.w_b
            return torch.exp(a * 0.5) + torch.special.erf(b)

    gen = torch.Generator().manual_seed(0)
    model = PassZoo()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        model.bn1.running_mean.copy_(torch.randn(16, generator=gen) * 0.1)
        model.bn1.running_var.copy_(1 + torch.rand(16, generator=gen))
    return model.eval()


@pytest.fixture(scope="session")
def pass_zoo_mod() -> Any:
    """The Relax IRModule of :func:`build_torch_model` (torch.export frontend)."""
    from deltann.compile.frontends import from_torch

    return from_torch(build_torch_model(), INPUT_SHAPE)


@pytest.fixture(scope="session")
def pass_zoo_params_mod() -> Any:
    """The same model with its weights as function parameters instead of constants."""
    import torch
    import tvm.relax.frontend.torch as relax_torch

    program = torch.export.export(build_torch_model(), (torch.zeros(INPUT_SHAPE),))
    return relax_torch.from_exported_program(program, keep_params_as_input=True)


@pytest.fixture(scope="session")
def pass_zoo_input() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)


@pytest.fixture(scope="session")
def pass_zoo_reference(pass_zoo_input: np.ndarray) -> np.ndarray:
    """torch's output for :func:`pass_zoo_input`."""
    import torch

    with torch.no_grad():
        return build_torch_model()(torch.from_numpy(pass_zoo_input)).numpy()
