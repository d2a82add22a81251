"""``deltann localize DIR --pair A B [--images flipped|all|N]``: where inside the network
configuration B parts ways with reference A.

Both configurations are made again from their ``builds`` rows (model, variant, runtime,
setting's passes, target) with the results folder's artifact cache, run on the chosen
images with every layer's output captured (:mod:`deltann.runtimes.layers`), aligned and
measured (:mod:`deltann.analysis.layer_diff`). Writes a ``layers`` table into the store and
a Fig.-2-style plot under ``DIR/localize/``. The inputs are checked against the stored
input hashes, so the layers compared are those of the very images the run classified.

A configuration is named as in the tables, ``'torch->onnx [tvm:basic]'``, optionally
with ``@device`` when it ran on several device kinds. The pair may differ in framework
or conversion, in compiler setting (``[tvm:basic]`` vs ``[tvm:extended]``) or in device
(one configuration ``@board-a`` vs ``@board-b``). A TVM build is captured through the
frontend its row names (ONNX, torch exported program, TFLite), with its passes, for its
target; by default every layer is exposed as an output, with ``--kernels`` it is run as
built and captured kernel by kernel (what a setting fused is then unobservable and listed
as unmatched). Capturing happens on this machine: a pair of devices is compared here only
where this machine can run both targets (else a one-line error says so).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from deltann.analysis import layer_diff as loc_mod
from deltann.analysis.names import build_row
from deltann.compile.metaschedule import APPLY
from deltann.convert.chain import ArtifactCache
from deltann.dataset import replay as replay_inputs
from deltann.errors import StoreError
from deltann.runtimes.layers import capture
from deltann.store import SCHEMAS, Store, UNIT_FIELDS, tag
from deltann.zoo import user

log = logging.getLogger("deltann.analysis")


@dataclass
class LocalizeResult:
    pair: str
    model: str
    image_ids: list[str]
    localization: Any  # deltann.analysis.layer_diff.Localization
    plot: Path
    seconds: float


def _choose_images(store: Store, ka: list[str], kb: list[str], images: str) -> tuple[list[str], dict[str, str]]:
    """Image ids for ``flipped`` (top-1 differs), ``all``, or the first N; and their
    stored input hashes. ``ka``, ``kb``: each side's unit keys (its shards)."""
    preds = (store.scan("predictions").filter(pl.col("unit_key").is_in(ka + kb))
             .select("unit_key", "image_index", "image_id", "input_hash", "top1").collect())
    pa_, pb = preds.filter(pl.col("unit_key").is_in(ka)), preds.filter(pl.col("unit_key").is_in(kb))
    both = pa_.join(pb, on="image_id", suffix="_b").sort("image_index")
    if both.is_empty():
        raise StoreError("the two configurations share no image in the predictions table")
    if images == "flipped":
        chosen = both.filter(pl.col("top1") != pl.col("top1_b"))
        if chosen.is_empty():
            log.warning("no image flips its top-1 between the two; using the first image")
            chosen = both.head(1)
    elif images == "all":
        chosen = both
    else:
        try:
            n = int(images)
        except ValueError:
            raise StoreError(f"--images {images!r}: expected 'flipped', 'all' or a number") from None
        if n < 1:
            raise StoreError(f"--images {images!r}: need at least one image")
        chosen = both.head(n)
    return chosen["image_id"].to_list(), dict(zip(chosen["image_id"], chosen["input_hash"], strict=True))


def capture_build(row: dict[str, Any], artifacts: Any, x: np.ndarray, kernels: bool = False,
                  tuning: str = "") -> Any:
    """Per-layer capture of one ``builds`` row's configuration on ``x`` (NCHW): a TVM build
    is imported through the row's own frontend and built with its passes for its target
    (and, for setting ``tuned``, its ``tuning`` records); with ``kernels``, as built (one
    layer per kernel) instead of with every layer exposed."""
    artifact = artifacts.get(row["model"], row["variant"])
    return capture(row["runtime"], artifact.payload, x, artifact.layout, passes=tuple(row["passes"] or ()),
                   target_json=row["target"] or "", meta=artifact.meta, frontend=row.get("frontend") or "",
                   kernels=kernels, tuning=tuning)


def _tuning_of(store: Store, row: dict[str, Any]) -> str:
    """A ``tuned`` build's records from the store's tuning table ("" for other builds)."""
    if APPLY not in (row["passes"] or ()):
        return ""
    from deltann.fleet.tuning_driver import records_for_build  # lazy: loads ray

    return records_for_build(store, row)


def layers_table(row_a: dict[str, Any], row_b: dict[str, Any], pair: str, ids: list[str], loc: Any) -> pa.Table:
    """The ``layers`` rows of one localization (unit fields from the reference A)."""
    unit = {f.name: row_a[f.name] for f in UNIT_FIELDS}
    extra = {"pair": pair, "config_b": row_b["config"], "device_b": row_b["device"],
             "unit_key_b": row_b["unit_key"], "image_ids": ids, "atol": loc.atol, "rtol": loc.rtol,
             "alignment_rate": loc.alignment_rate}
    names = SCHEMAS["layers"].names
    rows = [{k: v for k, v in (unit | extra | r).items() if k in names} for r in loc.rows]
    return pa.Table.from_pylist(rows, schema=SCHEMAS["layers"])


