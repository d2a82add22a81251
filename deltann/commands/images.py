"""``deltann images build KIND``: build a device kind's container image
(images/<KIND>/Dockerfile, tagged with the kind's ``image`` from cluster/devices.toml)
through the docker Python SDK; works against Docker or podman's Docker-compatible API
(set DOCKER_HOST, e.g. unix:///run/podman/podman.sock)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from deltann import __version__
from deltann.errors import FleetError
from deltann.fleet.devices import DeviceKind, load_catalogue

log = logging.getLogger("deltann.fleet")

ROOT = Path(__file__).resolve().parents[2]


def platform_of(kind: DeviceKind) -> str:
    """The image platform from the kind's host target: its boards' CPU, not the builder's."""
    triple = str(kind.host.get("mtriple", ""))
    return "linux/arm64" if triple.startswith(("aarch64", "arm64")) else "linux/amd64"


def build_options(kind: DeviceKind, root: Path = ROOT) -> dict[str, Any]:
    """Keyword arguments for ``docker.APIClient.build``; the context is the repository
    root (``.dockerignore`` keeps it to what the image installs)."""
    dockerfile = root / "images" / kind.name / "Dockerfile"
    if not kind.image:
        raise FleetError(f"kind {kind.name!r} has no image in the device catalogue")
    if not dockerfile.exists():
        raise FleetError(f"{dockerfile}: missing; every kind with an image needs images/<kind>/Dockerfile")
    return {
        "path": str(root), "dockerfile": str(dockerfile.relative_to(root)), "tag": kind.image,
        "buildargs": {"DELTANN_VERSION": __version__}, "platform": platform_of(kind), "rm": True, "decode": True,
    }


def build_image(kind: DeviceKind, client: Any = None, echo: Any = print) -> str:
    """Build ``kind``'s image; returns the image id. Raises FleetError on failure."""
    import docker

    try:
        client = client or docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise FleetError(f"no container engine reachable ({exc}); start Docker or set DOCKER_HOST") from None
    image_id = ""
    for chunk in client.api.build(**build_options(kind)):
        if "error" in chunk:
            raise FleetError(f"building {kind.image}: {chunk['error'].strip()}")
        if "stream" in chunk and chunk["stream"].strip():
            echo(chunk["stream"].rstrip())
        if "aux" in chunk and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
    return image_id


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("images", help="build the container image of a device kind")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    b = verbs.add_parser("build", help="build images/<KIND>/Dockerfile with the docker SDK")
    b.add_argument("kind", help="device kind (see `deltann devices`)")
    b.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    kinds = load_catalogue()
    if args.kind not in kinds:
        raise FleetError(f"unknown kind {args.kind!r}; kinds: {', '.join(kinds)}")
    image_id = build_image(kinds[args.kind])
    print(f"built {kinds[args.kind].image} ({image_id})")
    return 0
