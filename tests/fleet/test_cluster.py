"""The fleet on a real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``):
a head and nodes advertising ``x86-server`` (two boards), ``gpu-xavier`` and ``arm-hikey``.
A test device catalogue gives those kinds the ``llvm`` target and no container, since
this machine has neither their GPUs nor a container engine; everything else is real:
placement by custom resource, streaming, node loss, a killed driver and its rerun.

Why the driver runs in a subprocess (``python -m deltann run --address``): a process can
hold one Ray driver connection, and the other tests keep an in-process Ray for the whole
session. This process only owns the cluster's nodes (starts and kills them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from deltann.commands.devices import boards_by_kind
from deltann.core.device_catalogue import load_catalogue
from deltann.store import Store

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("x86-server", "gpu-xavier", "arm-hikey")
# Test catalogue: the three board kinds (plus "spare", whose only board a test kills),
# executing llvm on this CPU, no container.
CATALOGUE = "".join(
    f'[kinds.{k}]\nresource = "{k}"\ntarget = {{ kind = "llvm" }}\nhost = {{ kind = "llvm" }}\ncontainer = false\n\n'
    for k in KINDS + ("spare",)
)


class Fleet:
    """The cluster plus what tests need to know about it."""

    def __init__(self, cluster: Any, catalogue: Path) -> None:
        self.cluster = cluster
        self.catalogue = catalogue
        self.address: str = cluster.address
        self.resources: dict[str, dict[str, float]] = {}  # node id -> custom resources it advertises

    def add(self, kind: str) -> Any:
        node = self.cluster.add_node(num_cpus=1, resources={kind: 1.0})
        self.resources[node.node_id] = {kind: 1.0}
        return node

    def nodes(self) -> list[dict[str, Any]]:
        return self.cluster.global_state.node_table()

    def boards(self, kind: str) -> set[str]:
        return {n for n, res in self.resources.items() if kind in res}

    def driver(self, study: Path, out: Path, *, submit: bool = False) -> subprocess.Popen[str]:
        """``deltann run`` joined to this cluster, in its own process; with ``submit``,
        the ``ray submit`` entry (run.py, which finds the cluster through RAY_ADDRESS)."""
        env = os.environ | {"DELTANN_DEVICES": str(self.catalogue), "PYTHONUNBUFFERED": "1"}
        if submit:
            env["RAY_ADDRESS"] = self.address
            cmd = [sys.executable, str(ROOT / "run.py"), "--", "--study", str(study), "--out", str(out)]
        else:
            cmd = [sys.executable, "-m", "deltann", "run", str(study), "--out", str(out), "--address", self.address]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def run(self, study: Path, out: Path, timeout: float = 300, *, submit: bool = False) -> str:
        proc = self.driver(study, out, submit=submit)
        output, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, output
        return output


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    from ray.cluster_utils import Cluster

    catalogue = tmp_path_factory.mktemp("catalogue") / "devices.toml"
    catalogue.write_text(CATALOGUE)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        fleet = Fleet(cluster, catalogue)
        for kind in ("x86-server", "x86-server", "gpu-xavier", "arm-hikey"):
            fleet.add(kind)
        cluster.wait_for_nodes()
        yield fleet
    finally:
        cluster.shutdown()


def study(folder: Path, name: str, devices: tuple[str, ...], extra: str = "", variants: str = '["torch"]') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nmodels = ["tiny_cnn"]\nvariants = {variants}\nruntimes = ["native", "tvm"]\n'
        f'settings = ["basic", "extended"]\ndevices = {json.dumps(list(devices))}\n{extra}\n'
        "[dataset]\nlimit = 2\n[timing]\nwarmup = 0\nnumber = 1\nrepeat = 2\n"
    )
    return path


def builds(out: Path) -> pl.DataFrame:
    return Store(out).scan("builds").collect()


def assert_placed(fleet: Fleet, out: Path) -> None:
    """Every row's board advertises the resource its unit's kind asked for."""
    kinds = load_catalogue(fleet.catalogue)
    for table in ("builds", "predictions", "timings"):
        frame = Store(out).scan(table).select("device", "board").unique().collect()
        for device, board in frame.iter_rows():
            assert kinds[device].resource in fleet.resources[board], (table, device, board)


def test_devices_lists_live_boards_of_each_kind(fleet: Fleet) -> None:
    boards = boards_by_kind(load_catalogue(fleet.catalogue), fleet.nodes())
    assert {k: {b["node_id"] for b in v} for k, v in boards.items()} == {k: fleet.boards(k) for k in KINDS + ("spare",)}
    # the same through the CLI, joined to the cluster
    env = os.environ | {"DELTANN_DEVICES": str(fleet.catalogue)}
    shown = subprocess.run([sys.executable, "-m", "deltann", "devices", "--address", fleet.address, "--json"],
                           env=env, capture_output=True, text=True, timeout=120, check=True)
    listed = json.loads(shown.stdout)["kinds"]
    assert {k: len(v["boards"]) for k, v in listed.items()} == {"x86-server": 2, "gpu-xavier": 1, "arm-hikey": 1,
                                                                 "spare": 0}


def test_units_land_on_boards_of_their_kind_and_spread(fleet: Fleet, tmp_path: Path) -> None:
    path = study(tmp_path, "placed", KINDS, variants='["torch", "torch->onnx"]')
    fleet.run(path, tmp_path / "out", submit=True)  # through run.py, as `ray submit` runs it
    b = builds(tmp_path / "out")
    assert b.height == 6 * 3 and b["unit_key"].n_unique() == b.height
    assert set(b["status"]) == {"ok"}, b.filter(pl.col("status") != "ok").select("config", "message").rows()
    assert_placed(fleet, tmp_path / "out")
    for kind in KINDS:  # spread: every board of a kind did some of its units
        assert set(b.filter(pl.col("device") == kind)["board"]) == fleet.boards(kind)
    assert Store(tmp_path / "out").scan("predictions").collect().height == 18 * 2


@pytest.mark.slow
def test_replicate_runs_every_unit_on_every_board(fleet: Fleet, tmp_path: Path) -> None:
    path = study(tmp_path, "replicas", ("x86-server",), extra="replicate = true")
    fleet.run(path, tmp_path / "out")
    b = builds(tmp_path / "out")
    boards = fleet.boards("x86-server")
    assert b.height == 3 * len(boards) and set(b["status"]) == {"ok"}
    per_config = b.group_by("config").agg(pl.col("board").sort())
    assert all(sorted(row) == sorted(boards) for row in per_config["board"].to_list())
    assert_placed(fleet, tmp_path / "out")
    # a rerun finds every board's run in the store
    output = fleet.run(path, tmp_path / "out")
    assert "0 units run" in output and builds(tmp_path / "out").height == b.height


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _done_on(out: Path, board: str | None = None) -> int:
    store = Store(out)
    if not store.files("builds"):
        return 0
    frame = store.scan("builds").collect()
    return frame.height if board is None else frame.filter(pl.col("board") == board).height


def run_and_kill(fleet: Fleet, victim: Any, path: Path, out: Path, *, wait_s: float = 180,
                 timeout: float = 240) -> tuple[pl.DataFrame, str]:
    """Run ``path`` and remove ``victim`` once a unit finished on it; the victim's builds
    rows at that moment and the driver's output (the run must end well)."""
    proc = fleet.driver(path, out)
    try:
        _wait_for(lambda: _done_on(out, victim.node_id) >= 1, wait_s, "a unit finished on the victim")
        before = builds(out).filter(pl.col("board") == victim.node_id)
        fleet.cluster.remove_node(victim)
        fleet.resources.pop(victim.node_id)
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    return before, output


