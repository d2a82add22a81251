"""Bring results folders together (``deltann merge SRC... --into DIR``, issue 15).

Labs share results by putting their folders together; copying them by hand replaced rows
without a word when two folders held the same file. Merging instead:

- copies every part with its checksum file, checked on the way (a part whose bytes differ
  from its checksum is not copied: its unit, session or tuning database is reported and
  left out whole, so the folder never holds half of one);
- keeps every row where it came from: rows name their lab, board, host and resolved
  target, and unit keys hold the lab and platform, so two labs' results of one study are
  different units side by side;
- never replaces anything: the same part already in DIR with the same content is skipped;
  with different content it is a *conflict* (the same unit key, different rows), reported
  in one line for its unit or session, and DIR's is kept;
- writes one manifest: every run of every source is recorded under ``DIR/runs/`` with the
  folder it came from (runs listed inside an older deltann's manifest included), and the
  merge itself is listed in ``manifest.json``.

Merging is idempotent: merging the same folders again copies nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltann import store_integrity as integrity
from deltann.errors import StoreError, refusing
from deltann.store import RUNS_DIR, Store, TABLES, _atomic_write_bytes, check_out_folder, printable

log = logging.getLogger("deltann.store")

#: What a part's group is called in messages, by table.
GROUP_NAME = {"predictions": "unit", "builds": "unit", "timings": "timing session", "sessions": "timing session",
              "tuning": "tuning database", "layers": "localization"}


@dataclass
class MergeResult:
    into: Path
    copied: int = 0  # parts copied
    rows: int = 0  # rows in them
    present: int = 0  # parts already in DIR with the same content
    runs: int = 0  # run records added
    conflicts: list[str] = field(default_factory=list)  # one line per unit/session
    bad: list[str] = field(default_factory=list)  # one line per unit/session left out for a bad part
    notes: list[str] = field(default_factory=list)  # what the merged folder cannot tell apart

    def summary(self) -> str:
        return (f"merged into {printable(self.into)}: {self.copied} parts copied ({self.rows} rows), {self.present} "
                f"already there, {self.runs} run records added, {len(self.conflicts)} conflicts, "
                f"{len(self.bad)} left out for bad parts")


def _same_content(a: Path, b: Path) -> bool:
    """Whether two parts hold the same rows (the same bytes, or rows equal value by value)."""
    if integrity.file_digest(a) == integrity.file_digest(b):
        return True
    import pyarrow.parquet as pq

    try:
        return pq.read_table(a).equals(pq.read_table(b))
    except Exception:  # noqa: BLE001 - an unreadable destination part: not the same
        return False


#: Where a group's description comes from: its owner table, key column and what it is of.
_OWNER = {"predictions": ("builds", "unit_key", "config"), "builds": ("builds", "unit_key", "config"),
          "timings": ("sessions", "session", "model"), "sessions": ("sessions", "session", "model")}


def _describe(store: Store, table: str, group: str) -> str:
    """``unit K (config on device@lab)`` from the group's readable rows, else its key."""
    import polars as pl

    what = GROUP_NAME.get(table, "part group")
    if table in _OWNER:
        owner, key, of = _OWNER[table]
        try:
            rows = store._scan_files(owner, store.files(owner)).filter(pl.col(key) == group)
            row = rows.select(of, "device", "lab").head(1).collect().to_dicts()
        except Exception:  # noqa: BLE001 - a description only
            row = []
        if row:
            return f"{what} {group[:16]} ({row[0][of]} on {row[0]['device']}@{row[0]['lab'] or '?'})"
    return f"{what} {group[:16]}"


def _copy_part(src: Path, dest: Path, sidecar: integrity.Sidecar | None, table: str, group: str) -> int:
    """Copy one part and its checksum atomically; returns its rows."""
    import pyarrow.parquet as pq

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = integrity.temp_beside(dest)
    try:
        shutil.copyfile(src, tmp)
        digest, size = integrity.file_digest(tmp)
        if sidecar is not None and (digest, size) != (sidecar.sha256, sidecar.bytes):
            raise StoreError(f"{printable(src)}: changed while it was copied; merge again")
        rows = sidecar.rows if sidecar is not None else pq.read_metadata(tmp).num_rows
        integrity.place(dest, tmp, sidecar or integrity.Sidecar(digest, size, rows, table, group))
        return rows
    finally:
        Path(tmp).unlink(missing_ok=True)


def merge(sources: list[Path | str], into: Path | str) -> MergeResult:
    """Merge ``sources`` into ``into`` (see the module docstring)."""
    into = Path(into)
    check_out_folder(into)
    dest_store = Store(into)
    dest_store.check_version()
    result = MergeResult(into)
    srcs = []
    for raw in sources:
        src = Path(raw)
        if not src.is_dir():
            raise StoreError(f"{printable(src)}: not a folder; give results folders written by 'deltann run'")
        if src.resolve() == into.resolve():
            continue  # merging a folder into itself: its rows are already there
        manifest = Store(src).read_manifest()  # refuses a newer schema, a missing or broken manifest
        srcs.append((src, manifest))
    if not srcs:
        raise StoreError("nothing to merge: give at least one results folder other than --into")
    with refusing(into, "merging"):
        _ensure_manifest(into, srcs[0][1])
        for src, manifest in srcs:
            _merge_parts(Store(src), dest_store, result)
            result.runs += _merge_runs(src, manifest, into)
        result.notes += same_name_labs(Store(into))
        _record_merge(into, srcs, result)
    return result


