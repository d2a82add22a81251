"""Which hop did it: for a difference between a conversion chain and its source (``torch
[torch]`` vs ``torch->onnx->tf->tflite [litert]``), the first hop after which the
outputs leave tolerance.

Each prefix of the chain (``torch->onnx``, ``torch->onnx->tf``, …) is a model of its own
that its framework's runtime can run; its outputs on the flagged images are compared with
the source's stored ones. A prefix the study ran is read from the store; one it did not
is materialised from the results folder's artifact cache (where the chain's conversion
left every intermediate) and run here on the flagged images only, from the exact input
tensors the run classified (checked against the stored input hashes). When the chain's
configuration is a TVM build, the build itself is the last step (``tvm:<setting>``).

A step leaves tolerance when any flagged image's top-1 differs from the source's, or a
logit is beyond ``atol + rtol·|source|`` (numpy's semantics, source as reference). The
result is cached as JSON under ``DIR/artifacts/hops/`` (keyed by both units, the images
and the tolerances), so a report run again does not convert or run anything again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deltann import dataset, zoo
from deltann.convert.chain import ArtifactCache
from deltann.convert.chain_spec import format_chain, parse_chain
from deltann.core import runtime_registry as registry
from deltann.core.versions import dist_version
from deltann.runtimes.native import native_runner
from deltann.store import Store
from deltann.zoo import user

log = logging.getLogger("deltann.convert")

DEFAULT_ATOL = 1e-3
DEFAULT_RTOL = 1e-3
#: Format of the cached JSON (a change makes old files stale).
CACHE_VERSION = 1


@dataclass
class Step:
    """One hop of the chain and how the outputs after it compare with the source's."""

    hop: str  # "onnx->tf", "tf->tflite:dynamic-range", or "tvm:extended" (the TVM build)
    config: str  # the configuration whose outputs were compared: the prefix on its own runtime
    tool: str = ""  # the tool that made the hop, with its version
    origin: str = ""  # "store" (the study ran it), "ran" (run here), or "failed: <why>"
    max_abs: float = float("nan")
    flips: int = 0
    within: bool = True


@dataclass
class Attribution:
    """The steps of a chain against its source, and the first that left tolerance."""

    model: str
    device: str
    a: str
    b: str
    images: list[str]
    atol: float
    rtol: float
    steps: list[Step] = field(default_factory=list)

    @property
    def first(self) -> Step | None:
        return next((s for s in self.steps if not s.within), None)

    @property
    def complete(self) -> bool:
        """Every step up to the first beyond tolerance was compared."""
        for s in self.steps:
            if s.origin.startswith("failed"):
                return False
            if not s.within:
                return True
        return True

    def sentence(self) -> str:
        """What a report says about it."""
        first = self.first
        imgs = f"{len(self.images)} flagged image{'s' if len(self.images) != 1 else ''}"
        trail = "; ".join(
            f"{s.hop}: max |Δlogit| {s.max_abs:.2g}, {s.flips} flip{'s' if s.flips != 1 else ''}"
            + ("" if s.origin in ("store", "ran") else f" ({s.origin})")
            for s in self.steps)
        if first is not None and self.complete:
            tool = f" ({first.tool})" if first.tool else ""
            return (f"`{first.hop}`{tool} introduced the difference between `{self.a}` and `{self.b}`: the "
                    f"first step whose outputs leave tolerance (atol {self.atol:g}, rtol {self.rtol:g}, top-1) on "
                    f"the {imgs} — {trail}.")
        failed = next((s for s in self.steps if s.origin.startswith("failed")), None)
        if failed is not None:
            return (f"Which hop changed `{self.b}` against `{self.a}` is unknown: step `{failed.hop}` could not be "
                    f"run ({failed.origin.removeprefix('failed: ')}) — {trail}.")
        return (f"Every step from `{self.a}` to `{self.b}` stays within tolerance on the {imgs} (atol {self.atol:g}, "
                f"rtol {self.rtol:g}) — {trail}.")


def chain_steps(variant_a: str, variant_b: str, runtime_b: str, setting_b: str) -> list[tuple[str, str, str]]:
    """(hop, prefix chain, runtime) for each step from source variant ``variant_a`` to
    configuration B, or ``[]`` when B's chain does not extend A's. The last conversion
    step runs on B's own runtime when B is not a TVM build; a TVM build adds a last step
    ``tvm:<setting>`` on B's full chain."""
    sa, sb = parse_chain(variant_a), parse_chain(variant_b)
    if len(sb) < len(sa) or sb[: len(sa)] != sa or (len(sb) == len(sa) and setting_b == "native"):
        return []
    steps = []
    for k in range(len(sa), len(sb)):
        prefix = format_chain(sb[: k + 1])
        last = k == len(sb) - 1 and setting_b == "native"
        runtime = runtime_b if last else registry.native_of(sb[k].framework).name
        steps.append((f"{sb[k - 1].framework}->{sb[k]}", prefix, runtime))
    if setting_b != "native":
        steps.append((f"tvm:{setting_b}", variant_b, "tvm"))
    return steps


