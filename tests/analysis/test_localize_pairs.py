"""``deltann localize`` on the pairs that are not framework pairs: compiler settings (one
model, two TVM builds: ``basic`` runs one kernel per operator, ``extended`` fuses,
folds batch norms and goes channel-last) and devices (one build, two boards), plus a
TVM build imported through the torch exported-program frontend against one imported
through ONNX. The results folder is written by the fleet's own unit executor (no Ray);
the two boards are two kinds of a catalogue written here that both run ``llvm`` on this
machine (the real boards are out of reach: only their names are stand-ins)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from deltann.cli import main
from deltann.commands.localize import localize_pair
from deltann.store import Store

CATALOGUE = """
[kinds.board-a]
resource = "board-a"
target = { kind = "llvm" }
[kinds.board-b]
resource = "board-b"
target = { kind = "llvm" }
"""

BASIC, EXTENDED = "torch->onnx [tvm:basic]", "torch->onnx [tvm:extended]"
TORCH_BASIC = "torch [tvm:basic]"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory, record_results: Any) -> Path:
    from deltann.core.device_catalogue import load_catalogue

    folder = tmp_path_factory.mktemp("pairs")
    (folder / "devices.toml").write_text(CATALOGUE)
    out = record_results(
        folder,
        'name = "pairs"\nmodels = ["tiny_cnn"]\nvariants = ["torch", "torch->onnx"]\nruntimes = ["tvm"]\n'
        'settings = ["basic", "extended"]\ndevices = ["board-a", "board-b"]\n[dataset]\nlimit = 2\n'
        "[timing]\nwarmup = 0\nnumber = 1\nrepeat = 1\nmin_repeat_ms = 0\n",
        load_catalogue(folder / "devices.toml"),
        # one torch.export build is enough
        keep=lambda unit: unit.variant != "torch" or (unit.device == "board-a" and unit.config == TORCH_BASIC),
        board=lambda unit: unit.device)
    builds = Store(out).scan("builds").collect()
    assert builds["status"].to_list() == ["ok"] * 5, builds.select("config", "device", "message").rows()
    return out


def _rows(results: Path, a: str, b: str) -> pl.DataFrame:
    layers = Store(results).scan("layers").collect()
    config_a, _, device_a = a.rpartition("@")
    config_b, _, device_b = b.rpartition("@")
    return layers.filter((pl.col("config") == config_a) & (pl.col("device") == device_a)
                         & (pl.col("config_b") == config_b) & (pl.col("device_b") == device_b)).sort("order")


def test_settings_pair_exposed_and_as_built(store_dir: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = f"{BASIC}@board-a", f"{EXTENDED}@board-a"
    # every layer exposed: both builds show all 8 ONNX layers, equal within tolerance
    assert main(["localize", str(store_dir), "--pair", a, b, "--images", "all"]) == 0
    out = capsys.readouterr().out
    assert "alignment rate 100.0%" in out and "every aligned layer is within tolerance" in out
    exposed = _rows(store_dir, a, b)
    assert exposed.height == 8 and exposed["matched"].all()
    # as built: extended fused conv+bias+ReLU into one kernel, so its convs and bias adds
    # are unobservable: listed as unmatched ("fused"), never dropped
    before = Store(store_dir).scan("layers").collect().height
    result = localize_pair(store_dir, a, b, images="all", kernels=True)
    loc = result.localization
    assert Store(store_dir).scan("layers").collect().height == before + len(loc.rows)
    assert loc.first_divergent is None and loc.alignment_rate >= 0.95
    ends = [r["layer_b"] for r in loc.matched if r["layer_b"].startswith("fused_conv2d")]
    assert len(ends) == 3  # one kernel per conv group, each aligned with basic's ReLU kernel
    assert all(r["layer_a"].startswith("relu") for r in loc.matched if r["layer_b"] in ends)
    fused = {r["layer_a"] for r in loc.unmatched if r["reason"].startswith("fused")}
    assert fused >= {"conv2d", "add", "conv2d1", "add1", "conv2d2", "add2"}  # basic's own kernels
    assert len(loc.matched) < exposed.height  # fusion: fewer observable tensors


def test_devices_pair_one_build_two_boards(store_dir: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = f"{BASIC}@board-a", f"{BASIC}@board-b"
    assert main(["localize", str(store_dir), "--pair", a, b, "--images", "1"]) == 0
    assert "alignment rate 100.0%" in capsys.readouterr().out
    rows = _rows(store_dir, a, b)
    assert rows.height == 8 and rows["matched"].all() and (rows["max_abs"] == 0).all()  # same target, same code
    assert rows["param_max_abs"].drop_nulls().len() == 4 and (rows["param_max_abs"].drop_nulls() == 0).all()


def test_torch_export_build_against_onnx_build(store_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """The exported-program build is captured under module paths, the ONNX build under
    ONNX node names; the two align by scope, layer for layer."""
    a, b = f"{TORCH_BASIC}@board-a", f"{BASIC}@board-a"
    assert main(["localize", str(store_dir), "--pair", a, b, "--images", "all"]) == 0
    assert "every aligned layer is within tolerance" in capsys.readouterr().out
    rows = _rows(store_dir, a, b)
    assert rows.height == 8 and rows["matched"].all()
    assert rows["layer_a"].to_list() == ["convs.0", "/relu", "convs.1", "/relu_1", "convs.2", "/relu_2", "/mean", "fc"]
    assert rows["layer_b"].to_list()[0] == "/convs.0/Conv"
    assert (rows["param_max_abs"].drop_nulls() == 0).all() and rows["param_max_abs"].drop_nulls().len() == 4
