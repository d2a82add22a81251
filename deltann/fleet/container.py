"""Run units inside a kind's container image, through the docker SDK.

Why a job folder rather than a socket: the board actor and the container share nothing
but a mounted work folder, which works the same with Docker and with podman's
Docker-compatible API, and leaves the job replayable by hand (``python -m
deltann.fleet.container WORKDIR`` inside the image). The folder holds::

    job.json               study, board, hostname and the units (plain JSON, no pickle)
    inputs-<name>.npz      each input batch's tensors; its ids/hashes/labels in job.json
    out/000000.arrow ...   every table run_unit yields, as an Arrow IPC file, in order
    out/done               written last by the container

The actor streams ``out/`` while the container runs. If the container dies, the unit it
was on becomes a ``crash`` row and the rest run in a fresh container."""

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

from deltann.dataset import Inputs
from deltann.fleet.devices import DeviceKind
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
def write_job(work: Path, units: list[Unit], inputs: dict[str, Inputs], *, study: str, board: str,
              hostname: str, timing: TimingJob | None = None) -> None:
    """Everything the container needs, as JSON and npz; with ``timing``, the job is that
    timing session (its units are ``units``)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "out").mkdir(exist_ok=True)
    wanted = sorted({u.inputs or u.model for u in units})
    batches = {}
    for i, name in enumerate(wanted):
        batch = inputs[name]
        np.savez(work / f"inputs-{i}.npz", tensors=batch.tensors)
        batches[name] = {"file": f"inputs-{i}.npz", "ids": batch.ids, "hashes": batch.hashes,
                         "labels": batch.labels, "recipe": batch.recipe}
    job = {"study": study, "board": board, "hostname": hostname, "inputs": batches,
           "units": [asdict(u) for u in units]}
    if timing is not None:
        job["timing"] = {"key": timing.key, "model": timing.model, "device": timing.device,
                         "protocol": [list(p) for p in timing.protocol], "images": list(timing.images),
                         "board": timing.board}
    (work / "job.json").write_text(json.dumps(job))


def read_job(work: Path) -> tuple[dict[str, Any], list[Unit], dict[str, Inputs]]:
    job = json.loads((work / "job.json").read_text())
    units = [Unit(**{k: tuple(v) if isinstance(v, list) else v for k, v in u.items()}) for u in job["units"]]
    inputs = {}
    for name, b in job["inputs"].items():
        with np.load(work / b["file"], allow_pickle=False) as npz:
            tensors = npz["tensors"]
        inputs[name] = Inputs(ids=b["ids"], tensors=tensors, hashes=b["hashes"], labels=b["labels"],
                              recipe=b["recipe"])
    return job, units, inputs


def execute_job(work: Path, cache: Path) -> None:
    """The container's side: run every unit, writing each table as it comes."""
    from deltann.convert.chain import ArtifactCache
    from deltann.fleet.execute import run_unit

    job, units, inputs = read_job(work)
    artifacts = ArtifactCache(cache)
    out = work / "out"
    who = {"study": job["study"], "board": job["board"], "hostname": job["hostname"]}
    if job.get("timing"):
        from deltann.fleet.session import time_session

        t = job["timing"]
        timing = TimingJob(key=t["key"], model=t["model"], device=t["device"], units=tuple(units),
                           protocol=tuple((str(k), int(v)) for k, v in t["protocol"]),
                           images=tuple(int(i) for i in t["images"]), board=t["board"])
        tables: Iterator[pa.Table] = time_session(timing, inputs, artifacts, **who)
    else:
        tables = (table for unit in units for table in run_unit(unit, inputs[unit.inputs or unit.model], artifacts,
                                                                  **who))
    n = 0
    for table in tables:
        _write_ipc(out / f"{n:06d}.arrow", table)
        n += 1
    (out / "done").write_text(str(n))


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
def container_options(kind: DeviceKind, work: Path, cache: Path) -> dict[str, Any]:
    """``containers.run`` keyword arguments for a kind: mounts, and the accelerator the
    kind's target needs (NVIDIA GPUs for CUDA, the Mali device node for OpenCL)."""
    import docker

    # Least privilege (issue 8): the job folder is read-only except its out/ folder, the
    # artifact cache is the only other writable place; no network, no Linux capabilities,
    # no setuid escalation.
    uid = os.getuid()
    options: dict[str, Any] = {
        "command": ["python3", "-m", "deltann.fleet.container", WORK_MOUNT, CACHE_MOUNT],
        "volumes": {str(work): {"bind": WORK_MOUNT, "mode": "ro"},
                    str(work / "out"): {"bind": f"{WORK_MOUNT}/out", "mode": "rw"},
                    str(cache): {"bind": CACHE_MOUNT, "mode": "rw"}},
        "environment": {IMAGE_ENV: kind.name},
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
    target = kind.target.get("kind")
    if target == "cuda":
        options["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    elif target == "opencl" and Path("/dev/mali0").exists():
        options["devices"] = ["/dev/mali0:/dev/mali0:rwm"]
    return options


#: Labels on every container a board starts: the board (its Ray node id) and the study.
BOARD_LABEL = "deltann.board"
STUDY_LABEL = "deltann.study"


def remove_stale(client: Any, board: str, study: str) -> int:
    """Remove this board's containers of this study left by an actor that was killed (a
    unit past ``unit_timeout_s``, a crash): killing the actor cannot stop the container it
    started, so the board's next actor does. Returns how many it removed."""
    import docker

    removed = 0
    try:
        stale = client.containers.list(all=True, filters={"label": [f"{BOARD_LABEL}={board}",
                                                                    f"{STUDY_LABEL}={study}"]})
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


def run_in_container(kind: DeviceKind, units: list[Unit], inputs: dict[str, Inputs], cache_dir: Path, *,
                     study: str, board: str, hostname: str) -> Iterator[pa.Table]:
    """Run ``units`` in ``kind.image`` and stream their tables (the Board actor's path
    where ``container = true``). A dead container's current unit becomes a ``crash`` row."""
    import docker

    from deltann.fleet.markers import failure_row, is_progress

    def refuse_all(error: Exception, what: str) -> Iterator[pa.Table]:
        """The container never started: every unit left becomes a ``container`` failure row,
        so the study ends with rows instead of a board that keeps dying."""
        message = " ".join(str(error).split())[:1500] or type(error).__name__
        for unit in left:
            yield failure_row(unit, study=study, board=board, hostname=hostname, stage="container",
                              outcome="exception", error_type=type(error).__name__,
                              message=f"{what} {kind.image!r}: {message}", seconds=0.0)

    left = list(units)
    try:
        client = docker.from_env()
    except docker.errors.DockerException as exc:
        yield from refuse_all(exc, "no Docker-compatible engine reachable to run image")
        return
    remove_stale(client, board, study)
    cache_dir.mkdir(parents=True, exist_ok=True)
    while left:
        work = cache_dir.parent / "jobs" / uuid.uuid4().hex
        write_job(work, left, inputs, study=study, board=board, hostname=hostname)
        if os.getuid() == 0:  # the container runs as nobody: give it the two folders it writes
            for folder in (work / "out", cache_dir):
                os.chown(folder, NOBODY, NOBODY)
        try:
            container = client.containers.run(kind.image, labels={BOARD_LABEL: board, STUDY_LABEL: study},
                                              **container_options(kind, work, cache_dir))
        except (docker.errors.DockerException, OSError) as exc:  # image missing, engine gone, bad device
            yield from refuse_all(exc, "container failed to start from image")
            return
        current: Unit | None = None
        started = time.monotonic()
        try:
            def running() -> bool:
                container.reload()
                return container.status in ("created", "running")

            for table in follow(work, running):
                meta = table.schema.metadata or {}
                key = meta.get(b"deltann.unit", b"").decode()
                if is_progress(table):
                    current = next((u for u in left if u.key == key), current)
                    started = time.monotonic() if meta.get(b"deltann.stage") == b"convert" else started
                elif meta.get(b"deltann.table") == b"builds":
                    left = [u for u in left if u.key != key]
                    current = None
                yield table
            status = container.wait()
            logs = container.logs(tail=20).decode(errors="replace") if left else ""
        finally:
            container.remove(force=True)
        if left:
            victim = current or left[0]
            yield failure_row(victim, study=study, board=board, hostname=hostname, stage="execute",
                              outcome="crash", error_type="ContainerExited",
                              message=f"container {kind.image} exited with {status.get('StatusCode')}: {logs}",
                              seconds=time.monotonic() - started)
            left = [u for u in left if u.key != victim.key]


def time_in_container(kind: DeviceKind, job: TimingJob, inputs: dict[str, Inputs], cache_dir: Path, *,
                      study: str, board: str, hostname: str) -> Iterator[pa.Table]:
    """Run timing session ``job`` in ``kind.image`` and stream its tables. A container
    that cannot start, or dies, ends the session as a failed ``sessions`` row."""
    import docker

    from deltann.fleet.session import session_row

    def failed(outcome: str, error: str, message: str) -> pa.Table:
        return session_row(job, study=study, board=board, hostname=hostname,
                           failure={"outcome": outcome, "error_type": error, "message": message})

    try:
        client = docker.from_env()
    except docker.errors.DockerException as exc:
        yield failed("exception", type(exc).__name__, f"no Docker-compatible engine reachable: {exc}")
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = cache_dir.parent / "jobs" / uuid.uuid4().hex
    write_job(work, list(job.units), inputs, study=study, board=board, hostname=hostname, timing=job)
    if os.getuid() == 0:  # the container runs as nobody: give it the two folders it writes
        for folder in (work / "out", cache_dir):
            os.chown(folder, NOBODY, NOBODY)
    try:
        container = client.containers.run(kind.image, labels={BOARD_LABEL: board, STUDY_LABEL: study},
                                          **container_options(kind, work, cache_dir))
    except (docker.errors.DockerException, OSError) as exc:
        yield failed("exception", type(exc).__name__,
                     f"container failed to start from image {kind.image!r}: {' '.join(str(exc).split())}")
        return
    ended = False
    try:
        def running() -> bool:
            container.reload()
            return container.status in ("created", "running")

        for table in follow(work, running):
            ended = ended or (table.schema.metadata or {}).get(b"deltann.table") == b"sessions"
            yield table
        status = container.wait()
        logs = "" if ended else container.logs(tail=20).decode(errors="replace")
    finally:
        container.remove(force=True)
    if not ended:
        yield failed("crash", "ContainerExited",
                     f"container {kind.image} exited with {status.get('StatusCode')}: {' '.join(logs.split())}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m deltann.fleet.container WORKDIR CACHEDIR", file=sys.stderr)
        return 2
    execute_job(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
