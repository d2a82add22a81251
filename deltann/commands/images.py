"""``deltann images build KIND [--base IMAGE] [--ca-certs DIR]``: build a device kind's
container image (images/<KIND>/Dockerfile, tagged with the kind's ``image`` from
cluster/devices.toml) through the docker Python SDK; works against Docker or podman's
Docker-compatible API (set DOCKER_HOST, e.g. ``eval "$(cluster/engine.sh env)"``).

Why the build context is assembled here rather than by the engine: ``--ca-certs`` adds
certificates from outside the repository (a network that re-signs TLS makes pip inside
the build fail verification without them), and the context stays what ``.dockerignore``
allows, with the SDK's own matcher. Every failure is one line: engine unreachable, base
image missing, or the failing step with its last lines of output."""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from deltann import __version__
from deltann.core.device_catalogue import DeviceKind, load_catalogue
from deltann.errors import FleetError
from deltann.fleet.container import SOURCE_LABEL, source_digest

log = logging.getLogger("deltann.fleet")

ROOT = Path(__file__).resolve().parents[2]
#: Where ``--ca-certs`` files land in the build context (the base stage copies this folder).
CA_FOLDER = "images/ca-certs"
#: Lines of build output kept for the error message of a failing step.
TAIL = 6


def platform_of(kind: DeviceKind) -> str:
    """The image platform from the kind's host target: its boards' CPU, not the builder's."""
    triple = str(kind.host.get("mtriple", ""))
    return "linux/arm64" if triple.startswith(("aarch64", "arm64")) else "linux/amd64"


def board_pins(root: Path = ROOT) -> str:
    """``name==version`` of each board package (``[tool.deltann.images] board`` in
    pyproject.toml) as installed beside the driver, space-separated: the image installs
    exactly these, so a board runs the versions its units' content keys name."""
    import tomllib

    names = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["deltann"]["images"]["board"]
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue  # not installed here: the image takes pyproject's range
    return " ".join(pins)


