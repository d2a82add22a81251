"""Which hop did it: a chain whose middle hop is perturbed (a test-only ``onnx->torch``
that adds seeded noise to one conv's weights after onnx2torch's real conversion) is
attributed to that hop — the prefix before it (``torch->onnx``) is read from the store,
the one after it is not in the study and is converted and run here, and the report's
findings name it. The slow test does the same for a real dynamic-range TFLite chain of
EfficientNet-Lite0, through onnx2tf's TF SavedModel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from deltann import convert
from deltann.analysis.hop_attribution import attribute, chain_steps
from deltann.convert.chain_spec import Hop, Produced
from deltann.core.device_catalogue import load_catalogue
from deltann.report import build_report
from deltann.store import Store

SOURCE, CHAIN = "torch [torch]", "torch->onnx->torch->onnx [onnxruntime]"


def test_chain_steps() -> None:
    assert chain_steps("torch", "torch->onnx->tf->tflite:dynamic-range", "litert", "native") == [
        ("torch->onnx", "torch->onnx", "onnxruntime"), ("onnx->tf", "torch->onnx->tf", "tf"),
        ("tf->tflite:dynamic-range", "torch->onnx->tf->tflite:dynamic-range", "litert")]
    assert chain_steps("torch", "torch->onnx", "tvm", "extended") == [
        ("torch->onnx", "torch->onnx", "onnxruntime"), ("tvm:extended", "torch->onnx", "tvm")]
    assert chain_steps("torch", "torch", "tvm", "basic") == [("tvm:basic", "torch", "tvm")]
    assert chain_steps("torch->onnx", "torch", "torch", "native") == []  # not an extension of A's chain
    assert chain_steps("onnx", "torch->onnx", "onnxruntime", "native") == []


@pytest.fixture
def noisy_onnx_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test-only hop: onnx2torch's conversion, then seeded noise (half the weights' std) on
    the second conv's weights. Registered in this process only (the study runs in-process)."""
    import torch

    real = convert.get("onnx", "torch")

    def noisy(parent: Produced, spec: Any, out_dir: Path, quantize: str) -> Produced:
        produced = real.fn(parent, spec, out_dir, quantize)
        conv = [m for m in produced.payload.modules() if isinstance(m, torch.nn.Conv2d)][1]
        noise = torch.randn(conv.weight.shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            conv.weight.add_(0.5 * conv.weight.std() * noise)
        return produced

    monkeypatch.setitem(convert._HOPS, ("onnx", "torch"), Hop("onnx", "torch", tool=real.tool, fn=noisy))


def test_perturbed_middle_hop_is_named(noisy_onnx_torch: None, record_results: Any, tmp_path: Path) -> None:
    out = record_results(
        tmp_path, 'name = "hops"\nmodels = ["tiny_cnn"]\n'
        'variants = ["torch", "torch->onnx", "torch->onnx->torch->onnx"]\nruntimes = ["native"]\n',
        load_catalogue(), keep=lambda unit: True, board=lambda unit: "b")
    store = Store(out)
    preds = store.scan("predictions").select("config", "image_id", "top1").collect()
    src = dict(preds.filter(pl.col("config") == SOURCE).select("image_id", "top1").iter_rows())
    chain = dict(preds.filter(pl.col("config") == CHAIN).select("image_id", "top1").iter_rows())
    flipped = sorted(i for i in src if src[i] != chain[i])
    assert flipped  # the noise flips labels: the report has a label finding to explain

    builds = store.scan("builds").collect()
    row = {c: builds.filter(pl.col("config") == c).row(0, named=True) for c in (SOURCE, CHAIN)}
    found = attribute(out, row[SOURCE], row[CHAIN], flipped, data_root=tmp_path, use_cache=False)
    assert found is not None
    assert [s.hop for s in found.steps] == ["torch->onnx", "onnx->torch", "torch->onnx"]
    assert [s.origin for s in found.steps] == ["store", "ran", "store"]  # the middle prefix was not in the study
    assert found.steps[0].within and found.steps[0].max_abs < 1e-4
    assert found.first is found.steps[1] and found.first.flips > 0 and found.first.tool.startswith("onnx2torch ")

    report = build_report(out, tmp_path / "report", data_root=tmp_path)
    findings = report.markdown.split("## Findings", 1)[1].split("\n## ", 1)[0]
    assert "**Hop:** `onnx->torch` (onnx2torch" in findings and f"`{CHAIN}`" in findings
    hops = pl.read_csv(tmp_path / "report" / "hops.csv")
    assert hops.filter(pl.col("first_beyond"))["hop"].to_list() == ["onnx->torch"]
    assert list((out / "artifacts" / "hops").glob("*.json"))  # cached: a second report runs nothing


@pytest.mark.slow
def test_real_dynamic_range_flip_is_the_tflite_hop(record_results: Any, tmp_path: Path) -> None:
    """EfficientNet-Lite0 (real weights): torch vs torch->tf->tflite:dynamic-range flips 3 of
    the 10 photos (measured); the study has neither torch->onnx nor torch->onnx->tf, so
    both run here (onnxruntime, TF SavedModel) and stay within tolerance, and the
    quantising hop is named."""
    out = record_results(
        tmp_path, 'name = "q"\nmodels = ["efficientnet_lite0"]\n'
        'variants = ["torch", "torch->tf->tflite:dynamic-range"]\nruntimes = ["native"]\n',
        load_catalogue(), keep=lambda unit: True, board=lambda unit: "b")
    report = build_report(out, tmp_path / "report", data_root=tmp_path)
    findings = report.markdown.split("## Findings", 1)[1].split("\n## ", 1)[0]
    assert "differs from `torch [torch]` on the top-1 of" in findings
    assert "**Hop:** `tf->tflite:dynamic-range` (tensorflow-cpu" in findings
    hops = pl.read_csv(tmp_path / "report" / "hops.csv")
    assert hops["origin"].to_list() == ["ran", "ran", "store"]
    assert hops["within_tol"].to_list() == [True, True, False]
