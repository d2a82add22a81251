"""Which passes make two settings disagree? Delta debugging (Zeller & Hildebrandt's
ddmin) over the catalogue entries that separate them.

Why entries and not raw Relax passes: a setting is a set of catalogue entries composed
in one fixed order (:func:`deltann.compile.catalogue.compose`), so every subset of the
differing entries is a well-formed, buildable pass list; arbitrary subsequences of Relax
passes are not (FoldBatchnormToConv2D directly before ConvertLayout segfaults).

The changes are the entries enabled in ``bad`` and not in ``good`` (toggled on) and those
enabled in ``good`` and not in ``bad`` (toggled off). A trial builds ``good`` with a subset
of the changes applied and compares its outputs (or latency) with ``good``'s own build;
ddmin returns a 1-minimal subset that still reproduces the difference: removing any one
of its entries makes the difference go away. A trial whose build fails is "unresolved"
and ddmin steps around it. Every build tried is reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from deltann import dataset, zoo
from deltann.compile import catalogue, pipeline, settings as compile_settings
from deltann.compile.frontends import from_torch

log = logging.getLogger("deltann.compile")

Outcome = Literal["same", "differs", "failed"]


@dataclass(frozen=True)
class Trial:
    """One build tried: the changes applied on top of ``good``, its passes, the verdict."""

    changes: tuple[str, ...]  # e.g. ("+FastMath", "-OpFusion")
    passes: tuple[str, ...]
    outcome: Outcome
    detail: str
    seconds: float


@dataclass
class BisectResult:
    good: str
    bad: str
    culprits: tuple[str, ...]  # 1-minimal set of changes reproducing the difference
    trials: list[Trial] = field(default_factory=list)

    @property
    def culprit_passes(self) -> tuple[str, ...]:
        """The Relax passes the culprit entries stand for."""
        return tuple(p for c in self.culprits for p in catalogue.get(c[1:]).passes)

    def table(self) -> list[dict[str, str]]:
        """One row per build tried, in order (for printing or a DataFrame)."""
        return [
            {"trial": str(i), "changes": " ".join(t.changes) or "(none)", "outcome": t.outcome,
             "detail": t.detail, "seconds": f"{t.seconds:.1f}"}
            for i, t in enumerate(self.trials, 1)
        ]

    def summary(self) -> str:
        entries = ", ".join(self.culprits) or "(none)"
        return (f"{self.good} -> {self.bad}: responsible {entries} "
                f"(Relax: {', '.join(self.culprit_passes) or '-'}); {len(self.trials)} builds tried")


class NoDifference(ValueError):
    """The two settings do not differ under the oracle: there is nothing to bisect."""


def output_oracle(atol: float = 1e-4, rtol: float = 0.0) -> Callable[[Any, Any], tuple[bool, str]]:
    """Outputs differ when a top-1 label flips or |test - ref| > atol + rtol*|ref| anywhere
    (numpy semantics, ``ref`` is the ``good`` build)."""

    def differs(ref: Any, test: Any) -> tuple[bool, str]:
        ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
        flips = int((ref.reshape(ref.shape[0], -1).argmax(1) != test.reshape(test.shape[0], -1).argmax(1)).sum())
        diff = np.abs(test - ref)
        beyond = bool((diff > atol + rtol * np.abs(ref)).any())
        return flips > 0 or beyond, f"max|d|={diff.max():.3g} label flips={flips}"

    return differs


def latency_oracle(confidence: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> Callable[[Any, Any], tuple[bool, str]]:
    """Latency samples (1-D arrays of seconds) differ when the bootstrap confidence
    interval of the ratio of medians (test / ref) excludes 1."""

    def differs(ref: Any, test: Any) -> tuple[bool, str]:
        rng = np.random.default_rng(seed)
        ref, test = np.asarray(ref, float), np.asarray(test, float)
        a = np.median(rng.choice(ref, (resamples, ref.size)), axis=1)
        b = np.median(rng.choice(test, (resamples, test.size)), axis=1)
        lo, hi = np.quantile(b / a, [(1 - confidence) / 2, (1 + confidence) / 2])
        ratio = float(np.median(test) / np.median(ref))
        return not (lo <= 1.0 <= hi), f"ratio={ratio:.3f} CI=[{lo:.3f}, {hi:.3f}]"

    return differs


def changes_between(good: str, bad: str) -> list[str]:
    """``+Entry`` for each catalogue entry only ``bad`` has, ``-Entry`` for each only
    ``good`` has, in catalogue order."""
    a, b = compile_settings.enabled_of(good), compile_settings.enabled_of(bad)
    return [f"+{n}" for n in catalogue.names() if n in b - a] + [f"-{n}" for n in catalogue.names() if n in a - b]


def _apply(base: frozenset[str], changes: Sequence[str]) -> frozenset[str]:
    enabled = set(base)
    for c in changes:
        (enabled.add if c[0] == "+" else enabled.discard)(c[1:])
    return frozenset(enabled)


def ddmin(changes: list[str], test: Callable[[list[str]], Outcome]) -> list[str]:
    """Zeller's ddmin: a 1-minimal subset of ``changes`` for which ``test`` says
    "differs", given that the full set does. "failed" counts as not reproducing."""
    n = 2
    while len(changes) >= 2:
        chunks = [changes[i * len(changes) // n:(i + 1) * len(changes) // n] for i in range(n)]
        chunks = [c for c in chunks if c]
        for chunk in chunks:  # reduce to a subset
            if test(chunk) == "differs":
                changes, n = chunk, 2
                break
        else:
            for chunk in chunks:  # reduce to a complement
                rest = [c for c in changes if c not in chunk]
                if rest and test(rest) == "differs":
                    changes, n = rest, max(n - 1, 2)
                    break
            else:
                if n >= len(changes):
                    break
                n = min(len(changes), 2 * n)
    return changes


def bisect(
    good: str,
    bad: str,
    run: Callable[[tuple[str, ...]], Any],
    differs: Callable[[Any, Any], tuple[bool, str]] | None = None,
) -> BisectResult:
    """Find the smallest set of catalogue entries that turns ``good``'s result into one
    that differs like ``bad``'s. ``run(passes)`` builds and runs one pass list, returning
    outputs (or latency samples, with :func:`latency_oracle`); it may raise, which makes
    that trial "failed". Results are cached by pass list: two change sets that compose
    to the same passes (aliases) are built once."""
    differs = differs or output_oracle()
    base = compile_settings.enabled_of(good)
    result = BisectResult(good, bad, ())
    cache: dict[tuple[str, ...], tuple[Outcome, str]] = {}
    reference = run(catalogue.compose(base))

    def test(subset: list[str]) -> Outcome:
        passes = catalogue.compose(_apply(base, subset))
        if passes not in cache:
            start = time.perf_counter()
            try:
                is_diff, detail = differs(reference, run(passes))
                outcome: Outcome = "differs" if is_diff else "same"
            except Exception as exc:  # a failed build is a trial outcome, as in Table IV
                outcome, detail = "failed", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            cache[passes] = (outcome, detail)
            result.trials.append(Trial(tuple(subset), passes, outcome, detail, time.perf_counter() - start))
            log.info("bisect %s: %s (%s)", " ".join(subset), outcome, detail)
        return cache[passes][0]

    changes = changes_between(good, bad)
    if not changes or test(changes) != "differs":
        raise NoDifference(f"settings {good!r} and {bad!r} do not differ under the oracle "
                           f"({result.trials[-1].detail if result.trials else 'same passes'})")
    result.culprits = tuple(ddmin(changes, test))
    return result


def tvm_runner(mod: Any, inputs: np.ndarray, target: Any = None) -> Callable[[tuple[str, ...]], np.ndarray]:
    """``run`` for :func:`bisect`: build ``mod`` with the passes for ``target`` (generic
    CPU code when None: :data:`deltann.compile.pipeline.DEFAULT_TARGET`) through the one
    TVM path and return the first output for ``inputs`` (a batch run one image at a time)."""

    def run(passes: tuple[str, ...]) -> np.ndarray:
        tgt = target or pipeline.make_target(pipeline.DEFAULT_TARGET, "")
        vm = pipeline.Vm(pipeline.build(mod, passes, tgt), tgt)
        return np.concatenate([vm.first(inputs[i:i + 1]) for i in range(inputs.shape[0])])

    return run


def bisect_zoo_model(model: str, good: str, bad: str, *, images: int = 4, atol: float = 1e-4,
                     rtol: float = 0.0, target: Any = None) -> BisectResult:
    """What ``deltann bisect MODEL GOOD BAD`` runs: the zoo model through the torch.export
    frontend, ``images`` sample photos preprocessed by its recipe, the output oracle."""
    spec = zoo.get(model)
    batch = dataset.preprocess(dataset.load_samples(images), spec.preprocess)
    mod = from_torch(spec.loaders["torch"](), spec.input_shape)
    return bisect(good, bad, tvm_runner(mod, batch.tensors.astype(np.float32), target), output_oracle(atol, rtol))


def format_result(result: BisectResult) -> str:
    """The builds tried, one per line, then the verdict."""
    lines = [f"{'#':>3}  {'outcome':<8} {'seconds':>7}  changes on top of {result.good}  [detail]"]
    for row in result.table():
        lines.append(f"{row['trial']:>3}  {row['outcome']:<8} {row['seconds']:>7}  {row['changes']}  [{row['detail']}]")
    lines.append(result.summary())
    return "\n".join(lines)
