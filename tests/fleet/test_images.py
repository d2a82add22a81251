"""Static checks of images/<kind>/Dockerfile against the device catalogue: every kind
that names an image has one; all start from one ``BASE`` argument and share one base
stage byte for byte; kinds whose accelerator the apache-tvm wheel lacks build TVM from a
pinned tag, the others install the wheel; every image installs the board's packages at
the driver's versions and this checkout's deltann. The build context is what
.dockerignore lets through plus ``--ca-certs``; a build's errors are one line. A real
build runs in make test-fleet (cluster/test-fleet.sh), and test_container.py runs it."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import deltann
from deltann.commands.images import ROOT, build_context, build_image, build_options, platform_of
from deltann.errors import FleetError
from deltann.core.device_catalogue import DEFAULT_CATALOGUE, load_catalogue

from .conftest import engine_with

KINDS = {name: kind for name, kind in load_catalogue(DEFAULT_CATALOGUE).items() if kind.image}
#: kinds whose TVM comes from source, and the switch their target needs (the wheels have
#: CUDA 13 only, no OpenCL; tests/compile/test_gpu_targets.py shows why for sm_72)
SOURCE_BUILT = {"gpu-xavier": "USE_CUDA=ON", "arm-hikey": "USE_OPENCL=ON"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def dockerfile(kind: str) -> str:
    return (ROOT / "images" / kind / "Dockerfile").read_text()


def base_stage(text: str) -> str:
    return text[text.index("# ---- base:"):text.index("# ---- end of base ----")]


def test_every_kind_with_an_image_has_a_dockerfile_and_no_other() -> None:
    assert set(KINDS) == {"x86-cpu", "x86-server", "gpu-xavier", "arm-hikey"}
    folders = {p.parent.name for p in (ROOT / "images").glob("*/Dockerfile")}
    assert folders == set(KINDS)


def test_all_images_take_one_base_argument_and_share_one_base_stage() -> None:
    stages = {name: base_stage(dockerfile(name)) for name in KINDS}
    assert len(set(stages.values())) == 1, "the base stage differs between kinds"
    stage = stages["x86-cpu"]
    assert re.search(r"^FROM \$\{BASE\} AS base$", stage, re.M)
    assert "python3.11 -m venv /opt/deltann" in stage and "COPY images/ca-certs/" in stage
    for name in KINDS:
        text = dockerfile(name)
        assert re.search(r"^ARG BASE=\S+$", text, re.M), name
        assert text.count("FROM ${BASE}") == 1 and text.index("ARG BASE=") < text.index("FROM")
        assert "apt-get install" not in text.split("# ---- end of base ----")[1] or name in SOURCE_BUILT


@pytest.mark.parametrize("name", sorted(KINDS))
def test_image_is_pinned_and_gets_tvm_for_its_target(name: str) -> None:
    text = dockerfile(name)
    bases = [b for b in re.findall(r"^FROM\s+(\S+)", text, re.M) if not b.startswith("${") and "/" in b]
    assert all(":" in b and not b.endswith(":latest") for b in bases), bases
    assert f"DELTANN_IMAGE_KIND={name}" in text  # the actor knows it is already inside
    for pin in re.findall(r"pip install --upgrade ([^\\\n]+)", text):
        assert all("==" in p for p in pin.split()), pin
    header = text.split("ARG BASE=")[0]
    if name in SOURCE_BUILT:  # the header says why and what it needs
        assert re.search(r"^ARG TVM_VERSION=v\d+\.\d+\.\d+$", text, re.M) and "--branch ${TVM_VERSION}" in text
        assert SOURCE_BUILT[name] in text and "USE_LLVM=" in text
        assert "requirements.py pyproject.toml apache-tvm apache-tvm-ffi" in text
        assert "TVM source build" in header and "GPU" in header
    else:
        assert "git clone" not in text and "requirements.py pyproject.toml >" in text  # the wheel
    if KINDS[name].target["kind"] in ("cuda", "opencl"):
        assert "GPU" in header


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_image_installs_this_deltann_version_and_the_drivers_board_packages(name: str) -> None:
    version = PYPROJECT["project"]["version"]
    assert version == deltann.__version__
    text = dockerfile(name)
    assert re.search(rf"^ARG DELTANN_VERSION={re.escape(version)}$", text, re.M)
    assert "pip install --no-deps ." in text and "deltann.__version__ != '${DELTANN_VERSION}'" in text
    assert "-c /tmp/constraints.txt" in text and "${BOARD_PINS}" in text
    assert KINDS[name].image.endswith(f":{version}")
    opts = build_options(KINDS[name], base="local/debian:bookworm")
    assert opts["tag"] == KINDS[name].image and opts["dockerfile"] == f"images/{name}/Dockerfile"
    assert opts["buildargs"]["DELTANN_VERSION"] == version and opts["buildargs"]["BASE"] == "local/debian:bookworm"
    pins = dict(p.split("==") for p in opts["buildargs"]["BOARD_PINS"].split())
    assert pins["apache-tvm"] == metadata.version("apache-tvm") and pins["onnxruntime"] == metadata.version(
        "onnxruntime")
    assert opts["platform"] == platform_of(KINDS[name])
    assert "BASE" not in build_options(KINDS[name])["buildargs"]  # the Dockerfile's default


def test_arm_kinds_build_arm_images() -> None:
    assert {n: platform_of(k) for n, k in KINDS.items()} == {
        "x86-cpu": "linux/amd64", "x86-server": "linux/amd64", "gpu-xavier": "linux/arm64", "arm-hikey": "linux/arm64"}


def test_board_images_carry_tvm_and_small_runtimes_but_no_big_framework() -> None:
    def run(*drop: str) -> list[str]:
        return subprocess.run([sys.executable, str(ROOT / "images" / "requirements.py"), str(ROOT / "pyproject.toml"),
                               *drop], capture_output=True, text=True, check=True).stdout.split()

    names = {re.split(r"[<>=]", d)[0] for d in run()}
    assert {"apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime", "tflite", "ai-edge-litert", "pyarrow"} <= names
    assert not names & {"torch", "torchvision", "tensorflow-cpu", "keras", "tf2onnx", "ray", "polars", "scipy"}
    assert not any(d.startswith("apache-tvm") for d in run("apache-tvm", "apache-tvm-ffi"))
    deps = {re.split(r"[<>=;\[ ]", d)[0] for d in PYPROJECT["project"]["dependencies"]}
    assert names <= deps  # the board takes the project's own requirement lines


def test_build_context_is_what_dockerignore_allows_plus_the_ca_certificates(tmp_path: Path) -> None:
    rules = [r for r in (ROOT / ".dockerignore").read_text().splitlines() if r and not r.startswith("#")]
    assert rules[0] == "**" and "!deltann/**" in rules and not any(".venv" in r and r.startswith("!") for r in rules)
    (tmp_path / "lab.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    (tmp_path / "notes.txt").write_text("not a certificate")
    with build_context("images/x86-cpu/Dockerfile", ROOT, tmp_path) as context:
        names = set(tarfile.open(fileobj=context).getnames())
    assert {"pyproject.toml", "README.md", "deltann/__init__.py", "images/requirements.py",
            "images/x86-cpu/Dockerfile", "images/ca-certs/lab.crt"} <= names
    assert not {n for n in names if n.startswith((".venv", "results", "tests", ".work", ".git/"))}
    assert "images/ca-certs/notes.txt" not in names
    (tmp_path / "empty").mkdir()
    with pytest.raises(FleetError, match=r"--ca-certs .*: no \*\.crt file there"):
        build_context("images/x86-cpu/Dockerfile", ROOT, tmp_path / "empty")
    with pytest.raises(FleetError, match=r"--ca-certs .*: not a folder"):
        build_context("images/x86-cpu/Dockerfile", ROOT, tmp_path / "lab.crt")


def test_an_unreachable_engine_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real: DOCKER_HOST names a socket nothing listens on."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'nothing.sock'}")
    with pytest.raises(FleetError) as err:
        build_image(KINDS["x86-cpu"])
    message = str(err.value)
    assert "\n" not in message and "no container engine reachable at unix://" in message
    assert "cluster/engine.sh start" in message


# --- on a real engine (make test-fleet; skips without one, see conftest.py) ---------------------
def _scratch_root(tmp_path: Path, body: str) -> Path:
    """A build root like the repository's, with an x86-cpu Dockerfile of ``body``."""
    (tmp_path / "images" / "x86-cpu").mkdir(parents=True)
    (tmp_path / "images" / "x86-cpu" / "Dockerfile").write_text(body)
    (tmp_path / ".dockerignore").write_text("**\n!images/**\n")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    return tmp_path


