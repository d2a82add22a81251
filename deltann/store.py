"""The results store: a hive-partitioned Parquet dataset plus a manifest.

Layout (the unit people share: copy the folder)::

    DIR/manifest.json                         study, schema version (created once)
    DIR/runs/<started>-<run id>.json          one file per run: started, then finished
    DIR/table=predictions/model=<m>/device=<d>/part-<unit key>-<seq>.parquet
    DIR/table=predictions/model=<m>/device=<d>/part-<unit key>-<seq>.parquet.sum
    DIR/table=timings/...  table=builds/...  table=sessions/...  table=tuning/...

Every file is written to a temporary name and renamed into place, so a reader never sees
half a file. File names are deterministic per (unit, table, sequence), so a unit rerun
after a crash replaces its own partial files instead of duplicating rows. A unit is
complete once its ``builds`` row exists; readers keep only complete units' rows.

Shared folders (issue 8): a part that is not a readable Parquet file of the table's
schema (truncated in a copy, a stray file) is skipped with a warning naming it; a
manifest from a newer deltann is refused before anything is read or written; and a run
never replaces a part of a unit that another run completed.

Integrity (issue 15, :mod:`deltann.store_integrity`): each part has a checksum file
written with it. A part whose bytes do not match (a flipped bit, a truncated copy), or
whose checksum file remains while the part is gone, is *bad*: its unit (or timing session,
or tuning database) is treated as missing — its other rows are hidden too, so no table
shows a number computed from part of it — and the next ``deltann run`` makes it again. A
unit whose ``builds`` row counts more prediction rows than the store holds is missing too
(a part deleted together with its checksum file). Runs are recorded one file each under
``runs/``, written when the run starts and again when it ends, so concurrent runs never
race on one manifest and a killed run stays on record as started and unfinished.

One file because the layout, the schemas, atomic writes, checked reads and the run
records are one on-disk format that must change as one (the checksum helpers it shares
with merge live in store_integrity.py).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import shutil
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from deltann import SCHEMA_VERSION, __version__, store_integrity as integrity
from deltann.core import runtime_registry as registry
from deltann.errors import StoreError, refusing, storage_error

log = logging.getLogger("deltann.store")

PARTITIONS = ("model", "device")
#: Tables whose parts belong to one unit of a run (``layers`` parts belong to a localize pair).
UNIT_TABLES = ("predictions", "timings", "builds")

#: Columns every table carries: which unit, which configuration, which board.
UNIT_FIELDS = [
    pa.field("unit_key", pa.string()),
    pa.field("study", pa.string()),
    pa.field("model", pa.string()),
    pa.field("variant", pa.string()),
    # "none", or the quantize modes the variant's hops applied ("dynamic-range", "float16"):
    # a quantised variant is marked in every table.
    pa.field("quantize", pa.string()),
    pa.field("runtime", pa.string()),
    pa.field("setting", pa.string()),
    pa.field("config", pa.string()),
    pa.field("device", pa.string()),
    pa.field("board", pa.string()),
    pa.field("hostname", pa.string()),
    # Identity (issue 15): the lab that ran the study, the board's CPU, and the TVM target as
    # the board resolved it (JSON; "" for a framework's own runtime). Results from two labs
    # sit side by side because these differ, and so do their unit keys.
    pa.field("lab", pa.string()),
    pa.field("cpu", pa.string()),
    pa.field("target", pa.string()),
]

SCHEMAS: dict[str, pa.Schema] = {
    "predictions": pa.schema(
        UNIT_FIELDS
        + [
            pa.field("image_index", pa.int32()),
            pa.field("image_id", pa.string()),
            pa.field("input_hash", pa.string()),
            pa.field("label", pa.int32()),
            pa.field("top1", pa.int32()),
            pa.field("top5", pa.list_(pa.int32())),
            pa.field("top5_prob", pa.list_(pa.float32())),
            pa.field("logits", pa.list_(pa.float32())),
            pa.field("latency_ns", pa.int64()),
        ]
    ),
    # One row per (unit, timed image, timing session): the raw samples of that image in
    # every block of the session (deltann.fleet.session). Configurations are compared only
    # within one session: same board, same blocks.
    "timings": pa.schema(
        UNIT_FIELDS
        + [
            pa.field("session", pa.string()),
            pa.field("image_id", pa.string()),
            pa.field("image_index", pa.int32()),
            pa.field("warmup", pa.int32()),
            pa.field("number", pa.int32()),
            pa.field("repeat", pa.int32()),
            pa.field("min_repeat_ms", pa.int32()),
            pa.field("blocks", pa.int32()),
            pa.field("pause_ms", pa.int32()),
            pa.field("threads", pa.int32()),
            pa.field("resident", pa.bool_()),  # kept loaded for the session (else loaded per block)
            pa.field("order", pa.string()),  # the session's configurations, " | "-joined, block 0's order
            pa.field("positions", pa.list_(pa.int32())),  # this configuration's place in each block
            pa.field("samples_ns", pa.list_(pa.int64())),
            pa.field("sample_block", pa.list_(pa.int32())),  # the block of each sample
            pa.field("median_ns", pa.int64()),
        ]
    ),
    "builds": pa.schema(
        UNIT_FIELDS
        + [
            pa.field("status", pa.string()),  # ok | failed
            pa.field("stage", pa.string()),  # "" | a deltann.fleet.failure.Stage (convert, build, ...)
            pa.field("outcome", pa.string()),  # ok | a deltann.fleet.failure.Outcome (exception, oom, ...)
            pa.field("error_type", pa.string()),
            pa.field("message", pa.string()),
            pa.field("frontend", pa.string()),
            pa.field("passes", pa.list_(pa.string())),
            pa.field("hops", pa.string()),  # JSON list of {src, dst, tool, version, quantize, seconds}
            pa.field("layout", pa.string()),  # the artifact's input layout (NCHW | NHWC), "" if never made
            pa.field("convert_s", pa.float64()),
            pa.field("import_s", pa.float64()),
            pa.field("compile_s", pa.float64()),
            pa.field("load_s", pa.float64()),
            # TVM builds: kernels without a real schedule for the target (CPU: no vectorised
            # loop; compile.schedules.kernels_without_schedule); null for native runtimes
            pa.field("unscheduled", pa.int32()),
            pa.field("total_s", pa.float64()),
            pa.field("rows", pa.int64()),  # prediction rows the unit wrote (a part gone is a unit incomplete)
            pa.field("finished_at", pa.timestamp("us", tz="UTC")),
            # the container image the unit ran in, "name@id" (null: not in a container)
            pa.field("image", pa.string()),
        ]
    ),
    # Fault localization (deltann localize): one row per layer of an aligned pair of
    # configurations; unit fields are side A's (the reference), so rows join its build.
    "layers": pa.schema(
        UNIT_FIELDS
        + [
            pa.field("pair", pa.string()),  # "<config A>@<device A> | <config B>@<device B>"
            pa.field("config_b", pa.string()),
            pa.field("device_b", pa.string()),
            pa.field("unit_key_b", pa.string()),
            pa.field("image_ids", pa.list_(pa.string())),
            pa.field("order", pa.int32()),
            pa.field("layer_a", pa.string()),
            pa.field("layer_b", pa.string()),
            pa.field("op_a", pa.string()),
            pa.field("op_b", pa.string()),
            pa.field("shape_a", pa.list_(pa.int64())),
            pa.field("shape_b", pa.list_(pa.int64())),
            pa.field("matched", pa.bool_()),
            pa.field("reason", pa.string()),  # why a layer has no partner ("" when matched)
            pa.field("permuted", pa.bool_()),  # compared after an NHWC/NCHW permutation
            pa.field("quantized_b", pa.bool_()),
            pa.field("max_abs", pa.float64()),
            pa.field("mean_abs", pa.float64()),
            pa.field("std_diff", pa.float64()),
            pa.field("rel_err", pa.float64()),
            pa.field("cosine", pa.float64()),
            pa.field("param_max_abs", pa.float64()),
            pa.field("within_tol", pa.bool_()),
            pa.field("first_divergent", pa.bool_()),
            pa.field("atol", pa.float64()),
            pa.field("rtol", pa.float64()),
            pa.field("alignment_rate", pa.float64()),
        ]
    ),
    # One row per timing session (deltann.fleet.session): what was timed together, where,
    # under which protocol, how quiet the machine was before and after, and how it ended.
    "sessions": pa.schema([
        pa.field("session", pa.string()),
        pa.field("study", pa.string()),
        pa.field("model", pa.string()),
        pa.field("device", pa.string()),
        pa.field("board", pa.string()),
        pa.field("hostname", pa.string()),
        pa.field("lab", pa.string()),
        pa.field("cpu", pa.string()),
        pa.field("status", pa.string()),  # ok | failed
        pa.field("outcome", pa.string()),  # ok | exception | crash | timeout (deltann.fleet.failure.Outcome)
        pa.field("error_type", pa.string()),
        pa.field("message", pa.string()),
        pa.field("unit_keys", pa.list_(pa.string())),
        pa.field("configs", pa.list_(pa.string())),
        pa.field("dropped", pa.string()),  # JSON {config: why} of configurations that dropped out
        pa.field("warmup", pa.int32()),
        pa.field("number", pa.int32()),
        pa.field("repeat", pa.int32()),
        pa.field("min_repeat_ms", pa.int32()),
        pa.field("blocks", pa.int32()),
        pa.field("pause_ms", pa.int32()),
        pa.field("images", pa.int32()),  # how many images were timed
        pa.field("cores", pa.int32()),
        pa.field("load_before", pa.float64()),  # 1-minute load average
        pa.field("load_after", pa.float64()),
        pa.field("others_before", pa.float64()),  # cores other processes kept busy
        pa.field("others_after", pa.float64()),
        pa.field("mhz_before", pa.float64()),
        pa.field("mhz_after", pa.float64()),
        pa.field("seconds", pa.float64()),
        pa.field("rows", pa.int64()),  # timings rows the session wrote
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    ]),
    # MetaSchedule's tuning database of the ``tuned`` setting (deltann.fleet.tuning_driver): one row
    # per record, MetaSchedule's own JSON. Partitioned like the others (model, device kind);
    # ``tuning_key`` (variant identity + resolved target) says which builds may use it.
    "tuning": pa.schema([
        pa.field("tuning_key", pa.string()),
        pa.field("study", pa.string()),
        pa.field("model", pa.string()),
        pa.field("variant", pa.string()),
        pa.field("device", pa.string()),
        pa.field("target", pa.string()),  # JSON of the target as the board resolved it
        pa.field("board", pa.string()),  # node that tuned the task
        pa.field("hostname", pa.string()),
        pa.field("lab", pa.string()),
        pa.field("round", pa.string()),  # one tuning call of one board
        pa.field("trials_total", pa.int64()),  # the study budget this round completed (resumes compare to it)
        # the time budget (s of board time, all boards) this round completed; null: a trial budget
        pa.field("budget_s", pa.float64()),
        pa.field("task", pa.string()),
        pa.field("workload_hash", pa.string()),
        pa.field("workload_json", pa.string()),  # Workload.as_json()
        pa.field("record_json", pa.string()),  # TuningRecord.as_json()
        pa.field("run_ms", pa.float64()),
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    ]),
}


TABLES = tuple(SCHEMAS)
#: Tables whose parts are grouped by timing session (a bad part: the session is missing).
SESSION_TABLES = ("timings", "sessions")
#: Folder of run records, one JSON file per run.
RUNS_DIR = "runs"
#: Where ``deltann run`` moves the bad parts of what it made again (kept for inspection).
QUARANTINE_DIR = "quarantine"
#: Names a results folder may hold besides its tables (see :func:`is_results_folder`).
STORE_ENTRIES = ("manifest.json", RUNS_DIR, "artifacts", "report", QUARANTINE_DIR)


def tag(table: pa.Table, name: str, unit_key: str, seq: int) -> pa.Table:
    """Attach the routing metadata the store needs to a batch an actor produced."""
    meta = {b"deltann.table": name.encode(), b"deltann.unit": unit_key.encode(), b"deltann.seq": str(seq).encode()}
    return table.replace_schema_metadata(meta)


def _safe(value: str) -> str:
    """Partition values become folder names: keep them to a safe alphabet."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in value) or "_"


