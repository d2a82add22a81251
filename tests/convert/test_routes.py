"""Chain syntax, routing of pairs without a direct tool, and the study's handling of
both (pure: no framework is imported)."""

from __future__ import annotations

import itertools

import pytest

from deltann import convert
from deltann.convert.chain_spec import chain_framework, chain_quantize, parse_chain
from deltann.errors import StudyError
from deltann.study import parse_study

NATIVE = ("keras", "tf", "tflite", "torch")
PAIRS = [f"{a}->{b}" for a, b in itertools.permutations(NATIVE, 2)]


def test_twelve_pairs_each_route_through_registered_hops() -> None:
    assert len(PAIRS) == 12
    hops = convert.hops()
    for pair in PAIRS:
        full = convert.resolve(pair)
        steps = [s.framework for s in parse_chain(full)]
        assert steps[0] == pair.split("->")[0] and steps[-1] == pair.split("->")[1]
        for a, b in itertools.pairwise(steps):
            assert (a, b) in hops, (pair, full)
        if (steps[0], steps[-1]) not in hops:
            assert "onnx" in steps, full  # composite pairs go through ONNX


@pytest.mark.parametrize(
    ("entry", "full"),
    [
        ("torch->onnx", "torch->onnx"),
        ("torch->tf", "torch->onnx->tf"),
        ("torch->keras->onnx", "torch->onnx->keras->onnx"),
        ("torch->tf->tflite:dynamic-range", "torch->onnx->tf->tflite:dynamic-range"),
        ("torch->tflite:float16", "torch->onnx->tf->tflite:float16"),
        ("keras->torch", "keras->onnx->torch"),
        ("tflite->tf", "tflite->onnx->tf"),
    ],
)
def test_resolve(entry: str, full: str) -> None:
    assert convert.resolve(entry) == full


def test_quantize_marks() -> None:
    assert chain_quantize("torch->onnx") == "none"
    assert chain_quantize("torch->onnx->tf->tflite:dynamic-range") == "dynamic-range"
    assert chain_quantize("keras->tflite:float16->onnx") == "float16"
    assert chain_framework("torch->onnx->tf->tflite:float16") == "tflite"
    with pytest.raises(ValueError, match="cannot be quantised"):
        parse_chain("torch:float16->onnx")
    with pytest.raises(ValueError, match="unknown quantize 'int8'"):
        parse_chain("tf->tflite:int8")


def test_every_hop_names_its_tool() -> None:
    tools = {f"{a}->{b}": hop.tool for (a, b), hop in convert.hops().items()}
    assert tools == {
        "torch->onnx": "torch", "onnx->torch": "onnx2torch", "onnx->tf": "onnx2tf", "onnx->keras": "onnx2tf",
        "tf->tflite": "tensorflow-cpu", "keras->tflite": "tensorflow-cpu", "keras->tf": "keras",
        "tf->onnx": "tf2onnx", "keras->onnx": "tf2onnx", "tflite->onnx": "tf2onnx",
    }
    quantizing = {f"{a}->{b}" for (a, b), hop in convert.hops().items() if hop.quantize != ("none",)}
    assert quantizing == {"tf->tflite", "keras->tflite"}


def _study(tmp_path, variants: list[str]):  # noqa: ANN001, ANN202
    return parse_study({"name": "s", "models": ["efficientnet_lite0"], "variants": variants, "runtimes": ["native"]},
                       tmp_path / "s.toml", catalogue={"local": object()})


def test_study_expands_pairs_and_keeps_plain_chains(tmp_path) -> None:  # noqa: ANN001
    study = _study(tmp_path, ["torch", "torch->onnx", "torch->tf->tflite:dynamic-range"])
    assert study.variants == ["torch", "torch->onnx", "torch->onnx->tf->tflite:dynamic-range"]


def test_study_refuses_quantize_a_hop_cannot_apply(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(StudyError, match=r"variants: .*onnx->tf \(onnx2tf\) cannot apply quantize 'float16'"):
        _study(tmp_path, ["torch->tf:float16"])


def test_plan_keys_and_quantize(tmp_path) -> None:  # noqa: ANN001
    """A quantised twin is a different unit; a plain chain keeps the key it had before
    quantisation existed (quantize 'none' is not part of the identity)."""
    import numpy as np

    from deltann import dataset, plan
    from deltann.core.device_catalogue import load_catalogue

    kinds = load_catalogue()
    study = parse_study({"name": "s", "models": ["tiny_cnn"], "runtimes": ["native"],
                         "variants": ["torch->tf->tflite", "torch->tf->tflite:dynamic-range"]}, tmp_path / "s.toml", kinds)
    x = np.zeros((1, 3, 64, 64), np.float32)
    inputs = {"tiny_cnn": dataset.Inputs(["a"], x, [dataset.tensor_hash(x[0])], [None], "r")}
    units = plan.expand(study, inputs, kinds)
    assert [(u.variant, u.runtime, u.quantize) for u in units] == [
        ("torch->onnx->tf->tflite", "litert", "none"),
        ("torch->onnx->tf->tflite:dynamic-range", "litert", "dynamic-range"),
    ]
    assert units[0].key != units[1].key
    assert plan._chain_identity("torch->onnx")[0] == ["torch", "onnx", "torch", plan.dist_version("torch")]


def test_ready_studies_list_every_conversion() -> None:
    from pathlib import Path

    from deltann.study import load_study

    root = Path(__file__).resolve().parents[2] / "studies"
    study = load_study(root / "conversions.toml")
    ends = {(parse_chain(v)[0].framework, parse_chain(v)[-1].framework) for v in study.variants
            if chain_quantize(v) == "none" and "->" in v}
    assert ends == {tuple(p.split("->")) for p in PAIRS}
    assert {chain_quantize(v) for v in study.variants} == {"none", "dynamic-range", "float16"}
    assert "torch->onnx->keras->onnx" in load_study(root / "efficientnet_chains.toml").variants


def test_tensorflow_then_triton_is_guarded() -> None:
    """In a fresh process, deltann's TF paths load triton first; the raw order would crash
    (measured: SIGSEGV), and deltann's torch._dynamo paths refuse it with a reason."""
    import subprocess
    import sys

    guarded = "from deltann._native import before_tensorflow; before_tensorflow(); import tensorflow; import triton"
    assert subprocess.run([sys.executable, "-c", guarded], capture_output=True, timeout=300).returncode == 0
    refused = ("import tensorflow; from deltann._native import before_torch_dynamo\n"
               "try:\n    before_torch_dynamo()\nexcept RuntimeError as e:\n    print('refused:', e)")
    out = subprocess.run([sys.executable, "-c", refused], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "refused: TensorFlow was imported before triton" in out.stdout
