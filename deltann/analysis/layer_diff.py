"""Fault localization: where inside the network two variants part ways.

Two per-layer captures (:class:`~deltann.runtimes.layers.Trace`) of the same inputs are
aligned by name and graph structure, never by position (the seed's alpha matched the
i-th conv of one dump to the i-th of the other, which breaks as soon as a converter
fuses, splits or pads). Each capture is first put in a canonical topological order
built from its layers' producers (:func:`network_order`: depth first from the outputs,
inputs in argument order), so that parallel branches — an Inception block's, a residual
shortcut — come in the same order whichever order a runtime ran them in. Alignment is
then a monotone sequence alignment (as in diff or Needleman-Wunsch) over the two
orders, in which a pair of layers may match only if their *stage* agrees (a linear op:
conv, dense, batch-norm, bias add; an activation; a pool; a pad; a reshape; ...) and
their output shapes agree, after the NHWC -> NCHW
permutation the capture's layout declares (or, where the layout is unknown, that the
shapes imply). Names score: an ONNX tensor name shared by both sides (onnxruntime vs
TVM of one graph) scores most, then a shared normalised scope (torch module path ==
legacy ONNX node scope). Layers left over that names alone pair unambiguously are
paired wherever they sit.

Fusion is handled by matching the *last op of a fused group*: a conv directly followed by
a batch-norm of the same shape is the inside of a group whose output is the batch-norm's
(ONNX export folds BN into the conv, so the ONNX ``Conv`` matches torch's ``BatchNorm2d``
and inherits the conv's scope name); an op with a fused activation (TFLite's
``CONV_2D`` + ReLU6, a TVM kernel ``fused_conv2d_add_relu``) is an activation-stage layer
and matches the activation; two activations in a row (TVM's clip as maximum then
minimum) are one. Layers inside two groups pair only by name (a BN-folded conv is not
the conv before its BN). Every layer left without a partner is returned as a row with
``matched = False`` and the reason.

Metrics per aligned layer (reference side A, numpy's tolerance semantics
``|a - b| <= atol + rtol * |a|``): max and mean absolute difference, standard deviation
of the difference, relative error ``||a - b|| / ||a||``, cosine similarity, and the
largest parameter difference where both sides (a matched layer with the layers fused
into its group) hold parameter tensors of the same sizes. Pure numpy (+ polars for the
table): no framework is imported here.

One file because the alignment rules and the metrics are read together: a layer's metric
means nothing without the rule that paired it.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deltann.core import runtime_registry as registry
from deltann.runtimes.layers import Layer, Trace

DEFAULT_ATOL = 1e-3
DEFAULT_RTOL = 1e-3

# op-name fragments -> family; first hit wins (so "conv2dstaticsamepadding" is a conv).
_FAMILY_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("affine", ("conv", "depthwise", "linear", "gemm", "matmul", "fully_connected", "dense", "einsum")),
    ("norm", ("batchnorm", "batch_norm", "batchnormalization", "layernorm", "instancenorm")),
    ("act", ("relu", "clip", "sigmoid", "logistic", "swish", "silu", "hardswish", "hard_swish", "gelu",
             "tanh", "elu", "softplus", "activation", "prelu", "maximum", "minimum")),  # (TVM's legalised clip)
    ("pool", ("pool", "reducemean", "reduce_mean", "mean")),
    ("pad", ("pad",)),
    ("shape", ("reshape", "flatten", "squeeze", "unsqueeze", "transpose", "dropout", "identity", "permute",
               "view")),
    ("softmax", ("softmax",)),
    ("concat", ("concat",)),
    ("add", ("add",)),
    ("mul", ("mul",)),
)


def family(layer: Layer) -> str:
    """The op family of a layer across frameworks (``Conv2d``, ``Conv``, ``CONV_2D`` and
    ``conv2d`` are all ``affine``). An Add/Mul with a parameter is a bias/scale: ``norm``."""
    op = layer.op.lower()
    if op == "cat":  # torch.cat (a substring rule would also catch "scatter")
        return "concat"
    for fam, parts in _FAMILY_RULES:
        if any(p in op for p in parts):
            if fam in ("add", "mul") and layer.params:
                return "norm"
            return fam
    return "op:" + op


def stage(layer: Layer) -> str:
    """What a layer's output *is* in the dataflow: a linear stage (conv, dense, norm, bias)
    or an activation (an op with a fused activation outputs post-activation values)."""
    fam = family(layer)
    if fam in ("affine", "norm"):
        return "act" if layer.fused_act else "linear"
    return fam


def scope(name: str) -> str:
    """Normalised scope: legacy-ONNX ``/_blocks.0/_swish_1/Clip`` -> ``_blocks.0._swish_1``
    (the torch module path), lower-cased; names without ``/`` are kept; a TFLite fused name keeps only
    its first (outermost) ``;``-part."""
    name = name.split(";")[0].lower()
    if "/" not in name:
        return name
    parts = [p for p in name.strip("/").split("/") if p]
    return ".".join(parts[:-1]) if len(parts) > 1 else parts[0] if parts else name


def canonical(value: np.ndarray, layout: str) -> np.ndarray:
    """A 4-D tensor in NCHW, whatever the capture's layout."""
    if layout == "NHWC" and value.ndim == 4:
        return value.transpose(0, 3, 1, 2)
    return value