def localize_pair(results: Path | str, a: str, b: str, *, images: str = "flipped", model: str | None = None,
                  atol: float | None = None, rtol: float | None = None, data_root: Path | str | None = None,
                  kernels: bool = False) -> LocalizeResult:
    """Localize the divergence of ``b`` from reference ``a``; write the ``layers`` table and
    the plot. Returns what was found. ``kernels``: capture TVM builds kernel by kernel as
    built (what a setting fused is unobservable and listed as unmatched) instead of with
    every layer exposed as an output (see :mod:`deltann.runtimes.layers`)."""
    start = time.perf_counter()
    results = Path(results)
    store = Store(results)
    manifest = store.read_manifest()

    user.register_from_study(manifest.get("study", {}))  # the study's [user_models], if any
    builds = store.scan("builds").filter(pl.col("status") == "ok").collect()
    row_a = build_row(builds, a, model)
    row_b = build_row(builds, b, model or row_a["model"])
    if row_a["model"] != row_b["model"]:
        raise StoreError(f"{a!r} is model {row_a['model']} but {b!r} is {row_b['model']}")
    ids, hashes = _choose_images(store, store.shard_keys(row_a), store.shard_keys(row_b), images)
    x = replay_inputs(manifest.get("study", {}), row_a["model"], row_a["variant"], ids, hashes,
                      Path(data_root) if data_root else Path.cwd())
    artifacts = ArtifactCache(results / "artifacts")
    trace_a = capture_build(row_a, artifacts, x, kernels, _tuning_of(store, row_a))
    trace_b = capture_build(row_b, artifacts, x, kernels, _tuning_of(store, row_b))
    loc = loc_mod.localize(trace_a, trace_b, atol=loc_mod.DEFAULT_ATOL if atol is None else atol,
                           rtol=loc_mod.DEFAULT_RTOL if rtol is None else rtol)
    pair = f"{row_a['config']}@{row_a['device']} | {row_b['config']}@{row_b['device']}" + (
        " (TVM kernels as built)" if kernels else "")
    key = hashlib.sha256(json.dumps([row_a["unit_key"], row_b["unit_key"], ids, loc.atol, loc.rtol]
                                    + (["kernels"] if kernels else [])).encode())
    pair_key = "layers-" + key.hexdigest()[:16]
    store.write(tag(layers_table(row_a, row_b, pair, ids, loc), "layers", pair_key, 0))
    slug = "".join(c if c.isalnum() else "_" for c in f"{row_a['model']}__{pair}")[:150]
    plot_path = results / "localize" / f"{slug}.png"
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    loc_mod.plot(loc, plot_path, title=f"{row_a['model']}: {pair} ({len(ids)} images)")
    return LocalizeResult(pair, row_a["model"], ids, loc, plot_path, time.perf_counter() - start)


def format_result(r: LocalizeResult) -> str:
    loc = r.localization
    lines = [f"{r.model}: {r.pair}",
             f"images: {', '.join(r.image_ids)}",
             f"aligned {len(loc.matched)} layers (A has {loc.n_a}, B has {loc.n_b}; alignment rate "
             f"{loc.alignment_rate:.1%}); tolerance atol={loc.atol:g} rtol={loc.rtol:g} (reference A)"]
    first = loc.first_divergent
    if first is None:
        lines.append("every aligned layer is within tolerance")
    else:
        lines.append(f"first layer beyond tolerance: {first['layer_a']} ~ {first['layer_b']} "
                     f"(max |a-b| {first['max_abs']:.3g}, cosine {first['cosine']:.6f})")
    unmatched = loc.unmatched
    fused = [u for u in unmatched if u["reason"].startswith("fused")]
    other = [u for u in unmatched if not u["reason"].startswith("fused")]
    if fused:
        lines.append(f"{len(fused)} layers sit inside a group the other side fused into one op "
                     "(compared at the group's last op; listed in the layers table)")
    if other:
        lines.append(f"{len(other)} layers without a partner:")
        lines += [f"  {'A' if u['layer_a'] else 'B'} {u['layer_a'] or u['layer_b']}: {u['reason']}"
                  for u in other[:20]]
        if len(other) > 20:
            lines.append(f"  ... and {len(other) - 20} more (see the layers table)")
    lines.append(f"plot: {r.plot}  ({r.seconds:.1f} s)")
    return "\n".join(lines)


def add_pair_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of a command about a pair of stored configurations (``localize``,
    ``repro``): the results folder, ``--pair A B``, ``--model``, ``--data-root``."""
    p.add_argument("results", help="results folder written by 'deltann run'")
    p.add_argument("--pair", nargs=2, required=True, metavar=("A", "B"),
                   help="reference and compared configuration, e.g. 'torch [torch]' 'torch->onnx [tvm:basic]' (the "
                        "study's own chain names work too); add @device to pick a device kind")
    p.add_argument("--model", help="model, when the configurations ran for several")
    p.add_argument("--data-root", help="folder the study's dataset path is relative to (default: current folder)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("localize", help="the layer where two configurations part ways (per-layer diff)")
    add_pair_arguments(p)
    p.add_argument("--images", default="flipped", help="flipped (top-1 differs; default), all, or a number N")
    p.add_argument("--atol", type=float, help="absolute tolerance per element (default 1e-3)")
    p.add_argument("--rtol", type=float, help="relative tolerance per element, of |A| (default 1e-3)")
    p.add_argument("--kernels", action="store_true",
                   help="capture TVM builds kernel by kernel, exactly as built: layers a setting fused into one "
                        "kernel are unobservable and listed as unmatched (default: every layer exposed as an output)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    result = localize_pair(args.results, args.pair[0], args.pair[1], images=args.images, model=args.model,
                           atol=args.atol, rtol=args.rtol, data_root=args.data_root, kernels=args.kernels)
    print(format_result(result))
    return 0
