"""Interleaved timing: the one way deltann times configurations, on boards and in benches.

Why interleaved: a machine drifts between fast and slow states for minutes at a time (the
project's 2-core VMs slow both onnxruntime and TVM this way), so configurations timed
one after another minutes apart compare machine states, not code. A session times every
configuration of one model on one board in alternating blocks (A, B, C, A, B, C, ...;
the order rotates by one each block so no configuration always follows the same one),
so drift falls on all of them alike, and every time change is computed between
neighbours.

Before the first block the session settles: it waits (sleeping, half a second at a time)
until other processes keep less than :func:`quiet_cores` busy, then runs untimed warm-up
rounds, each loaded configuration over its images (at most :data:`WARM_UP_S` each),
until a round's time is within :data:`STEADY_TOL` of the round before — both within
:data:`SETTLE_MAX_S` in all, after which it times anyway (and says so in the log).
Without a warm-up round the first block's first configuration runs cold, slower than
in its later blocks; without the wait, a session that starts right after the builds and
conversions of its units times its first blocks while that work's processes wind down,
every configuration slower in its first blocks than in the rest (issue 13's notes have
the measurements).
Within a block, each configuration gets a settle pause (the previous runtime's thread
pool stops spinning: on 2 cores a spinning pool takes a core from the next runtime),
then ``warmup`` untimed calls, then every timed image under TVM's ``time_evaluator``
protocol (:func:`~deltann.core.runner.time_evaluator_protocol`: one untimed call, then
``repeat`` samples of ``number`` calls). The call timed is :meth:`Runner.prepare`'s, the
same for every runtime. Memory permitting every configuration stays loaded for the whole
session; past the budget the rest are loaded before each of their blocks and freed after
it (the load is never timed), and each row says which (``resident``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from deltann.core.runner import Runner, time_evaluator_protocol

log = logging.getLogger("deltann.runtimes")

#: Board setting (environment): MiB the runners of one session may hold loaded at once
#: (default: half of the memory available when the session starts).
MEMORY_ENV = "DELTANN_TIMING_MEMORY_MB"


@dataclass(frozen=True)
class Protocol:
    """How a session times: TVM's ``time_evaluator`` fields per image, plus the blocks."""

    warmup: int = 1
    number: int = 1
    repeat: int = 1
    min_repeat_ms: int = 0
    blocks: int = 20
    pause_ms: int = 100

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class MachineState:
    """How quiet the machine was: the 1-minute load average, the cores other processes kept
    busy over a short window (this process's own threads excluded), the mean CPU clock."""

    load1: float
    others_busy: float
    cpu_mhz: float | None


def machine_state(window_s: float = 0.5) -> MachineState:
    """Measure :class:`MachineState` over ``window_s`` seconds of this process sleeping."""
    import psutil

    me = psutil.Process()

    def busy() -> tuple[float, float, float]:
        t = psutil.cpu_times()
        own = me.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        return sum(t) - idle, own.user + own.system, time.monotonic()

    b0, s0, w0 = busy()
    time.sleep(window_s)
    b1, s1, w1 = busy()
    others = max(0.0, ((b1 - b0) - (s1 - s0)) / max(w1 - w0, 1e-6))
    try:
        freq = psutil.cpu_freq()
        mhz = float(freq.current) if freq and freq.current else None
    except (OSError, NotImplementedError, AttributeError):
        mhz = None
    return MachineState(load1=os.getloadavg()[0], others_busy=round(others, 3), cpu_mhz=mhz)


@dataclass
class Slot:
    """One configuration of a session: ``load`` returns its runner, activated; ``inputs``
    are the timed images (canonical NCHW float32, one per row)."""

    name: str
    load: Callable[[], Runner]
    inputs: np.ndarray
    runner: Runner | None = None
    resident: bool = True
    error: str = ""  # why it dropped out of the session ("" while it is timed)