def network_order(trace: Trace) -> list[int]:
    """Layer indices of ``trace`` in a canonical topological order: depth-first from the
    network's outputs, each layer emitted after its producers, visited in argument order.
    Why: frameworks schedule parallel branches differently (one runs an Inception
    block's 5x5 branch first, a converter the 3x3 one), but the argument order of the
    concat that joins them is the model's semantics (channel order), the same everywhere.
    So two captures of one network come out in one order, and the monotone alignment
    below sees branches side by side. Where a capture has no producers (``inputs`` None)
    or repeats a name, its execution order is kept."""
    layers = trace.layers
    index = {layer.name: i for i, layer in enumerate(layers)}
    if len(index) != len(layers) or any(layer.inputs is None for layer in layers):
        return list(range(len(layers)))
    preds = [[index[p] for p in layer.inputs or () if p in index and index[p] != i]
             for i, layer in enumerate(layers)]
    consumed = {p for ps in preds for p in ps}
    order: list[int] = []
    done: set[int] = set()
    active: set[int] = set()
    for sink in (i for i in range(len(layers)) if i not in consumed):  # outputs, dead ends
        stack = [(sink, False)]
        while stack:
            i, expanded = stack.pop()
            if expanded:
                active.discard(i)
                done.add(i)
                order.append(i)
                continue
            if i in done or i in active:  # (active: a cycle, which a real capture cannot have)
                continue
            active.add(i)
            stack.append((i, True))
            stack.extend((p, False) for p in reversed(preds[i]) if p not in done)
    order += [i for i in range(len(layers)) if i not in done]  # (only with cycles)
    return order


@dataclass
class _Node:
    index: int  # the layer's index in its trace
    layer: Layer
    stage: str
    value: np.ndarray  # canonical (NCHW)
    keys: set[str]
    interior_of: int | None = None  # position of the group's last op when this op is inside a fused group
    act_of: int | None = None  # the activation right after this linear group end (fusable into it)


def _feeds(here: _Node, nxt: _Node) -> bool:
    """Does ``nxt`` read ``here`` (always assumed where producers are unknown)?"""
    return nxt.layer.inputs is None or here.layer.name in nxt.layer.inputs


def _keys(trace: Trace, name: str) -> set[str]:
    """Name keys of a layer: its normalised scope; for a TF op also the Keras layer its
    scope names (``functional_1/br_a_1/BiasAdd`` -> ``br_a``: Keras suffixes ``_1`` to a
    layer's scope when it traces the call), which a Keras capture uses as its name."""
    keys = {scope(name)}
    runner = registry.runners().get(trace.runtime)
    if runner is not None and runner.keras_scoped_names and "/" in name:
        parts = name.lower().split("/")
        keys.add(re.sub(r"_\d+$", "", parts[-2]))
    return keys


