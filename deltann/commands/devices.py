"""``deltann devices [--address ADDR]``: the device catalogue and the live boards of
each kind (nodes of the joined Ray cluster that advertise the kind's resource)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from deltann.core.device_catalogue import DeviceKind, catalogue_path, load_catalogue

log = logging.getLogger("deltann.fleet")


def boards_by_kind(kinds: dict[str, DeviceKind], nodes: list[dict[str, Any]]) -> dict[str, list[dict[str, str]]]:
    """Live boards of each kind from ``ray.nodes()`` output: why a plain function over
    the node list — tests and the CLI call it on any cluster's nodes."""
    out: dict[str, list[dict[str, str]]] = {name: [] for name in kinds}
    for node in nodes:
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        for name, kind in kinds.items():
            if resources.get(kind.resource, 0) > 0:
                out[name].append({"node_id": node["NodeID"], "hostname": node.get("NodeManagerHostname", ""),
                                  "address": node.get("NodeManagerAddress", "")})
    return out


def cluster_nodes(address: str) -> list[dict[str, Any]]:
    """``ray.nodes()`` of the cluster at ``address`` (joined and left again unless this
    process is already connected)."""
    import ray

    if ray.is_initialized():
        return ray.nodes()
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        return ray.nodes()
    finally:
        ray.shutdown()


def render(kinds: dict[str, DeviceKind], boards: dict[str, list[dict[str, str]]] | None) -> Any:
    from rich.table import Table

    table = Table(title="device kinds (cluster/devices.toml)" if boards is not None
                  else "device kinds (no cluster joined: pass --address to list live boards)")
    for col in ("kind", "resource", "target", "host", "container image", "live boards"):
        table.add_column(col)
    for name, kind in kinds.items():
        if boards is None:
            live = "-"
        else:
            found = boards.get(name, [])
            live = f"{len(found)}: " + ", ".join(f"{b['hostname']} ({b['node_id'][:8]})" for b in found) if found else "0"
        image = (kind.image + (" (runs in it)" if kind.container else " (not used)")) if kind.image else "-"
        table.add_row(name, kind.resource, json.dumps(kind.target, sort_keys=True),
                      json.dumps(kind.host, sort_keys=True), image, live)
    return table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="device kinds and the live boards of each")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray cluster to ask for live boards ('auto' or host:port; default: $RAY_ADDRESS)")
    p.add_argument("--catalogue", help="device catalogue (default: $DELTANN_DEVICES or cluster/devices.toml)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    path = catalogue_path(Path(args.catalogue) if args.catalogue else None)
    kinds = load_catalogue(path)
    boards = boards_by_kind(kinds, cluster_nodes(args.address)) if args.address else None
    if args.json:
        print(json.dumps({"catalogue": str(path),
                          "kinds": {n: k.model_dump() | {"boards": None if boards is None else boards[n]}
                                    for n, k in kinds.items()}}, indent=2))
        return 0
    Console().print(render(kinds, boards))
    return 0
