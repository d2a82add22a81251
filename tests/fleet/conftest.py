"""A real container engine for the container tests: the one DOCKER_HOST names
(``eval "$(cluster/engine.sh env)"``; ``make test-fleet`` starts one). Without it the
tests skip saying why, unless DELTANN_REQUIRE_ENGINE=1 (CI): then a missing engine or
image fails them, so CI cannot pass by skipping."""

from __future__ import annotations

import os
from typing import Any

import pytest

#: Set to 1 (make test-fleet, CI): a missing engine or image is a failure, not a skip.
REQUIRE_ENGINE = "DELTANN_REQUIRE_ENGINE"


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENGINE) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENGINE}=1: CI needs it; make test-fleet starts it)")
    pytest.skip(reason)


def engine_with(image: str) -> tuple[Any, Any]:
    """(docker client, image) of the reachable engine holding ``image``, else skip or fail."""
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        _unavailable(f"no container engine at DOCKER_HOST={os.environ.get('DOCKER_HOST', '(unset)')} "
                     f"({type(exc).__name__}); start one: cluster/engine.sh start; eval \"$(cluster/engine.sh env)\"")
    try:
        return client, client.images.get(image)
    except docker.errors.ImageNotFound:
        _unavailable(f"image {image} is not in the engine; build it: deltann images build "
                     f"{image.split('/')[-1].split(':')[0]} --base local/debian:bookworm")
    raise AssertionError("unreachable")