def test_node_killed_mid_study_its_units_move_and_nothing_is_duplicated(fleet: Fleet, tmp_path: Path) -> None:
    victim = fleet.add("x86-server")
    fleet.cluster.wait_for_nodes()
    # 10 units for 3 boards (units are fed one at a time): when the victim's first unit is
    # in the store, it has already taken its next one, so it is killed with work in hand
    path = study(tmp_path, "lost", ("x86-server",), variants='["torch", "torch->onnx"]')
    path.write_text(path.read_text().replace('settings = ["basic", "extended"]',
                                             'settings = ["unscheduled", "basic", "default", "extended"]'))
    out = tmp_path / "out"
    before, output = run_and_kill(fleet, victim, path, out)
    b = builds(out)
    assert b.height == 10 and b["unit_key"].n_unique() == 10, output  # the full set, none twice
    assert set(b["status"]) == {"ok"}
    kept = b.filter(pl.col("board") == victim.node_id)
    assert set(before["unit_key"]) <= set(kept["unit_key"])  # finished rows stay
    preds = Store(out).scan("predictions").collect()
    assert preds.height == 10 * 2 and preds.select("unit_key", "image_index").is_unique().all()
    assert "retired: node lost" in output, output  # the victim was lost with work in hand
    assert "0 pending" in output, output


