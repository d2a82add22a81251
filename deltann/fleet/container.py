"""Run units inside a kind's container image, through the docker SDK.

Why a job folder rather than a socket: the board actor and the container share nothing
but a mounted work folder, which works the same with Docker and with podman's
Docker-compatible API, and leaves the job replayable by hand (``python -m
deltann.fleet.container WORKDIR`` inside the image). The folder holds::

    job.json               study, board, hostname and the units (plain JSON, no pickle)
    inputs-<i>.npy         the images each input batch's units use; ids/hashes/labels in job.json
    artifacts.json         the artifacts the board's actor converted for the units (see below)
    out/000000.arrow ...   every table run_unit yields, as an Arrow IPC file, in order
    out/done               written last by the container

The actor streams ``out/`` while the container runs. If the container dies, the unit it
was on becomes a ``crash`` row and the rest run in a fresh container.

One container per board serves job after job (``--serve``): the board's actor drops each
job folder into the container's session folder and marks it ``ready``, and the process
inside, already warm (TVM imported, LLVM initialised), runs it. Why: a cold container per
job pays the imports and first-build warm-up again for every job (bench/fleet.py
--container prints what it costs). It exits when its actor stops its heartbeat (the actor was killed) or after
:data:`IDLE_S` without a job; the board's next actor removes what an old one left.

What a board image holds (``[tool.deltann.images] board`` in pyproject.toml): TVM, the
small runtimes a board measures (onnxruntime, LiteRT) and the unit protocol; not the big
frameworks conversions need (torch, TensorFlow, Keras: gigabytes). So the board's actor,
which runs beside the engine with deltann's full dependencies, converts each variant into
the shared artifact cache before the container starts (:func:`prepare_artifacts`), and the
container reads the files. A unit that needs a framework the image lacks (the ``torch``
runtime, TVM's torch frontend) becomes a failure row naming what is missing
(:func:`missing_in_image`), never a traceback. Every ``builds`` row a container made
records its image (``name@id``) in the ``image`` column.

One file because both ends of the job-folder protocol, the board's actor and the process
inside the image, must change together."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import deltann
from deltann.compile.pipeline import host_device_of
from deltann.convert.chain import Artifact, ArtifactCache
from deltann.convert.chain_spec import parse_chain
from deltann.core import runtime_registry as registry
from deltann.core.device_catalogue import DeviceKind
from deltann.core.runner import thread_env
from deltann.dataset import InputSet, Inputs, take_to_file
from deltann.errors import ConversionError
from deltann.fleet.execute import COMPILED, run_unit
from deltann.fleet.failure import Failure, Outcome, Stage
from deltann.fleet.markers import builds_row, is_progress, progress
from deltann.fleet.session import STAGE, session_row, time_session
from deltann.plan import TimingJob, Unit

log = logging.getLogger("deltann.fleet")

#: Where the work folder and the artifact cache are mounted inside the container.
WORK_MOUNT = "/deltann/work"
CACHE_MOUNT = "/deltann/cache"
#: uid/gid a container runs as when the board's own user is root.
NOBODY = 65534
#: Set in every images/<kind>/Dockerfile: a Ray node already inside its kind's image
#: (launched by ray_cluster.yaml) runs units directly instead of starting a container.
IMAGE_ENV = "DELTANN_IMAGE_KIND"


def inside_image(kind: DeviceKind) -> bool:
    return os.environ.get(IMAGE_ENV) == kind.name


# --- the job folder ------------------------------------------------------------
def write_job(work: Path, units: list[Unit], inputs: dict[str, Inputs] | dict[str, InputSet], *, study: str,
              board: str, hostname: str, timing: TimingJob | None = None) -> None:
    """Everything the container needs, as JSON and ``.npy`` files; with ``timing``, the job
    is that timing session (its units are ``units``). Only the images the job uses are
    written (the units' shards, or the session's timed images), made a chunk at a time
    straight into the file: the board's memory does not grow with the data set."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "out").mkdir(exist_ok=True)
    wanted = sorted({u.inputs or u.model for u in units})
    batches = {}
    for i, name in enumerate(wanted):
        batch = inputs[name]
        if timing is not None:
            indices = sorted(set(timing.images))
        else:
            indices = sorted({j for u in units if (u.inputs or u.model) == name
                              for j in range(u.lo, len(batch.ids) if u.hi is None else u.hi)})
        made = take_to_file(batch, indices, work / f"inputs-{i}.npy")
        batches[name] = {"file": f"inputs-{i}.npy", "ids": made.ids, "hashes": made.hashes, "labels": made.labels,
                         "recipe": batch.recipe, "indices": indices}
    job = {"study": study, "board": board, "hostname": hostname, "inputs": batches,
           "units": [asdict(u) for u in units]}
    if timing is not None:
        job["timing"] = {"key": timing.key, "model": timing.model, "device": timing.device,
                         "protocol": [list(p) for p in timing.protocol], "images": list(timing.images),
                         "board": timing.board}
    (work / "job.json").write_text(json.dumps(job))


