"""The launcher path for real (slow; make test-fleet runs it, CI requires it): this machine
as a lab, inside a private PID/network/mount namespace (cluster/loopback.sh): sshd, `ray up`
with cluster/loopback.yaml, every board kind's resource live, `ray submit ... run.py --
--study studies/loopback.toml` (tiny_cnn on x86-cpu, in its image, and local), `ray
rsync-down`, `ray down`, the namespace's end. Checked from outside: every unit ran on a
node advertising its kind's resource, no Ray port of the namespace listened outside it,
`ray down` released every board claim, and no process of the namespace is left."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import polars as pl
import psutil
import pytest

from deltann.core.device_catalogue import DEFAULT_CATALOGUE, load_catalogue
from deltann.store import Store

from .conftest import REQUIRE_ENGINE, engine_with

ROOT = Path(__file__).resolve().parents[2]
KINDS = load_catalogue(DEFAULT_CATALOGUE)
STEPS = ["ray up", "boards joined", "devices", "ray submit", "ray rsync-down", "ray down"]


def _namespace_pids(namespace: str) -> list[int]:
    pids = []
    for pid in psutil.pids():
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") == namespace:
                pids.append(pid)
        except OSError:
            continue
    return pids


def _listening_outside(namespace: str) -> list[str]:
    """Sockets listening in this (the host's) network namespace owned by the launcher's processes."""
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status != psutil.CONN_LISTEN or conn.pid is None:
            continue
        try:
            if os.readlink(f"/proc/{conn.pid}/ns/pid") == namespace:
                found.append(f"{conn.laddr} (pid {conn.pid})")
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_ray_up_submit_rsync_down_in_a_private_namespace(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        reason = "the loopback launcher needs root and unshare (a private PID/network/mount namespace)"
        if os.environ.get(REQUIRE_ENGINE) == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    _, image = engine_with(KINDS["x86-cpu"].image)  # the x86-cpu board runs units in it
    out = tmp_path / "loopback"
    started = time.monotonic()
    proc = subprocess.Popen([str(ROOT / "cluster" / "loopback.sh"), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    outside: list[str] = []
    namespace = ""
    while proc.poll() is None:  # while the cluster runs: nothing of it listens out here
        if not namespace and (out / "namespace").exists():
            namespace = (out / "namespace").read_text().strip()
        if namespace:
            outside += _listening_outside(namespace)
        time.sleep(0.5)
    output = proc.stdout.read()
    seconds = time.monotonic() - started
    assert proc.returncode == 0, output + (out / "launcher.log").read_text()[-4000:]
    assert namespace.startswith("pid:[") and not outside, outside
    assert _namespace_pids(namespace) == []  # the namespace ended with every process in it
    steps = dict(line.split("\t") for line in (out / "steps.tsv").read_text().splitlines())
    assert list(steps) == STEPS
    print(f"loopback launcher: {seconds:.0f} s in all; " + ", ".join(f"{k} {v} s" for k, v in steps.items()))

    text = (out / "devices.out").read_text()
    live = json.loads(text[text.index("{"):])["kinds"]  # `deltann devices --json` on the head
    boards = {kind: {b["node_id"] for b in body["boards"]} for kind, body in live.items()}
    addresses = {kind: [b["address"] for b in body["boards"]] for kind, body in live.items()}
    assert addresses["x86-cpu"] == ["127.0.0.3"] and addresses["local"] == ["127.0.0.4"]

    store = Store(out / "results")
    b = store.scan("builds").collect()
    assert b.height == 6 and set(b["status"]) == {"ok"}, b.select("config", "device", "message").rows()
    assert set(b["device"]) == {"x86-cpu", "local"}
    for table in ("builds", "predictions", "timings"):  # every unit on a node with its kind's resource
        for device, board in store.scan(table).select("device", "board").unique().collect().iter_rows():
            assert board in boards[device], (table, device, board)
    x86 = b.filter(pl.col("device") == "x86-cpu")
    assert set(x86["image"]) == {f"{KINDS['x86-cpu'].image}@{image.id}"}  # inside the image
    assert b.filter(pl.col("device") == "local")["image"].is_null().all()  # on the board's host
    assert store.scan("predictions").collect().height == 6 * 2
    assert json.loads((out / "boards-after-down.json").read_text()) == {}  # ray down released every claim
