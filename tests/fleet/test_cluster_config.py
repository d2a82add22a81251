"""ray_cluster.yaml (the lab) and cluster/loopback.yaml (this machine, cluster/loopback.sh)
are written from one source (cluster/fleet.toml + the device catalogue) and are up to date
with it, so they cannot drift apart; both pass Ray's own cluster-config preparation and
JSON-schema validation and name one node type per board kind, each advertising the kind's
resource (so `ray up` builds the fleet the catalogue describes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deltann.fleet import launcher
from deltann.core.device_catalogue import DEFAULT_CATALOGUE, load_catalogue

ROOT = Path(__file__).resolve().parents[2]
FLEET = launcher.load_fleet()
KINDS = load_catalogue(DEFAULT_CATALOGUE)


@pytest.mark.parametrize("variant", sorted(FLEET))
def test_each_launcher_config_is_generated_up_to_date_and_valid_for_ray(variant: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    path = ROOT / FLEET[variant]["file"]
    assert path.read_text() == launcher.render(variant), f"{path} is stale: run python -m deltann.fleet.launcher"
    config = prepare_config(yaml.safe_load(path.read_text()))
    validate_config(config)  # raises jsonschema.ValidationError when invalid
    types = config["available_node_types"]
    assert config["head_node_type"] == "head" and "docker" not in config
    boards = config["provider"]["boards"]
    assert set(types) == set(boards)
    for name, addresses in boards.items():
        if name != "head":
            assert types[name]["resources"] == {KINDS[name].resource: 1}
            assert types[name]["min_workers"] == types[name]["max_workers"] == len(addresses)
    for cmd in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        assert "ray stop" not in cmd  # it would kill every Ray process of the machine
        assert "--node-ip-address=$RAY_CLOUD_INSTANCE_ID" in cmd and "--temp-dir=$HOME/ray-" in cmd
    assert config["file_mounts"]["~/cluster"] == "./cluster"  # where run.py finds the catalogue


def test_the_lab_has_every_board_kind_and_the_loopback_only_what_this_cpu_runs() -> None:
    lab, loopback = FLEET["lab"]["boards"], FLEET["loopback"]["boards"]
    assert set(lab) - {"head"} == {k for k in KINDS if k != "local"}
    for kind in set(loopback) - {"head"}:
        assert KINDS[kind].target["kind"] == "llvm", kind
    addresses = [a for v in loopback.values() for a in v]
    assert all(a.startswith("127.") and a != "127.0.0.1" for a in addresses)  # Ray rewrites 127.0.0.1
    assert len(set(addresses)) == len(addresses)
    # the two differ in addresses and node types only: the rest is one template
    a, b = launcher.cluster_config("lab", FLEET, KINDS), launcher.cluster_config("loopback", FLEET, KINDS)
    differ = {k for k in a if a[k] != b[k]}
    assert differ <= {"provider", "available_node_types", "max_workers"}
    assert {k: v for k, v in a["provider"].items() if k != "boards"} == \
        {k: v for k, v in b["provider"].items() if k != "boards"}


def test_a_board_list_naming_an_unknown_kind_is_refused() -> None:
    fleet = {"lab": FLEET["lab"] | {"boards": {"head": ["10.0.0.1"], "tpu-pod": ["10.0.0.2"]}}}
    with pytest.raises(ValueError, match=r"\[lab.boards\] names \['tpu-pod'\]"):
        launcher.cluster_config("lab", fleet, KINDS)


def test_its_node_provider_claims_boards_of_each_type(tmp_path: Path) -> None:
    from ray.autoscaler._private.providers import _get_node_provider
    from ray.autoscaler.tags import TAG_RAY_USER_NODE_TYPE

    raw = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    provider_config = raw["provider"] | {"state_dir": str(tmp_path)}
    provider = _get_node_provider(provider_config, "deltann-test", use_cache=False)
    created = provider.create_node({}, {TAG_RAY_USER_NODE_TYPE: "gpu-xavier"}, 3)
    assert sorted(created) == raw["provider"]["boards"]["gpu-xavier"]  # only two exist
    assert provider.non_terminated_nodes({TAG_RAY_USER_NODE_TYPE: "gpu-xavier"}) == sorted(created)
    provider.terminate_node("10.0.0.21")
    assert provider.non_terminated_nodes({}) == ["10.0.0.22"]