def _stored(store: Any, model: str, device: str, config: str, ids: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(logits, top1) of ``config`` on ``ids`` from the store, or None if it lacks any."""
    import polars as pl

    rows = (store.scan("predictions")
            .filter((pl.col("model") == model) & (pl.col("device") == device) & (pl.col("config") == config)
                    & pl.col("image_id").is_in(ids))
            .select("image_id", "logits", "top1").collect().unique("image_id", keep="first"))
    if set(rows["image_id"].to_list()) != set(ids) or rows["logits"].null_count():
        return None
    by_id = {i: (lg, t) for i, lg, t in rows.iter_rows()}
    return (np.asarray([by_id[i][0] for i in ids], np.float64), np.asarray([by_id[i][1] for i in ids]))


def _run_prefix(results: Path, model: str, chain: str, runtime: str, x: np.ndarray) -> np.ndarray:
    """Logits (common 1000-class space) of ``chain`` on its native ``runtime``, batch 1."""
    artifact = ArtifactCache(results / "artifacts").get(model, chain)
    labels = zoo.get(model).labels_for(parse_chain(chain)[0].framework)
    out = []
    with native_runner(runtime, artifact.payload, artifact.layout, artifact.meta) as runner:
        for i in range(len(x)):
            logits = np.asarray(runner.infer(x[i : i + 1]), np.float32)
            if logits.ndim > 2 and logits.size == labels.num_classes:
                logits = logits.reshape(1, labels.num_classes)
            out.append(labels.to_imagenet(logits))
    return np.concatenate(out).astype(np.float64)


def _tool(hops: list[dict[str, Any]], k: int) -> str:
    if 0 <= k < len(hops):
        return f"{hops[k].get('tool', '')} {hops[k].get('version', '')}".strip()
    return ""


def attribute(results: Path | str, row_a: dict[str, Any], row_b: dict[str, Any], images: list[str], *,
              atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, data_root: Path | str | None = None,
              use_cache: bool = True) -> Attribution | None:
    """Attribute the difference of ``row_b``'s configuration from source ``row_a`` (two
    ``builds`` rows) on ``images`` to a hop; None when B's chain does not extend A's or A
    is not a framework's own runtime."""
    if row_a["setting"] != "native" or not images:
        return None
    steps = chain_steps(row_a["variant"], row_b["variant"], row_b["runtime"], row_b["setting"])
    if not steps:
        return None
    results = Path(results)
    ids = sorted(images)
    key = hashlib.sha256(json.dumps([CACHE_VERSION, row_a["unit_key"], row_b["unit_key"], ids, atol, rtol]).encode())
    cache = results / "artifacts" / "hops" / f"{key.hexdigest()[:24]}.json"
    if use_cache and cache.is_file():
        try:
            data = json.loads(cache.read_text())
            return Attribution(**{**data, "steps": [Step(**s) for s in data["steps"]]})
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring unreadable hop cache %s (%s)", cache, exc)
    store = Store(results)
    model, device = row_a["model"], row_a["device"]
    reference = _stored(store, model, device, row_a["config"], ids)
    if reference is None:
        return None
    ref_logits, ref_top1 = reference
    hops = json.loads(row_b.get("hops") or "[]")
    n_source = len(parse_chain(row_a["variant"]))
    out = Attribution(model, device, row_a["config"], row_b["config"], ids, atol, rtol)
    x: np.ndarray | None = None
    for k, (hop, chain, runtime) in enumerate(steps):
        compiler = registry.get(runtime)
        name = row_b["config"] if compiler.compiles else f"{chain} [{runtime}]"
        tool = f"{compiler.dist} {_dist(compiler.dist)}" if compiler.compiles else _tool(hops, n_source - 1 + k)
        step = Step(hop, name, tool=tool)
        found = _stored(store, model, device, name, ids)
        if found is not None:
            logits, top1 = found
            step.origin = "store"
        else:
            try:
                if x is None:
                    user.register_from_study(store.read_manifest().get("study", {}))
                    hashes = _hashes(store, store.shard_keys(row_a), ids)
                    x = dataset.replay(store.read_manifest().get("study", {}), model, row_a["variant"], ids, hashes,
                                       Path(data_root) if data_root else Path.cwd())
                logits = _run_prefix(results, model, chain, runtime, x)
                top1 = logits.argmax(axis=1)
                step.origin = "ran"
            except Exception as exc:  # noqa: BLE001 - a step that cannot run is reported, not raised
                step.origin = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                out.steps.append(step)
                break
        diff = np.abs(logits - ref_logits) if logits.shape == ref_logits.shape else np.full(1, np.inf)
        step.max_abs = float(diff.max()) if diff.size else 0.0
        step.flips = int((np.asarray(top1) != ref_top1).sum())
        step.within = bool(step.flips == 0 and logits.shape == ref_logits.shape
                           and (diff <= atol + rtol * np.abs(ref_logits)).all())
        out.steps.append(step)
    if use_cache and out.complete:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.tmp")
        tmp.write_text(json.dumps(asdict(out)))
        tmp.replace(cache)
    return out


def _dist(name: str) -> str:
    return dist_version(name)


def _hashes(store: Any, unit_keys: list[str], ids: list[str]) -> dict[str, str]:
    import polars as pl

    rows = (store.scan("predictions").filter(pl.col("unit_key").is_in(unit_keys) & pl.col("image_id").is_in(ids))
            .select("image_id", "input_hash").collect())
    return dict(rows.iter_rows())