def _prepare(trace: Trace) -> list[_Node]:
    """Nodes in :func:`network_order`; ``interior_of``/``act_of`` are positions in it."""
    nodes = [_Node(i, trace.layers[i], stage(trace.layers[i]), canonical(trace.layers[i].value, trace.layout),
                   _keys(trace, trace.layers[i].name)) for i in network_order(trace)]
    # A linear op followed by a norm/bias of the same shape is the inside of one fused
    # group; the group's output (and its names) are the last op's.
    for k, (here, nxt) in enumerate(zip(nodes, nodes[1:], strict=False)):
        if (here.stage == "linear" and family(nxt.layer) == "norm" and not nxt.layer.fused_act
                and here.value.shape == nxt.value.shape and _feeds(here, nxt)):
            here.interior_of = k + 1
            nxt.keys |= here.keys
    # An explicit pad directly before a conv is the other half of a padded conv (ORT's
    # folding and the TF converter put the padding into the conv itself).
    for k, (here, nxt) in enumerate(zip(nodes, nodes[1:], strict=False)):
        if here.stage == "pad" and family(nxt.layer) == "affine" and _feeds(here, nxt):
            here.interior_of = k + 1
    # Two activations in a row on one tensor are one activation split in two (TVM
    # legalises Clip/ReLU6 into maximum then minimum; a fused kernel holds both).
    for k, (here, nxt) in enumerate(zip(nodes, nodes[1:], strict=False)):
        if (here.stage == "act" and nxt.stage == "act" and family(here.layer) == "act" and family(nxt.layer) == "act"
                and here.value.shape == nxt.value.shape and _feeds(here, nxt)):
            here.interior_of = k + 1
    for node in reversed(nodes):  # chains (conv -> bn -> bias): point to the very last op
        if node.interior_of is not None and nodes[node.interior_of].interior_of is not None:
            node.interior_of = nodes[node.interior_of].interior_of
    for k, (here, nxt) in enumerate(zip(nodes, nodes[1:], strict=False)):
        if here.stage == "linear" and here.interior_of is None and nxt.stage == "act" \
                and here.value.shape == nxt.value.shape and _feeds(here, nxt):
            here.act_of = k + 1
    return nodes


def _shape_match(a: np.ndarray, b: np.ndarray) -> tuple[bool, bool]:
    """(compatible, permuted): equal shapes; or equal after dropping size-1 axes; or a
    4-D NHWC/NCHW pair the declared layouts did not cover (detected by shape)."""
    if a.shape == b.shape:
        return True, False
    if a.size == b.size and tuple(s for s in a.shape if s != 1) == tuple(s for s in b.shape if s != 1):
        return True, False
    if a.ndim == 4 and b.ndim == 4 and (a.shape == tuple(b.shape[i] for i in (0, 3, 1, 2))
                                         or a.shape == tuple(b.shape[i] for i in (0, 2, 3, 1))):
        return True, True
    return False, False


NAME_SCORE = 2.0  # a score above 1 + NAME_SCORE - 1 means names agree (exact tensor or scope)


def _score(a: _Node, b: _Node) -> float:
    if a.stage != b.stage or (a.interior_of is None) != (b.interior_of is None):
        return 0.0
    ok, _ = _shape_match(a.value, b.value)
    if not ok:
        return 0.0
    score = 1.0
    if set(a.layer.outputs) & set(b.layer.outputs):
        score += 4.0
    if a.keys & b.keys:
        score += NAME_SCORE
    if a.interior_of is not None and score == 1.0:
        # inside two fused groups, equal stage and shape is no evidence of equal meaning
        # (a BN-folded conv vs the plain conv before its BN): only names pair them
        return 0.0
    return score


@dataclass
class Alignment:
    """Matched index pairs (into ``a.layers`` and ``b.layers``) in network order, and
    the unmatched indices of each side with a reason."""

    pairs: list[tuple[int, int]]
    unmatched_a: dict[int, str]
    unmatched_b: dict[int, str]
    order: list[tuple[int | None, int | None]] = field(default_factory=list)  # merged network order
    owner_a: dict[int, int] = field(default_factory=dict)  # fused layer -> the matched end of its group
    owner_b: dict[int, int] = field(default_factory=dict)

    def rate(self, n_a: int, n_b: int) -> float:
        """Matched layers over the layers of the coarser capture (the one with fewer
        layers: it bounds how many pairs can exist), a fused group counting as one layer:
        the inside of a group whose last op is matched is left out of the count."""
        fused_a = sum(1 for r in self.unmatched_a.values() if r.startswith("fused"))
        fused_b = sum(1 for r in self.unmatched_b.values() if r.startswith("fused"))
        return len(self.pairs) / max(1, min(n_a - fused_a, n_b - fused_b))


