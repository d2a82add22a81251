"""Ray cluster-launcher configurations from one source: ``cluster/fleet.toml`` (each
variant's board addresses and SSH login) and the device catalogue (each kind's Ray
resource). ``python -m deltann.fleet.launcher`` writes ray_cluster.yaml (the lab) and
cluster/loopback.yaml (this machine, run by cluster/loopback.sh); ``--check`` says which
is out of date. Why generated: the loopback variant is what CI runs for real, so it must
be the lab's configuration with other addresses, not a copy that drifts.

What the launcher does on every board, lab or loopback (found by running it for real):

- Ray runs on the board's host, from the deltann venv first on the login shell's PATH
  (``ray submit`` runs ``python ~/run.py`` through that shell). Kinds whose units run in
  a container (``container = true``) get it from the board's actor through the board's
  engine, as on a board joined with cluster/bootstrap.sh. Why not Ray's ``docker:``
  section: it runs Ray itself inside the node's image, so a board image would need Ray
  (and the head's, the driver's dependencies) where it holds only what executes units;
  and its one ``container_name`` per cluster means boards sharing an engine (the loopback)
  would all find the head's container running and start Ray inside it.
- Every node starts with ``--node-ip-address`` set to its board address (the provider's
  node id) and its own ``--temp-dir``: two Ray nodes of one machine in one session folder
  collide (``bind: Address already in use``).
- No ``ray stop`` before ``ray start``: it kills every Ray process of the machine by name.
- The catalogue reaches the head as the file-mounted ``~/cluster``, where run.py looks.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any

from deltann.core.device_catalogue import DEFAULT_CATALOGUE, DeviceKind, load_catalogue

ROOT = Path(__file__).resolve().parents[2]
FLEET = ROOT / "cluster" / "fleet.toml"

#: The board address of the node being started: its node id under StaticBoards, which the
#: launcher exports to the start commands of every node it starts.
NODE_IP = "$RAY_CLOUD_INSTANCE_ID"

HEADER = """\
# DeltaNN fleet for Ray's cluster launcher ({variant}). GENERATED from cluster/fleet.toml and
# cluster/devices.toml by `python -m deltann.fleet.launcher`: edit those, then run it
# (tests/fleet/test_cluster_config.py fails while this file is out of date).
#
#   ray up {file}
#   ray submit {file} run.py -- --study studies/quickstart.toml
#   ray rsync-down {file} '~/results/<study>/' results/<study>/
#   ray down {file}
#
# One node type per board kind, advertising the kind's Ray resource (what board actors ask
# for). The boards exist already, so the provider is deltann's StaticBoards: node type ->
# board addresses, claims kept in ~/.deltann. Ray runs on each board's host from the deltann
# venv first on its login shell's PATH; units of a container kind run in the kind's image,
# which the board's actor starts through the board's engine (`deltann images build KIND` on
# the board). Why no `docker:` section, --node-ip-address, --temp-dir and no `ray stop`:
# see deltann/fleet/launcher.py. Checked by Ray's own validator in the same test.
"""


def load_fleet(path: Path = FLEET) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def cluster_config(variant: str, fleet: dict[str, Any], kinds: dict[str, DeviceKind]) -> dict[str, Any]:
    """The launcher configuration of ``variant`` (a table of fleet.toml) as a dict."""
    spec = fleet[variant]
    boards: dict[str, list[str]] = spec["boards"]
    unknown = sorted(set(boards) - set(kinds) - {"head"})
    if unknown:
        raise ValueError(f"{FLEET}: [{variant}.boards] names {unknown}, which are not kinds of the device catalogue")
    types: dict[str, Any] = {
        # runs the driver and the GCS; no board resource, so no board actor lands here
        "head": {"node_config": {}, "resources": {"CPU": 2}, "min_workers": 0, "max_workers": 0},
    }
    for name, addresses in boards.items():
        if name == "head":
            continue
        n = len(addresses)
        types[name] = {"node_config": {}, "resources": {kinds[name].resource: 1}, "min_workers": n,
                       "max_workers": n}
    temp_dir = f"--temp-dir=$HOME/ray-{NODE_IP}"
    return {
        "cluster_name": "deltann",
        "max_workers": sum(len(v) for k, v in boards.items() if k != "head"),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 60,
        "provider": {"type": "external", "module": "deltann.fleet.boards_provider.StaticBoards",
                     "state_dir": "~/.deltann", "boards": boards},
        "auth": {"ssh_user": spec["ssh_user"], "ssh_private_key": spec["ssh_private_key"]},
        "head_node_type": "head",
        "available_node_types": types,
        "file_mounts": {"~/studies": "./studies", "~/cluster": "./cluster"},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": ["**/.git", "**/.venv", "**/.work", "results/**"],
        "rsync_filter": [".gitignore"],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        # Ray's own port defaults; the dashboard stays on localhost of the head.
        "head_start_ray_commands": [
            f"ray start --head --node-ip-address={NODE_IP} --port=6379 --dashboard-host=127.0.0.1 {temp_dir} "
            "--autoscaling-config=~/ray_bootstrap_config.yaml --disable-usage-stats"],
        # the launcher hands the node type's `resources` to ray start (RAY_OVERRIDE_RESOURCES)
        "worker_start_ray_commands": [
            f"ray start --address=$RAY_HEAD_IP:6379 --node-ip-address={NODE_IP} {temp_dir} --disable-usage-stats"],
    }


def render(variant: str, fleet: dict[str, Any] | None = None, kinds: dict[str, DeviceKind] | None = None) -> str:
    """The YAML text of ``variant``, with its header."""
    import yaml

    fleet = fleet if fleet is not None else load_fleet()
    kinds = kinds if kinds is not None else load_catalogue(DEFAULT_CATALOGUE)
    config = cluster_config(variant, fleet, kinds)
    header = HEADER.format(variant=variant, file=fleet[variant]["file"])
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deltann.fleet.launcher", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say which files are out of date (exit 1)")
    args = parser.parse_args(argv)
    fleet = load_fleet()
    stale = []
    for variant, spec in fleet.items():
        path = ROOT / spec["file"]
        text = render(variant, fleet)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(str(path.relative_to(ROOT)))
        if not args.check:
            path.write_text(text)
    verb = "out of date" if args.check else "written"
    print(f"{verb}: {', '.join(stale)}" if stale else "up to date")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
