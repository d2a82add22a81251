"""The results store: a hive-partitioned Parquet dataset plus a manifest.

Layout (the unit people share: copy the folder)::

    DIR/manifest.json
    DIR/table=predictions/model=<m>/device=<d>/part-<unit key>-<seq>.parquet
    DIR/table=timings/...
    DIR/table=builds/...
    DIR/table=sessions/...

Every file is written to a temporary name and renamed into place, so a reader never sees
half a file. File names are deterministic per (unit, table, sequence), so a unit rerun
after a crash replaces its own partial files instead of duplicating rows. A unit is
complete once its ``builds`` row exists; readers keep only complete units' rows.

Shared folders (issue 8): a part that is not a readable Parquet file of the table's
schema (truncated in a copy, a stray file) is skipped with a warning naming it; a
manifest from a newer deltann is refused before anything is read or written; and a run
never replaces a part of a unit that another run completed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import socket
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from deltann import SCHEMA_VERSION, __version__
from deltann.errors import StoreError

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
            pa.field("stage", pa.string()),  # "" | container | convert | build | load | execute | verify
            pa.field("outcome", pa.string()),  # ok | exception | crash | timeout | mismatch | nan | oom
            pa.field("error_type", pa.string()),
            pa.field("message", pa.string()),
            pa.field("frontend", pa.string()),
            pa.field("passes", pa.list_(pa.string())),
            pa.field("target", pa.string()),
            pa.field("hops", pa.string()),  # JSON list of {src, dst, tool, version, quantize, seconds}
            pa.field("layout", pa.string()),  # the artifact's input layout (NCHW | NHWC), "" if never made
            pa.field("convert_s", pa.float64()),
            pa.field("import_s", pa.float64()),
            pa.field("compile_s", pa.float64()),
            pa.field("load_s", pa.float64()),
            pa.field("total_s", pa.float64()),
            pa.field("finished_at", pa.timestamp("us", tz="UTC")),
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
        pa.field("status", pa.string()),  # ok | failed
        pa.field("outcome", pa.string()),  # ok | exception | crash | timeout
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
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    ]),
    # MetaSchedule's tuning database of the ``tuned`` setting (deltann.fleet.tuning): one row
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
        pa.field("round", pa.string()),  # one tuning call of one board
        pa.field("trials_total", pa.int64()),  # the study budget this round completed (resumes compare to it)
        pa.field("task", pa.string()),
        pa.field("workload_hash", pa.string()),
        pa.field("workload_json", pa.string()),  # Workload.as_json()
        pa.field("record_json", pa.string()),  # TuningRecord.as_json()
        pa.field("run_ms", pa.float64()),
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    ]),
}

TABLES = tuple(SCHEMAS)


def tag(table: pa.Table, name: str, unit_key: str, seq: int) -> pa.Table:
    """Attach the routing metadata the store needs to a batch an actor produced."""
    meta = {b"deltann.table": name.encode(), b"deltann.unit": unit_key.encode(), b"deltann.seq": str(seq).encode()}
    return table.replace_schema_metadata(meta)


def _safe(value: str) -> str:
    """Partition values become folder names: keep them to a safe alphabet."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in value) or "_"


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
    for dist in ("torch", "torchvision", "onnx", "onnxruntime", "apache-tvm", "apache-tvm-ffi", "tensorflow-cpu",
                 "keras", "tf2onnx", "ai-edge-litert", "ray", "pyarrow", "polars", "numpy"):
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


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Store:
    """A results folder."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        #: parts skipped as unreadable, with the reason (also logged once each)
        self.skipped: dict[Path, str] = {}
        self._checked: dict[Path, tuple[int, int, bool]] = {}  # path -> (size, mtime_ns, readable)
        self._written: set[Path] = set()  # parts this Store wrote (it may replace those)
        self._complete_before: set[str] | None = None  # units complete before this Store wrote
        self._version_ok = False

    # --- writing ------------------------------------------------------------
    def write(self, table: pa.Table) -> Path:
        """Write one tagged batch (see :func:`tag`) atomically into its partition."""
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
        if name in UNIT_TABLES and path not in self._written and path.exists():
            # A rerun replaces its own partial files; a completed unit's are someone's results.
            if self._complete_before is None:
                self._complete_before = self.completed_keys()
            if unit in self._complete_before:
                raise StoreError(f"{path}: belongs to unit {unit}, which another run completed; refusing to "
                                 "overwrite it (two runs into one folder at once?)")
        body = table.drop_columns(list(PARTITIONS))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            pq.write_table(body, tmp, compression="zstd")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._written.add(path)
        return path

    def write_manifest(self, study: dict[str, Any], run: dict[str, Any]) -> None:
        """Create or extend ``manifest.json``: schema version, study, environment, runs."""
        manifest = self.read_manifest() if (self.root / "manifest.json").exists() else {
            "schema_version": SCHEMA_VERSION,
            "created": dt.datetime.now(dt.UTC).isoformat(),
            "study": study,
            "runs": [],
        }
        manifest["deltann_version"] = __version__
        manifest["environment"] = environment()
        # A shared folder may hold several studies: each run names its own and records it
        # whole ("spec": a later run that added a variant shows it); the folder's study and
        # any other kept beside it are as their latest run defined them.
        name = study.get("name")
        run = {"study": name, **run, "spec": study}
        if isinstance(manifest.get("study"), dict) and name != manifest["study"].get("name"):
            manifest.setdefault("studies", {})[str(name)] = study
        else:
            manifest["study"] = study
        manifest["runs"].append(run)
        _atomic_write_bytes(self.root / "manifest.json", json.dumps(manifest, indent=2, default=str).encode())

    # --- reading ------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any]:
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
        """The table's readable parts. Anything else under ``table=<name>/`` (a part
        truncated in a copy, a stray file, a folder outside the partition layout) is
        skipped with one warning naming it."""
        parts = []
        for path in sorted((self.root / f"table={table}").glob("model=*/device=*/part-*.parquet")):
            if self._readable(path, table):
                parts.append(path)
        return parts

    def _readable(self, path: Path, table: str) -> bool:
        try:
            st = path.stat()
        except OSError:
            return False
        seen = self._checked.get(path)
        if seen is not None and seen[:2] == (st.st_size, st.st_mtime_ns):
            return seen[2]
        reason = ""
        if not path.is_file():
            reason = "not a regular file"
        else:
            try:
                schema = pq.read_schema(path)
            except Exception as exc:  # noqa: BLE001 - any unreadable footer: ArrowInvalid, OSError, ...
                reason = f"not a readable Parquet file ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
            else:
                want = SCHEMAS[table]
                for f in schema:
                    if f.name in want.names and not f.type.equals(want.field(f.name).type):
                        reason = f"column {f.name!r} is {f.type}, expected {want.field(f.name).type}"
                        break
        self._checked[path] = (st.st_size, st.st_mtime_ns, not reason)
        if reason and path not in self.skipped:
            self.skipped[path] = reason
            log.warning("skipping %s: %s; restore it from the original results folder or delete it", path, reason)
        return not reason

    def scan(self, table: str, *, complete_only: bool = True) -> Any:
        """Lazy Polars frame over one table (empty with the right schema if absent).

        ``complete_only`` keeps rows of units whose ``builds`` row exists."""
        import polars as pl

        if table not in SCHEMAS:
            raise StoreError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
        self.check_version()
        files = self.files(table)
        if not files:
            return pl.from_arrow(SCHEMAS[table].empty_table()).lazy()
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
        columns = SCHEMAS[table].names
        frame = frame.select(columns)
        if complete_only and table in UNIT_TABLES and table != "builds":
            frame = frame.join(self.scan("builds").select("unit_key"), on="unit_key", how="semi")
        return frame

    def completed_keys(self) -> set[str]:
        self.check_version()
        if not self.files("builds"):
            return set()
        return set(self.scan("builds").select("unit_key").collect().to_series().to_list())