def align(a: Trace, b: Trace) -> Alignment:
    """Best-score alignment of two captures (see the module docstring): a monotone
    alignment over the two :func:`network_order`\ s, then, among the layers it left,
    pairs that the names alone make unambiguous (one candidate each way, same stage and
    shape) wherever they sit — a branch order no producer information fixed."""
    na, nb = _prepare(a), _prepare(b)
    n, m = len(na), len(nb)
    score = np.zeros((n, m))
    for i, j in itertools.product(range(n), range(m)):
        score[i, j] = _score(na[i], nb[j])
    best = np.zeros((n + 1, m + 1))
    for i in range(1, n + 1):
        row, prev = best[i], best[i - 1]
        for j in range(1, m + 1):
            s = score[i - 1, j - 1]
            row[j] = max(prev[j], row[j - 1], prev[j - 1] + s if s > 0 else -1.0)
    order: list[tuple[int | None, int | None]] = []  # positions
    i, j = n, m
    while i > 0 or j > 0:
        s = score[i - 1, j - 1] if i > 0 and j > 0 else 0.0
        if i > 0 and j > 0 and s > 0 and math.isclose(best[i, j], best[i - 1, j - 1] + s):
            order.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i > 0 and (j == 0 or math.isclose(best[i, j], best[i - 1, j])):
            order.append((i - 1, None))
            i -= 1
        else:
            order.append((None, j - 1))
            j -= 1
    order.reverse()
    order = _pair_by_name(order, score)
    pairs = [(p, q) for p, q in order if p is not None and q is not None]
    matched_a = {p for p, _ in pairs}
    matched_b = {q for _, q in pairs}

    def reasons(nodes: list[_Node], matched: set[int], owner: dict[int, int]) -> dict[int, str]:
        out = {}
        for pos, node in enumerate(nodes):
            if pos in matched:
                continue
            end = node.interior_of if node.interior_of is not None else pos
            act = nodes[end].act_of
            if end != pos and end in matched:
                out[node.index] = f"fused: inside the group ending at {nodes[end].layer.name}"
                owner[node.index] = nodes[end].index
            elif act is not None and act in matched:
                out[node.index] = (f"fused: inside the group ending at {nodes[act].layer.name} "
                                   "(the other side fused the activation too)")
                owner[node.index] = nodes[act].index
            else:
                out[node.index] = f"no counterpart of stage {node.stage!r} with shape {tuple(node.value.shape)}"
        return out

    def idx(nodes: list[_Node], pos: int | None) -> int | None:
        return None if pos is None else nodes[pos].index

    owner_a: dict[int, int] = {}
    owner_b: dict[int, int] = {}
    return Alignment([(na[p].index, nb[q].index) for p, q in pairs], reasons(na, matched_a, owner_a),
                     reasons(nb, matched_b, owner_b), [(idx(na, p), idx(nb, q)) for p, q in order], owner_a, owner_b)


def _pair_by_name(order: list[tuple[int | None, int | None]], score: np.ndarray) -> list[tuple[int | None, int | None]]:
    """Pair left-over layers whose names agree, one candidate each way (score > 1 +
    NAME_SCORE - 1 means a shared tensor or scope name); the pair takes A's place in the
    merged order."""
    left_a = [p for p, q in order if q is None and p is not None]
    left_b = [q for p, q in order if p is None and q is not None]
    if not left_a or not left_b:
        return order
    sub = score[np.ix_(left_a, left_b)] >= NAME_SCORE + 1.0
    found: dict[int, int] = {}
    for r, p in enumerate(left_a):
        cols = np.flatnonzero(sub[r])
        if len(cols) == 1 and np.count_nonzero(sub[:, cols[0]]) == 1:
            found[p] = left_b[cols[0]]
    if not found:
        return order
    taken = set(found.values())
    out: list[tuple[int | None, int | None]] = []
    for p, q in order:
        if p is None and q in taken:
            continue
        out.append((p, found[p]) if p is not None and q is None and p in found else (p, q))
    return out


def _best_param_diff(pa: dict[str, np.ndarray], pb: dict[str, np.ndarray]) -> float | None:
    """Largest |difference| between the two layers' (or fused groups') parameters, tensor
    by tensor in order of size, each under the axis permutation that fits best (OIHW vs
    OHWI vs HWIO; a TVM build's weights in channel blocks unblocked first); None unless
    both sides hold tensors of the same sizes — the same parametrisation (a conv + its BN
    vs the BN-folded conv, or a BN's four vectors vs a folded scale and offset, are not)."""
    if not pa or not pb:
        return None
    la = sorted(pa.values(), key=lambda v: -v.size)
    lb = sorted(pb.values(), key=lambda v: -v.size)
    if [v.size for v in la] != [v.size for v in lb]:
        return None
    diffs = [_tensor_diff(wa, wb) for wa, wb in zip(la, lb, strict=True)]
    return None if any(d is None for d in diffs) else max(d for d in diffs if d is not None)


