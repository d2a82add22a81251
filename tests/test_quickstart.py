"""The embedded default's promise: same weights and same preprocessing give the same
answers — torch and torch->onnx on their own runtimes agree on every sample photo, and
both saw bit-identical input tensors. EfficientNet-Lite0 with real ImageNet weights."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from deltann import analysis
from deltann.fleet.driver import run_study
from deltann.report import build_report
from deltann.store import Store

ROOT = Path(__file__).resolve().parents[1]


def test_torch_and_onnx_agree_on_every_sample(study_file, tmp_path: Path, ray_session: None) -> None:
    study = study_file(
        """
        name = "agree"
        models = ["efficientnet_lite0"]
        variants = ["torch", "torch->onnx"]
        runtimes = ["native"]
        [timing]
        repeat = 2
        """
    )
    summary = run_study(study, tmp_path / "out", progress=False)
    assert (summary.ran, summary.failed) == (2, 0)
    store = Store(tmp_path / "out")
    pairs = analysis.pairwise_agreement(store)
    row = pairs.filter(pl.col("config_a") == "torch [torch]").row(0, named=True)
    assert row["config_b"] == "torch->onnx [onnxruntime]"
    assert row["n_images"] == 10
    assert row["disagree_pct"] == 0.0
    assert row["same_inputs"] is True
    assert row["max_abs_dlogit"] < 1e-3
    # the photos are classified as what they show (real weights, real preprocessing)
    top1 = dict(store.scan("predictions").filter(pl.col("config") == "torch [torch]")
                .select("image_id", "top1").collect().iter_rows())
    assert top1["chelsea"] in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    assert top1["coffee"] == 967  # espresso


@pytest.mark.slow
def test_quickstart_study_end_to_end(tmp_path: Path, ray_session: None) -> None:
    summary = run_study(ROOT / "studies" / "quickstart.toml", tmp_path / "q", progress=False)
    assert (summary.ran, summary.failed) == (8, 0)
    pairs = analysis.pairwise_agreement(Store(tmp_path / "q"))
    assert pairs["same_inputs"].all()
    torch_onnx = pairs.filter((pl.col("config_a") == "torch [torch]") & (pl.col("config_b") == "torch->onnx [onnxruntime]"))
    assert torch_onnx["disagree_pct"].to_list() == [0.0]
    # The report opens with what changed, in words: no label, and TVM extended's time
    # against onnxruntime's (t_B / t_A from their shared timing session, with its CI).
    report = build_report(tmp_path / "q", tmp_path / "report")
    findings = report.markdown.split("## Findings", 1)[1].split("\n## ", 1)[0]
    assert report.markdown.index("## Findings") < report.markdown.index("## Top-1 label dissimilarity")
    assert "No label differs: all 8 configurations give the same top-1 on every image (10 images)." in findings
    ratio = re.search(r"`torch->onnx \[tvm:extended\]` / `torch->onnx \[onnxruntime\]` time: ([\d.]+)× \(B "
                      r"(slower|faster); 95 % CI ([\d.]+)–([\d.]+)×", findings)
    assert ratio and float(ratio[3]) <= float(ratio[1]) <= float(ratio[4]), findings
    print(findings)
