"""Integrity of a results folder's parts (issue 15): a checksum per part, written with it,
and the checks that readers, ``deltann run`` and ``deltann verify`` make against it.

Why a checksum file per part (``part-….parquet.sum``, JSON: SHA-256, bytes, rows, table,
and the unit, session or tuning key the part belongs to) rather than one list for the
folder: concurrent runs into one folder each write their own parts, so no two writers
ever update the same checksum file. Why a checksum at all: a Parquet footer can be intact
while a data page is not, and a flipped bit in a page of logits still decodes, to a wrong
number (issue 15: one flipped bit made a large logit difference out of a tiny one).

A part and its checksum file change together under an exclusive lock of their folder
(``.lock``, ``fcntl.flock``); a reader checks a part under the shared lock, so it never
sees a new part beside the old checksum. Parts written before checksums existed (schema
1-2) have none: they are *unchecked*, and are read back in full once to be sure they decode.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("deltann.store")

#: Suffix of a part's checksum file.
SUM_SUFFIX = ".sum"
#: Lock file of a partition folder (writers: exclusive, readers: shared).
LOCK_NAME = ".lock"
#: ``part-<key>-<seq>.parquet``: the key a part was routed by (a unit, a session, a round).
PART_NAME = re.compile(r"^part-(?P<key>.+)-(?P<seq>\d{4})\.parquet$")

#: States a part can be in. ``ok``: its bytes are the ones written; ``unchecked``: no
#: checksum (an older deltann wrote it) but it decodes; the rest are bad.
OK, UNCHECKED = "ok", "unchecked"
CORRUPT, TRUNCATED, MISSING, UNREADABLE = "corrupt", "truncated", "missing", "unreadable"
BAD = (CORRUPT, TRUNCATED, MISSING, UNREADABLE)


@dataclass(frozen=True)
class Sidecar:
    """What was written: the part's SHA-256 and size, its rows, its table, and the key of
    what it belongs to (``group``: unit key, session key or tuning key)."""

    sha256: str
    bytes: int
    rows: int
    table: str
    group: str


@dataclass(frozen=True)
class PartCheck:
    """The state of one part (or of a checksum file whose part is gone)."""

    path: Path
    table: str
    state: str
    reason: str = ""
    group: str = ""

    @property
    def bad(self) -> bool:
        return self.state in BAD


def sidecar_path(part: Path) -> Path:
    return part.with_name(part.name + SUM_SUFFIX)


def part_of(sidecar: Path) -> Path:
    return sidecar.with_name(sidecar.name[: -len(SUM_SUFFIX)])


def file_digest(path: Path | str) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file, read in chunks."""
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256")
        return digest.hexdigest(), fh.tell()


