"""Fault localization on branching networks: parallel branches joined by a concat and a
residual add. InceptionV3's ImageNet weights cannot be fetched offline (NOTES.md), so the
default tests use a tiny Inception-like block built here (three branches of the same
output shape: only graph structure or names tell them apart) and the slow one a
seeded-random torchvision InceptionV3 (alignment needs the architecture, not trained
weights). Each check: the unperturbed pair aligns >= 95 % within tolerance, and a fault
injected into one branch is the first divergent layer, the other branches staying within
tolerance, whatever order the other side runs its branches in."""

from __future__ import annotations

import heapq
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deltann import convert
from deltann.analysis.layer_diff import Localization, localize
from deltann.convert.chain_spec import Produced
from deltann.runtimes import layers


def branchy() -> Any:
    """stem (conv+BN+ReLU) -> three branches (1x1 | 1x1-3x3 | maxpool-1x1), 8 channels
    each, concatenated -> residual 3x3 block -> mean -> linear."""
    import torch
    from torch import nn

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
            self.stem_bn = nn.BatchNorm2d(8)
            self.stem_act = nn.ReLU()
            self.b1 = nn.Conv2d(8, 8, 1)
            self.b2 = nn.Sequential(nn.Conv2d(8, 6, 1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1))
            self.b3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(8, 8, 1))
            self.res = nn.Conv2d(24, 24, 3, padding=1)
            self.fc = nn.Linear(24, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem_act(self.stem_bn(self.stem(x)))
            z = torch.cat([torch.relu(self.b1(x)), torch.relu(self.b2(x)), torch.relu(self.b3(x))], 1)
            z = torch.relu(z)
            z = torch.relu(self.res(z)) + z  # residual add
            return self.fc(z.mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = Branchy().eval()
    with torch.no_grad():
        model.stem_bn.running_mean.uniform_(-0.5, 0.5)
        model.stem_bn.running_var.uniform_(0.5, 2.0)
    return model


class _Spec:
    input_shape = (1, 3, 32, 32)


def to_onnx(model: Any, out: Path, spec: Any = _Spec) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    return Path(convert.get("torch", "onnx").fn(Produced(model, "NCHW"), spec, out, "none").payload)


def reschedule(src: Path, dst: Path) -> Path:
    """The same ONNX graph with its nodes in another valid topological order: of the
    nodes ready to run, always the one written last first, so parallel branches run in
    reverse (a converter that schedules differently)."""
    import onnx

    model = onnx.load(str(src))
    nodes = list(model.graph.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}
    deps = [{producer[i] for i in n.input if i in producer} for n in nodes]
    users: dict[int, list[int]] = {}
    for k, d in enumerate(deps):
        for p in d:
            users.setdefault(p, []).append(k)
    waiting = [len(d) for d in deps]
    ready = [-k for k, d in enumerate(deps) if not d]
    heapq.heapify(ready)
    order = []
    while ready:
        k = -heapq.heappop(ready)
        order.append(k)
        for u in users.get(k, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, -u)
    assert len(order) == len(nodes)
    del model.graph.node[:]
    model.graph.node.extend(nodes[k] for k in order)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


#: torch layers of each branch (the functional ReLUs closing them included)
BRANCHES = {"b1": {"b1", "/relu"}, "b2": {"b2.0", "b2.1", "b2.2", "/relu_1"}, "b3": {"b3.0", "b3.1", "/relu_2"}}


def assert_localized_to_branch(loc: Localization, torch_layer: str, faulty_branch: str) -> None:
    """The first divergent row is the perturbed torch layer, or the end of the group the
    other side fused it into (TFLite's conv+bias+ReLU: the ReLU's row)."""
    first = loc.first_divergent
    assert first is not None, "the perturbed copy was not found divergent"
    start = next(r["order"] for r in loc.rows if r["layer_a"] == torch_layer)
    expected = next(r for r in loc.matched if r["order"] >= start)
    assert first["layer_a"] == expected["layer_a"], (first["layer_a"], expected["layer_a"])
    assert expected["order"] - start <= 1
    # the other branches, wherever they sit in the order, stay within tolerance
    others = [r for r in loc.matched if any(r["layer_a"] in BRANCHES[b] for b in BRANCHES if b != faulty_branch)]
    assert len(others) >= 3 and all(r["within_tol"] for r in others)


@pytest.fixture(scope="module")
def model_and_x() -> tuple[Any, np.ndarray]:
    return branchy(), np.random.RandomState(0).rand(2, 3, 32, 32).astype(np.float32)


@pytest.fixture(scope="module")
def onnx_path(model_and_x: tuple[Any, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return to_onnx(model_and_x[0], tmp_path_factory.mktemp("branchy"))


def test_branches_align_whatever_order_the_other_side_runs_them(model_and_x: tuple[Any, np.ndarray],
                                                                onnx_path: Path, tmp_path: Path) -> None:
    model, x = model_and_x
    ref = layers.capture_torch(model, x)
    resched = reschedule(onnx_path, tmp_path / "resched.onnx")
    ort = layers.capture_onnxruntime(resched, x)
    names = [la.name for la in ort.layers]
    assert names.index("/b3/b3.1/Conv") < names.index("/b1/Conv")  # branches really run in another order
    loc = localize(ref, ort)
    assert loc.first_divergent is None and loc.alignment_rate >= 0.95
    assert len(loc.matched) == len(ort.layers)  # every ONNX node aligned
    pairs = {r["layer_a"]: r["layer_b"] for r in loc.matched}
    assert pairs["b1"] == "/b1/Conv" and pairs["b2.2"] == "/b2/b2.2/Conv" and pairs["b3.1"] == "/b3/b3.1/Conv"
    assert pairs["/cat"] == "/Concat" and pairs["/add"] == "/Add"
    assert all(r["reason"] for r in loc.unmatched)  # the unmatched are listed with a reason


@pytest.mark.parametrize("branch,node,torch_layer", [("b2", "/b2/b2.2/Conv", "b2.2"), ("b1", "/b1/Conv", "b1"),
                                                     ("b3", "/b3/b3.1/Conv", "b3.1")])
def test_fault_in_one_branch_is_localized_to_it(perturb_onnx: Any, branch: str, node: str, torch_layer: str,
                                                model_and_x: tuple[Any, np.ndarray], onnx_path: Path,
                                                tmp_path: Path) -> None:
    model, x = model_and_x
    faulty = reschedule(perturb_onnx(onnx_path, tmp_path / "faulty.onnx", node), tmp_path / "faulty_resched.onnx")
    loc = localize(layers.capture_torch(model, x), layers.capture_onnxruntime(faulty, x))
    assert_localized_to_branch(loc, torch_layer, branch)
    assert loc.first_divergent["layer_b"] == node


@pytest.mark.slow  # two conversions (onnx2tf, then the TFLite converter)
def test_fault_in_branch_localized_across_tflite_boundary(perturb_onnx: Any, model_and_x: tuple[Any, np.ndarray], onnx_path: Path,
                                                          tmp_path: Path) -> None:
    """Through onnx2tf and the TFLite converter: NHWC, fused conv+bias+ReLU, TFLite
    tensor names (no shared name with torch): structure alone aligns the branches."""
    model, x = model_and_x
    faulty = perturb_onnx(onnx_path, tmp_path / "faulty.onnx", "/b2/b2.2/Conv")
    (tmp_path / "tf").mkdir()
    (tmp_path / "tfl").mkdir()
    tf_art = convert.get("onnx", "tf").fn(Produced(faulty, "NCHW"), None, tmp_path / "tf", "none")
    tfl = convert.get("tf", "tflite").fn(tf_art, None, tmp_path / "tfl", "none").payload
    ref = layers.capture_torch(model, x)
    lite = layers.capture_litert(tfl, x, "NHWC")
    loc = localize(ref, lite)
    assert loc.alignment_rate >= 0.95
    assert_localized_to_branch(loc, "b2.2", "b2")


@pytest.mark.slow  # InceptionV3 at 299x299: export, three captures, two alignments of ~300 x ~215 layers
def test_inception_v3_branches(perturb_onnx: Any, tmp_path: Path) -> None:
    """torchvision's InceptionV3 (seeded random weights, batch-norm statistics measured on
    four random images so activations stay O(1)) against its ONNX with the branches of
    every Inception block scheduled in reverse; then a fault in Mixed_5b's 5x5 branch."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # cumulative average: the statistics of the calibration batch
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(np.random.RandomState(5).rand(4, 3, 299, 299).astype(np.float32)))
    model.eval()

    class Spec:
        input_shape = (1, 3, 299, 299)

    src = to_onnx(model, tmp_path / "onnx", Spec)
    x = np.random.RandomState(0).rand(1, 3, 299, 299).astype(np.float32)
    ref = layers.capture_torch(model, x)
    # Random weights with statistics from four images leave some channels with a tiny
    # variance, whose large BN scale amplifies the export's BN folding to ~1e-3: the
    # tolerance is 1e-2 here (EfficientNet-Lite0's real weights pass at 1e-3).
    tol = {"atol": 1e-2, "rtol": 1e-2}
    loc = localize(ref, layers.capture_onnxruntime(reschedule(src, tmp_path / "resched.onnx"), x), **tol)
    assert loc.first_divergent is None and loc.alignment_rate >= 0.95
    assert all(r["reason"] for r in loc.unmatched)
    faulty = reschedule(perturb_onnx(src, tmp_path / "faulty.onnx", "/Mixed_5b/branch5x5_2/conv/Conv"),
                        tmp_path / "faulty_resched.onnx")
    floc = localize(ref, layers.capture_onnxruntime(faulty, x), **tol)
    first = floc.first_divergent
    assert first is not None and (first["layer_a"], first["layer_b"]) == ("Mixed_5b.branch5x5_2.bn",
                                                                           "/Mixed_5b/branch5x5_2/conv/Conv")
    siblings = [r for r in floc.matched if r["layer_a"].lstrip("/").startswith("Mixed_5b.")
                and "branch5x5" not in r["layer_a"] and "cat" not in r["layer_a"]]
    assert len(siblings) >= 10 and all(r["within_tol"] for r in siblings)
