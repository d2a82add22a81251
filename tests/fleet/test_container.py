"""The container execution path, for real. The job folder protocol (JSON + npz in, Arrow
IPC out) is tested by running the container's entry point as a plain process on this
machine (the same code the image runs). With a container engine and the ``x86-cpu``
image (``make test-fleet`` starts and builds both; CI requires them), units run inside
the image through the docker SDK: a study on a two-node Ray cluster whose board
advertises ``x86-cpu``, and a container killed mid-unit. Without them those tests skip
saying why (see conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import numpy as np
import pyarrow as pa
import pytest

from deltann import plan
from deltann.convert.chain import ArtifactCache
from deltann.fleet.container import (ARTIFACTS_FILE, BOARD_LABEL, container_options, follow, prepare_artifacts,
                                     read_job, run_in_container, stop_board_containers, write_job)
from deltann.core.device_catalogue import DEFAULT_CATALOGUE, DeviceKind, load_catalogue
from deltann.fleet.driver import prepare_inputs
from deltann.fleet.markers import is_progress
from deltann.store import Store
from deltann.study import parse_study

from .conftest import engine_with

ROOT = Path(__file__).resolve().parents[2]
#: The catalogue's container kind: its image is the one CI builds.
X86 = load_catalogue(DEFAULT_CATALOGUE)["x86-cpu"]


def _job(tmp_path: Path, variants: list[str] | None = None, timing: dict | None = None,
         kind: DeviceKind = X86, runtimes: tuple[str, ...] = ("native", "tvm"),
         settings: tuple[str, ...] = ("basic",)) -> tuple[list[plan.Unit], dict]:
    study = parse_study({"name": "boxed", "models": ["tiny_cnn"], "variants": variants or ["torch"],
                         "runtimes": list(runtimes), "settings": list(settings), "devices": [kind.name],
                         "dataset": {"limit": 2}, "timing": timing or {"repeat": 2}},
                        tmp_path / "s.toml", {kind.name: kind})
    inputs = prepare_inputs(study, tmp_path)
    return plan.expand(study, inputs, {kind.name: kind}), inputs


def _data(tables: list[pa.Table], name: str) -> list[dict]:
    return [row for t in tables if (t.schema.metadata or {}).get(b"deltann.table") == name.encode()
            for row in t.to_pylist()]


def test_job_folder_round_trips_units_and_inputs(tmp_path: Path) -> None:
    units, inputs = _job(tmp_path)
    write_job(tmp_path / "work", units, inputs, study="boxed", board="b1", hostname="h")
    job, back, batches = read_job(tmp_path / "work")
    assert back == units and job["board"] == "b1"
    name = units[0].inputs or units[0].model
    assert batches[name].ids == inputs[name].ids and (batches[name].tensors == inputs[name].tensors).all()


def _entry(work: Path, cache: Path) -> list[pa.Table]:
    proc = subprocess.Popen([sys.executable, "-m", "deltann.fleet.container", str(work), str(cache)])
    try:
        return list(follow(work, lambda: proc.poll() is None))
    finally:
        assert proc.wait(timeout=120) == 0


def test_container_entry_streams_arrow_ipc_as_it_runs(tmp_path: Path) -> None:
    local = X86.model_copy(update={"container": False})
    units, inputs = _job(tmp_path, kind=local)
    work, cache = tmp_path / "work", tmp_path / "cache"
    write_job(work, units, inputs, study="boxed", board="board-1", hostname="hikey-7")
    tables = _entry(work, cache)
    data = [t for t in tables if not is_progress(t)]
    kinds = [t.schema.metadata[b"deltann.table"].decode() for t in data]
    assert kinds.count("builds") == len(units) == 2 and kinds[-1] == "builds"
    builds = _data(tables, "builds")
    assert {b["status"] for b in builds} == {"ok"}, builds
    assert {b["board"] for b in builds} == {"board-1"}
    tvm_targets = [json.loads(b["target"]) for b in builds if b["runtime"] == "tvm"]  # as built on the board
    assert tvm_targets and all(t["kind"] == "llvm" and t["mcpu"] != "native" for t in tvm_targets)
    assert not list((work / "out").glob("*.arrow"))  # consumed files are removed


def test_the_container_reads_what_the_boards_actor_converted(tmp_path: Path) -> None:
    """The actor converts (it has the frameworks); the container uses its files and reports
    its failures as the units' own convert failures."""
    units, inputs = _job(tmp_path, variants=["torch->onnx"])
    cache = tmp_path / "cache"
    gen = prepare_artifacts(units, ArtifactCache(cache), cache)
    markers = []
    try:
        while True:
            markers.append(next(gen))
    except StopIteration as done:
        prepared = done.value
    assert [is_progress(m) for m in markers] == [True]  # one variant: one conversion, announced
    (entry,) = prepared.values()
    assert entry["payload"].endswith(".onnx") and (cache / entry["payload"]).is_file()
    assert [h["tool"] for h in entry["hops"]] == ["torch"]
    # a conversion that failed on the actor's side fails the same way in the container
    key = next(iter(prepared))
    broken = {key: {"error": "hop torch->onnx of torch->onnx failed in torch 2.14.1: ValueError: bad op"}}
    work = tmp_path / "work"
    write_job(work, units, inputs, study="boxed", board="b", hostname="h")
    (work / ARTIFACTS_FILE).write_text(json.dumps(broken))
    builds = _data(_entry(work, cache), "builds")
    assert len(builds) == len(units) and {(b["stage"], b["error_type"]) for b in builds} == {("convert",
                                                                                            "ConversionError")}
    assert all("bad op" in b["message"] for b in builds)


