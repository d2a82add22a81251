from __future__ import annotations

import time

import numpy as np
import pytest

from deltann.core.runner import Runner, time_evaluator_protocol


def test_protocol_call_count_matches_time_evaluator() -> None:
    calls = []
    samples = time_evaluator_protocol(lambda: calls.append(1), warmup=2, number=3, repeat=4, min_repeat_ms=0)
    # warmup + TVM's one discarded call + number x repeat
    assert len(calls) == 2 + 1 + 3 * 4
    assert len(samples) == 4 and all(isinstance(s, int) and s >= 0 for s in samples)


def test_protocol_grows_number_to_reach_min_repeat_ms() -> None:
    calls = []

    def fn() -> None:
        calls.append(1)
        time.sleep(0.001)

    samples = time_evaluator_protocol(fn, warmup=0, number=1, repeat=2, min_repeat_ms=20)
    assert len(samples) == 2
    assert len(calls) > 1 + 2 * 10  # each sample needed >= 20 ms of ~1 ms calls
    assert all(s >= 1_000_000 for s in samples)  # per-call time, not per-sample


class _Echo(Runner):
    name = "echo"

    def activate_impl(self) -> None:
        pass

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return x * 2


def test_runner_checks_state() -> None:
    runner = _Echo()
    with pytest.raises(RuntimeError, match="activated"):
        runner.infer(np.zeros(2))
    with runner:
        assert runner.infer(np.ones(2)).tolist() == [2.0, 2.0]
    assert not runner.active