def printable(path: Path | str) -> str:
    """A path as text whatever bytes its name holds (a name that is not UTF-8 shows its
    bytes as ``\\xe9``): safe to print, to put in a message and to store as JSON."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def environment() -> dict[str, Any]:
    """Machine facts recorded once per run (asv's machine.json)."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib import metadata

    packages = {}
    # every runtime's and framework's distribution, then the tools and libraries around them
    declared = [d for r in registry.runners().values() for d in (r.framework_dist, r.dist) if d]
    for dist in dict.fromkeys([*declared, "torchvision", "apache-tvm-ffi", "tf2onnx", "ray", "pyarrow", "polars",
                               "numpy"]):
        try:
            packages[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "packages": packages,
    }


def _atomic_write_bytes(path: Path, data: bytes, *, exclusive: bool = False) -> bool:
    """Write ``path`` atomically. With ``exclusive`` the file is created only if absent
    (returns False, writing nothing, when another process got there first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if exclusive:
            try:
                os.link(tmp, path)  # atomic create-if-absent
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links
                if path.exists():
                    return False
                os.replace(tmp, path)
            return True
        os.replace(tmp, path)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def is_results_folder(folder: Path) -> bool:
    """Whether ``folder`` holds deltann results (a manifest, run records or tables), or
    nothing but what deltann puts in one (a run killed before its first row)."""
    if (folder / "manifest.json").exists() or (folder / RUNS_DIR).is_dir() or any(folder.glob("table=*")):
        return True
    return all(p.name in STORE_ENTRIES for p in folder.iterdir())


class Store:
    """A results folder.

    ``sites``: readers see ``device`` as ``<kind>@<lab>`` when the folder holds results
    from more than one lab (and ``<kind>@<lab>/<cpu>`` where one lab's boards of a kind
    have different CPUs), so every analysis keeps labs side by side instead of mixing them
    (the report; ``--pool`` turns it off)."""

    def __init__(self, root: Path | str, *, sites: bool = False) -> None:
        self.root = Path(root)
        self.sites = sites
        #: parts skipped as bad, with the reason (also logged once each)
        self.skipped: dict[Path, str] = {}
        self._checked: dict[Path, tuple[int, int, integrity.PartCheck]] = {}  # path -> (size, mtime_ns, check)
        self._written: set[Path] = set()  # parts this Store wrote (it may replace those)
        self._complete_before: set[str] | None = None  # units complete before this Store wrote
        #: units whose parts this Store may replace although they are complete (a retry)
        self.replaceable: set[str] = set()
        self._version_ok = False
        self._counts: dict[tuple[str, tuple[Any, ...]], dict[str, int]] = {}
        #: units and sessions with fewer rows than they wrote: key -> what is short (one line)
        self.shortfalls: dict[str, str] = {}
        self._incomplete_cache: dict[str, tuple[Any, frozenset[str]]] = {}
        self._sites_cache: tuple[Any, list[str] | None] | None = None  # (stamp, device\x1flab pairs to split by CPU)

    # --- writing ------------------------------------------------------------
    def write(self, table: pa.Table) -> Path:
        """Write one tagged batch (see :func:`tag`) atomically into its partition, with its
        checksum file. A full disk or a read-only folder is a :class:`StoreError` naming
        it; nothing half-written stays behind."""
        meta = table.schema.metadata or {}
        try:
            name = meta[b"deltann.table"].decode()
            unit = meta[b"deltann.unit"].decode()
            seq = int(meta[b"deltann.seq"])
        except KeyError as exc:
            raise StoreError(f"batch without routing metadata {exc}; produce batches with store.tag()") from None
        if name not in SCHEMAS:
            raise StoreError(f"unknown table {name!r}; tables: {', '.join(TABLES)}")
        if table.num_rows == 0:
            raise StoreError(f"empty {name} batch for unit {unit}")
        table = table.cast(SCHEMAS[name].with_metadata(meta))
        parts = {col: table.column(col)[0].as_py() for col in PARTITIONS}
        folder = self.root / f"table={name}"
        for col in PARTITIONS:
            folder = folder / f"{col}={_safe(parts[col])}"
        path = folder / f"part-{_safe(unit)}-{seq:04d}.parquet"
        if (name in UNIT_TABLES and path not in self._written and unit not in self.replaceable
                and (path.exists() or integrity.sidecar_path(path).exists())):
            # A rerun replaces its own partial files; a completed unit's are someone's results.
            if self._complete_before is None:
                self._complete_before = self.completed_keys()
            if unit in self._complete_before:
                raise StoreError(f"{path}: belongs to unit {unit}, which another run completed; refusing to "
                                 "overwrite it (two runs into one folder at once?)")
        group = str(table.column("tuning_key")[0].as_py()) if name == "tuning" else unit
        body = table.drop_columns(list(PARTITIONS))
        tmp = ""
        try:
            with refusing(self.root, f"writing {path.relative_to(self.root)}"):
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = integrity.temp_beside(path)
                pq.write_table(body, tmp, compression="zstd", write_page_checksum=True)
                digest, size = integrity.file_digest(tmp)
                integrity.place(path, tmp, integrity.Sidecar(digest, size, table.num_rows, name, group))
        finally:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
        self._written.add(path)
        return path

    def quarantine(self, paths: list[Path]) -> list[Path]:
        """Move bad parts (and checksum files whose part is gone) to ``quarantine/``, keeping
        their place in the layout, once what they belonged to is being made again. Each is
        checked again first, under its folder's lock: a part another run has just
        rewritten is left where it is."""
        moved = []
        for part in paths:
            table = next((t for t in TABLES if f"table={t}" in part.parts), "")
            dest = self.root / QUARANTINE_DIR / part.relative_to(self.root)
            with integrity.folder_lock(part.parent, exclusive=True):
                if not integrity.check_part(part, table, SCHEMAS.get(table), lock=False).bad:
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                for src in (part, integrity.sidecar_path(part)):
                    if src.exists() or src.is_symlink():
                        os.replace(src, dest.with_name(src.name))
            self._checked.pop(part, None)
            self.skipped.pop(part, None)
            moved.append(part)
            log.warning("moved bad part %s to %s (what it held is made again)", part, dest.parent)
        return moved

    # --- the manifest and run records -------------------------------------
    def _manifest_body(self, study: dict[str, Any]) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "created": dt.datetime.now(dt.UTC).isoformat(),
                "deltann_version": __version__, "study": study, "runs": [],
                "run_records": f"{RUNS_DIR}/ (one file per run)"}

    def ensure_manifest(self, study: dict[str, Any]) -> None:
        """Create ``manifest.json`` if the folder has none (atomically: of two runs starting
        together one creates it); a manifest of an older schema is raised to this one."""
        path = self.root / "manifest.json"
        if not path.exists():
            _atomic_write_bytes(path, json.dumps(self._manifest_body(study), indent=2, default=str).encode(),
                                exclusive=True)
            return
        raw = json.loads(path.read_text())
        version = raw.get("schema_version") if isinstance(raw, dict) else None
        if isinstance(version, int) and version < SCHEMA_VERSION:
            raw["schema_version"] = SCHEMA_VERSION  # parts with checksums and new columns from here on
            _atomic_write_bytes(path, json.dumps(raw, indent=2, default=str).encode())

    def start_run(self, study: dict[str, Any], run: dict[str, Any]) -> Path:
        """Record a run as started (its own file under ``runs/``) before it writes a row:
        a run killed from here on stays on record, unfinished."""
        with refusing(self.root, "recording the run"):
            self.ensure_manifest(study)
            started = dt.datetime.now(dt.UTC)
            run_id = uuid.uuid4().hex[:12]
            path = self.root / RUNS_DIR / f"{started:%Y%m%dT%H%M%S%fZ}-{run_id}.json"
            record = {"run": run_id, "study": study.get("name"), "status": "started", "started": started.isoformat(),
                      "pid": os.getpid(), "deltann_version": __version__, **run, "spec": study,
                      "environment": environment()}
            _atomic_write_bytes(path, json.dumps(record, indent=2, default=str).encode())
        return path

    def finish_run(self, path: Path, run: dict[str, Any], status: str = "finished") -> None:
        """Complete a run's record (``status``: finished, interrupted, aborted)."""
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {}
        record |= {**run, "status": status, "finished": dt.datetime.now(dt.UTC).isoformat()}
        with refusing(self.root, "recording the run's end"):
            _atomic_write_bytes(path, json.dumps(record, indent=2, default=str).encode())

    def write_manifest(self, study: dict[str, Any], run: dict[str, Any]) -> None:
        """Record one finished run (a run that does not record its start separately)."""
        self.finish_run(self.start_run(study, {}), run)

    def run_records(self) -> list[dict[str, Any]]:
        """Every run record under ``runs/``, oldest first; an unreadable one is skipped with
        a warning naming it."""
        out = []
        for path in sorted((self.root / RUNS_DIR).glob("*.json")):
            try:
                record = json.loads(path.read_text())
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as exc:
                log.warning("skipping run record %s: %s; restore it from the original results folder", path,
                            " ".join(str(exc).split())[:200])
                continue
            out.append(record)
        return sorted(out, key=lambda r: str(r.get("started", "")))

    # --- reading ------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any]:
        """``manifest.json`` with ``runs``: the runs it lists itself (written by deltann
        before schema 3) and one entry per file under ``runs/``; ``studies``: every study
        run here by name; ``environment``: the latest run's."""
        path = self.root / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise StoreError(f"{path}: no manifest; is {self.root} a deltann results folder?") from None
        except json.JSONDecodeError as exc:
            raise StoreError(f"{path}: manifest is not valid JSON ({exc})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path}: cannot read the manifest ({type(exc).__name__}: {exc})") from None
        if not isinstance(manifest, dict):
            raise StoreError(f"{path}: manifest is not a JSON object; restore it from the original results folder")
        version = manifest.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise StoreError(f"{path}: manifest has no integer schema_version; restore it from the original "
                             "results folder")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path}: schema version {version!r} is newer than this deltann's ({SCHEMA_VERSION}); upgrade deltann"
            )
        if not isinstance(manifest.get("study"), dict) or not isinstance(manifest.get("runs"), list):
            raise StoreError(f"{path}: manifest lacks its 'study' object or 'runs' list; restore it from the "
                             "original results folder")
        records = self.run_records()
        studies = dict(manifest.get("studies") or {})
        for record in records:  # oldest first: a study is as its latest run defined it
            spec = record.get("spec")  # each run keeps its study whole (a later run may add a variant)
            if not isinstance(spec, dict):
                continue
            if record.get("study") == manifest["study"].get("name"):
                manifest["study"] = spec
            else:
                studies[str(record.get("study"))] = spec
        manifest["runs"] = [*manifest["runs"], *records]
        if studies:
            manifest["studies"] = studies
        latest = next((r["environment"] for r in reversed(records) if isinstance(r.get("environment"), dict)), None)
        if latest is not None:
            manifest["environment"] = latest
        return manifest

    def check_version(self) -> None:
        """Refuse a folder whose manifest is from a newer deltann (or unreadable) before
        reading or adding rows; a folder without a manifest yet (a run in progress, a
        fresh folder) is fine."""
        if not self._version_ok:
            if (self.root / "manifest.json").exists():
                self.read_manifest()
            self._version_ok = True

    def files(self, table: str) -> list[Path]:
        """The table's good parts. Anything else under ``table=<name>/`` (a part whose
        bytes differ from its checksum, truncated in a copy, a stray file, a folder outside
        the partition layout) is skipped with one warning naming it."""
        return [c.path for c in self.checks(table) if not c.bad]

    def checks(self, table: str) -> list[integrity.PartCheck]:
        """Every part of ``table`` (and every checksum file whose part is gone) with its
        state; bad ones are logged once each."""
        folder = self.root / f"table={table}"
        out = []
        for path in sorted(folder.glob("model=*/device=*/part-*.parquet")):
            out.append(self._check(path, table))
        for sidecar in integrity.orphan_sidecars(folder):
            check = integrity.missing_check(sidecar, table)
            self._note(check)
            out.append(check)
        return out

    def _check(self, path: Path, table: str) -> integrity.PartCheck:
        try:
            st = path.stat()
        except OSError:
            return integrity.PartCheck(path, table, integrity.MISSING, "gone while reading")
        side = integrity.sidecar_path(path)
        try:
            side_mtime = side.stat().st_mtime_ns
        except OSError:
            side_mtime = 0
        seen = self._checked.get(path)
        if seen is not None and seen[:2] == (st.st_size, st.st_mtime_ns ^ side_mtime):
            return seen[2]
        check = integrity.check_part(path, table, SCHEMAS[table])
        self._checked[path] = (st.st_size, st.st_mtime_ns ^ side_mtime, check)
        self._note(check)
        return check

    def _note(self, check: integrity.PartCheck) -> None:
        if check.bad:
            if check.path not in self.skipped:
                self.skipped[check.path] = check.reason
                what = {"predictions": "unit", "builds": "unit", "timings": "timing session",
                        "sessions": "timing session", "tuning": "tuning database"}.get(check.table, "")
                then = (f"its {what} counts as missing and the next 'deltann run' makes it again"
                        if what and check.group else "restore it from the original results folder or delete it")
                log.warning("skipping %s: %s; %s", printable(check.path), check.reason, then)
        else:
            self.skipped.pop(check.path, None)

    def bad_groups(self, tables: tuple[str, ...]) -> set[str]:
        """Keys (units, sessions, tuning keys) that have a bad part in any of ``tables``."""
        return {c.group for t in tables for c in self.checks(t) if c.bad and c.group}

    def bad_parts(self, groups: set[str], tables: tuple[str, ...]) -> list[Path]:
        """The bad parts of ``groups`` in ``tables`` (for :meth:`quarantine`)."""
        return [c.path for t in tables for c in self.checks(t) if c.bad and c.group in groups]

    def _stamp(self, table: str) -> tuple[Any, ...]:
        """The table's good parts as they are now (path, size, times): what a cached answer
        about them is valid for."""
        return tuple((str(f), *self._checked[f][:2]) for f in self.files(table) if f in self._checked)

    def _count(self, table: str, key: str) -> dict[str, int]:
        """Rows per ``key`` value (unit_key, session) in the table's good parts."""
        files = self.files(table)
        stamp = self._stamp(table)
        cached = self._counts.get((table, stamp))
        if cached is not None:
            return cached
        counts: dict[str, int] = {}
        if files:
            frame = self._scan_files(table, files).group_by(key).len().collect()
            counts = {k: n for k, n in frame.iter_rows() if k is not None}
        self._counts = {k: v for k, v in self._counts.items() if k[0] != table}
        self._counts[(table, stamp)] = counts
        return counts

    def incomplete_units(self) -> set[str]:
        """Units that are not whole: a bad part, or fewer prediction rows than their
        ``builds`` row says they wrote (a part deleted with its checksum file)."""
        return self._incomplete(("predictions", "builds"), "builds", "unit_key", "config", "predictions", "unit",
                                "makes it again")

    def incomplete_sessions(self) -> set[str]:
        """Timing sessions that are not whole: a bad part, or fewer timings rows than their
        ``sessions`` row says they wrote."""
        return self._incomplete(SESSION_TABLES, "sessions", "session", "model", "timings", "timing session",
                                "times again")

    def _incomplete(self, tables: tuple[str, ...], owner: str, key: str, what: str, rows_table: str, noun: str,
                    then: str) -> set[str]:
        """Keys (column ``key``) with a bad part in ``tables``, or whose ``owner`` row counts
        more ``rows_table`` rows than the store holds; each shortfall noted once."""
        import polars as pl

        bad = self.bad_groups(tables)
        files = self.files(owner)
        if not files:
            return bad
        # Readers ask once per scan (the analysis scans a table once per group and side):
        # the answer holds while no part changes.
        stamp = (owner, frozenset(bad), self._stamp(owner), self._stamp(rows_table))
        cached = self._incomplete_cache.get(owner)
        if cached is not None and cached[0] == stamp:
            return set(cached[1])
        rows = (self._scan_files(owner, files).select(key, what, "device", "rows")
                .filter(pl.col("rows").is_not_null() & (pl.col("rows") > 0)).collect())
        have = self._count(rows_table, key) if rows.height else {}
        for group, name, device, want in rows.iter_rows():
            got = have.get(group, 0)
            if got != want and group not in bad:  # (a group with a bad part is named by the part)
                bad.add(group)
                if group not in self.shortfalls:
                    self.shortfalls[group] = (f"{noun} {group} ({name} on {device}) has {got} of the {want} "
                                              f"{rows_table.rstrip('s')} rows it wrote (a part is gone)")
                    log.warning("%s; it counts as missing and the next 'deltann run' %s", self.shortfalls[group],
                                then)
        self._incomplete_cache[owner] = (stamp, frozenset(bad))
        return bad

    def _scan_files(self, table: str, files: list[Path]) -> Any:
        import polars as pl

        # Files written by an older deltann may lack newer columns (read as null) or
        # carry ones this version does not know (ignored): the schema is this version's.
        file_schema = pl.from_arrow(SCHEMAS[table].empty_table()).drop(list(PARTITIONS)).schema
        frame = pl.scan_parquet(
            [str(f) for f in files],
            schema=file_schema,
            missing_columns="insert",
            extra_columns="ignore",
            hive_partitioning=True,
            glob=False,
            hive_schema={"table": pl.String, "model": pl.String, "device": pl.String},
        )
        return frame.select(SCHEMAS[table].names)

    def scan(self, table: str, *, complete_only: bool = True) -> Any:
        """Lazy Polars frame over one table (empty with the right schema if absent).

        Rows of a unit, timing session or tuning database with a bad part are left out
        (see the module docstring). ``complete_only`` keeps rows of units whose ``builds``
        row exists (and whose parts are all there)."""
        import polars as pl

        if table not in SCHEMAS:
            raise StoreError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
        self.check_version()
        files = self.files(table)
        if not files:
            return pl.from_arrow(SCHEMAS[table].empty_table()).lazy()
        frame = self._scan_files(table, files)
        if table in ("predictions", "builds"):
            bad = self.incomplete_units()
            if bad:
                frame = frame.filter(~pl.col("unit_key").is_in(sorted(bad)))
        elif table in SESSION_TABLES:
            bad = self.incomplete_sessions()
            if bad:
                frame = frame.filter(~pl.col("session").is_in(sorted(bad)) | pl.col("session").is_null())
        elif table == "tuning":
            bad = self.bad_groups(("tuning",))
            if bad:
                frame = frame.filter(~pl.col("tuning_key").is_in(sorted(bad)))
        if complete_only and table in UNIT_TABLES and table != "builds":
            owners = self.scan("builds")
            if table == "predictions":  # a unit that failed midway keeps what it wrote, out of sight
                owners = owners.filter(pl.col("status") == "ok")
            frame = frame.join(owners.select("unit_key"), on="unit_key", how="semi")
        if self.sites and "device" in SCHEMAS[table].names and table != "layers":
            site = self.site_expr()
            if site is not None:
                frame = frame.with_columns(site.alias("device"))
        return frame

    def site_expr(self) -> Any:
        """The ``device`` readers see when :attr:`sites` is on and the folder holds more
        than one lab: ``<kind>@<lab>`` (``@<hostname>`` for rows written before labs were
        recorded), with ``/<cpu>`` where one lab's boards of a kind differ in CPU. None
        when there is one lab: nothing changes."""
        import polars as pl

        who = pl.coalesce(pl.col("lab"), pl.col("hostname"), pl.lit("?"))
        stamp = (self._stamp("builds"), self._stamp("sessions"))
        if self._sites_cache is None or self._sites_cache[0] != stamp:
            frames = [self._scan_files(t, fs).select("device", who.alias("lab"), pl.col("cpu").fill_null(""))
                      for t in ("builds", "sessions") if (fs := self.files(t))]
            seen = pl.concat(frames).unique().collect() if frames else None
            if seen is None or seen["lab"].n_unique() <= 1:
                self._sites_cache = (stamp, None)
            else:
                cpus = (seen.filter(pl.col("cpu") != "").group_by("device", "lab")
                        .agg(pl.col("cpu").n_unique().alias("n")))
                self._sites_cache = (stamp, [f"{d}\x1f{lab}" for d, lab, n in cpus.iter_rows() if n > 1])
        several = self._sites_cache[1]
        if several is None:
            return None
        base = pl.col("device") + "@" + who
        if not several:
            return base
        split = (pl.col("device") + "\x1f" + who).is_in(several)
        return pl.when(split).then(base + "/" + pl.col("cpu").fill_null("?")).otherwise(base)

    def labs(self) -> Any:
        """One row per lab of the folder: its name (``lab``; the hostname for rows written
        before labs were recorded), its hosts, CPUs and device kinds, and its units."""
        import polars as pl

        builds = self.scan("builds")
        return (builds.with_columns(pl.coalesce(pl.col("lab"), pl.col("hostname"), pl.lit("?")).alias("lab"))
                .group_by("lab")
                .agg(pl.col("hostname").unique().sort().alias("hosts"), pl.col("cpu").drop_nulls().unique().sort()
                     .alias("cpus"), pl.col("device").unique().sort().alias("devices"), pl.len().alias("units"))
                .sort("lab").collect())

    def shard_keys(self, row: dict[str, Any]) -> list[str]:
        """Unit keys of the run of a configuration that ``row`` (an ok ``builds`` row) is
        part of: every ok shard of it (same model, device, configuration, lab and CPU); a
        configuration over fewer images than a shard is one unit, ``row``'s own."""
        import polars as pl

        same = [pl.col(c) == row.get(c) if row.get(c) is not None else pl.col(c).is_null()
                for c in ("model", "device", "config", "lab", "cpu")]
        keys = (self.scan("builds").filter(pl.all_horizontal(same) & (pl.col("status") == "ok"))
                .select("unit_key").collect()["unit_key"].to_list())
        return sorted(set(keys) | {row["unit_key"]})

    def completed_keys(self) -> set[str]:
        self.check_version()
        if not self.files("builds"):
            return set()
        return set(self.scan("builds").select("unit_key").collect().to_series().to_list())