def test_container_options_mount_the_work_folder_and_ask_for_the_accelerator(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the board's thread policy, as its actor has it
    monkeypatch.setenv("TVM_NUM_THREADS", "3")
    opts = container_options(X86.model_copy(update={"target": {"kind": "cuda"}}), tmp_path / "w", tmp_path / "c")
    assert opts["volumes"][str(tmp_path / "w")]["bind"] == "/deltann/work"
    assert opts["network_mode"] == "none" and opts["device_requests"][0].capabilities == [["gpu"]]
    assert opts["command"] == ["python3", "-m", "deltann.fleet.container", "/deltann/work", "/deltann/cache"]
    served = container_options(X86, tmp_path / "w", tmp_path / "c", serve=True)
    assert served["command"][3] == "--serve" and served["volumes"] == container_options(X86, tmp_path / "w",
                                                                                         tmp_path / "c")["volumes"]
    assert opts["environment"]["HOME"] == "/tmp"  # nobody has no home in a minimal image
    assert opts["environment"]["OMP_NUM_THREADS"] == opts["environment"]["TVM_NUM_THREADS"] == "3"


# --- inside the image, on a real engine ---------------------------------------------------------
@pytest.fixture(scope="module")
def x86_image() -> str:
    """``name@id`` of the x86-cpu image in the engine (skips or fails without one)."""
    _, image = engine_with(X86.image)
    return f"{X86.image}@{image.id}"


@pytest.fixture(scope="module")
def board(x86_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A two-node Ray cluster on this machine (a head, and a board advertising ``x86-cpu``):
    (address, the board's node id)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        node = cluster.add_node(num_cpus=1, resources={X86.resource: 1.0})
        cluster.wait_for_nodes()
        yield cluster.address, node.node_id
    finally:
        cluster.shutdown()


def test_a_study_on_the_container_kind_runs_inside_the_image(board: tuple[str, str], x86_image: str,
                                                             tmp_path: Path) -> None:
    address, node_id = board
    study = tmp_path / "boxed.toml"
    study.write_text('name = "boxed"\nmodels = ["tiny_cnn"]\nvariants = ["torch", "torch->onnx"]\n'
                     'runtimes = ["native", "tvm"]\nsettings = ["basic", "extended"]\ndevices = ["x86-cpu"]\n'
                     "[dataset]\nlimit = 2\n[timing]\nwarmup = 0\nnumber = 1\nrepeat = 2\n")
    out = tmp_path / "out"
    # the driver in its own process (this one keeps an in-process Ray for other tests)
    proc = subprocess.run([sys.executable, "-m", "deltann", "run", str(study), "--out", str(out), "--address",
                           address], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    b = Store(out).scan("builds").collect()
    assert b.height == 6 and set(b["board"]) == {node_id} and set(b["image"]) == {x86_image}
    ok = b.filter(pl.col("status") == "ok")
    # what the image holds runs: onnxruntime and TVM builds of the converted ONNX model
    assert sorted(ok.select("variant", "runtime", "setting").rows()) == [
        ("torch->onnx", "onnxruntime", "native"), ("torch->onnx", "tvm", "basic"), ("torch->onnx", "tvm", "extended")
    ], b.select("config", "message").rows()
    assert (ok.filter(pl.col("runtime") == "tvm")["compile_s"] > 0).all()
    assert all(json.loads(t)["mcpu"] != "native" for t in ok.filter(pl.col("runtime") == "tvm")["target"])
    # what it does not hold (torch) fails as rows that say so; the host has torch, so these
    # rows also prove the units ran in the image
    failed = b.filter(pl.col("status") == "failed")
    assert failed.height == 3 and set(failed["error_type"]) == {"MissingInImage"}
    assert all("the x86-cpu image has no torch" in m for m in failed["message"])
    p = Store(out).scan("predictions").collect()
    assert p.height == 3 * 2 and set(p["board"]) == {node_id}
    # the three configurations that ran were timed together, in the image, on that board
    sessions = Store(out).scan("sessions", complete_only=False).collect()
    assert sessions.height == 1, sessions.select("status", "message").rows()
    session = sessions.row(0, named=True)
    assert (session["status"], session["board"]) == ("ok", node_id), session["message"]
    assert sorted(session["configs"]) == sorted(ok["config"].to_list())
    t = Store(out).scan("timings").collect()
    assert t.height == 3 * 2 and set(t["session"]) == {session["session"]} and set(t["board"]) == {node_id}
    assert t["samples_ns"].list.len().to_list() == [20 * 2] * 6  # 20 blocks (the default) of repeat = 2


def test_a_container_killed_mid_unit_gives_a_crash_row_and_the_rest_run_in_a_fresh_one(
        x86_image: str, tmp_path: Path) -> None:
    client, _ = engine_with(X86.image)
    # Two TVM units: the first is killed while it builds (seconds, against the ~0.1 s it
    # takes to see its progress and kill), so the kill cannot come after its end.
    units, inputs = _job(tmp_path, variants=["torch->onnx"], runtimes=("tvm",), settings=("basic", "extended"))
    assert len(units) == 2 and {u.runtime for u in units} == {"tvm"}
    first = units[0]
    tables, killed = [], []
    for table in run_in_container(X86, units, inputs, tmp_path / "cache", study="crash", board="crash-board",
                                  hostname="h"):
        tables.append(table)
        meta = table.schema.metadata or {}
        if (is_progress(table) and meta[b"deltann.unit"].decode() == first.key
                and meta[b"deltann.stage"] == b"build" and not killed):
            (container,) = client.containers.list(filters={"label": f"{BOARD_LABEL}=crash-board"})
            container.kill()  # as the kernel's OOM killer or a segfault would end it
            killed.append(container.id)
    builds = {b["unit_key"]: b for b in _data(tables, "builds")}
    assert killed and set(builds) == {u.key for u in units}
    crash = builds[first.key]
    # the row names the stage the unit was in when its container died
    assert (crash["status"], crash["stage"], crash["outcome"], crash["error_type"]) == (
        "failed", "build", "crash", "ContainerExited"), crash["message"]
    assert "exited with 137" in crash["message"] and crash["image"] == x86_image
    rest = builds[units[1].key]
    assert rest["status"] == "ok" and rest["image"] == x86_image  # ran in a fresh container
    (fresh,) = client.containers.list(filters={"label": f"{BOARD_LABEL}=crash-board"})
    assert fresh.id not in killed  # the board's warm container now, the killed one removed
    stop_board_containers()
    assert not client.containers.list(all=True, filters={"label": f"{BOARD_LABEL}=crash-board"})  # none left


def test_the_boards_container_stays_warm_between_jobs_and_ends_without_its_actor(x86_image: str,
                                                                               tmp_path: Path) -> None:
    """Two jobs, one container (the second without the imports and warm-up of a cold
    one); when its actor stops beating, the container ends on its own."""
    from deltann.fleet import container as boxes

    client, _ = engine_with(X86.image)
    units, inputs = _job(tmp_path, variants=["torch->onnx"])
    label = {"label": f"{BOARD_LABEL}=warm-board"}
    ids = []
    for _ in range(2):
        builds = _data(list(run_in_container(X86, units, inputs, tmp_path / "cache", study="warm",
                                             board="warm-board", hostname="h")), "builds")
        assert {b["status"] for b in builds} == {"ok"}
        ids.append([c.id for c in client.containers.list(filters=label)])
    assert ids[0] == ids[1] and len(ids[0]) == 1
    (server,) = boxes._SERVERS.values()
    boxes._SERVERS.clear()  # as if the actor died: no heartbeat from here on
    (server.session / boxes.HEARTBEAT_FILE).touch()
    os.utime(server.session / boxes.HEARTBEAT_FILE, (0, 0))  # the last beat, long ago
    server.container.wait(timeout=60)
    server.container.reload()
    assert server.container.status == "exited"
    server.container.remove()


def test_a_job_folder_holds_only_its_shards_images(tmp_path: Path) -> None:
    """A job of the second shard (images 3-5 of 6) writes those three tensors, made on the
    board from the manifest, and the container reads them by their data set index."""
    study = parse_study({"name": "boxed", "models": ["tiny_cnn"], "variants": ["torch"], "runtimes": ["native"],
                         "devices": [X86.name], "dataset": {"limit": 6, "shard": 3}},
                        tmp_path / "s.toml", {X86.name: X86})
    inputs = prepare_inputs(study, tmp_path)
    units = plan.expand(study, inputs, {X86.name: X86})
    second = [u for u in units if u.shard == 1]
    assert len(units) == 2 and (second[0].lo, second[0].hi) == (3, 6)
    write_job(tmp_path / "work", second, inputs, study="boxed", board="b1", hostname="h")
    _, back, batches = read_job(tmp_path / "work")
    batch = batches["tiny_cnn"]
    assert back == second and batch.indices == [3, 4, 5] and batch.tensors.shape[0] == 3
    whole = inputs["tiny_cnn"].take(range(6))
    (chunk,) = list(batch.chunks(3, 6))
    assert chunk.ids == whole.ids[3:] and chunk.hashes == whole.hashes[3:]
    assert np.array_equal(chunk.tensors, whole.tensors[3:])
