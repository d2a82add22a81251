"""Fault localization: alignment by name and structure (layouts, fused groups, renamed
layers), and the issue's checks on real models — a single conv perturbed in a converted
copy is named as the first divergent layer across a framework boundary; an unperturbed
fp32 chain stays within tolerance with >= 95 % of its layers aligned; a dynamic-range
TFLite variant diverges first at a quantised layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deltann import dataset, zoo
from deltann.analysis.layer_diff import Localization, align, localize, plot
from deltann.convert.chain import ArtifactCache
from deltann.runtimes import layers
from deltann.runtimes.layers import Layer, Trace


# --- alignment on hand-made traces (no framework) --------------------------------------
def _rng() -> np.random.RandomState:
    return np.random.RandomState(0)


def test_align_through_layout_fusion_and_renaming() -> None:
    rng = _rng()
    conv = rng.randn(2, 4, 6, 6).astype(np.float32)
    bn = conv * 0.5 + 0.1
    act = np.clip(bn, 0, 6)
    pooled = act.mean(axis=(2, 3))
    a = Trace("torch", "NCHW", [
        Layer("stem.pad", "ZeroPad2d", rng.randn(2, 3, 13, 13).astype(np.float32)),
        Layer("stem", "Conv2d", conv), Layer("bn", "BatchNorm2d", bn), Layer("act", "ReLU6", act),
        Layer("/mean", "mean", pooled), Layer("fc", "Linear", pooled[:, :3] * 2),
    ])
    # TFLite-like: NHWC, conv+bn+relu6 in one op, pad folded into the conv, other names
    b = Trace("litert", "NHWC", [
        Layer("model/conv;relu6", "CONV_2D", act.transpose(0, 2, 3, 1).copy(), fused_act=True),
        Layer("model/mean", "MEAN", pooled.copy()), Layer("Identity:0", "FULLY_CONNECTED", pooled[:, :3] * 2),
    ])
    al = align(a, b)
    assert al.pairs == [(3, 0), (4, 1), (5, 2)]
    assert al.unmatched_a[2].startswith("fused: inside the group ending at act")  # conv+bn+relu6 in one op
    assert al.unmatched_a[0].startswith("fused")  # the pad, inside the padded conv
    assert set(al.unmatched_a) == {0, 1, 2} and not al.unmatched_b
    loc = localize(a, b)
    assert loc.first_divergent is None and len(loc.unmatched) == 3
    assert all(r["max_abs"] == 0 for r in loc.matched)


def test_weights_a_tvm_build_stores_in_channel_blocks_compare_with_the_framework_s() -> None:
    """A TVM build's conv weights as its kernel reads them, HWIO in blocks of one vector of
    output channels ([o / 4, kh, kw, i, 4]: compile.schedules.prepack_weights), against
    torch's OIHW: the parameter difference is 0 for the same weights, and the change of
    one weight for a changed copy."""
    from deltann.compile.schedules import _blocked

    rng = _rng()
    oihw = rng.randn(8, 3, 3, 3).astype(np.float32)
    out = rng.randn(1, 8, 5, 5).astype(np.float32)
    _, pack = _blocked(4, 4)  # as prepack_weights stores HWIO weights for 4 lanes
    blocked = pack(oihw.transpose(2, 3, 1, 0))
    assert blocked.shape == (2, 3, 3, 3, 4)
    changed = blocked.copy()
    changed[1, 2, 0, 1, 3] += 0.25
    a = Trace("torch", "NCHW", [Layer("conv", "Conv2d", out, (), {"weight": oihw})])
    for weights, want in ((blocked, 0.0), (changed, 0.25)):
        b = Trace("tvm", "NHWC", [Layer("fused_conv2d", "fused_conv2d", out.transpose(0, 2, 3, 1).copy(), (),
                                        {"input1": weights})])
        (row,) = localize(a, b).matched
        assert row["param_max_abs"] == pytest.approx(want)


def test_fused_conv_matches_the_group_end_and_inherits_its_name() -> None:
    rng = _rng()
    conv = rng.randn(1, 4, 5, 5)
    bn = conv * 2.0
    a = Trace("torch", "NCHW", [Layer("block.conv", "Conv2d", conv), Layer("block.bn", "BatchNorm2d", bn),
                                Layer("block.conv2", "Conv2d", bn[:, :2]), Layer("block.bn2", "BatchNorm2d", bn[:, :2])])
    # ONNX export folds BN into the conv: its Conv output is the BN's
    b = Trace("onnxruntime", "NCHW", [Layer("/block/conv/Conv", "Conv", bn.copy()),
                                      Layer("/block/conv2/Conv", "Conv", bn[:, :2].copy())])
    al = align(a, b)
    assert al.pairs == [(1, 0), (3, 1)]
    assert al.unmatched_a[0] == "fused: inside the group ending at block.bn"
    assert al.rate(len(a.layers), len(b.layers)) == 1.0


def test_unmatched_layers_are_listed_and_divergence_is_located() -> None:
    rng = _rng()
    vals = [rng.randn(1, 8, 4, 4) for _ in range(4)]
    a = Trace("onnxruntime", "NCHW", [Layer(f"/l{i}/Conv", "Conv", v, (f"t{i}",)) for i, v in enumerate(vals)]
              + [Layer("/extra/Softmax", "Softmax", rng.randn(1, 10))])
    bvals = [v.copy() for v in vals]
    bvals[2] += 0.5
    bvals[3] += 1.0
    b = Trace("tvm", "NCHW", [Layer(f"/l{i}/Conv", "Conv", v, (f"t{i}",)) for i, v in enumerate(bvals)])
    loc = localize(a, b)
    assert loc.first_divergent is not None and loc.first_divergent["layer_a"] == "/l2/Conv"
    assert [r["layer_a"] for r in loc.unmatched] == ["/extra/Softmax"]
    growth = [m for _, m in loc.growth()]
    assert growth[:2] == [0.0, 0.0] and growth[3] > growth[2] > 0


def test_branches_run_in_another_order_align_by_producers() -> None:
    """Two branches of one shape, renamed, run in opposite orders: only the producers
    (the concat's argument order) can pair them; without producers the alignment
    would pair branch 1 with branch 2."""
    rng = _rng()
    stem, b1, b2 = (rng.randn(1, 4, 6, 6) for _ in range(3))
    cat = np.concatenate([b1, b2], axis=1)
    a = Trace("torch", "NCHW", [Layer("stem", "Conv2d", stem, inputs=()),
                                Layer("b1", "Conv2d", b1, inputs=("stem",)),
                                Layer("b2", "Conv2d", b2, inputs=("stem",)),
                                Layer("/cat", "cat", cat, inputs=("b1", "b2"))])
    b = Trace("litert", "NHWC", [Layer("t0", "CONV_2D", stem.transpose(0, 2, 3, 1), inputs=()),
                                 Layer("t2", "CONV_2D", b2.transpose(0, 2, 3, 1), inputs=("t0",)),
                                 Layer("t1", "CONV_2D", b1.transpose(0, 2, 3, 1), inputs=("t0",)),
                                 Layer("t3", "CONCATENATION", cat.transpose(0, 2, 3, 1), inputs=("t1", "t2"))])
    al = align(a, b)
    assert sorted(al.pairs) == [(0, 0), (1, 2), (2, 1), (3, 3)]
    assert localize(a, b).first_divergent is None
    blind = Trace("litert", "NHWC", [Layer(la.name, la.op, la.value) for la in b.layers])  # no producers
    assert localize(a, blind).first_divergent is not None  # the branches cross


# --- real models ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> ArtifactCache:
    return ArtifactCache(tmp_path_factory.mktemp("artifacts"))


def inputs(model: str, n: int = 2) -> np.ndarray:
    return dataset.preprocess(dataset.load_samples(n), zoo.get(model).preprocess).tensors


def assert_first_divergent_at(loc: Localization, torch_conv: str) -> dict[str, Any]:
    """The first divergent row is the first aligned layer at or after the perturbed torch
    conv (its fused group's end), and every aligned layer before it is within tolerance."""
    order = {r["layer_a"]: r["order"] for r in loc.rows if r["layer_a"]}
    start = order[torch_conv]
    expected = next(r for r in loc.matched if r["order"] >= start)
    first = loc.first_divergent
    assert first is not None, "the perturbed copy was not found divergent"
    assert first["layer_a"] == expected["layer_a"], (first["layer_a"], expected["layer_a"])
    assert all(r["within_tol"] for r in loc.matched if r["order"] < first["order"])
    return first


FAULTS = {  # model -> (ONNX node whose weights are perturbed, the torch module of that conv)
    "tiny_cnn": ("/convs.1/Conv", "convs.1"),
    "efficientnet_lite0": ("/_blocks.3/_expand_conv/Conv", "_blocks.3._expand_conv"),
}


@pytest.mark.parametrize("model", ["tiny_cnn", "efficientnet_lite0"])
def test_fault_in_onnx_copy_is_named_first_divergent(perturb_onnx: Any, model: str, cache: ArtifactCache, tmp_path: Path) -> None:
    node, torch_conv = FAULTS[model]
    x = inputs(model)
    src = Path(cache.get(model, "torch->onnx").payload)
    faulty = perturb_onnx(src, tmp_path / "faulty.onnx", node)
    ref = layers.capture_torch(cache.get(model, "torch").payload, x)
    loc = localize(ref, layers.capture_onnxruntime(faulty, x))
    first = assert_first_divergent_at(loc, torch_conv)
    assert first["layer_b"] == node  # named across the torch/ONNX boundary
    if model == "tiny_cnn":  # no BN folding: weights compare one to one, only the faulty one differs
        diffs = {r["layer_b"]: r["param_max_abs"] for r in loc.matched if r["param_max_abs"] is not None}
        assert set(diffs) == {"/convs.0/Conv", "/convs.1/Conv", "/convs.2/Conv", "/fc/Gemm"}
        assert [k for k, v in diffs.items() if v > 0] == [node]
    plot(loc, tmp_path / "fig2.png")
    assert (tmp_path / "fig2.png").stat().st_size > 10_000


@pytest.mark.parametrize("model", ["tiny_cnn", "efficientnet_lite0"])
def test_unperturbed_chain_is_within_tolerance(model: str, cache: ArtifactCache) -> None:
    x = inputs(model)
    ref = layers.capture_torch(cache.get(model, "torch").payload, x)
    ort = layers.capture_onnxruntime(cache.get(model, "torch->onnx").payload, x)
    loc = localize(ref, ort)
    assert loc.first_divergent is None, loc.first_divergent
    assert loc.alignment_rate >= 0.95
    assert all(r["within_tol"] and r["cosine"] > 0.99999 for r in loc.matched)
    # every ONNX node is aligned; torch's extra layers are listed with a reason
    assert len(loc.matched) == len(ort.layers)
    assert all(r["reason"] for r in loc.unmatched)


def test_tvm_build_vs_onnxruntime_aligns_through_folding(perturb_onnx: Any, cache: ArtifactCache, tmp_path: Path) -> None:
    """Same ONNX, TVM (imported after onnxruntime's folding) vs onnxruntime: exact tensor
    names align; a fault in the ONNX shows in both, so the pair agrees everywhere."""
    x = inputs("tiny_cnn")
    src = Path(cache.get("tiny_cnn", "torch->onnx").payload)
    faulty = perturb_onnx(src, tmp_path / "model.onnx", "/convs.2/Conv")
    loc = localize(layers.capture_onnxruntime(faulty, x), layers.capture_tvm(faulty, x, ("FoldConstant",)))
    assert loc.alignment_rate == 1.0 and loc.first_divergent is None
    ref = layers.capture_onnxruntime(src, x)
    loc2 = localize(ref, layers.capture_tvm(faulty, x, ("FoldConstant",)))
    assert loc2.first_divergent is not None and loc2.first_divergent["layer_b"] == "/convs.2/Conv"


@pytest.mark.slow
def test_efficientnet_tvm_aligns_through_onnxruntime_folding(cache: ArtifactCache) -> None:
    """TVM imports the ONNX after onnxruntime's basic folding, which puts the 17 explicit
    Pads into their Convs: each Pad is listed as fused, every TVM layer is aligned."""
    x = inputs("efficientnet_lite0", 1)
    src = Path(cache.get("efficientnet_lite0", "torch->onnx").payload)
    ort = layers.capture_onnxruntime(src, x)
    tvm = layers.capture_tvm(src, x, ("FoldConstant",))
    loc = localize(ort, tvm)
    assert len(loc.matched) == len(tvm.layers) and loc.alignment_rate == 1.0
    assert loc.first_divergent is None
    pads = [r for r in loc.unmatched if r["op_a"] == "Pad"]
    assert len(pads) == len(loc.unmatched) > 0 and all(r["reason"].startswith("fused") for r in pads)


# --- TF / TFLite (onnx2tf conversions: EfficientNet's are slow, tiny_cnn's run by default) -------------------------------------------
def tflite_of(onnx_path: Path, out: Path, quantize: str = "none") -> Path:
    """The repository's own onnx->tf->tflite hops applied to an ONNX file."""
    from deltann import convert
    from deltann.convert.chain_spec import Produced

    spec = None
    (out / "tf").mkdir(parents=True)
    (out / "tflite").mkdir()
    tf_art = convert.get("onnx", "tf").fn(Produced(onnx_path, "NCHW"), spec, out / "tf", "none")
    return Path(convert.get("tf", "tflite").fn(tf_art, spec, out / "tflite", quantize).payload)


@pytest.mark.parametrize("model", ["tiny_cnn", pytest.param("efficientnet_lite0", marks=pytest.mark.slow)])
def test_fault_named_across_torch_tflite_boundary(perturb_onnx: Any, model: str, cache: ArtifactCache, tmp_path: Path) -> None:
    node, torch_conv = FAULTS[model]
    x = inputs(model)
    src = Path(cache.get(model, "torch->onnx").payload)
    faulty = perturb_onnx(src, tmp_path / "faulty.onnx", node)
    tfl = tflite_of(faulty, tmp_path / "conv")
    ref = layers.capture_torch(cache.get(model, "torch").payload, x)
    loc = localize(ref, layers.capture_litert(tfl, x, "NHWC"))
    first = assert_first_divergent_at(loc, torch_conv)
    assert first["op_b"] in ("CONV_2D", "DEPTHWISE_CONV_2D")


@pytest.mark.parametrize("model", ["tiny_cnn", pytest.param("efficientnet_lite0", marks=pytest.mark.slow)])
def test_tflite_chain_within_tolerance_and_quantised_divergence(model: str, cache: ArtifactCache) -> None:
    x = inputs(model)
    ref = layers.capture_torch(cache.get(model, "torch").payload, x)
    fp32 = cache.get(model, "torch->onnx->tf->tflite")
    loc = localize(ref, layers.capture_litert(fp32.payload, x, fp32.layout))
    assert loc.first_divergent is None and loc.alignment_rate >= 0.95
    assert any(r["permuted"] is False and r["shape_b"] == r["shape_a"] and len(r["shape_a"]) == 4
               for r in loc.matched)  # NHWC compared as NCHW
    quant = cache.get(model, "torch->onnx->tf->tflite:dynamic-range")
    qloc = localize(ref, layers.capture_litert(quant.payload, x, quant.layout))
    first = qloc.first_divergent
    assert first is not None and first["quantized_b"], first
    first_quantised = next(r for r in qloc.matched if r["quantized_b"])
    assert first["order"] == first_quantised["order"]
    assert all(r["within_tol"] for r in qloc.matched if not r["quantized_b"] and r["order"] < first["order"])


# --- the command over a real results folder ------------------------------------------
@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory, record_results: Any) -> Path:
    """A real results folder for the tiny model written by the fleet's own unit executor
    (no Ray: one process), torch native, ONNX on onnxruntime and on TVM."""
    from deltann.core.device_catalogue import load_catalogue

    return record_results(
        tmp_path_factory.mktemp("localize"),
        'name = "loc"\nmodels = ["tiny_cnn"]\nvariants = ["torch", "torch->onnx"]\n'
        'runtimes = ["native", "tvm"]\nsettings = ["basic"]\n[dataset]\nlimit = 3\n'
        "[timing]\nwarmup = 0\nnumber = 1\nrepeat = 1\nmin_repeat_ms = 0\n",
        load_catalogue(),
        keep=lambda unit: not (unit.runtime == "tvm" and unit.variant == "torch"),  # torch.export: not needed
        board=lambda unit: "b")


def test_localize_command_writes_layers_table_and_plot(tiny_store: Path, capsys: pytest.CaptureFixture) -> None:
    import polars as pl

    from deltann.cli import main
    from deltann.store import Store

    a, b = "torch [torch]", "torch->onnx [tvm:basic]"
    assert main(["localize", str(tiny_store), "--pair", a, b, "--images", "2"]) == 0
    out = capsys.readouterr().out
    assert "alignment rate 100.0%" in out and "every aligned layer is within tolerance" in out
    rows = Store(tiny_store).scan("layers").collect()
    mine = rows.filter(pl.col("config") == a).filter(pl.col("config_b") == b)
    assert mine.height == 8 and mine["matched"].all() and mine["within_tol"].all()
    assert mine["image_ids"][0].len() == 2
    assert mine.sort("order")["layer_b"].to_list()[0] == "/convs.0/Conv"
    assert len(list((tiny_store / "localize").glob("*.png"))) == 1
    # 'flipped' with no flipped image falls back to the first image
    assert main(["localize", str(tiny_store), "--pair", "torch->onnx [onnxruntime]", b]) == 0
    assert "images: " in capsys.readouterr().out
    assert main(["localize", str(tiny_store), "--pair", a, "no such [config]"]) == 2
    assert "no successful build of 'no such [config]'" in capsys.readouterr().err


def test_divergence_summary_reads_the_layers_table(tiny_store: Path) -> None:
    from deltann.analysis.layer_diff import divergence_summary
    from deltann.commands.localize import localize_pair
    from deltann.store import Store

    result = localize_pair(tiny_store, "torch [torch]", "torch->onnx [onnxruntime]", images="all")
    assert len(result.image_ids) == 3
    summary = divergence_summary(Store(tiny_store).scan("layers"))
    row = summary.filter(summary["pair"] == result.pair).row(0, named=True)
    assert row["aligned"] == 8 and row["unmatched"] == 0 and row["alignment_rate"] == 1.0
    assert row["images"] == 3 and row["first_layer_a"] is None and row["final_max_abs"] < 1e-4
