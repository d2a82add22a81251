"""The findings a report opens with, against hand-made stores whose answers are known:
the odd configuration out against its group, its flip count and the flip made with the
largest margin; one sentence when nothing differs; the TVM-vs-framework time headline and
the significant changes, largest first; failures by stage."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest

from deltann.analysis.findings import findings, findings_table, slug
from deltann.store import SCHEMAS, tag

REF = "torch [torch]"
QUANT = "torch->onnx->tf->tflite:dynamic-range [litert]"


def _by_kind(found: list, kind: str) -> list:  # noqa: ANN001
    return [f for f in found if f.kind == kind]


def test_odd_one_out_is_one_finding_with_its_largest_margin_flip(hand) -> None:  # noqa: ANN001
    # img1: the reference is sure (p 0.7 vs 0.1) and the quantised variant flips it; img3:
    # the reference hesitates (0.35 vs 0.33) and it flips too. Three configurations agree.
    probs = [[0.6, 0.2, 0.1, 0.05, 0.05], [0.7, 0.1, 0.1, 0.05, 0.05], [0.5, 0.3, 0.1, 0.05, 0.05],
             [0.35, 0.33, 0.2, 0.1, 0.02]]
    for variant, runtime, setting in (("torch", "torch", "native"), ("torch->onnx", "onnxruntime", "native"),
                                      ("torch", "tvm", "extended")):
        hand.write(hand.unit(variant, runtime, setting), top1=[1, 967, 3, 4], top5_prob=probs)
    hand.write(hand.unit("torch->onnx->tf->tflite:dynamic-range", "litert", "native"), top1=[1, 504, 3, 9],
               top5_prob=[[0.5, 0.2, 0.1, 0.1, 0.1]] * 4)
    found = findings(hand.store)
    labels = _by_kind(found, "labels")
    assert len(labels) == 1  # one odd configuration: one finding, against the group's representative
    f = labels[0]
    assert (f.config_a, f.config_b, f.image) == (REF, QUANT, "img1")
    assert f.text.startswith(f"`{QUANT}` differs from `{REF}` on the top-1 of 2 of 4 images (50.0 %).")
    assert "Largest-margin flip: image `img1`, 967 espresso (p 0.7, margin 0.6) → 504 coffee mug (p 0.5)." in f.text
    assert f.images == ("img1", "img3") and f.table == slug("top1_dissimilarity", "m", "local")
    assert f.repro == f"deltann repro {hand.store.root} --pair '{REF}' '{QUANT}' --image img1"
    groups = _by_kind(found, "groups")[0].text
    # members in reference order: frameworks' own runtimes first, shorter chains first, then TVM
    assert groups.startswith("2 groups")
    assert f"{{`{REF}`, `torch->onnx [onnxruntime]`, `torch [tvm:extended]`}}" in groups
    assert findings_table(found).height == len(found)


def test_nothing_differs_is_said_in_one_sentence(hand) -> None:  # noqa: ANN001
    logits = [[0.0, 1.0], [0.0, 2.0]]
    hand.write(hand.unit("torch", "torch", "native"), top1=[1, 2], logits=logits)
    hand.write(hand.unit("torch", "tvm", "basic"), top1=[1, 2], logits=[[0.0, 1.0], [0.0, 2.25]])
    found = findings(hand.store)
    assert [f.text for f in found if f.kind == "same"] == [
        "No label differs: all 2 configurations give the same top-1 on every image (2 images)."]
    logit = _by_kind(found, "logits")[0]
    assert logit.text.startswith("Largest logit difference: 0.25 (max |Δlogit|) between `torch [torch]` and "
                                 "`torch [tvm:basic]` on image `img1`")
    assert not _by_kind(found, "labels") and not _by_kind(found, "failures")


def test_time_headline_and_significant_changes_largest_first(hand) -> None:  # noqa: ANN001
    rng = np.random.RandomState(0)

    def cells(ms: float) -> list[list[float]]:  # 8 images x 5 blocks, 2 % noise
        return (ms * (1 + 0.02 * rng.randn(8, 5))).tolist()

    for runtime, setting, ms in (("onnxruntime", "native", 10.0), ("tvm", "basic", 100.0), ("tvm", "extended", 25.0)):
        hand.write(hand.unit("torch->onnx", runtime, setting), top1=[1] * 8, cells_ms=cells(ms))
    found = _by_kind(findings(hand.store), "time")
    num = r"(\d+(?:\.\d+)?)"
    m = re.match(rf"Median latency: fastest `torch->onnx \[onnxruntime\]` {num} ms, slowest "
                 rf"`torch->onnx \[tvm:basic\]` {num} ms", found[0].text)
    assert m and float(m[1]) == pytest.approx(10, rel=0.05) and float(m[2]) == pytest.approx(100, rel=0.05)
    headline = found[1]
    m = re.match(rf"`torch->onnx \[tvm:extended\]` / `torch->onnx \[onnxruntime\]` time: {num}× \(B slower; "
                 rf"95 % CI {num}–{num}×; {num} ms vs {num} ms; significant\)\.$", headline.text)
    assert m, headline.text
    assert float(m[2]) <= float(m[1]) <= float(m[3]) and float(m[1]) == pytest.approx(2.5, rel=0.05)
    assert headline.repro.startswith("deltann repro ")
    rest = [f.text for f in found[2:]]
    # the other two significant pairs, the larger change (x10) before the smaller (x4)
    assert rest[0].startswith("Significant: `torch->onnx [tvm:basic]` / `torch->onnx [onnxruntime]` time: 9.") or \
        rest[0].startswith("Significant: `torch->onnx [tvm:basic]` / `torch->onnx [onnxruntime]` time: 10.")
    assert rest[1].startswith("Significant: `torch->onnx [tvm:extended]` / `torch->onnx [tvm:basic]` time: 0.2")
    assert len(rest) == 2


def test_failures_by_stage(hand) -> None:  # noqa: ANN001
    hand.write(hand.unit("torch", "torch", "native"), top1=[1])
    for variant, setting, stage, error in (("torch", "extended", "build", "TVMError"),
                                           ("torch", "tuned", "build", "TVMError"),
                                           ("torch->onnx", "basic", "convert", "ConversionError")):
        ident = hand.unit(variant, "tvm", setting)
        row = {n: None for n in SCHEMAS["builds"].names} | ident | {
            "status": "failed", "stage": stage, "outcome": "exception", "error_type": error,
            "message": f"{stage} went wrong\nsecond line", "passes": []}
        hand.store.write(tag(pa.Table.from_pylist([row], schema=SCHEMAS["builds"]), "builds", ident["unit_key"], 0))
    failures = _by_kind(findings(hand.store), "failures")
    assert len(failures) == 1
    assert failures[0].text == ("3 units failed — build: 2 (`torch [tvm:extended]`, `torch [tvm:tuned]`; TVMError: "
                                "build went wrong second line); convert: 1 (`torch->onnx [tvm:basic]`; "
                                "ConversionError: convert went wrong second line).")


@pytest.mark.parametrize("name, expected", [
    ("onnx->tflite [litert]", "onnx->tf->tflite [litert]"),
    ("torch->tflite:dynamic-range [litert]", "torch->onnx->tf->tflite:dynamic-range [litert]"),
    ("torch [tvm:basic]", "torch [tvm:basic]"),
    ("nope [x]", "nope [x]"),
])
def test_study_chain_names_resolve_to_stored_routes(name: str, expected: str) -> None:
    from deltann.analysis.names import canonical, resolve

    assert canonical(name) == expected
    assert resolve(name, [expected]) == expected and resolve(name, ["other"]) == name
