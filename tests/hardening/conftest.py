"""The hardening tally (issue 8): every hostile case reports to one session-wide counter,
and the run ends with one line::

    hardening: 412 cases tried (study 250, images 14, ...), 398 refused cleanly,
    14 accepted as valid, rows lost 0, rows replaced 0, wrong values reported 0, tracebacks 0

A case is *refused cleanly* when deltann turned the bad input into a one-line message or a
failure row naming it; *accepted as valid* when the input was fine after all (a fuzzed
study that happens to be valid, a CMYK photo converted to RGB). Each case also asserts its
own ``rows_lost == 0`` and ``tracebacks == 0``, so a regression fails the test that found it,
not only the summary.

Two more counts (issue 15, results shared between labs): *rows replaced* — rows of one
folder (one lab's) that a merge, a copy or a concurrent run left changed in the folder they
went to; *wrong values reported* — numbers a report or analysis showed that differ from
the ones computed before a part was damaged (a bad part must make a number absent, never
different)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class Case:
    area: str
    what: str
    outcome: str = ""  # "refused" | "accepted"
    rows_lost: int = 0
    rows_replaced: int = 0
    wrong_values: int = 0
    tracebacks: int = 0

    def refused(self, message: str = "") -> None:
        """deltann turned the bad input into a clean message or failure row."""
        assert "Traceback" not in message, f"{self.what}: traceback in the message: {message[:500]}"
        self.outcome = "refused"

    def accepted(self) -> None:
        """The input was valid (or convertible) and was used."""
        self.outcome = "accepted"


@dataclass
class Tally:
    tried: int = 0
    refused: int = 0
    accepted: int = 0
    rows_lost: int = 0
    rows_replaced: int = 0
    wrong_values: int = 0
    tracebacks: int = 0
    areas: Counter = field(default_factory=Counter)

    @contextmanager
    def case(self, area: str, what: str) -> Iterator[Case]:
        """One hostile case. An exception other than a failed assertion escaping the block
        is a traceback the user would have seen: counted, then re-raised."""
        c = Case(area, what)
        try:
            yield c
        except AssertionError:
            self._add(c)
            raise
        except Exception:
            c.tracebacks += 1
            self._add(c)
            raise
        self._add(c)
        assert c.outcome, f"{area}/{what}: the case never said whether it was refused or accepted"
        assert c.rows_lost == 0, f"{area}/{what}: {c.rows_lost} rows lost"
        assert c.rows_replaced == 0, f"{area}/{what}: {c.rows_replaced} rows replaced"
        assert c.wrong_values == 0, f"{area}/{what}: {c.wrong_values} wrong values reported"
        assert c.tracebacks == 0, f"{area}/{what}: {c.tracebacks} tracebacks"

    def _add(self, c: Case) -> None:
        self.tried += 1
        self.areas[c.area] += 1
        self.refused += c.outcome == "refused"
        self.accepted += c.outcome == "accepted"
        self.rows_lost += c.rows_lost
        self.rows_replaced += c.rows_replaced
        self.wrong_values += c.wrong_values
        self.tracebacks += c.tracebacks

    def line(self) -> str:
        areas = ", ".join(f"{a} {n}" for a, n in sorted(self.areas.items()))
        return (f"hardening: {self.tried} cases tried ({areas}), {self.refused} refused cleanly, "
                f"{self.accepted} accepted as valid, rows lost {self.rows_lost}, rows replaced {self.rows_replaced}, "
                f"wrong values reported {self.wrong_values}, tracebacks {self.tracebacks}")


class Parts:
    """What a results folder holds, part by part, to count rows lost or replaced."""

    @staticmethod
    def snapshot(root: Path) -> dict[str, tuple[str, int]]:
        """Every readable part under ``table=*``: relative path -> (sha256, rows)."""
        import pyarrow.parquet as pq

        out = {}
        for path in root.glob("table=*/model=*/device=*/part-*.parquet"):
            try:
                rows = pq.read_metadata(path).num_rows
            except Exception:  # noqa: BLE001 - a broken part holds no readable rows
                continue
            out[str(path.relative_to(root))] = (hashlib.sha256(path.read_bytes()).hexdigest(), rows)
        return out

    @staticmethod
    def changed(before: dict[str, tuple[str, int]], root: Path) -> tuple[int, int]:
        """Rows of ``before``'s parts that ``root`` holds changed (replaced) or not at all
        (lost)."""
        now = Parts.snapshot(root)
        replaced = sum(rows for rel, (digest, rows) in before.items() if rel in now and now[rel][0] != digest)
        lost = sum(rows for rel, (_, rows) in before.items() if rel not in now)
        return replaced, lost


@pytest.fixture
def parts() -> type[Parts]:
    """:class:`Parts`: snapshots of a folder's parts and the rows changed since."""
    return Parts


TALLY = pytest.StashKey[Tally]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[TALLY] = Tally()


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Tally:
    """The session's hardening tally; use ``with tally.case(area, what) as c:``."""
    return request.config.stash[TALLY]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    t = config.stash.get(TALLY, None)
    if t is not None and t.tried:
        terminalreporter.write_line(t.line())
