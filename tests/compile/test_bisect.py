"""Bisection: ddmin on its own, and a real TVM bisection that must blame FastMath."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from deltann.compile.pass_bisect import (
    NoDifference,
    bisect,
    changes_between,
    ddmin,
    format_result,
    latency_oracle,
    output_oracle,
    tvm_runner,
)


def _exp_tanh_erf() -> Any:
    import torch

    class Activations(torch.nn.Module):
        """exp/tanh/erf, elementwise: only FastMath can change its outputs (no reduction for
        a schedule or a layout to reorder), and exp of large inputs magnifies the change."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.exp(x * 3.0) + torch.tanh(x * 2.0) + torch.special.erf(x)
            return h.reshape(1, -1)

    return Activations().eval()


def test_bisect_blames_fastmath_on_a_real_build() -> None:
    from deltann.compile.frontends import from_torch

    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    mod = from_torch(_exp_tanh_erf(), (1, 3, 8, 8))
    result = bisect("basic", "extended", tvm_runner(mod, x), output_oracle(atol=1e-6, rtol=1e-7))
    assert result.culprits == ("+FastMath",)
    assert result.culprit_passes == ("FastMathTransform",)
    assert result.trials[0].changes == tuple(changes_between("basic", "extended"))
    assert result.trials[0].outcome == "differs"
    assert any(t.outcome == "same" for t in result.trials)  # it really tried builds without FastMath
    assert len(result.trials) < 2 * len(changes_between("basic", "extended"))
    table = result.table()
    assert table[0]["outcome"] == "differs" and "max|d|" in table[0]["detail"]
    assert "FastMath" in result.summary() and "builds tried" in result.summary()
    text = format_result(result)
    assert len(text.splitlines()) == len(result.trials) + 2 and "FastMathTransform" in text


def test_ddmin_finds_a_pair_and_steps_around_failures() -> None:
    changes = [f"+P{i}" for i in range(8)]
    seen: list[list[str]] = []

    def test(subset: list[str]) -> str:
        seen.append(subset)
        if "+P6" in subset and len(subset) == 4:
            return "failed"
        return "differs" if {"+P2", "+P5"} <= set(subset) else "same"

    assert sorted(ddmin(changes, test)) == ["+P2", "+P5"]
    assert any(len(s) < len(changes) for s in seen)


def test_no_difference_raises() -> None:
    with pytest.raises(NoDifference, match="do not differ"):
        bisect("basic", "extended", lambda passes: np.ones((1, 4), np.float32))


def test_failed_builds_are_trials_not_errors() -> None:
    def run(passes: tuple[str, ...]) -> np.ndarray:
        if "ConvertLayout" in passes and "FuseOps" not in passes:
            raise RuntimeError("layout without fusion: simulated build failure")
        return np.full((1, 4), 2.0 if "FastMathTransform" in passes else 1.0, np.float32)

    result = bisect("basic", "extended", run)
    assert result.culprits == ("+FastMath",)
    assert any(t.outcome == "failed" and "RuntimeError" in t.detail for t in result.trials)


def test_oracles() -> None:
    diff, detail = output_oracle(atol=1e-3)(np.array([[1.0, 2.0]]), np.array([[1.0, 2.0005]]))
    assert not diff and "flips=0" in detail
    diff, detail = output_oracle(atol=1.0)(np.array([[1.0, 2.0]]), np.array([[2.5, 2.0]]))
    assert diff and "flips=1" in detail  # within atol but the label flipped
    rng = np.random.default_rng(0)
    ref = rng.normal(10e-3, 0.1e-3, 30)
    assert not latency_oracle()(ref, rng.normal(10e-3, 0.1e-3, 30))[0]
    assert latency_oracle()(ref, rng.normal(12e-3, 0.1e-3, 30))[0]


def test_bisect_zoo_model_reports_no_difference_where_fastmath_has_nothing_to_do() -> None:
    """tiny_cnn has no exp/tanh/erf: FastMath alone leaves it bit-identical, even at atol 0."""
    from deltann.compile.pass_bisect import bisect_zoo_model

    with pytest.raises(NoDifference, match="'basic' and 'basic\\+FastMath' do not differ"):
        bisect_zoo_model("tiny_cnn", "basic", "basic+FastMath", images=2, atol=0.0)
