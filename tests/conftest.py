"""Shared fixtures. The tiny model (deltann.zoo.tiny, 64x64 input) serves every layer;
EfficientNet-Lite0 (real offline weights) is used where answers must be meaningful."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest


def write_study(folder: Path, body: str, name: str = "study.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def study_file(tmp_path: Path):  # noqa: ANN201 - returns a writer function
    """Write a study body (dedented) into tmp_path and return its path."""
    return lambda body, name="study.toml": write_study(tmp_path, body, name)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """Ray in-process for the whole session (as `deltann run` starts it), shut down at
    the end so no worker outlives the tests."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_results(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Path:
    """A real run of the tiny model: torch and torch->onnx, native + TVM basic/extended,
    four sample photos. Shared by the fleet, store and analysis tests."""
    from deltann.fleet.driver import run_study

    folder = tmp_path_factory.mktemp("tiny")
    study = write_study(
        folder,
        """
        name = "tiny"
        models = ["tiny_cnn"]
        variants = ["torch", "torch->onnx"]
        runtimes = ["native", "tvm"]
        settings = ["basic", "extended"]
        [dataset]
        limit = 4
        [timing]
        warmup = 1
        number = 2
        repeat = 3
        """,
    )
    out = folder / "results"
    summary = run_study(study, out, progress=False)
    assert summary.ran == 6 and summary.failed == 0, summary
    return out


def pytest_configure(config: pytest.Config) -> None:
    """Load triton before any test imports TensorFlow: the other order segfaults once torch
    reaches torch._dynamo (see deltann/_native.py)."""
    from deltann._native import before_tensorflow

    before_tensorflow()
