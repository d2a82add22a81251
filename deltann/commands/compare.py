"""``deltann compare DIR A B [--atol [name:]value …] [--rtol [name:]value …]``: a quick
pass/fail check of configuration B against reference A from a results folder, printed in
the shape Polygraphy's ``polygraphy run`` comparison prints, exit status 1 on mismatch.

Run first, compare later (Polygraphy): nothing is executed here, the stored outputs are
compared. Outputs: ``logits`` (element-wise, ``|b − a| ≤ atol + rtol·|a|`` with A as the
reference, numpy semantics as DESIGN.md says), ``top5_prob`` (the same, position-wise) and
``top1`` (labels: exact). Images are Polygraphy's iterations.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from deltann.analysis.names import resolve as resolve_config
from deltann.errors import DeltannError, StoreError
from deltann.store import Store

#: Polygraphy's defaults.
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-5
OUTPUTS = ("logits", "top5_prob", "top1")


def parse_tolerances(values: list[str] | None, default: float, flag: str) -> dict[str, float]:
    """``["1e-3", "logits:1e-2"]`` → ``{"": 1e-3, "logits": 1e-2}`` (``""``: every output
    not named). Raises ``ValueError`` naming the flag on bad input."""
    tol = {"": default}
    for item in values or []:
        name, _, number = item.rpartition(":")
        if name and name not in OUTPUTS:
            raise ValueError(f"{flag} {item!r}: unknown output {name!r}; outputs: {', '.join(OUTPUTS)}")
        try:
            value = float(number)
        except ValueError:
            raise ValueError(f"{flag} {item!r}: expected [name:]value with a number, e.g. logits:1e-3") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{flag} {item!r}: tolerance must be a finite number ≥ 0")
        tol[name] = value
    return tol


@dataclass
class OutputResult:
    """One output's comparison over every image both sides ran."""

    name: str
    passed: bool
    atol: float
    rtol: float
    shape: tuple[int, ...]
    images_failed: int
    max_abs: float = 0.0
    mean_abs: float = 0.0
    median_abs: float = 0.0
    max_rel: float = 0.0
    mean_rel: float = 0.0
    worst_image: str = ""
    required_atol: float = 0.0
    required_rtol: float = 0.0


@dataclass
class Comparison:
    model: str
    device: str
    a: str
    b: str
    images: list[str]
    image_passed: list[bool]
    outputs: list[OutputResult] = field(default_factory=list)
    same_inputs: bool = True

    @property
    def passed(self) -> bool:
        return bool(self.images) and all(o.passed for o in self.outputs)


def _pick(frame: pl.DataFrame, column: str, wanted: str | None, what: str) -> str:
    values = sorted(set(frame[column].to_list()))
    if wanted is not None:
        if wanted not in values:
            raise StoreError(f"no {what} {wanted!r} with both configurations; {what}s: {', '.join(values) or 'none'}")
        return wanted
    if len(values) != 1:
        raise StoreError(f"both configurations ran on several {what}s ({', '.join(values)}); pick one with --{what}")
    return values[0]


def compare(
    results: str, a: str, b: str, *, atol: dict[str, float] | None = None, rtol: dict[str, float] | None = None,
    model: str | None = None, device: str | None = None,
) -> Comparison:
    """Compare configuration ``b`` against reference ``a`` image by image. Reads only the two
    configurations' rows and the columns compared."""
    atol = atol or {"": DEFAULT_ATOL}
    rtol = rtol or {"": DEFAULT_RTOL}
    store = Store(results, sites=True)  # two labs' rows are two devices (local@lab-a, ...), never mixed
    store.read_manifest()
    # The study's own chain names work too ('onnx->tflite [litert]' is stored as
    # 'onnx->tf->tflite [litert]').
    known = store.scan("builds").select("config").unique().collect()["config"].to_list()
    a, b = resolve_config(a, known), resolve_config(b, known)
    cols = ["model", "device", "config", "image_id", "input_hash", *OUTPUTS]
    rows = store.scan("predictions").select(cols).filter(pl.col("config").is_in([a, b])).collect()
    for name in (a, b):
        if rows.filter(pl.col("config") == name).is_empty():
            known = store.scan("predictions").select("config").unique().collect()["config"].sort().to_list()
            raise StoreError(f"no predictions for configuration {name!r}; configurations: {', '.join(known)}")
    ra = rows.filter(pl.col("config") == a).drop("config")
    rb = rows.filter(pl.col("config") == b).drop("config")
    both = ra.join(rb, on=["model", "device", "image_id"], suffix="_b")
    model = _pick(both, "model", model, "model")
    both = both.filter(pl.col("model") == model)
    device = _pick(both, "device", device, "device")
    both = both.filter(pl.col("device") == device).sort("image_id")
    images = both["image_id"].to_list()
    result = Comparison(model, device, a, b, images, [True] * len(images),
                        same_inputs=bool((both["input_hash"] == both["input_hash_b"]).all()))
    for name in OUTPUTS:
        ref = np.asarray(both[name].to_list(), dtype=np.float64)
        test = np.asarray(both[f"{name}_b"].to_list(), dtype=np.float64)
        if ref.ndim == 1:
            ref, test = ref[:, None], test[:, None]
        at, rt = (0.0, 0.0) if name == "top1" else (atol.get(name, atol[""]), rtol.get(name, rtol[""]))
        diff = np.abs(test - ref)
        rel = diff / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)
        ok = diff <= at + rt * np.abs(ref)
        per_image = ok.all(axis=1) if ok.size else np.zeros(0, bool)
        result.image_passed = [p and bool(q) for p, q in zip(result.image_passed, per_image, strict=True)]
        out = OutputResult(name, bool(per_image.all()), at, rt, tuple(ref.shape), int((~per_image).sum()))
        if diff.size:
            worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
            out.max_abs, out.mean_abs, out.median_abs = float(diff.max()), float(diff.mean()), float(np.median(diff))
            out.max_rel, out.mean_rel = float(rel.max()), float(rel.mean())
            out.worst_image = images[worst[0]]
            out.required_atol, out.required_rtol = float(diff.max()), float(rel.max())
        result.outputs.append(out)
    return result


