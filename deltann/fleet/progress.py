"""What a running study shows: one line for the study (units done, images per second,
failed units so far, time left) and one per board (its images per second and the time
its pool of boards needs for what is left).

Why images and not only units: a 50,000-image study has few, long units (configurations
x shards); a unit count moves too rarely to say whether the study is healthy, while
prediction rows arrive every :data:`~deltann.fleet.execute.PREDICTION_CHUNK` images."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Seconds of recent rows an images/s figure is measured over (older rows are forgotten,
#: so a board that slowed down shows it).
WINDOW_S = 60.0


@dataclass
class Rate:
    """Images per second over the last :data:`WINDOW_S` seconds."""

    seen: deque[tuple[float, int]] = field(default_factory=deque)  # (time, images so far)
    total: int = 0

    def add(self, n: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if not self.seen:
            self.seen.append((now, 0))
        self.total += n
        self.seen.append((now, self.total))
        while len(self.seen) > 2 and now - self.seen[1][0] > WINDOW_S:
            self.seen.popleft()

    def per_s(self, now: float | None = None) -> float:
        if len(self.seen) < 2:
            return 0.0
        now = time.monotonic() if now is None else now
        t0, n0 = self.seen[0]
        return (self.total - n0) / max(1e-6, now - t0)


def clock(seconds: float | None) -> str:
    """``1:02:03``, ``4:05``, or ``?`` when not known yet."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Display:
    """The study's progress lines (a ``rich.progress.Progress``), fed by the driver:
    :meth:`rows` as prediction tables arrive, :meth:`unit` as units complete.
    ``left(pool)`` says how many images the units not yet complete in a pool still have."""

    def __init__(self, bar: Any, name: str, units: int, left: Callable[[str], int]) -> None:
        self.bar, self.name, self.left = bar, name, left
        self.task = bar.add_task(name, total=units, info="")
        self.failed = 0
        self.rate = Rate()
        self.boards: dict[str, tuple[Any, str, Rate]] = {}  # node id -> (task, pool, rate)

    def _board(self, node: str, pool: str, label: str) -> tuple[Any, str, Rate]:
        if node not in self.boards:
            task = self.bar.add_task(f"  board {node[:8]} ({label})", total=None, info="")
            self.boards[node] = (task, pool, Rate())
        return self.boards[node]

    def rows(self, node: str, pool: str, label: str, n: int) -> None:
        """``n`` prediction rows arrived from board ``node`` (of ``pool``)."""
        _, _, rate = self._board(node, pool, label)
        rate.add(n)
        self.rate.add(n)
        self.refresh()

    def unit(self, row: dict[str, Any], node: str = "", pool: str = "", label: str = "") -> None:
        """A unit completed (its ``builds`` row)."""
        if row.get("status") != "ok":
            self.failed += 1
        if node:
            task, _, _ = self._board(node, pool, label)
            self.bar.update(task, advance=1)
        self.bar.update(self.task, advance=1, description=f"{self.name}: {row.get('config', '')}")
        self.refresh()

    def refresh(self) -> None:
        now = time.monotonic()
        pools: dict[str, float] = {}
        for _, pool, rate in self.boards.values():
            pools[pool] = pools.get(pool, 0.0) + rate.per_s(now)
        eta_all = 0.0
        for pool, per_s in pools.items():
            eta = self.left(pool) / per_s if per_s > 0 else None
            eta_all = max(eta_all, eta if eta is not None else float("inf"))
        for task, pool, rate in self.boards.values():
            per_s = rate.per_s(now)
            eta = self.left(pool) / pools[pool] if pools[pool] > 0 else None
            self.bar.update(task, info=f"{per_s:7.1f} img/s  ETA {clock(eta)}  ({rate.total} images)")
        self.bar.update(self.task, info=f"{self.rate.per_s(now):7.1f} img/s  {self.failed} failed  "
                                        f"ETA {clock(eta_all if pools else None)}")
