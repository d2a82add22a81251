"""``deltann verify DIR``: check every part of a results folder against the checksum
written with it, and every unit and timing session against the rows it wrote; print what
is corrupt, truncated, missing or unreadable, one line each, and exit 1 if anything is.

``deltann run`` makes again what this lists (in the lab that made it: a unit's key holds
its lab); ``report`` leaves it out with a warning."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

from deltann.store import TABLES, Store, printable


@dataclass
class Verified:
    root: Path
    parts: int = 0
    ok: int = 0
    unchecked: int = 0  # written before checksums existed: they decode, nothing more is known
    problems: list[str] = field(default_factory=list)  # one line each
    unfinished: list[str] = field(default_factory=list)  # runs started and never finished (killed?)

    @property
    def bad(self) -> bool:
        return bool(self.problems)

    def summary(self) -> str:
        return (f"{printable(self.root)}: {self.parts} parts, {self.ok} intact, {self.unchecked} without a checksum "
                f"(written by an older deltann), {len(self.problems)} problems")


def verify(results: Path | str) -> Verified:
    """Check the folder (see the module docstring); a manifest from a newer deltann is
    refused (:class:`~deltann.errors.StoreError`)."""
    store = Store(results)
    result = Verified(store.root)
    store_log = logging.getLogger("deltann.store")
    level = store_log.level
    store_log.setLevel(logging.ERROR)  # the problems are this command's output, not warnings
    try:
        try:
            manifest = store.read_manifest()
        except Exception as exc:  # noqa: BLE001 - a StoreError names it; newer schema: refused below
            if "newer than this deltann" in str(exc):
                raise
            result.problems.append(f"manifest  {exc}")
            manifest = {"runs": store.run_records()}
        for table in TABLES:
            for check in store.checks(table):
                result.parts += check.state != "missing"
                if check.bad:
                    rel = check.path.relative_to(store.root) if check.path.is_relative_to(store.root) else check.path
                    result.problems.append(f"{check.state:<10} {printable(rel)}: {check.reason}")
                elif check.state == "ok":
                    result.ok += 1
                else:
                    result.unchecked += 1
                    if check.reason:  # its checksum file is damaged
                        rel = check.path.relative_to(store.root)
                        result.problems.append(f"{'checksum':<10} {printable(rel)}: {check.reason}")
        store.incomplete_units()
        store.incomplete_sessions()
        result.problems += [f"incomplete {line}" for line in store.shortfalls.values()]
    finally:
        store_log.setLevel(level)
    for run in manifest.get("runs", []):
        if run.get("status") == "started":
            result.unfinished.append(f"run {run.get('run', '?')} of study {run.get('study')!r} (lab "
                                     f"{run.get('lab', '?')}, started {run.get('started')}) never finished: killed?")
    return result


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check every part of a results folder against its checksum; exit 1 if any "
                       "is corrupt, truncated or missing")
    p.add_argument("results", help="results folder")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    result = verify(args.results)
    for line in result.problems:
        print(line)
    for line in result.unfinished:
        print(f"note       {line}")
    print(result.summary())
    if result.bad:
        print("run 'deltann run STUDY --out DIR' (in the lab that made them) to make the bad units and sessions "
              "again; 'deltann report' leaves them out meanwhile")
    return 1 if result.bad else 0