def read_job(work: Path) -> tuple[dict[str, Any], list[Unit], dict[str, Inputs]]:
    """The job folder as :func:`write_job` left it; the tensors are memory-mapped (read as
    each chunk of images is used)."""
    job = json.loads((work / "job.json").read_text())
    units = [Unit(**{k: tuple(v) if isinstance(v, list) else v for k, v in u.items()}) for u in job["units"]]
    inputs = {}
    for name, b in job["inputs"].items():
        tensors = np.load(work / b["file"], mmap_mode="r", allow_pickle=False)
        inputs[name] = Inputs(ids=b["ids"], tensors=tensors, hashes=b["hashes"], labels=b["labels"],
                              recipe=b["recipe"], indices=b.get("indices"))
    return job, units, inputs


def execute_job(work: Path, cache: Path) -> None:
    """The container's side: run every unit, writing each table as it comes."""
    job, units, inputs = read_job(work)
    artifacts = PreparedArtifacts(ArtifactCache(cache), work, cache)  # what the board's actor converted
    out = work / "out"
    who = {"study": job["study"], "board": job["board"], "hostname": job["hostname"]}
    if job.get("timing"):
        t = job["timing"]
        timing = TimingJob(key=t["key"], model=t["model"], device=t["device"], units=tuple(units),
                           protocol=tuple((str(k), int(v)) for k, v in t["protocol"]),
                           images=tuple(int(i) for i in t["images"]), board=t["board"])
        tables: Iterator[pa.Table] = time_session(timing, inputs, artifacts, **who)
    else:
        def unit_tables() -> Iterator[pa.Table]:
            for unit in units:
                # a framework this image lacks: a row that says so, not a traceback deep in a stage
                lacking = missing_in_image(unit, artifacts, **who)
                yield from [lacking] if lacking is not None else run_unit(
                    unit, inputs[unit.inputs or unit.model], artifacts, **who)

        tables = unit_tables()
    n = 0
    for table in tables:
        _write_ipc(out / f"{n:06d}.arrow", table)
        n += 1
    (out / "done").write_text(str(n))


# --- what the board image holds, and the artifacts converted for it -----------------
#: File in the job folder: the artifacts the board's actor made for the job's units.
ARTIFACTS_FILE = "artifacts.json"
#: PyPI distribution -> the module it installs, where the two names differ.
IMPORT_NAME = {"apache-tvm": "tvm", "tensorflow-cpu": "tensorflow", "ai-edge-litert": "ai_edge_litert"}


def _artifact_key(model: str, variant: str) -> str:
    return f"{model}|{variant}"


