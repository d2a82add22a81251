"""Who made a result (issue 15): the lab and the board's platform go into every unit key,
so two labs' results never share a key, while a rerun on the same machine finds its
units; a kind whose boards differ in platform gets units per platform, each run only by
boards of its platform."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from deltann import dataset, plan, zoo
from deltann.errors import FleetError
from deltann.core import identity
from deltann.core.device_catalogue import load_catalogue
from deltann.study import Study

KINDS = load_catalogue()


def _study() -> Study:
    return Study.model_validate({"name": "p", "models": ["tiny_cnn"], "variants": ["torch", "torch->onnx"],
                                 "settings": ["basic"]})


def _inputs() -> dict[str, dataset.Inputs]:
    return {"tiny_cnn": dataset.preprocess(dataset.load_samples(2), zoo.get("tiny_cnn").preprocess)}


def test_a_lab_is_named_or_is_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(identity.LAB_ENV, raising=False)
    here = identity.lab()
    assert here.name == socket.gethostname() and here.key.startswith(here.name + "/")
    assert identity.lab() == here  # stable: a rerun on this machine finds its units
    monkeypatch.setenv(identity.LAB_ENV, "tum-lab")
    assert identity.lab() == identity.Lab("tum-lab", "tum-lab")
    assert identity.lab("eth").name == "eth"  # --lab wins over the environment
    for bad in ("../x", "a b", "x" * 65, "-lead", "a\nb"):
        with pytest.raises(FleetError, match="a lab name is letters"):
            identity.lab(bad)


def test_native_resolves_to_this_cpu_as_tvm_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deltann.compile.pipeline import resolve_native

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    mine = identity.local_platform(KINDS["local"])
    want = resolve_native({"kind": "llvm", "mcpu": "native"})
    assert json.loads(mine.target) == want and json.loads(mine.host) == want  # a CPU's host is the target
    assert mine.cpu.endswith(")") and len(mine.isa) == 16
    assert list(tmp_path.glob("deltann/llvm-cpu-*.txt"))  # kept: the next run does not import TVM for it
    assert identity.local_platform(KINDS["local"]) == mine


def _platform(cpu: str) -> identity.Platform:
    # Boards with other CPUs are out of this machine's reach: two platforms written out.
    target = json.dumps({"kind": "llvm", "mcpu": cpu})
    return identity.Platform(target=target, host=target, cpu=f"{cpu} (x86_64)", isa=cpu[:16].ljust(16, "0"))


def test_keys_hold_the_lab_and_the_platform() -> None:
    study, inputs = _study(), _inputs()
    a, b = identity.Lab("a", "a"), identity.Lab("b", "b")
    zen, sky = _platform("znver4"), _platform("skylake")
    keys = {u.config: u.key for u in plan.expand(study, inputs, KINDS, {"local": [zen]}, a)}
    assert keys == {u.config: u.key for u in plan.expand(study, inputs, KINDS, {"local": [zen]}, a)}  # a rerun
    other_lab = {u.config: u.key for u in plan.expand(study, inputs, KINDS, {"local": [zen]}, b)}
    other_cpu = {u.config: u.key for u in plan.expand(study, inputs, KINDS, {"local": [sky]}, a)}
    assert all(other_lab[c] != k and other_cpu[c] != k for c, k in keys.items())
    units = plan.expand(study, inputs, KINDS, {"local": [zen]}, a)
    tvm = next(u for u in units if u.runtime == "tvm")
    assert json.loads(tvm.target) == {"kind": "llvm", "mcpu": "znver4"}  # resolved, not "native"
    assert (tvm.lab, tvm.cpu, tvm.platform) == ("a", "znver4 (x86_64)", zen.key)
    native = next(u for u in units if u.runtime == "torch")
    assert native.target == "" and native.cpu == "znver4 (x86_64)"


def test_a_kind_whose_boards_differ_gets_units_per_platform() -> None:
    zen, sky = _platform("znver4"), _platform("skylake")
    units = plan.expand(_study(), _inputs(), KINDS, {"local": [zen, sky]}, identity.Lab("a", "a"))
    assert len(units) == 2 * 4 and len({u.key for u in units}) == 8
    groups = plan.timing_groups(units)
    assert sorted(groups) == sorted([("tiny_cnn", f"local|{zen.key}"), ("tiny_cnn", f"local|{sky.key}")])
    assert all({u.platform for u in g} == {k[1].split("|")[1]} for k, g in groups.items())


def test_units_go_only_to_boards_of_their_platform(tiny_results: Path, tmp_path: Path, ray_session: None) -> None:
    """Two boards of one kind that differ in platform (two actors on this machine, told
    they are a Zen 4 and a Skylake board: the CPUs are out of reach here), replaying real
    tiny_cnn units: each unit's rows come from a board of its own platform."""
    import ray

    from deltann.fleet import driver
    from deltann.store import SCHEMAS, Store
    from deltann.study import load_study

    study = load_study(tiny_results.parent / "study.toml", KINDS)
    store = Store(tiny_results)
    frames = {name: store.scan(name).collect() for name in ("predictions", "timings", "builds")}
    recordings = {}
    for row in frames["builds"].iter_rows(named=True):
        tables = {name: f.filter(f["unit_key"] == row["unit_key"]).head(4).to_arrow().cast(SCHEMAS[name])
                  for name, f in frames.items()}
        recordings[row["config"]] = {"seconds": 0.05, "tables": tables}
    zen, sky = _platform("znver4"), _platform("skylake")
    inputs = driver.prepare_inputs(study, tmp_path)
    units = plan.expand(study, inputs, KINDS, {"local": [zen, sky]}, identity.Lab("a", "a"))
    driver._ensure_ray(None, KINDS, ["local"])
    sim = Store(tmp_path / "sim")
    done: list[dict] = []
    dispatcher = driver.Dispatcher(study, sim, ray.put(recordings), str(tmp_path / "artifacts"), done.append,
                                   method="replay")
    for u in units:
        dispatcher.queues[plan.pool(u.device, u.platform)].append(u)
    node = ray.get_runtime_context().get_node_id()
    lanes = {p.key: dispatcher.add_lane(KINDS["local"], {"node_id": node, "hostname": p.cpu, "platform": p.key})
             for p in (zen, sky)}
    try:
        dispatcher.run()
    finally:
        for lane in lanes.values():
            ray.kill(lane.actor)
    actor_platform = {lane.actor._actor_id.hex(): key for key, lane in lanes.items()}
    builds = sim.scan("builds").collect()
    assert builds.height == len(units) and len(done) == len(units)
    platform_of = {u.key: u.platform for u in units}
    for unit_key, board in builds.select("unit_key", "board").iter_rows():
        assert actor_platform[board] == platform_of[unit_key]
    assert set(builds["board"]) == set(actor_platform)  # both boards worked