def build_options(kind: DeviceKind, root: Path = ROOT, base: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``docker.APIClient.build`` (less the context)."""
    dockerfile = root / "images" / kind.name / "Dockerfile"
    if not kind.image:
        raise FleetError(f"kind {kind.name!r} has no image in the device catalogue")
    if not dockerfile.exists():
        raise FleetError(f"{dockerfile}: missing; every kind with an image needs images/<kind>/Dockerfile")
    buildargs = {"DELTANN_VERSION": __version__, "BOARD_PINS": board_pins(root)}
    if base:
        buildargs["BASE"] = base

    return {
        "dockerfile": str(dockerfile.relative_to(root)), "tag": kind.image, "buildargs": buildargs,
        "labels": {SOURCE_LABEL: source_digest()},  # the actor refuses an image of other sources
        "platform": platform_of(kind), "rm": True, "decode": True,
    }


def build_context(dockerfile: str, root: Path = ROOT, ca_certs: Path | None = None) -> IO[bytes]:
    """The build context as a tar file: what ``.dockerignore`` lets through, plus the
    ``*.crt`` files of ``ca_certs`` under :data:`CA_FOLDER`."""
    from docker.utils.build import create_archive, exclude_paths

    patterns = [line.strip() for line in (root / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    extra: list[tuple[str, str]] = []
    if ca_certs is not None:
        if not ca_certs.is_dir():
            raise FleetError(f"--ca-certs {ca_certs}: not a folder; give the folder holding the *.crt files "
                             "(e.g. /usr/local/share/ca-certificates)")
        certs = sorted(ca_certs.glob("*.crt"))
        if not certs:
            raise FleetError(f"--ca-certs {ca_certs}: no *.crt file there")
        extra = [(f"{CA_FOLDER}/{c.name}", c.read_text()) for c in certs]
    files = sorted(exclude_paths(str(root), patterns, dockerfile=dockerfile))
    return create_archive(str(root), files=files, extra_files=extra)


def _engine(client: Any) -> Any:
    import docker

    try:
        client = client or docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        where = os.environ.get("DOCKER_HOST", "the default socket")
        reason = " ".join(str(exc).split())[:300]
        raise FleetError(f"no container engine reachable at {where} ({reason}); start one "
                         "(cluster/engine.sh start; eval \"$(cluster/engine.sh env)\") or set DOCKER_HOST") from None
    return client


def _base_of(options: dict[str, Any], root: Path) -> str:
    """The image the build starts from: --base, else the Dockerfile's ``ARG BASE`` default."""
    if "BASE" in options["buildargs"]:
        return options["buildargs"]["BASE"]
    for line in (root / options["dockerfile"]).read_text().splitlines():
        if line.startswith("ARG BASE="):
            return line.split("=", 1)[1].strip()
    return ""


def build_image(kind: DeviceKind, client: Any = None, echo: Callable[[str], None] = print, *,
                base: str | None = None, ca_certs: Path | None = None, root: Path = ROOT) -> str:
    """Build ``kind``'s image, echoing the build's output; returns the image id.
    Raises FleetError (one line) on failure."""
    import docker

    options = build_options(kind, root, base)
    client = _engine(client)
    base_image = _base_of(options, root)
    have_base = True
    try:
        client.images.get(base_image)
    except docker.errors.ImageNotFound:
        have_base = False
        echo(f"base image {base_image} is not in this engine: the build will try to pull it")
    except docker.errors.DockerException:
        pass  # a stage name or an odd reference: the build says
    context = build_context(options["dockerfile"], root, ca_certs)
    tail: deque[str] = deque(maxlen=TAIL)
    step = ""
    image_id = ""
    try:
        for chunk in client.api.build(fileobj=context, custom_context=True, **options):
            if "stream" in chunk:
                for line in chunk["stream"].splitlines():
                    if not line.strip():
                        continue
                    echo(line.rstrip())
                    if line.startswith("Step "):
                        step = line.strip()
                        tail.clear()  # the tail is the current step's own output
                    elif not line.lstrip().startswith(("--->", "Removing intermediate container")):
                        tail.append(line.strip())
            if "error" in chunk:
                error = " ".join(chunk["error"].split())
                if not have_base and step.split(" : ", 1)[-1].upper().startswith("FROM"):
                    raise FleetError(f"building {kind.image}: base image {base_image} is missing from the engine "
                                     f"and could not be pulled ({error[:300]}); import it (cluster/engine.sh start) "
                                     "or pass --base IMAGE")
                last = " | ".join(tail)
                raise FleetError(f"building {kind.image}: {step or 'a step'} failed: {error[:600]}"
                                 + (f"; last lines: {last[-900:]}" if last else ""))
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
    except docker.errors.DockerException as exc:
        raise FleetError(f"building {kind.image}: the engine failed ({' '.join(str(exc).split())[:400]})") from None
    finally:
        context.close()
    return image_id or client.images.get(kind.image).id


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("images", help="build the container image of a device kind")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    b = verbs.add_parser("build", help="build images/<KIND>/Dockerfile with the docker SDK")
    b.add_argument("kind", help="device kind (see `deltann devices`)")
    b.add_argument("--base", metavar="IMAGE",
                   help="image the shared base stage starts from (default: the Dockerfile's ARG BASE; "
                        "where no registry is reachable, the one cluster/engine.sh imports: local/debian:bookworm)")
    b.add_argument("--ca-certs", metavar="DIR", type=Path,
                   help="folder of extra CA certificates (*.crt) the image trusts, for networks that re-sign TLS")
    b.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    kinds = load_catalogue()
    if args.kind not in kinds:
        raise FleetError(f"unknown kind {args.kind!r}; kinds: {', '.join(kinds)}")
    kind = kinds[args.kind]
    start = time.perf_counter()
    image_id = build_image(kind, base=args.base, ca_certs=args.ca_certs)
    seconds = time.perf_counter() - start
    size = ""
    try:
        import docker

        size = f", {docker.from_env().images.get(image_id).attrs['Size'] / 1e9:.2f} GB"
    except Exception:  # noqa: BLE001 - the size is a courtesy; the build succeeded
        pass
    print(f"built {kind.image} ({image_id}{size}) in {seconds:.0f} s")
    return 0