def _unblocked(w: np.ndarray) -> np.ndarray:
    """A weight stored in blocks of output channels, block outermost ([o // b, .., o % b], as
    deltann's builds store channel-last weights: compile.schedules.prepack_weights), back
    to [.., o]."""
    inner = np.moveaxis(w, 0, -2)
    return inner.reshape(*inner.shape[:-2], inner.shape[-2] * inner.shape[-1])


def _tensor_diff(wa: np.ndarray, wb: np.ndarray) -> float | None:
    wa, wb = wa.astype(np.float64), wb.astype(np.float64)
    if wa.ndim == wb.ndim + 1 and wa.ndim >= 3:
        wa = _unblocked(wa)
    elif wb.ndim == wa.ndim + 1 and wb.ndim >= 3:
        wb = _unblocked(wb)
    best: float | None = None
    if wa.ndim == wb.ndim and wa.ndim <= 4:
        for perm in itertools.permutations(range(wb.ndim)):
            if tuple(wb.shape[k] for k in perm) == wa.shape:
                d = float(np.max(np.abs(wa - wb.transpose(perm))))
                best = d if best is None else min(best, d)
    if best is None and wa.squeeze().shape == wb.squeeze().shape:
        best = float(np.max(np.abs(wa.squeeze() - wb.squeeze())))
    return best


def layer_metrics(va: np.ndarray, vb: np.ndarray, atol: float, rtol: float) -> dict[str, Any]:
    """Difference metrics of one aligned pair; ``va`` is the reference."""
    ok, permuted = _shape_match(va, vb)
    if permuted:
        vb = vb.transpose(0, 3, 1, 2) if va.shape == tuple(vb.shape[i] for i in (0, 3, 1, 2)) \
            else vb.transpose(0, 2, 3, 1)
    a = va.astype(np.float64).reshape(-1)
    b = vb.astype(np.float64).reshape(-1)
    d = a - b
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    cosine = float(a @ b / (na * nb)) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    return {
        "max_abs": float(np.max(np.abs(d))) if d.size else 0.0,
        "mean_abs": float(np.mean(np.abs(d))) if d.size else 0.0,
        "std_diff": float(np.std(d)) if d.size else 0.0,
        "rel_err": float(np.linalg.norm(d) / na) if na > 0 else float(np.linalg.norm(d)),
        "cosine": cosine,
        "within_tol": bool(np.all(np.abs(d) <= atol + rtol * np.abs(a))),
        "permuted": permuted,
    }


@dataclass
class Localization:
    """The aligned comparison of two captures: one row per layer (matched or not) in
    network order, the first matched layer beyond tolerance, and the alignment rate."""

    rows: list[dict[str, Any]]
    first_divergent: dict[str, Any] | None
    alignment_rate: float
    n_a: int
    n_b: int
    atol: float
    rtol: float

    @property
    def matched(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["matched"]]

    @property
    def unmatched(self) -> list[dict[str, Any]]:
        """Layers without a partner (listed, never dropped)."""
        return [r for r in self.rows if not r["matched"]]

    def growth(self) -> list[tuple[int, float]]:
        """The growth curve: (order, max abs difference) of the aligned layers."""
        return [(r["order"], r["max_abs"]) for r in self.matched]

    def frame(self) -> Any:
        import polars as pl

        return pl.DataFrame(self.rows, infer_schema_length=None)


def _group_params(trace: Trace, end: int, owner: dict[int, int]) -> dict[str, np.ndarray]:
    """The parameters of layer ``end`` and of the layers fused into its group (a conv
    and its bias add, compared as one against an op that does both)."""
    members = [k for k, e in owner.items() if e == end] + [end]
    return {f"{trace.layers[k].name}:{n}": v for k in sorted(members) for n, v in trace.layers[k].params.items()}