def test_a_missing_base_image_is_one_line(tmp_path: Path) -> None:
    client, _ = engine_with("local/debian:bookworm")
    root = _scratch_root(tmp_path, "ARG BASE=debian:bookworm\nFROM ${BASE}\nRUN true\n")
    with pytest.raises(FleetError) as err:
        build_image(KINDS["x86-cpu"], client, echo=lambda line: None, base="local/missing:nowhere", root=root)
    message = str(err.value)
    assert "\n" not in message and "base image local/missing:nowhere is missing from the engine" in message
    assert "--base IMAGE" in message


def test_a_failing_step_is_one_line_with_its_last_output(tmp_path: Path) -> None:
    client, _ = engine_with("local/debian:bookworm")
    root = _scratch_root(tmp_path, "ARG BASE=debian:bookworm\nFROM ${BASE}\n"
                                   "RUN echo resolving wheels && echo 'no matching distribution' && exit 3\n")
    shown: list[str] = []
    with pytest.raises(FleetError) as err:
        build_image(KINDS["x86-cpu"], client, echo=shown.append, base="local/debian:bookworm", root=root)
    message = str(err.value)
    assert "\n" not in message and re.search(r"Step 3/\d : RUN echo resolving wheels", message)
    assert "returned a non-zero code: 3" in message and "last lines: resolving wheels | no matching distribution" \
        in message
    assert any(line.startswith("Step 1/") for line in shown)  # progress was printed as it went