def prepare_artifacts(units: list[Unit], artifacts: ArtifactCache, cache_dir: Path) -> Iterator[pa.Table]:
    """The board's side, before a container starts: make each variant the units need in
    the shared artifact cache (where the frameworks are), yielding a ``convert`` progress
    marker first so the driver's unit clock runs, and return what the container reads:
    ``{"model|variant": {payload, layout, meta, hops} | {error}}`` (a generator's return
    value). In-memory artifacts (a framework's own model object) are left to the container."""
    prepared: dict[str, dict[str, Any]] = {}
    root = cache_dir.resolve()
    for unit in units:
        key = _artifact_key(unit.model, unit.variant)
        if key in prepared:
            continue
        yield progress(unit.key, Stage.CONVERT)
        try:
            artifact = artifacts.get(unit.model, unit.variant)
        except Exception as exc:  # the container reports it as this unit's convert failure
            message = " ".join(str(exc).split())[:1500]
            prepared[key] = {"error": message if isinstance(exc, _conversion_error()) else
                             f"{type(exc).__name__}: {message}"}
            continue
        payload = artifact.payload
        if isinstance(payload, Path) and payload.resolve().is_relative_to(root):
            prepared[key] = {"payload": str(payload.resolve().relative_to(root)), "layout": artifact.layout,
                             "meta": artifact.meta, "hops": artifact.hops}
    return prepared


def _conversion_error() -> type[Exception]:
    return ConversionError


class PreparedArtifacts:
    """The container's artifact source: what the board's actor prepared (read from the
    job folder, paths under the mounted cache), else its own :class:`ArtifactCache`."""

    def __init__(self, own: ArtifactCache, work: Path, cache: Path) -> None:
        self.own, self.cache = own, cache
        self.root = cache  # where compiled modules are kept too (deltann.fleet.execute.compiled_dir)
        path = work / ARTIFACTS_FILE
        self.prepared: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() else {}

    def has(self, model: str, variant: str) -> bool:
        return _artifact_key(model, variant) in self.prepared

    def get(self, model: str, variant: str) -> Artifact:
        entry = self.prepared.get(_artifact_key(model, variant))
        if entry is None:
            return self.own.get(model, variant)
        if "error" in entry:
            raise _conversion_error()(entry["error"])
        return Artifact(model, variant, self.cache / entry["payload"], entry["hops"], entry["layout"], entry["meta"])


def missing_in_image(unit: Unit, artifacts: PreparedArtifacts, *, study: str, board: str,
                     hostname: str) -> pa.Table | None:
    """A failure row for ``unit`` when this image lacks a module it needs (its runtime,
    TVM's frontend for it, or the source framework of an artifact nobody prepared), else
    None. Why before running: the import error would surface deep in a stage as
    ``No module named 'torch'``; this row says which image, what is missing and why."""
    import importlib.util

    def module(dist: str) -> str:
        return IMPORT_NAME.get(dist, dist)

    needs: list[tuple[str, Stage, str]] = []  # (module, stage, what needs it)
    if not artifacts.has(unit.model, unit.variant):
        source = parse_chain(unit.variant)[0].framework
        native = registry.native(source)
        if native is not None and native.dist and not native.data_files:  # file formats: read as data
            needs.append((module(native.dist), Stage.CONVERT, f"loading the {source} model"))
    if unit.frontend:
        needs.append((unit.frontend.split(".")[0], Stage.BUILD, f"TVM's {unit.frontend} frontend"))
    runner = registry.runners().get(unit.runtime)
    if runner is not None and runner.dist:
        needs.append((module(runner.dist), Stage.LOAD, f"runtime {unit.runtime!r}"))
    for name, stage, why in needs:
        if importlib.util.find_spec(name) is None:
            kind = os.environ.get(IMAGE_ENV, "this")
            message = (f"the {kind} image has no {name}, needed for {why}: a board image holds TVM and the small "
                       "runtimes only ([tool.deltann.images] board in pyproject.toml); run this configuration on a "
                       "kind without a container, or add it to the kind's image")
            return builds_row(unit, Failure.refused(stage, "MissingInImage", message), study=study, board=board,
                              hostname=hostname, seconds=0.0)
    return None


def _write_ipc(path: Path, table: pa.Table) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    os.close(fd)
    with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)  # the reader never sees half a file