def localize(a: Trace, b: Trace, *, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> Localization:
    """Align ``a`` (reference) and ``b`` and measure every aligned layer."""
    alignment = align(a, b)
    rows: list[dict[str, Any]] = []
    first: dict[str, Any] | None = None
    empty = {"max_abs": None, "mean_abs": None, "std_diff": None, "rel_err": None, "cosine": None,
             "within_tol": None, "permuted": False, "param_max_abs": None}
    for order, (i, j) in enumerate(alignment.order):
        la = a.layers[i] if i is not None else None
        lb = b.layers[j] if j is not None else None
        row: dict[str, Any] = {
            "order": order,
            "layer_a": la.name if la else "",
            "layer_b": lb.name if lb else "",
            "op_a": la.op if la else "",
            "op_b": lb.op if lb else "",
            "shape_a": list(canonical(la.value, a.layout).shape) if la else [],
            "shape_b": list(canonical(lb.value, b.layout).shape) if lb else [],
            "quantized_b": bool(lb.quantized) if lb else False,
            "matched": la is not None and lb is not None,
            "reason": "",
        }
        if la is not None and lb is not None:
            row |= layer_metrics(canonical(la.value, a.layout), canonical(lb.value, b.layout), atol, rtol)
            row["param_max_abs"] = _best_param_diff(_group_params(a, i, alignment.owner_a),
                                                    _group_params(b, j, alignment.owner_b))
            if first is None and not row["within_tol"]:
                first = row
        else:
            row |= empty
            row["reason"] = alignment.unmatched_a[i] if i is not None else alignment.unmatched_b[j]
        row["first_divergent"] = row is first
        rows.append(row)
    return Localization(rows, first, alignment.rate(len(a.layers), len(b.layers)), len(a.layers),
                        len(b.layers), atol, rtol)


def plot(loc: Localization, path: Any, title: str = "") -> Any:
    """The seed's Fig. 2, aligned by structure: max and mean |difference| (log scale) and
    cosine similarity along the network, the first divergent layer marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = loc.matched
    x = np.arange(len(rows))
    floor = 1e-12
    fig, ax = plt.subplots(figsize=(max(6.0, min(18.0, 0.09 * len(rows) + 4)), 4.2))
    ax.semilogy(x, [max(r["max_abs"], floor) for r in rows], label="max |a-b|", color="tab:red")
    ax.semilogy(x, [max(r["mean_abs"], floor) for r in rows], label="mean |a-b|", color="tab:orange")
    ax.semilogy(x, [max(r["std_diff"], floor) for r in rows], label="std(a-b)", color="tab:purple", alpha=0.6)
    quant = [k for k, r in enumerate(rows) if r.get("quantized_b")]
    if quant:
        ax.scatter(quant, [max(rows[k]["max_abs"], floor) for k in quant], marker="v", s=14, color="black",
                   zorder=3, label="B weights quantised")
    ax.set_xlabel("aligned layer (network order)")
    ax.set_ylabel("absolute difference")
    ax2 = ax.twinx()
    ax2.plot(x, [r["cosine"] for r in rows], label="cosine", color="tab:blue", alpha=0.7)
    ax2.set_ylabel("cosine similarity")
    first = loc.first_divergent
    if first is not None:
        k = next(n for n, r in enumerate(rows) if r is first)
        ax.axvline(k, color="black", linestyle="--", linewidth=1)
        ax.annotate(f"first beyond tol: {first['layer_a'] or first['layer_b']}", (k, ax.get_ylim()[1]),
                    xytext=(4, -12), textcoords="offset points", fontsize=8)
    ax.set_title(title or f"aligned {len(rows)} layers ({loc.alignment_rate:.0%}); "
                 f"atol={loc.atol:g} rtol={loc.rtol:g}", fontsize=9)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def divergence_summary(layers: Any) -> Any:
    """One row per localized pair of a store's ``layers`` table (a Polars frame, lazy or
    not): aligned and unmatched layer counts, alignment rate, the first layer beyond
    tolerance on each side and its max |difference|, and the last aligned layer's — what
    a report shows for every disagreeing pair it is asked about."""
    import polars as pl

    frame = layers.collect() if isinstance(layers, pl.LazyFrame) else layers
    first = (frame.filter(pl.col("first_divergent"))
             .select("pair", "model", pl.col("layer_a").alias("first_layer_a"),
                     pl.col("layer_b").alias("first_layer_b"), pl.col("max_abs").alias("first_max_abs")))
    last = (frame.filter(pl.col("matched")).sort("order").group_by("pair", "model", maintain_order=True)
            .agg(pl.col("max_abs").last().alias("final_max_abs"), pl.col("cosine").last().alias("final_cosine")))
    counts = frame.group_by("pair", "model", maintain_order=True).agg(
        pl.col("image_ids").first().list.len().alias("images"),
        pl.col("matched").sum().alias("aligned"),
        (~pl.col("matched")).sum().alias("unmatched"),
        pl.col("alignment_rate").first(),
    )
    return (counts.join(first, on=["pair", "model"], how="left")
            .join(last, on=["pair", "model"], how="left").sort("pair"))