@pytest.mark.slow
def test_driver_killed_mid_study_rerun_finishes_only_the_missing_units(fleet: Fleet, tmp_path: Path) -> None:
    path = study(tmp_path, "resume", KINDS, variants='["torch", "torch->onnx"]')
    path.write_text(path.read_text().replace("repeat = 2\n", "repeat = 3\nmin_repeat_ms = 150\n"))
    out = tmp_path / "out"
    proc = fleet.driver(path, out)
    try:
        _wait_for(lambda: _done_on(out) >= 3, 180, "three finished units")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = builds(out)
    assert 3 <= first.height < 18
    assert [r["status"] for r in Store(out).read_manifest()["runs"]] == ["started"]  # killed: on record
    kept = {p: p.stat().st_mtime_ns for p in Store(out).files("builds")}
    output = fleet.run(path, out)
    b = builds(out)
    assert b.height == 18 and b["unit_key"].n_unique() == 18
    assert [r["status"] for r in Store(out).read_manifest()["runs"]] == ["started", "finished"]
    assert f"{18 - first.height} units run" in output, output
    assert all(p.stat().st_mtime_ns == m for p, m in kept.items())  # finished units not rerun
    assert_placed(fleet, out)


@pytest.mark.slow
def test_units_of_a_kind_with_no_board_left_are_pending_then_finish(fleet: Fleet, tmp_path: Path) -> None:
    only = fleet.add("spare")
    fleet.cluster.wait_for_nodes()
    path = study(tmp_path, "orphan", ("spare",), variants='["torch", "torch->onnx"]')
    path.write_text(path.read_text().replace("repeat = 2\n", "repeat = 3\nmin_repeat_ms = 150\n"))
    out = tmp_path / "out"
    proc = fleet.driver(path, out)
    try:
        _wait_for(lambda: _done_on(out) >= 1, 180, "a finished unit")
        fleet.cluster.remove_node(only)
        fleet.resources.pop(only.node_id)
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    done = builds(out).height
    assert 1 <= done < 6 and f"{6 - done} pending" in output, output
    fleet.add("spare")  # a board of the kind comes back: the rerun finishes the rest
    fleet.cluster.wait_for_nodes()
    output = fleet.run(path, out)
    b = builds(out)
    assert b.height == 6 and b["unit_key"].n_unique() == 6 and f"{6 - done} units run" in output, output