def format_comparison(c: Comparison) -> str:
    """Polygraphy-shaped text: per output the tolerance, error statistics and verdict, then
    the accuracy summary over iterations (images)."""
    lines = [f"[I] Comparing {c.b!r} against reference {c.a!r} ({c.model} on {c.device}, {len(c.images)} images)"]
    if not c.same_inputs:
        lines.append("[W]     Input hashes differ between the two sides: the comparison mixes input and output changes")
    if not c.images:
        lines.append("[E]     No image ran on both sides")
    for o in c.outputs:
        lines.append(f"[I]     Comparing Output: {o.name!r} (shape={o.shape})")
        if o.name == "top1":
            lines.append("[I]         Tolerance: exact (labels)")
        else:
            lines.append(f"[I]         Tolerance: [abs={o.atol:.5g}, rel={o.rtol:.5g}] | Checking elemwise error")
            lines.append(f"[I]         Minimum Required Tolerance: elemwise error | [abs={o.required_atol:.5g}] "
                         f"OR [rel={o.required_rtol:.5g}]")
        lines.append(f"[I]         Absolute Difference | Stats: mean={o.mean_abs:.5g}, median={o.median_abs:.5g}, "
                     f"max={o.max_abs:.5g}" + (f" at image {o.worst_image!r}" if o.max_abs > 0 else ""))
        if o.name != "top1":
            lines.append(f"[I]         Relative Difference | Stats: mean={o.mean_rel:.5g}, max={o.max_rel:.5g}")
        if o.passed:
            lines.append(f"[I]         PASSED | Output: {o.name!r} | Difference is within tolerance")
        else:
            lines.append(f"[E]         FAILED | Output: {o.name!r} | Difference exceeds tolerance on "
                         f"{o.images_failed}/{len(c.images)} images")
    failed = [o.name for o in c.outputs if not o.passed]
    if failed:
        lines.append(f"[E]     FAILED | Mismatched outputs: {failed}")
    else:
        lines.append("[I]     PASSED | All outputs matched | Outputs: " + str([o.name for o in c.outputs]))
    n_pass = sum(c.image_passed)
    rate = 100.0 * n_pass / len(c.images) if c.images else 0.0
    tag = "[I]" if c.passed else "[E]"
    lines.append(f"{tag} Accuracy Summary | {c.a} vs. {c.b} | Passed: {n_pass}/{len(c.images)} iterations | "
                 f"Pass Rate: {rate:.1f}%")
    lines.append("PASSED" if c.passed else "FAILED")
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="pass/fail of configuration B against reference A (Polygraphy-style)")
    p.add_argument("results", help="results folder written by 'deltann run'")
    p.add_argument("a", help="reference configuration, e.g. 'torch [torch]'")
    p.add_argument("b", help="configuration to check, e.g. 'torch [tvm:extended]'")
    p.add_argument("--atol", nargs="+", metavar="[NAME:]VALUE",
                   help=f"absolute tolerance, for all outputs or one (default {DEFAULT_ATOL}); outputs: "
                   + ", ".join(OUTPUTS[:2]))
    p.add_argument("--rtol", nargs="+", metavar="[NAME:]VALUE",
                   help=f"relative tolerance to |reference|, for all outputs or one (default {DEFAULT_RTOL})")
    p.add_argument("--model", help="model, when both configurations ran several")
    p.add_argument("--device", help="device kind, when both configurations ran on several")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        atol = parse_tolerances(args.atol, DEFAULT_ATOL, "--atol")
        rtol = parse_tolerances(args.rtol, DEFAULT_RTOL, "--rtol")
    except ValueError as exc:
        raise DeltannError(str(exc)) from None
    result = compare(args.results, args.a, args.b, atol=atol, rtol=rtol, model=args.model, device=args.device)
    print(format_comparison(result))
    return 0 if result.passed else 1
