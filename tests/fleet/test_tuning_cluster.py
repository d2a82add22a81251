"""MetaSchedule tuning spread over the boards of one kind on a real two-board Ray cluster
(``ray.cluster_utils.Cluster`` on this machine): the kind's heavy kernels are split over
both boards, each tunes its share, and the records of both end up in the store and in the
tuned build. As in test_cluster.py, the kind executes ``llvm`` here and the driver runs in
its own process (``deltann run --address``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from deltann import zoo
from deltann.store import Store

CATALOGUE = '[kinds.duo]\nresource = "duo"\ntarget = { kind = "llvm", mcpu = "native" }\nhost = { kind = "llvm" }\n'


@pytest.fixture(scope="module")
def duo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[str], Path]]:
    from ray.cluster_utils import Cluster

    catalogue = tmp_path_factory.mktemp("catalogue") / "devices.toml"
    catalogue.write_text(CATALOGUE)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        nodes = [cluster.add_node(num_cpus=1, resources={"duo": 1.0}) for _ in range(2)]
        cluster.wait_for_nodes()
        yield cluster, sorted(n.node_id for n in nodes), catalogue
    finally:
        cluster.shutdown()


def _run(study: Path, out: Path, cluster: Any, catalogue: Path) -> None:
    """``deltann run`` of ``study`` against the cluster, as its own driver process."""
    env = os.environ | {"DELTANN_DEVICES": str(catalogue), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "deltann", "run", str(study), "--out", str(out),
                           "--address", cluster.address], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow  # ~1 min: a cluster, a driver process, two boards importing TVM and tuning
def test_tuning_is_spread_over_the_kinds_boards(duo: tuple[Any, list[str], Path], tmp_path: Path) -> None:
    from deltann.compile import metaschedule as tuning, settings
    from deltann.compile.frontends import from_torch
    from deltann.compile.pipeline import make_target

    cluster, boards, catalogue = duo
    path = tmp_path / "duo.toml"
    path.write_text('name = "duo"\nmodels = ["tiny_cnn"]\nvariants = ["torch"]\nruntimes = ["tvm"]\n'
                    'settings = ["tuned"]\ndevices = ["duo"]\n[tuning]\ntrials = 8\n'
                    "[dataset]\nlimit = 1\n[timing]\nrepeat = 1\n")
    out = tmp_path / "out"
    _run(path, out, cluster, catalogue)
    build = Store(out).scan("builds").collect()
    assert build["status"].to_list() == ["ok"], build.select("stage", "message").rows()

    rows = Store(out).scan("tuning", complete_only=False).collect()
    tuned_by = {b: set(rows.filter(pl.col("board") == b)["task"]) for b in rows["board"].unique()}
    assert set(tuned_by) == set(boards), tuned_by  # both boards tuned
    # ... each its own share: the driver's split of the heavy kernels, boards in node-id order
    mod = from_torch(zoo.get("tiny_cnn").loaders["torch"](), (1, 3, 64, 64))
    tasks = tuning.select(tuning.extract(mod, settings.passes_of("tuned"), make_target(
        json.dumps({"kind": "llvm", "mcpu": "native"}), "")), "heavy")
    shares = tuning.split(tasks, 2)
    for board, share in zip(boards, shares, strict=True):
        assert tuned_by[board] and tuned_by[board] <= {t.name for t in share}, (board, tuned_by[board])
    assert len(set(rows["round"])) == 2 and set(rows["trials_total"]) == {8}


@pytest.mark.slow  # ~1 min: as above, with a time budget
def test_a_time_budget_is_split_over_the_kinds_boards(duo: tuple[Any, list[str], Path], tmp_path: Path) -> None:
    """``[tuning] minutes`` is board time in all: each of the two boards tunes its share for
    half of it (the wall time halves), and the store records the budget completed, so a
    rerun with the same budget reuses the records."""
    cluster, boards, catalogue = duo
    path = tmp_path / "minutes.toml"
    path.write_text('name = "minutes"\nmodels = ["tiny_cnn"]\nvariants = ["torch"]\nruntimes = ["tvm"]\n'
                    'settings = ["tuned"]\ndevices = ["duo"]\n[tuning]\nminutes = 0.5\n'
                    "[dataset]\nlimit = 1\n[timing]\nrepeat = 1\n")
    out = tmp_path / "out"
    _run(path, out, cluster, catalogue)
    assert Store(out).scan("builds").collect()["status"].to_list() == ["ok"]
    rows = Store(out).scan("tuning", complete_only=False).collect()
    assert set(rows["board"]) == set(boards)
    assert set(rows["budget_s"]) == {30.0} and (rows["trials_total"] > 0).all()
    # a second study with the same budget (another timing protocol): the records are reused
    path.write_text(path.read_text().replace("repeat = 1", "repeat = 2").replace('"minutes"', '"minutes2"'))
    _run(path, out, cluster, catalogue)
    again = Store(out).scan("tuning", complete_only=False).collect()
    assert again.height == rows.height