def _ensure_manifest(into: Path, first: dict[str, Any]) -> None:
    """DIR's manifest: its own if it has one, else one for the first source's study."""
    Store(into).ensure_manifest(first["study"])


def _merge_parts(src: Store, dest: Store, result: MergeResult) -> None:
    store_log = logging.getLogger("deltann.store")
    level = store_log.level
    store_log.setLevel(logging.ERROR)  # bad parts are reported by the merge, one line per unit
    try:
        checks = {t: src.checks(t) for t in TABLES}
        short = src.incomplete_units() | src.incomplete_sessions()
        short -= {c.group for cs in checks.values() for c in cs if c.bad}
    finally:
        store_log.setLevel(level)
    groups: dict[tuple[str, str], list[integrity.PartCheck]] = defaultdict(list)
    for table, cs in checks.items():
        family = "unit" if table in ("predictions", "builds") else "session" if table in ("timings", "sessions") \
            else table
        for c in cs:
            groups[(family, c.group or str(c.path))].append(c)
    for (family, group), cs in sorted(groups.items()):
        table = cs[0].table
        bad = [c for c in cs if c.bad]
        if bad or group in short:
            why = (f"{printable(bad[0].path.relative_to(src.root))} is {bad[0].state}" if bad
                   else src.shortfalls.get(group, "rows are missing"))
            result.bad.append(f"not merged: {_describe(src, table, group)} from {printable(src.root)}: {why}; "
                              "make it again there ('deltann run'), then merge again")
            continue
        plans = []
        differ = []
        for c in cs:
            dest_path = dest.root / c.path.relative_to(src.root)
            if dest_path.exists():
                if _same_content(c.path, dest_path):
                    result.present += 1
                    continue
                differ.append(c)
            plans.append((c, dest_path))
        if differ:
            tables = sorted({c.table for c in differ})
            result.conflicts.append(
                f"conflict: {_describe(src, table, group)}: {printable(src.root)} holds other rows than "
                f"{printable(dest.root)} under the same key ({', '.join(tables)}); kept {printable(dest.root)}'s")
            continue
        for c, dest_path in plans:
            try:
                sidecar = integrity.read_sidecar(c.path)
            except ValueError:
                sidecar = None
            result.rows += _copy_part(c.path, dest_path, sidecar, c.table, c.group)
            result.copied += 1


def _merge_runs(src: Path, manifest: dict[str, Any], into: Path) -> int:
    """Record every run of ``src`` under ``into/runs/`` with where it came from; returns
    how many were new."""
    added = 0
    origin = printable(src.resolve())
    for path in sorted((src / RUNS_DIR).glob("*.json")):
        dest = into / RUNS_DIR / path.name
        if dest.exists():
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("skipping run record %s: not readable JSON", path)
            continue
        record.setdefault("source", origin)
        _atomic_write_bytes(dest, json.dumps(record, indent=2, default=str).encode())
        added += 1
    # Runs an older deltann listed inside manifest.json itself.
    raw = json.loads((src / "manifest.json").read_text())
    for i, run in enumerate(raw.get("runs") or []):
        if not isinstance(run, dict):
            continue
        digest = hashlib.sha256(f"{origin}\n{raw.get('created')}\n{i}".encode()).hexdigest()[:12]
        stamp = "".join(c for c in str(run.get("started", ""))[:19] if c.isalnum())
        dest = into / RUNS_DIR / f"{stamp}-legacy-{digest}.json"
        if dest.exists():
            continue
        spec = (raw.get("studies") or {}).get(str(run.get("study"))) or raw.get("study")
        record = {"status": "finished", **run, "spec": spec, "source": origin,
                  "environment": run.get("environment") or raw.get("environment")}
        _atomic_write_bytes(dest, json.dumps(record, indent=2, default=str).encode())
        added += 1
    return added


def same_name_labs(store: Store) -> list[str]:
    """A line for each lab name that two machines use (unnamed labs on hosts of one name):
    their units never share a key, but the report cannot show them apart."""
    ids: dict[str, set[str]] = defaultdict(set)
    for run in store.run_records():
        if run.get("lab") and run.get("lab_id"):
            ids[str(run["lab"])].add(str(run["lab_id"]))
    return [f"note: {len(v)} different machines call their lab {name!r}; the report shows them as one lab: run "
            "again with 'deltann run --lab NAME' (or DELTANN_LAB) in one of them" for name, v in sorted(ids.items())
            if len(v) > 1]


def _record_merge(into: Path, srcs: list[tuple[Path, dict[str, Any]]], result: MergeResult) -> None:
    path = into / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.setdefault("merges", []).append({
        "at": dt.datetime.now(dt.UTC).isoformat(), "sources": [printable(s.resolve()) for s, _ in srcs],
        "parts_copied": result.copied, "rows_copied": result.rows, "already_there": result.present,
        "conflicts": result.conflicts, "left_out": result.bad,
    })
    _atomic_write_bytes(path, json.dumps(manifest, indent=2, default=str).encode())