def follow(work: Path, running: Callable[[], bool], poll_s: float = 0.05) -> Iterator[pa.Table]:
    """Yield the tables the container writes, in order, until it is done or gone."""
    out = work / "out"
    n = 0
    while True:
        path = out / f"{n:06d}.arrow"
        if path.exists():
            with pa.memory_map(str(path)) as source:
                table = pa.ipc.open_file(source).read_all()
            path.unlink()
            n += 1
            yield table
            continue
        if (out / "done").exists() or not running():
            if not path.exists():  # a last file may land between the two checks
                return
            continue
        time.sleep(poll_s)


# --- the docker SDK side ------------------------------------------------------------
def container_options(kind: DeviceKind, work: Path, cache: Path, *, serve: bool = False) -> dict[str, Any]:
    """``containers.run`` keyword arguments for a kind's container running the job folder
    ``work`` (or, with ``serve``, a board container serving the job folders of session
    folder ``work``): mounts, and the accelerator the kind's target needs (NVIDIA GPUs for
    CUDA, the Mali device node for OpenCL)."""
    import docker

    # Least privilege (issue 8): the job folders are read-only except the out/ folder, the
    # artifact cache is the only other writable place; no network, no Linux capabilities,
    # no setuid escalation.
    uid = os.getuid()
    options: dict[str, Any] = {
        "command": ["python3", "-m", "deltann.fleet.container", *(["--serve"] if serve else []), WORK_MOUNT,
                    CACHE_MOUNT],
        "volumes": {str(work): {"bind": WORK_MOUNT, "mode": "ro"},
                    str(work / "out"): {"bind": f"{WORK_MOUNT}/out", "mode": "rw"},
                    str(cache): {"bind": CACHE_MOUNT, "mode": "rw"}},
        # HOME: the container's user (the board's, or nobody) may have none in the image.
        # The board's thread policy (core.runner.thread_env, set on its actor) goes in too:
        # units measure with the board's threads inside the container as outside.
        "environment": {IMAGE_ENV: kind.name, "HOME": "/tmp"} | {
            name: os.environ[name] for name in thread_env(1) if name in os.environ},
        "detach": True,
        "network_mode": "none",  # a build and a run need no network
        # the board user's ids, so files in the work folder stay theirs; never root inside
        # (a board running as root hands the writable folders to nobody, see run_in_container).
        "user": f"{uid}:{os.getgid()}" if uid != 0 else f"{NOBODY}:{NOBODY}",
        "privileged": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": 4096,  # a fork bomb in a model's custom op stays inside the container
    }
    device = host_device_of(kind.target)
    if device == "gpu":
        options["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    elif device == "opencl-device" and Path("/dev/mali0").exists():
        options["devices"] = ["/dev/mali0:/dev/mali0:rwm"]
    return options


#: Label of a board image (set by ``deltann images build``): the digest of the deltann
#: sources it installed. The actor and the container speak one job-folder protocol, so an
#: image built from other sources is refused with a row saying to rebuild it.
SOURCE_LABEL = "deltann.source"


def source_digest() -> str:
    """SHA-256 over this deltann's Python sources (relative path and bytes, sorted)."""
    import hashlib

    root = Path(deltann.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


#: Labels on every container a board starts: the board (its Ray node id) and the study.
BOARD_LABEL = "deltann.board"
STUDY_LABEL = "deltann.study"


def remove_stale(client: Any, board: str, study: str) -> int:
    """Remove this board's containers of this study left by an actor that was killed (a
    unit past ``unit_timeout_s``, a crash): killing the actor cannot stop the container it
    started, so the board's next actor does; and the board's containers of any study that
    have exited (a board container that outlived its actor ends on its own). Returns how
    many it removed."""
    import docker

    removed = 0
    try:
        stale = [c for c in client.containers.list(all=True, filters={"label": [f"{BOARD_LABEL}={board}"]})
                 if (c.labels or {}).get(STUDY_LABEL) == study or c.status not in ("created", "running")]
    except (docker.errors.DockerException, OSError) as exc:
        log.warning("cannot list this board's old containers: %s", exc)
        return 0
    for container in stale:
        try:
            container.remove(force=True)
            removed += 1
        except (docker.errors.DockerException, OSError) as exc:
            log.warning("cannot remove old container %s: %s", getattr(container, "id", "?"), exc)
    if removed:
        log.warning("removed %d containers a killed actor of board %s left running", removed, board)
    return removed


#: A board container with no job for this long, or no heartbeat from its actor for
#: :data:`HEARTBEAT_LOST_S`, exits (seconds).
IDLE_S = 300.0
HEARTBEAT_S = 5.0
HEARTBEAT_LOST_S = 30.0
HEARTBEAT_FILE = "heartbeat"


class BoardContainer:
    """A running container of one board serving jobs from its session folder, as the
    actor's process holds it between jobs."""

    def __init__(self, container: Any, session: Path, key: tuple[str, str]) -> None:
        self.container, self.session, self.key, self.jobs = container, session, key, 0

    def running(self) -> bool:
        import docker

        try:
            self.container.reload()
        except docker.errors.NotFound:
            return False
        return self.container.status in ("created", "running")

    def submit(self) -> Path:
        """A fresh job folder whose ``out`` is the container's writable out folder."""
        self.jobs += 1
        name = f"job-{self.jobs:06d}"
        out = self.session / "out" / name
        out.mkdir(parents=True)
        if os.getuid() == 0:  # the container runs as nobody: it writes there
            os.chown(out, NOBODY, NOBODY)
        work = self.session / name
        work.mkdir()
        (work / "out").symlink_to(Path("..") / "out" / name)  # inside: the out/ mount
        return work

    def ended(self) -> tuple[dict[str, Any], str]:
        """The exit status and last log lines of a container that stopped serving (waited
        for, then removed); what is known when the engine lost it."""
        try:
            status = self.container.wait(timeout=30)
            logs = self.container.logs(tail=20).decode(errors="replace")
        except Exception as exc:  # noqa: BLE001 - the engine lost it: report what we know
            status, logs = {"StatusCode": "unknown"}, f"({type(exc).__name__}: {exc})"
        self.stop()
        return status, logs

    def stop(self) -> None:
        try:
            self.container.remove(force=True)
        except Exception as exc:  # noqa: BLE001 - gone already, or the engine is: nothing left to stop
            log.debug("removing container: %s", exc)
        if _SERVERS.get(self.key) is self:
            del _SERVERS[self.key]


#: This process's board containers, by (board, image): a Board actor keeps its own warm.
_SERVERS: dict[tuple[str, str], BoardContainer] = {}


def _heartbeat() -> None:
    """Touch every live session's heartbeat file, so their containers know this actor lives."""
    while True:
        for server in list(_SERVERS.values()):
            try:
                (server.session / HEARTBEAT_FILE).touch()
            except OSError:
                pass
        time.sleep(HEARTBEAT_S)


def _board_container(client: Any, kind: DeviceKind, cache_dir: Path, *, study: str, board: str) -> BoardContainer:
    """This board's warm container for ``kind``, started (and its board's leftovers
    removed) when there is none."""
    import threading

    key = (board, kind.image)
    server = _SERVERS.get(key)
    if server is not None and server.running():
        return server
    if server is not None:
        server.stop()
    remove_stale(client, board, study)
    session = cache_dir.parent / "jobs" / uuid.uuid4().hex
    (session / "out").mkdir(parents=True)
    (session / HEARTBEAT_FILE).touch()
    if os.getuid() == 0:  # the container runs as nobody: give it the folders it writes

        (cache_dir / COMPILED).mkdir(exist_ok=True)  # its compiled modules (a board on the host may share it)
        for folder in (session / "out", cache_dir, cache_dir / COMPILED):
            os.chown(folder, NOBODY, NOBODY)
    container = client.containers.run(kind.image, labels={BOARD_LABEL: board, STUDY_LABEL: study},
                                      **container_options(kind, session, cache_dir, serve=True))
    server = BoardContainer(container, session, key)
    if not _SERVERS and not any(t.name == "deltann-heartbeat" for t in threading.enumerate()):
        threading.Thread(target=_heartbeat, name="deltann-heartbeat", daemon=True).start()
    _SERVERS[key] = server
    return server


def stop_board_containers() -> None:
    """Stop and remove this process's board containers (they also end on their own)."""
    for server in list(_SERVERS.values()):
        server.stop()


def usable_image(client: Any, kind: DeviceKind) -> str:
    """``name@id`` of the kind's image in this engine; ``ImageNotFound`` when it is missing
    or was built from other deltann sources than this board's (it would run other code)."""
    import docker

    image = client.images.get(kind.image)
    built_from = (image.labels or {}).get(SOURCE_LABEL)
    if built_from != source_digest():
        raise docker.errors.ImageNotFound(
            f"built from other deltann sources ({SOURCE_LABEL}={(built_from or 'none')[:12]}, this board's "
            f"{source_digest()[:12]}); rebuild it: deltann images build {kind.name}")
    return f"{kind.image}@{image.id}"


def run_in_container(kind: DeviceKind, units: list[Unit], inputs: dict[str, Inputs] | dict[str, InputSet],
                     cache_dir: Path, *,
                     study: str, board: str, hostname: str) -> Iterator[pa.Table]:
    """Run ``units`` in ``kind.image`` and stream their tables (the Board actor's path
    where ``container = true``), in the board's warm container. Variants are converted here
    first (:func:`prepare_artifacts`); a dead container's current unit becomes a ``crash``
    row (in the stage its progress last named) and the rest go on in a fresh container;
    every ``builds`` row carries the image it ran in."""
    import docker

    def refuse_all(error: Exception, what: str) -> Iterator[pa.Table]:
        """The container never started: every unit left becomes a ``container`` failure row,
        so the study ends with rows instead of a board that keeps dying."""
        message = " ".join(str(error).split())[:1500] or type(error).__name__
        for unit in left:
            failure = Failure.refused(Stage.CONTAINER, type(error).__name__, f"{what} {kind.image!r}: {message}")
            yield stamp(builds_row(unit, failure, study=study, board=board, hostname=hostname, seconds=0.0),
                        image_ref)

    left = list(units)
    image_ref = kind.image
    try:
        client = docker.from_env()
        image_ref = usable_image(client, kind)
    except docker.errors.ImageNotFound as exc:
        yield from refuse_all(exc, f"no usable image in this engine (build it: deltann images build {kind.name}); image")
        return
    except (docker.errors.DockerException, OSError) as exc:
        yield from refuse_all(exc, "no Docker-compatible engine reachable to run image")
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    prepared = yield from prepare_artifacts(left, ArtifactCache(cache_dir), cache_dir)
    while left:
        try:
            server = _board_container(client, kind, cache_dir, study=study, board=board)
        except (docker.errors.DockerException, OSError) as exc:  # image gone, engine gone, bad device
            yield from refuse_all(exc, "container failed to start from image")
            return
        work = server.submit()
        write_job(work, left, inputs, study=study, board=board, hostname=hostname)
        (work / ARTIFACTS_FILE).write_text(json.dumps(prepared))
        (work / READY_FILE).touch()  # written last: the container takes the job
        current: Unit | None = None
        stage = Stage.CONVERT  # the stage the current unit was in, as its progress said
        started = time.monotonic()
        seen = 0
        for table in follow(work, server.running):
            seen += 1
            meta = table.schema.metadata or {}
            key = meta.get(b"deltann.unit", b"").decode()
            if is_progress(table):
                current = next((u for u in left if u.key == key), current)
                stage = Stage.of(meta.get(b"deltann.stage", b"").decode())
                started = time.monotonic() if stage is Stage.CONVERT else started
            elif meta.get(b"deltann.table") == b"builds":
                left = [u for u in left if u.key != key]
                current = None
                table = stamp(table, image_ref)
            yield table
        if not left or (work / "out" / "done").exists():
            continue
        # The container is gone with units left: it died (a crash of the unit it was on), or
        # it had just ended idle before taking the job (nothing seen, exit 0): start another.
        status, logs = server.ended()
        if seen == 0 and status.get("StatusCode") == 0:
            continue
        victim = current or left[0]
        message = " ".join(logs.split())[-1200:]
        failure = Failure.crash(stage if current is not None else Stage.CONTAINER, "ContainerExited",
                                f"container {kind.image} exited with {status.get('StatusCode')}: {message}")
        yield stamp(builds_row(victim, failure, study=study, board=board, hostname=hostname,
                               seconds=time.monotonic() - started), image_ref)
        left = [u for u in left if u.key != victim.key]


def stamp(table: pa.Table, image: str) -> pa.Table:
    """A ``builds`` table with its ``image`` column set: the image (``name@id``) its unit ran in."""
    values = pa.array([image] * table.num_rows, pa.string())
    column = table.schema.get_field_index("image")
    if column < 0:  # made by an image whose deltann predates the column (it is the builds table's last)
        return table.append_column(pa.field("image", pa.string()), values)
    return table.set_column(column, table.schema.field(column), values)


#: A job folder is complete (job.json, inputs, artifacts) once this file exists.
READY_FILE = "ready"


def serve(session: Path, cache: Path, idle_s: float = IDLE_S) -> int:
    """The container's side of a board container: run each job folder of ``session`` as
    its ``ready`` file appears, in order, in this one warm process; end after ``idle_s``
    without a job, or when the actor's heartbeat stops."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 in a container: no default action
    done: set[str] = set()
    last = time.monotonic()
    while True:
        ready = sorted(p.parent.name for p in session.glob(f"job-*/{READY_FILE}") if p.parent.name not in done)
        if ready:
            execute_job(session / ready[0], cache)
            done.add(ready[0])
            last = time.monotonic()
            continue
        try:
            beat = (session / HEARTBEAT_FILE).stat().st_mtime
        except OSError:
            beat = 0.0
        if time.monotonic() - last > idle_s or time.time() - beat > HEARTBEAT_LOST_S:
            return 0
        time.sleep(0.02)


def time_in_container(kind: DeviceKind, job: TimingJob, inputs: dict[str, Inputs] | dict[str, InputSet],
                      cache_dir: Path, *,
                      study: str, board: str, hostname: str) -> Iterator[pa.Table]:
    """Run timing session ``job`` in the board's warm container of ``kind.image`` and
    stream its tables. An image or engine that is not there, or a container that dies,
    ends the session as a failed ``sessions`` row (the next run times the group again)."""
    import docker

    def failed(outcome: Outcome, error: str, message: str) -> pa.Table:
        return session_row(job, study=study, board=board, hostname=hostname,
                           failure=Failure(STAGE, outcome, error, " ".join(message.split())))

    try:
        client = docker.from_env()
        usable_image(client, kind)
        cache_dir.mkdir(parents=True, exist_ok=True)
        prepared = yield from prepare_artifacts(list(job.units), ArtifactCache(cache_dir), cache_dir)
        server = _board_container(client, kind, cache_dir, study=study, board=board)
    except (docker.errors.DockerException, OSError) as exc:
        yield failed(Outcome.EXCEPTION, type(exc).__name__, f"image {kind.image!r} could not run here: {exc}")
        return
    work = server.submit()
    write_job(work, list(job.units), inputs, study=study, board=board, hostname=hostname, timing=job)
    (work / ARTIFACTS_FILE).write_text(json.dumps(prepared))
    (work / READY_FILE).touch()  # written last: the container takes the job
    ended = False
    for table in follow(work, server.running):
        ended = ended or (table.schema.metadata or {}).get(b"deltann.table") == b"sessions"
        yield table
    if not ended:
        status, logs = server.ended()
        yield failed(Outcome.CRASH, "ContainerExited",
                     f"container {kind.image} exited with {status.get('StatusCode')}: {logs[-1200:]}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 3 and argv[0] == "--serve":
        return serve(Path(argv[1]), Path(argv[2]))
    if len(argv) != 2:
        print("usage: python -m deltann.fleet.container WORKDIR CACHEDIR   (one job)\n"
              "       python -m deltann.fleet.container --serve SESSION CACHEDIR   (a board container)",
              file=sys.stderr)
        return 2
    execute_job(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
