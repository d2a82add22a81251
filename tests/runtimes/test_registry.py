"""The runtime registry: a runtime is one module registering one runner class.

``toy_runtime.py`` beside this file is such a module, kept outside deltann: a ``numpy``
runtime for a model format of its own (``npnet``) and a hop ``npnet->onnx``. It is loaded
as a user's runtime is, by naming it in ``DELTANN_RUNTIMES`` (the board actors are given
the variable), for this module's tests only; then a real study runs through it
(predictions and timing rows on a Ray board) and ``deltann localize`` captures its layers
against onnxruntime's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deltann import convert
from deltann.core import runtime_registry as registry
from deltann.core.runner import Runner

TOY = Path(__file__).with_name("toy_runtime.py")
N_LAYERS = 8  # tiny_cnn: three convs and their ReLUs, the global mean, the dense layer


@pytest.fixture(scope="module", autouse=True)
def toy_runtime() -> Iterator[type[Runner]]:
    """The toy runtime registered from its file for this module's tests, and removed after
    (other tests see deltann's own runtimes and hops only)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(registry.PLUGINS_ENV, str(TOY))
        runner = registry.get("numpy")
        yield runner
    registry.unregister("numpy")
    convert.unregister("npnet", "onnx")
    assert "npnet" not in registry.frameworks()


@pytest.fixture(scope="module")
def npnet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deltann.zoo import tiny

    path = tmp_path_factory.mktemp("npnet") / "tiny.npnet"
    with path.open("wb") as fh:
        np.savez(fh, **tiny._weights())
    return path


def test_registry_knows_the_toy_runtime_from_its_module_alone(npnet_file: Path, toy_runtime: type[Runner]) -> None:
    from deltann.convert.chain_spec import framework_dist, parse_chain
    from deltann.zoo import tiny

    assert registry.native("npnet") is toy_runtime and toy_runtime.__name__ == "NumpyRunner"
    assert registry.framework_of_suffix(".NPNET") == "npnet" and framework_dist("npnet") == "numpy"
    assert [s.framework for s in parse_chain("npnet->onnx")] == ["npnet", "onnx"]
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with registry.get("numpy").from_artifact(npnet_file) as runner:
        logits = np.concatenate([runner.infer(x[i : i + 1]) for i in range(2)])
    import torch

    with torch.inference_mode():
        expected = tiny.load_torch()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_register_refuses_what_would_be_ambiguous() -> None:
    class Other(Runner):
        name = "numpy"

    class SecondOnnx(Runner):
        name = "second-onnx"
        framework = "onnx"

    with pytest.raises(ValueError, match="runtime 'numpy' is already registered"):
        registry.register(Other)
    with pytest.raises(ValueError, match="framework 'onnx' already runs natively in 'onnxruntime'"):
        registry.register(SecondOnnx)
    with pytest.raises(ValueError, match="no runner for runtime 'caffe'; known: .*numpy"):
        registry.get("caffe")


def test_a_missing_plugin_is_named_until_fixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere.py"
    monkeypatch.setenv(registry.PLUGINS_ENV, str(missing))
    for _ in range(2):
        with pytest.raises(RuntimeError, match=f"DELTANN_RUNTIMES: {missing} not found"):
            registry.get("numpy")
    monkeypatch.setenv(registry.PLUGINS_ENV, "deltann_no_such_module")
    with pytest.raises(RuntimeError, match="cannot import 'deltann_no_such_module'"):
        registry.runners()
    monkeypatch.setenv(registry.PLUGINS_ENV, str(TOY))
    assert registry.get("numpy").framework == "npnet"


def test_study_and_localize_run_through_the_toy_runtime(tmp_path: Path, npnet_file: Path, study_file: Any,
                                                        ray_session: None) -> None:
    """A real study of a ``.npnet`` user model on the toy runtime and, converted, on
    onnxruntime: both give the same top-1 on every image; the toy runtime has timing rows; and
    ``localize`` captures its layers through the registry, aligned one to one with
    onnxruntime's, every one within tolerance."""
    import polars as pl

    from deltann.commands.localize import localize_pair
    from deltann.fleet.driver import run_study
    from deltann.store import Store

    study = study_file(f"""
        name = "toy-runtime"
        models = ["toy"]
        variants = ["npnet", "npnet->onnx"]
        runtimes = ["native"]
        [dataset]
        limit = 3
        [timing]
        warmup = 1
        number = 1
        repeat = 2
        [user_models.toy]
        path = "{npnet_file}"
        input_shape = [1, 3, 64, 64]
        preprocess = {{ size = 64, resize_shorter = 72 }}
        labels = 1000
        """)
    out = tmp_path / "results"
    summary = run_study(study, out, progress=False)
    store = Store(out)
    builds = store.scan("builds").collect()
    assert summary.failed == 0, builds.select("config", "stage", "message").to_dicts()
    assert sorted(builds["config"].to_list()) == ["npnet [numpy]", "npnet->onnx [onnxruntime]"]
    predictions = store.scan("predictions").collect()
    by_config = {c: dict(zip(g["image_id"], g["top1"], strict=True))
                 for (c,), g in predictions.group_by(["config"])}
    assert len(by_config["npnet [numpy]"]) == 3
    assert by_config["npnet [numpy]"] == by_config["npnet->onnx [onnxruntime]"]
    timings = store.scan("timings").filter(pl.col("runtime") == "numpy").collect()
    assert timings.height == 3 and all(s and min(s) > 0 for s in timings["samples_ns"].to_list())

    result = localize_pair(out, "npnet [numpy]", "npnet->onnx [onnxruntime]", images="all")
    loc = result.localization
    assert loc.n_a == loc.n_b == N_LAYERS
    assert len(loc.matched) == loc.n_a and loc.first_divergent is None
    layers = store.scan("layers").collect()
    assert layers.height >= loc.n_a and set(layers["config"]) == {"npnet [numpy]"}
