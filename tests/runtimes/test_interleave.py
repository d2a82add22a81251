"""The interleaved timing session (deltann.runtimes.interleave) with a small real runtime
(numpy), so that order, memory fallback and failures can be checked exactly."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from deltann.core.runner import Runner
from deltann.runtimes import interleave
from deltann.runtimes.interleave import MachineState, Protocol, Session, Slot, machine_state, time_interleaved


class NumpyRunner(Runner):
    """A runner over a numpy matrix product: ``sleep_s`` per call; ``fail_after`` calls
    then an error; ``ballast`` MiB held while active (for the memory budget)."""

    name = "numpy"

    def __init__(self, sleep_s: float = 0.0, fail_after: int | None = None, ballast: int = 0,
                 log: list[str] | None = None, tag: str = "") -> None:
        super().__init__("NCHW")
        self.sleep_s, self.fail_after, self.ballast, self.log, self.tag = sleep_s, fail_after, ballast, log, tag
        self.calls = 0
        self.held: Any = None

    def activate_impl(self) -> None:
        self.held = np.ones(self.ballast << 18, np.float32) if self.ballast else None  # MiB of float32
        if self.log is not None:
            self.log.append(f"load {self.tag}")

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("device lost")
        if self.log is not None:
            self.log.append(self.tag)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return x.reshape(1, -1)[:, :10] * 2

    def deactivate_impl(self) -> None:
        self.held = None
        if self.log is not None:
            self.log.append(f"free {self.tag}")


def _slot(name: str, runner: NumpyRunner, images: int = 2) -> Slot:
    def load() -> Runner:
        runner.activate()
        return runner

    return Slot(name, load, np.zeros((images, 3, 4, 4), np.float32))


PROTO = Protocol(warmup=1, number=1, repeat=2, min_repeat_ms=0, blocks=3, pause_ms=0)


def test_blocks_alternate_and_rotate_and_every_image_is_timed() -> None:
    log: list[str] = []
    slots = [_slot(n, NumpyRunner(log=log, tag=n)) for n in "ABC"]
    result = time_interleaved(slots, PROTO)
    assert result.orders == [["A", "B", "C"], ["B", "C", "A"], ["C", "A", "B"]]
    for name in "ABC":
        assert result.samples[name].shape == (2, 3, 2)  # images x blocks x repeat
        assert (result.samples[name] > 0).all() and result.resident[name]
    calls = [c for c in log if len(c) == 1]
    # first untimed warm-up rounds, each configuration over its images once a round (the
    # first block's first configuration would otherwise run cold), until two rounds agree
    rounds = result.extra["warm_up"]["rounds"]
    assert rounds >= 2 and calls[: 6 * rounds] == list("AABBCC") * rounds
    calls = calls[6 * rounds:]
    # per block and configuration: warmup (1) + an untimed call per image (2) + 2 x 2 timed calls
    per_block = 1 + 2 + 4
    assert len(calls) == 3 * 3 * per_block
    runs = [calls[i * per_block] for i in range(9)]
    assert runs == list("ABC" "BCA" "CAB")  # no configuration's block runs into another's
    assert log[:3] == ["load A", "load B", "load C"] and log[-3:] == ["free A", "free B", "free C"]


class SettlingRunner(NumpyRunner):
    """Slow and unsteady for its first ``slow_calls`` calls (40 and 80 ms in turn), then a
    steady 10 ms: a machine right after heavy work."""

    def __init__(self, slow_calls: int) -> None:
        super().__init__()
        self.slow_calls = slow_calls

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        time.sleep((0.04 if self.calls % 2 == 0 else 0.08) if self.calls < self.slow_calls else 0.01)
        return super().infer_impl(x)


class Unsteady(NumpyRunner):
    """Every other call five times slower: no two warm-up rounds of one image agree."""

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        time.sleep(0.01 if self.calls % 2 else 0.002)
        return super().infer_impl(x)


def test_the_warm_up_goes_on_until_the_machine_is_steady(monkeypatch: pytest.MonkeyPatch) -> None:
    # one image a round: rounds 1-5 are the slow calls (40, 80, 40, 80, 40 ms, no two
    # neighbours agree), round 6 is the first fast one, round 7 agrees with it (later on a
    # loaded machine, whose sleeps overshoot)
    result = time_interleaved([_slot("A", SettlingRunner(slow_calls=5), images=1)], PROTO)
    assert result.extra["warm_up"]["rounds"] >= 7 and result.extra["warm_up"]["steady"] is True
    assert np.max(result.samples["A"]) < 35e6  # every timed sample came after the slow calls (ns)

    # a machine that never settles: the warm-up stops at its cap and the session times anyway
    monkeypatch.setattr(interleave, "SETTLE_MAX_S", 0.3)
    result = time_interleaved([_slot("B", Unsteady(), images=1)], PROTO)
    assert result.extra["warm_up"]["steady"] is False and result.samples["B"].shape == (1, 3, 2)


def test_the_session_waits_for_other_processes_to_quieten(monkeypatch: pytest.MonkeyPatch) -> None:
    # machine_state reads the real machine; here it reports other processes busy for its
    # first three readings (the session's "before" and two in the wait), as a board's
    # conversions wind down, then quiet
    readings = iter([1.5, 1.5, 1.5] + [0.0] * 100)
    monkeypatch.setattr(interleave, "machine_state",
                        lambda window_s=0.5: MachineState(load1=0.0, others_busy=next(readings), cpu_mhz=None))
    result = time_interleaved([_slot("A", NumpyRunner())], PROTO)
    assert result.before.others_busy == 1.5
    assert result.extra["warm_up"]["others_busy"] == 0.0  # it waited for the quiet reading
    assert result.after.others_busy == 0.0 and next(readings) == 0.0  # before, 2 busy + 1 quiet, after

    # never quiet: it waits at most SETTLE_MAX_S, then times anyway
    monkeypatch.setattr(interleave, "SETTLE_MAX_S", 0.2)
    monkeypatch.setattr(interleave, "machine_state",
                        lambda window_s=0.5: (time.sleep(0.05), MachineState(0.0, 1.5, None))[1])
    result = time_interleaved([_slot("A", NumpyRunner())], PROTO)
    assert result.extra["warm_up"]["others_busy"] == 1.5 and result.samples["A"].shape == (2, 3, 2)


def test_a_slower_configuration_measures_slower() -> None:
    result = time_interleaved([_slot("fast", NumpyRunner()), _slot("slow", NumpyRunner(sleep_s=0.005))], PROTO)
    assert np.median(result.samples["slow"]) > np.median(result.samples["fast"]) + 4e6  # ns


def test_past_the_memory_budget_the_rest_are_loaded_for_each_block() -> None:
    log: list[str] = []
    slots = [_slot("A", NumpyRunner(log=log, tag="A")), _slot("B", NumpyRunner(ballast=64, log=log, tag="B")),
             _slot("C", NumpyRunner(log=log, tag="C"))]
    result = Session(slots, PROTO, budget=32 << 20)
    for _ in result.run():
        pass
    assert result.result is not None
    assert result.result.resident == {"A": True, "B": False, "C": False}
    assert log.count("load A") == 1 and log.count("load B") == 1 + 3 and log.count("load C") == 3
    assert all(result.result.samples[n].shape == (2, 3, 2) for n in "ABC")


def test_a_configuration_that_fails_drops_out_and_the_others_are_timed() -> None:
    def broken() -> Runner:
        raise OSError("no such file: model.onnx")

    slots = [_slot("ok", NumpyRunner()), Slot("gone", broken, np.zeros((2, 3, 4, 4), np.float32)),
             _slot("dies", NumpyRunner(fail_after=9))]
    result = time_interleaved(slots, PROTO)
    assert set(result.samples) == {"ok"}
    assert result.errors["gone"].startswith("load: OSError: no such file")
    assert result.errors["dies"] == "execute: RuntimeError: device lost"


def test_machine_state_sees_another_busy_process() -> None:
    import multiprocessing as mp

    quiet = machine_state(0.3)
    assert isinstance(quiet, MachineState) and quiet.load1 >= 0 and quiet.others_busy >= 0
    stop = mp.Event()
    spinner = mp.Process(target=_spin, args=(stop,), daemon=True)
    spinner.start()
    try:
        time.sleep(0.3)
        busy = machine_state(0.5)
    finally:
        stop.set()
        spinner.join(5)
    assert busy.others_busy >= 0.6  # one core spinning in another process
    assert busy.others_busy >= quiet.others_busy - 0.5


def _spin(stop: Any) -> None:
    while not stop.is_set():
        pass


def test_a_session_needs_a_configuration() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Session([], PROTO)