def read_sidecar(part: Path) -> Sidecar | None:
    """The part's checksum record; None when it has none. Raises ``ValueError`` when the
    checksum file exists but is not one."""
    path = sidecar_path(part)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        return Sidecar(sha256=str(data["sha256"]), bytes=int(data["bytes"]), rows=int(data["rows"]),
                       table=str(data["table"]), group=str(data["group"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"checksum file {path.name} is not readable ({type(exc).__name__})") from None


def sidecar_bytes(sidecar: Sidecar) -> bytes:
    return (json.dumps(asdict(sidecar), sort_keys=True) + "\n").encode()


@contextlib.contextmanager
def folder_lock(folder: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold the folder's lock. Readers of a folder they may not write (a read-only copy)
    go without it when the lock file does not exist; a file system without ``flock`` (some
    network mounts) goes without it too."""
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644) if exclusive else os.open(path, os.O_RDONLY)
    except OSError:
        if exclusive and not folder.is_dir():
            raise
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        yield
    finally:
        os.close(fd)


def temp_beside(path: Path) -> str:
    """A temporary file in ``path``'s folder (same file system: the rename is atomic)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return tmp


def place(part: Path, part_tmp: str, sidecar: Sidecar) -> None:
    """Move a fully written part into place with its checksum file, together (under the
    folder's lock). Both files are complete before either is renamed, so a full disk or a
    kill leaves the old pair or the new pair, never a part beside another's checksum."""
    side_tmp = temp_beside(sidecar_path(part))
    try:
        with open(side_tmp, "wb") as fh:
            fh.write(sidecar_bytes(sidecar))
        with folder_lock(part.parent, exclusive=True):
            os.replace(part_tmp, part)
            os.replace(side_tmp, sidecar_path(part))
    except BaseException:
        Path(side_tmp).unlink(missing_ok=True)
        raise


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def structural_problem(path: Path, want: pa.Schema | None, *, full: bool) -> str:
    """Why ``path`` is not a readable Parquet file of the schema ``want`` ("" if it is).
    With ``full`` every page is decoded as the analysis will (Polars), so a corrupt page in
    a part without a checksum is found here, not as a traceback in the middle of a report."""
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable footer: ArrowInvalid, OSError, ...
        return f"not a readable Parquet file ({type(exc).__name__}: {_one_line(exc)})"
    if want is not None:
        for f in schema:
            if f.name in want.names and not f.type.equals(want.field(f.name).type):
                return f"column {f.name!r} is {f.type}, expected {want.field(f.name).type}"
    if full:
        import polars as pl

        try:
            pl.read_parquet(path, hive_partitioning=False)
        except BaseException as exc:  # noqa: BLE001 - Polars raises Rust panics as BaseException
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return f"its pages do not decode ({type(exc).__name__}: {_one_line(exc)})"
    return ""


def check_part(path: Path, table: str, want: pa.Schema | None, *, lock: bool = True) -> PartCheck:
    """Check one part against its checksum file (or, without one, that it decodes), under
    the folder's shared lock (``lock=False``: the caller holds the folder's lock)."""
    m = PART_NAME.match(path.name)
    group = m.group("key") if m else ""
    with folder_lock(path.parent, exclusive=False) if lock else contextlib.nullcontext():
        note = ""
        try:
            sidecar = read_sidecar(path)
        except ValueError as exc:
            sidecar = None
            note = f"{exc}: the part decodes, but whether its bytes are the ones written is unknown"
            log.warning("%s: %s; checking the part without it", path, exc)
        if sidecar is not None:
            group = sidecar.group
        try:
            st = path.stat()
        except FileNotFoundError:
            return PartCheck(path, table, MISSING, "missing (its checksum file is there, the part is not)", group)
        if not path.is_file():
            return PartCheck(path, table, UNREADABLE, "not a regular file", group)
        if sidecar is not None:
            if st.st_size < sidecar.bytes:
                return PartCheck(path, table, TRUNCATED, f"truncated ({st.st_size} of the {sidecar.bytes} bytes "
                                 "written)", group)
            digest, size = file_digest(path)
            if size != sidecar.bytes or digest != sidecar.sha256:
                return PartCheck(path, table, CORRUPT, "corrupt (its bytes differ from the checksum recorded when "
                                 f"it was written: sha256 {digest[:12]}…, recorded {sidecar.sha256[:12]}…)", group)
    problem = structural_problem(path, want, full=sidecar is None)
    if problem:
        return PartCheck(path, table, UNREADABLE, problem, group)
    return PartCheck(path, table, OK if sidecar is not None else UNCHECKED, note, group)


def orphan_sidecars(folder: Path) -> list[Path]:
    """Checksum files under ``folder`` whose part is gone (a part deleted by hand)."""
    return sorted(s for s in folder.glob(f"model=*/device=*/part-*.parquet{SUM_SUFFIX}") if not part_of(s).exists())


def missing_check(sidecar: Path, table: str) -> PartCheck:
    try:
        record = read_sidecar(part_of(sidecar))
    except ValueError:
        record = None
    m = PART_NAME.match(part_of(sidecar).name)
    group = record.group if record is not None else (m.group("key") if m else "")
    return PartCheck(part_of(sidecar), table, MISSING, "missing (its checksum file is there, the part is not)", group)
