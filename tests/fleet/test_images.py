"""Static checks of images/<kind>/Dockerfile against the device catalogue: every kind
that names an image has one, every image is pinned, builds TVM with its kind's
accelerator and LLVM, and installs the same deltann version as this checkout. A real
build needs a container engine and the internet: see test_container.py."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest

import deltann
from deltann.commands.images import ROOT, build_options, platform_of
from deltann.fleet.devices import DEFAULT_CATALOGUE, load_catalogue

KINDS = {name: kind for name, kind in load_catalogue(DEFAULT_CATALOGUE).items() if kind.image}
ACCELERATOR = {"cuda": "USE_CUDA=ON", "opencl": "USE_OPENCL=ON"}


def dockerfile(kind: str) -> str:
    return (ROOT / "images" / kind / "Dockerfile").read_text()


def test_every_kind_with_an_image_has_a_dockerfile_and_no_other() -> None:
    assert set(KINDS) == {"x86-server", "gpu-xavier", "arm-hikey"}
    folders = {p.parent.name for p in (ROOT / "images").glob("*/Dockerfile")}
    assert folders == set(KINDS)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_image_is_pinned_and_builds_tvm_for_its_target(name: str) -> None:
    text = dockerfile(name)
    kind = KINDS[name]
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert bases and all(":" in b and not b.endswith(":latest") for b in bases), bases
    assert re.search(r"^ARG TVM_VERSION=v\d+\.\d+\.\d+$", text, re.M)
    assert "--branch ${TVM_VERSION}" in text
    assert ACCELERATOR[kind.target["kind"]] in text and "USE_LLVM=" in text
    assert f"DELTANN_IMAGE_KIND={name}" in text  # the actor knows it is already inside
    for pin in re.findall(r"pip install --upgrade ([^\\\n]+)", text):
        assert all("==" in p for p in pin.split()), pin


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_image_installs_this_deltann_version(name: str) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert version == deltann.__version__
    text = dockerfile(name)
    assert re.search(rf"^ARG DELTANN_VERSION={re.escape(version)}$", text, re.M)
    assert "pip install --no-deps ." in text and "deltann.__version__ != '${DELTANN_VERSION}'" in text
    assert KINDS[name].image.endswith(f":{version}")
    opts = build_options(KINDS[name])
    assert opts["buildargs"] == {"DELTANN_VERSION": version} and opts["tag"] == KINDS[name].image
    assert opts["dockerfile"] == f"images/{name}/Dockerfile"
    assert opts["platform"] == platform_of(KINDS[name])


def test_arm_kinds_build_arm_images() -> None:
    assert {n: platform_of(k) for n, k in KINDS.items()} == {
        "x86-server": "linux/amd64", "gpu-xavier": "linux/arm64", "arm-hikey": "linux/arm64"}


def test_images_take_deltanns_dependencies_but_build_tvm_themselves() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "images" / "requirements.py"), str(ROOT / "pyproject.toml"),
                          "apache-tvm", "apache-tvm-ffi"], capture_output=True, text=True, check=True).stdout.split()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(d.startswith("apache-tvm") for d in out)
    assert len(out) == len([d for d in deps if not d.startswith("apache-tvm")])


def test_build_context_leaves_the_venv_out() -> None:
    rules = [r for r in (ROOT / ".dockerignore").read_text().splitlines() if r and not r.startswith("#")]
    assert rules[0] == "**" and "!deltann/**" in rules and not any(".venv" in r and r.startswith("!") for r in rules)