def jpeg_folder(folder: Path, n: int) -> Path:
    """``n`` small JPEGs: seeded random crops of a real photo (chelsea)."""
    from PIL import Image as PILImage

    from deltann import dataset

    rgb = dataset.load_samples(1)[0].rgb
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        top, left = int(rng.integers(0, rgb.shape[0] - 96)), int(rng.integers(0, rgb.shape[1] - 96))
        PILImage.fromarray(rgb[top : top + 96, left : left + 96]).save(folder / f"{i:05d}.jpg", quality=85)
    return folder


def shard_study(folder: Path, name: str, images: Path, shard: int) -> Path:
    """tiny_cnn in torch over ``images``, in shards of ``shard`` images, on the x86-server boards."""
    path = folder / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nmodels = ["tiny_cnn"]\nvariants = ["torch"]\nruntimes = ["native"]\n'
        f'devices = ["x86-server"]\n[dataset]\nsource = "{images}"\nshard = {shard}\n'
        "[timing]\nimages = 4\nblocks = 1\nwarmup = 0\nrepeat = 1\npause_ms = 0\n")
    return path


def test_a_4000_image_study_is_split_over_both_boards_by_image_shards(fleet: Fleet, tmp_path: Path) -> None:
    """One configuration over 4,000 images: 80 shards of 50 (a shard of this tiny model
    takes ~0.3 s, so it takes many to even out the boards' noise), run by both boards of
    the kind, each with 40-60 % of the images; every image classified once; one timing
    session for the configuration (not one per shard)."""
    images = jpeg_folder(tmp_path / "images", 4000)
    out = tmp_path / "out"
    output = fleet.run(shard_study(tmp_path, "split", images, 50), out, timeout=600)
    b = builds(out)
    assert b.height == 80 and set(b["status"]) == {"ok"} and b["unit_key"].n_unique() == 80, output
    preds = Store(out).scan("predictions").select("board", "image_index", "image_id", "unit_key").collect()
    assert preds.height == 4000 and preds["image_index"].n_unique() == 4000
    assert sorted(preds["image_id"].unique()) == sorted(p.name for p in images.iterdir())
    share = preds.group_by("board").len()
    assert share.height == 2 and set(share["board"]) <= fleet.boards("x86-server"), share
    print("shares of 4,000 images:", ", ".join(f"board {b[:8]} {n} ({n / 40:.1f} %)" for b, n in share.iter_rows()))
    for n in share["len"]:
        assert 0.4 <= n / 4000 <= 0.6, share
    sessions = Store(out).scan("sessions").collect()
    assert sessions.height == 1 and sessions["status"][0] == "ok" and sessions["images"][0] == 4
    assert "1 timing sessions" in output
    assert "nothing to do" in fleet.run(shard_study(tmp_path, "split", images, 50), out)  # resumed: all there


@pytest.mark.slow  # node loss mid-study is in the default suite above; this is its sharded twin
def test_a_killed_boards_shards_are_redone_elsewhere_and_nothing_is_duplicated(fleet: Fleet, tmp_path: Path) -> None:
    victim = fleet.add("x86-server")
    fleet.cluster.wait_for_nodes()
    images = jpeg_folder(tmp_path / "images", 4000)
    out = tmp_path / "out"
    before, output = run_and_kill(fleet, victim, shard_study(tmp_path, "shard-lost", images, 125), out, wait_s=300,
                                  timeout=400)
    b = builds(out)
    assert b.height == 32 and b["unit_key"].n_unique() == 32 and set(b["status"]) == {"ok"}, output
    assert set(before["unit_key"]) <= set(b.filter(pl.col("board") == victim.node_id)["unit_key"])
    preds = Store(out).scan("predictions").select("image_index", "unit_key").collect()
    assert preds.height == 4000 and preds["image_index"].is_unique().all()
    assert "retired: node lost" in output and "0 pending" in output, output
    print(f"killed board: {before.height} shards done before it was removed, kept; "
          f"{b.filter(pl.col('board') != victim.node_id).height} of 32 on the other boards; "
          f"{preds.height} predictions, each image once")
