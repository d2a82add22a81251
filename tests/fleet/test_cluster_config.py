"""ray_cluster.yaml passes Ray's own cluster-config preparation and JSON-schema
validation, and names one worker node type per board kind, each with the kind's image
and resource (so `ray up` would build the fleet the catalogue describes)."""

from __future__ import annotations

from pathlib import Path

import yaml

from deltann.fleet.devices import DEFAULT_CATALOGUE, load_catalogue

ROOT = Path(__file__).resolve().parents[2]


def test_ray_cluster_yaml_is_valid_for_ray() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    config = prepare_config(raw)
    validate_config(config)  # raises jsonschema.ValidationError when invalid
    kinds = load_catalogue(DEFAULT_CATALOGUE)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    for name, kind in kinds.items():
        if name == "local":
            continue
        assert types[name]["resources"] == {kind.resource: 1}
        assert types[name]["docker"]["worker_image"] == kind.image
        assert config["provider"]["boards"][name], name


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