def check_out_folder(out: Path) -> None:
    """Refuse an ``--out`` deltann cannot use, in one line naming it, before anything is
    written: a name that is not UTF-8, a file, a non-empty folder that is not a results
    folder (never write beside someone's files), a read-only or full file system."""
    name = printable(out)
    try:
        str(out).encode("utf-8")
    except UnicodeEncodeError:
        raise StoreError(f"{name}: the folder name is not valid UTF-8; give --out a folder whose name is") from None
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise StoreError(f"{name}: is a file, not a folder; give --out a new folder, an empty one or an earlier "
                             "results folder")
        try:
            entries = sorted(p.name for p in out.iterdir())
        except OSError as exc:
            raise StoreError(f"{name}: cannot list the folder ({exc.strerror}); give --out a folder you may "
                             "read and write") from None
        if entries and not is_results_folder(out):
            shown = ", ".join(printable(e) for e in entries[:3]) + (", …" if len(entries) > 3 else "")
            raise StoreError(f"{name}: not empty and not a deltann results folder (it holds {shown}); give --out a "
                             "new folder, an empty one or an earlier results folder")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        import errno as _errno

        try:
            ro = os.statvfs(probe).f_flag & os.ST_RDONLY
        except OSError:
            ro = 0
        code = _errno.EROFS if ro else _errno.EACCES
        raise storage_error(OSError(code, os.strerror(code)), probe, "checking --out")  # type: ignore[misc]
    free = shutil.disk_usage(probe).free
    if free < MIN_FREE_BYTES:
        raise StoreError(f"{name}: disk full ({free // 1024} KiB free, deltann needs at least "
                         f"{MIN_FREE_BYTES >> 20} MiB to start); free space on that disk or give --out a folder on "
                         "another one")

#: Free space below which a run refuses to start (a run that fills the disk midway stops
#: with a one-line error and keeps what is complete).
MIN_FREE_BYTES = 1 << 20