@dataclass
class SessionResult:
    """``samples[name]``: int64 ns of shape (images, blocks, repeat); ``orders``: the slot
    names in each block's order; failed slots are in ``errors`` and not in ``samples``."""

    samples: dict[str, np.ndarray]
    orders: list[list[str]]
    resident: dict[str, bool]
    errors: dict[str, str]
    before: MachineState
    after: MachineState
    protocol: Protocol
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


#: Seconds one untimed warm-up round may give each configuration (Session._warm_up).
WARM_UP_S = 2.0
#: The warm-up is over when a round's time is within this fraction of the round before...
STEADY_TOL = 0.05
#: ... or when the settling (the wait for quiet and the rounds) has taken this many seconds.
SETTLE_MAX_S = 15.0


def quiet_cores(cores: int | None = None) -> float:
    """Cores other processes may keep busy while a session settles: a quarter of one core
    (well above what an idle Ray node's own processes use), more on a big machine."""
    return max(0.25, 0.05 * (cores or os.cpu_count() or 1))


def _dropped(stage: str, exc: BaseException) -> str:
    """Why a configuration dropped out of a session: the stage, the error type, its message
    on one line (at most 500 characters)."""
    return f"{stage}: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}"


def memory_budget() -> int:
    """Bytes a session's loaded runners may add (:data:`MEMORY_ENV`, else half of what is
    available now)."""
    value = os.environ.get(MEMORY_ENV, "")
    if value:
        try:
            return int(value) << 20
        except ValueError:
            raise ValueError(f"{MEMORY_ENV}={value!r}: expected a whole number of MiB") from None
    import psutil

    return psutil.virtual_memory().available // 2


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class Session:
    """Times ``slots`` in alternating blocks. Iterate :meth:`run` (it yields each block's
    index as it finishes, so a board can report progress), then read :attr:`result`."""

    def __init__(self, slots: list[Slot], protocol: Protocol, *, budget: int | None = None) -> None:
        if not slots:
            raise ValueError("a timing session needs at least one configuration")
        self.slots, self.protocol = slots, protocol
        self.budget = memory_budget() if budget is None else budget
        self.result: SessionResult | None = None
        self.warm_up: dict[str, Any] = {}

    def _load_all(self) -> None:
        """Activate every slot while the loaded set stays within the budget; the rest are
        loaded per block."""
        loaded = 0  # bytes the loaded slots added, each measured across its own load (the
        # process's other memory may shrink meanwhile: the kernel reclaims cold pages)
        for slot in self.slots:
            before = _rss()
            try:
                slot.runner = slot.load()
            except Exception as exc:  # noqa: BLE001 - a slot that cannot load drops out, the rest go on
                slot.error = _dropped("load", exc)
                continue
            loaded += max(0, _rss() - before)
            if loaded > self.budget:
                log.warning("timing: %s does not fit the session's memory budget (%d MiB); it and the "
                            "configurations after it are loaded for each block", slot.name, self.budget >> 20)
                slot.runner.deactivate()
                slot.runner, slot.resident = None, False
                for later in self.slots[self.slots.index(slot) + 1:]:
                    later.resident = False
                return

    def run(self) -> Iterator[int]:
        p = self.protocol
        start = time.perf_counter()
        before = machine_state()
        self._load_all()
        self._warm_up()
        names = [s.name for s in self.slots]
        n_images = {s.name: len(s.inputs) for s in self.slots}
        samples = {s.name: np.zeros((n_images[s.name], p.blocks, p.repeat), np.int64) for s in self.slots}
        orders: list[list[str]] = []
        for block in range(p.blocks):
            shift = block % len(self.slots)
            order = self.slots[shift:] + self.slots[:shift]
            orders.append([s.name for s in order])
            for slot in order:
                if slot.error:
                    continue
                try:
                    self._time_block(slot, block, samples[slot.name])
                except Exception as exc:  # noqa: BLE001 - a configuration failing mid-session drops out
                    slot.error = _dropped("execute", exc)
                    log.warning("timing: %s dropped out in block %d: %s", slot.name, block, slot.error)
            yield block
        for slot in self.slots:
            if slot.runner is not None:
                slot.runner.deactivate()
                slot.runner = None
        after = machine_state()
        self.result = SessionResult(
            samples={n: samples[n] for n in names if not self._slot(n).error},
            orders=orders,
            resident={s.name: s.resident for s in self.slots},
            errors={s.name: s.error for s in self.slots if s.error},
            before=before, after=after, protocol=p, seconds=time.perf_counter() - start,
            extra={"warm_up": self.warm_up},
        )

    def _warm_up(self) -> None:
        """Settle before block 0 (module docstring): wait for other processes to quieten,
        then untimed rounds until two agree. Each round runs every loaded configuration
        over the same images (as many as the first round fitted in :data:`WARM_UP_S` per
        configuration); a round's time is the sum over configurations of their median
        call. Sets :attr:`warm_up` (seconds waited, others' busy cores, rounds, seconds in
        all, whether the rounds ended steady)."""
        start = time.perf_counter()
        others = machine_state().others_busy
        while others > quiet_cores() and time.perf_counter() - start < SETTLE_MAX_S:
            others = machine_state().others_busy
        waited = time.perf_counter() - start
        counts: dict[str, int] = {}
        previous = math.inf
        rounds, steady = 0, False
        while True:
            total = sum(self._warm_up_round(slot, counts) for slot in self.slots
                        if slot.runner is not None and not slot.error)
            rounds += 1
            steady = math.isfinite(previous) and abs(total - previous) <= STEADY_TOL * previous
            if steady or total == 0.0 or time.perf_counter() - start > SETTLE_MAX_S:
                break
            previous = total
        self.warm_up = {"waited_s": round(waited, 2), "others_busy": others, "rounds": rounds,
                        "seconds": round(time.perf_counter() - start, 2), "steady": steady}
        if others > quiet_cores() or (not steady and total):
            log.info("timing: the machine did not settle in %.0f s (other processes kept %.2f cores busy; "
                     "%d warm-up rounds); timing anyway", SETTLE_MAX_S, others, rounds)

    def _warm_up_round(self, slot: Slot, counts: dict[str, int]) -> float:
        """One untimed warm-up round of a loaded ``slot``: its first ``counts[name]`` images
        (the first round: as many as fit in :data:`WARM_UP_S`, then recorded in ``counts``);
        returns its median call in seconds (0 when it failed and dropped out)."""
        assert slot.runner is not None
        end = time.perf_counter() + WARM_UP_S
        calls: list[float] = []
        try:
            for x in slot.inputs[: counts.get(slot.name, len(slot.inputs))]:
                call = slot.runner.prepare(x[None])
                t0 = time.perf_counter()
                call()
                calls.append(time.perf_counter() - t0)
                if slot.name not in counts and time.perf_counter() > end:
                    break
        except Exception as exc:  # noqa: BLE001 - the same failure as a block's: it drops out
            slot.error = _dropped("execute", exc)
            return 0.0
        counts.setdefault(slot.name, len(calls))
        return float(np.median(calls)) if calls else 0.0

    def _slot(self, name: str) -> Slot:
        return next(s for s in self.slots if s.name == name)

    def _time_block(self, slot: Slot, block: int, out: np.ndarray) -> None:
        p = self.protocol
        runner = slot.runner if slot.runner is not None else slot.load()
        try:
            time.sleep(p.pause_ms / 1000)  # the previous runtime's pool threads stop spinning
            for i, x in enumerate(slot.inputs):
                call = runner.prepare(x[None])
                out[i, block, :] = time_evaluator_protocol(
                    call, warmup=p.warmup if i == 0 else 0, number=p.number, repeat=p.repeat,
                    min_repeat_ms=p.min_repeat_ms)
        finally:
            if slot.runner is None:
                runner.deactivate()


def time_interleaved(slots: list[Slot], protocol: Protocol, *, budget: int | None = None) -> SessionResult:
    """Run a whole :class:`Session` and return its result (benches, tests)."""
    session = Session(slots, protocol, budget=budget)
    for _ in session.run():
        pass
    assert session.result is not None
    return session.result
