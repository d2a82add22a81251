"""Reproducer bundles: one self-contained folder per discrepancy, for the people who can
fix it (a framework, converter or TVM maintainer) without the whole study (NNSmith ships
one per bug it finds; this is the same for a deployment discrepancy).

A bundle holds both sides' models as they ran — the converted file (``.onnx``,
``.tflite``, a SavedModel, ``.keras``), a torch model as an ExportedProgram (``.pt2``), a
TVM build as its compiled shared library (from the results folder's compiled-module cache
when the board kept it, else built again here, and ``bundle.json`` says which) — together
with the frontend input a TVM build came from, so it can be rebuilt; the exact input
tensors (``.npy``) with their hashes; both stored outputs; the chain with every hop's
tool and version, the build's passes, frontend and target; the environment and its
fingerprint; the first divergent layer when ``deltann localize`` ran for the pair, and
which hop of a chain introduced a label flip (:mod:`deltann.analysis.hop_attribution`); and
``repro.py`` (:mod:`deltann.report.repro_script`, copied verbatim), which needs numpy and
the two runtimes, not deltann, and prints the same difference.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from deltann import analysis, dataset, zoo
from deltann.analysis.hop_attribution import attribute
from deltann.analysis.names import build_row
from deltann.compile.metaschedule import APPLY
from deltann.compile.pipeline import CPU_KIND
from deltann.convert._tools import input_shape
from deltann.convert.chain import ArtifactCache
from deltann.convert.chain_spec import chain_framework, framework_dist, parse_chain
from deltann.core import runtime_registry as registry
from deltann.core.versions import dist_version
from deltann.errors import StoreError
from deltann.report.html import fingerprint
from deltann.runtimes.tvm_rt import TvmBuild
from deltann.store import Store
from deltann.zoo import user

log = logging.getLogger("deltann.report")

SCRIPT = Path(__file__).with_name("repro_script.py")


@dataclass
class Bundle:
    """What :func:`write_bundle` wrote."""

    folder: Path
    a: str
    b: str
    images: list[str]
    flipped: list[str]
    files: list[Path]

    trust: bool = False  # a side is torch: repro.py needs --trust-remote-code

    def summary(self) -> str:
        flips = f"top-1 differs on {len(self.flipped)} of {len(self.images)}" if self.flipped else \
            f"no top-1 differs on the {len(self.images)}"
        return (f"reproducer for {self.a!r} vs {self.b!r} ({flips} image{'s' if len(self.images) != 1 else ''} "
                f"packed): {self.folder}\nrun it with: python {self.folder / 'repro.py'}"
                + (" --trust-remote-code (its torch side is a .pt2, which torch.export.load unpickles)"
                   if self.trust else ""))


def _images(store: Store, ka: list[str], kb: list[str], image: str | None) -> pl.DataFrame:
    """The images to pack: ``image``, else every image whose top-1 differs, else the one
    with the largest logit difference. Columns: image_id, input hashes, top-1, logits.
    ``ka``, ``kb``: each side's unit keys (its shards)."""
    cols = ["unit_key", "image_index", "image_id", "input_hash", "top1", "logits"]
    preds = store.scan("predictions").filter(pl.col("unit_key").is_in(ka + kb)).select(cols).collect()
    side_a = preds.filter(pl.col("unit_key").is_in(ka)).unique("image_id", keep="first")
    side_b = preds.filter(pl.col("unit_key").is_in(kb)).unique("image_id", keep="first")
    both = side_a.join(side_b, on="image_id", suffix="_b").sort("image_index")
    if both.is_empty():
        raise StoreError("the two configurations share no image in the predictions table")
    if image is not None:
        chosen = both.filter(pl.col("image_id") == image)
        if chosen.is_empty():
            raise StoreError(f"--image {image!r}: not an image both configurations ran; images: "
                             + ", ".join(both["image_id"].to_list()[:20]))
        return chosen
    flipped = both.filter(pl.col("top1") != pl.col("top1_b"))
    if flipped.height:
        return flipped
    worst = [float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
             for a, b in both.select("logits", "logits_b").iter_rows()]
    return both[int(np.argmax(worst))]


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    return dst


def _save_model(payload: Any, layout: str, spec: Any, dst: Path, framework: str) -> Path:
    """An in-memory model as a file its runtime loads (torch as an ExportedProgram
    ``.pt2``, Keras as ``.keras``: :meth:`deltann.core.runner.Runner.save_payload`)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        return registry.native_of(framework).save_payload(payload, layout, input_shape(spec.input_shape, layout), dst)
    except NotImplementedError as exc:  # its runtime keeps models as files only
        raise StoreError(str(exc)) from None


def _compiled(store: Store, row: dict[str, Any], tuning: str) -> Path | None:
    """The board's compiled module of a TVM unit, if it kept one in this results folder
    (``artifacts/compiled/<unit key>-<hash of target and tuning>.so``, see
    :class:`deltann.runtimes.tvm_rt.TvmBuild`)."""
    folder = store.root / "artifacts" / "compiled"
    digest = hashlib.sha256(f"{row['target']}\n{tuning}".encode()).hexdigest()[:16]
    exact = folder / f"{row['unit_key']}-{digest}.so"
    if exact.is_file():
        return exact
    found = sorted(folder.glob(f"{row['unit_key']}-*.so"))
    return found[0] if len(found) == 1 else None


def _side(store: Store, row: dict[str, Any], artifacts: Any, folder: Path, label: str) -> dict[str, Any]:
    """Ship one side's model into ``folder/label`` and describe it for bundle.json."""
    model, variant, runtime = row["model"], row["variant"], row["runtime"]
    spec = zoo.get(model)
    source = parse_chain(variant)[0].framework
    labels = spec.labels_for(source)
    artifact = artifacts.get(model, variant)
    meta = json.loads(json.dumps(artifact.meta, default=str))
    side: dict[str, Any] = {
        "config": row["config"], "device": row["device"], "board": row["board"], "hostname": row["hostname"],
        "unit_key": row["unit_key"], "model": model, "variant": variant, "quantize": row.get("quantize") or "none",
        "runtime": runtime, "setting": row["setting"],
        "runtime_version": f"{runtime} {dist_version(registry.get(runtime).dist)}",
        "source_version": f"{framework_dist(source)} {dist_version(framework_dist(source))}",
        "layout": artifact.layout, "meta": meta, "labels": {"classes": labels.num_classes, "offset": labels.offset},
        "hops": json.loads(row.get("hops") or "[]"), "frontend": row.get("frontend") or "",
        "passes": list(row.get("passes") or []), "target": row.get("target") or "",
    }
    framework = chain_framework(variant)
    if isinstance(artifact.payload, Path):
        model_file = _copy(artifact.payload, folder / label / artifact.payload.name)
    else:
        model_file = _save_model(artifact.payload, artifact.layout, spec, folder / label / "model", framework)
    if not registry.get(runtime).compiles:
        side["file"] = model_file.relative_to(folder).as_posix()
        return side
    # A TVM build: its compiled module, and the frontend input it came from (to rebuild).
    side["frontend_input"] = model_file.relative_to(folder).as_posix()

    side["device_kind"] = json.loads(row["target"]).get("kind", CPU_KIND) if row.get("target") else CPU_KIND
    tuning = ""

    if APPLY in side["passes"]:
        from deltann.fleet.tuning_driver import records_for_build  # lazy: loads ray

        tuning = records_for_build(store, row)
        (folder / label / "tuning.json").write_text(tuning)
    module = folder / label / "module.so"
    cached = _compiled(store, row, tuning)
    if cached is not None:
        shutil.copy2(cached, module)
        side["module"] = f"copied from the board's compiled-module cache ({cached.name})"
    else:
        log.info("no compiled module of %s in %s: building it again", row["config"], store.root)
        builder = TvmBuild(row["frontend"], artifact.payload, input_shape(spec.input_shape, artifact.layout),
                           tuple(side["passes"]), row["target"], "", tuning)
        builder().export_library(str(module))
        side["module"] = f"rebuilt by deltann repro on this machine for target {builder.resolved_target}"
    side["file"] = module.relative_to(folder).as_posix()
    return side


def _layers(store: Store, a: dict[str, Any], b: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """The first divergent layer of the pair when ``deltann localize`` ran for it (either
    way round), and the pair's layer table as ``layers.csv``."""
    if not store.files("layers"):
        return None
    rows = store.scan("layers").filter(
        ((pl.col("unit_key") == a["unit_key"]) & (pl.col("unit_key_b") == b["unit_key"]))
        | ((pl.col("unit_key") == b["unit_key"]) & (pl.col("unit_key_b") == a["unit_key"]))
    ).collect()
    if rows.is_empty():
        return None
    cols = ["pair", "image_ids", "order", "layer_a", "layer_b", "op_a", "op_b", "matched", "reason", "max_abs",
            "mean_abs", "cosine", "within_tol", "first_divergent", "atol", "rtol"]
    pair = rows.sort("order")["pair"][0]
    mine = rows.filter(pl.col("pair") == pair).sort("order")
    mine.select(c for c in cols if c != "image_ids").write_csv(folder / "layers.csv")
    first = mine.filter(pl.col("first_divergent"))
    out: dict[str, Any] = {"pair": pair, "images": mine["image_ids"][0].to_list(), "table": "layers.csv",
                           "first_divergent": None}
    if first.height:
        r = first.row(0, named=True)
        out["first_divergent"] = {k: r[k] for k in ("order", "layer_a", "layer_b", "op_a", "op_b", "max_abs",
                                                      "cosine", "atol", "rtol")}
    return out


def _time_ratio(store: Store, a: dict[str, Any], b: dict[str, Any]) -> str:
    """t_B / t_A as the study's timing session measured it, when the two were timed
    together ("" otherwise)."""
    try:
        speed = analysis.speedup_stats(store, n_resamples=200)
    except Exception:  # noqa: BLE001 - no timings is no ratio
        return ""
    for x, y, inv in ((a, b, False), (b, a, True)):
        hit = speed.filter((pl.col("model") == x["model"]) & (pl.col("device") == x["device"])
                           & (pl.col("A") == x["config"]) & (pl.col("B") == y["config"]))
        if hit.height and hit["ratio"][0]:
            r = float(hit["ratio"][0])
            return f"{(r if inv else 1 / r):.3g}x"
    return ""


def _readme(bundle: dict[str, Any]) -> str:
    a, b = bundle["a"], bundle["b"]
    lines = [f"# DeltaNN reproducer: {a['config']} vs {b['config']}", "",
             f"Model `{bundle['model']}`. A = `{a['config']}` on `{a['device']}`, B = `{b['config']}` on "
             f"`{b['device']}`. Written by `deltann repro` (deltann {bundle['deltann_version']}) from "
             f"`{bundle['results']}` on {bundle['created']}.", "", "## What the study saw", ""]
    for im in bundle["images"]:
        differs = " (differs)" if im["top1_a"] != im["top1_b"] else ""
        lines.append(f"- image `{im['id']}`: top-1 A = {im['top1_a']}, B = {im['top1_b']}{differs}; "
                     f"max |Δlogit| {im['max_abs_dlogit']:.4g}")
    if bundle.get("time_ratio_b_over_a"):
        lines.append(f"- time B / A in the study's timing session: {bundle['time_ratio_b_over_a']}")
    trust = " --trust-remote-code" if "torch" in (a["runtime"], b["runtime"]) else ""
    lines += ["", "## Run it", "", "```sh",
              f"python repro.py{trust}            # numpy + the two runtimes; not deltann",
              f"python repro.py{trust} --time 50  # also time both sides", "```", "",
              "It prints, per image, both sides' top-1 and the largest logit difference beside what the study "
              "stored, and exits 0 when both sides give the stored labels."]
    if trust:
        lines += ["", "The torch side is an ExportedProgram (`.pt2`); `torch.export.load` unpickles parts of it, so "
                  "repro.py loads it only with `--trust-remote-code`: give it if you trust whoever made this bundle."]
    lines += ["", "## The two sides", ""]
    for name, side in (("A", a), ("B", b)):
        lines.append(f"### {name}: `{side['config']}`")
        lines.append("")
        lines.append(f"- runs on: {side['runtime_version']}; file `{side['file']}` (input layout {side['layout']}, "
                     f"{side['labels']['classes']} classes, ImageNet class 0 at index {side['labels']['offset']})")
        source = side["variant"].split("->")[0]
        lines.append(f"- source: the `{side['model']}` model as {source} loads it ({side['source_version']})")
        for hop in side["hops"]:
            quant = f", quantize {hop['quantize']}" if hop.get("quantize", "none") != "none" else ""
            lines.append(f"- hop {hop['src']}->{hop['dst']}: {hop.get('tool', '?')} {hop.get('version', '?')}{quant}")
        if "frontend_input" in side:  # a TVM build (see _side)
            lines.append(f"- TVM build: frontend {side['frontend']}, passes {', '.join(side['passes']) or 'none'}")
            lines.append(f"- target: `{side['target']}`")
            lines.append(f"- compiled module: {side['module']}; built from `{side['frontend_input']}`")
        lines.append(f"- board {side['board'][:12]} ({side['hostname']}), unit key {side['unit_key']}")
        lines.append("")
    hops = bundle.get("hops")
    if hops:
        lines += ["## Which hop", "", hops["sentence"], ""]
    layers = bundle.get("localize")
    if layers:
        first = layers.get("first_divergent")
        lines += ["## First divergent layer (deltann localize)", ""]
        if first:
            lines.append(f"`{first['layer_a']}` ~ `{first['layer_b']}` ({first['op_a']} / {first['op_b']}): max "
                         f"|a − b| {first['max_abs']:.3g}, cosine {first['cosine']:.6f} (atol {first['atol']:g}, "
                         f"rtol {first['rtol']:g}); every layer in `layers.csv`.")
        else:
            lines.append("Every aligned layer stayed within tolerance; every layer in `layers.csv`.")
        lines.append("")
    env = bundle["environment"]
    lines += ["## Where the study ran", "", f"Fingerprint {bundle['fingerprint']}: {env.get('cpu', '?')} "
              f"({env.get('cores', '?')} cores), {env.get('platform', '?')}, Python {env.get('python', '?')}; "
              "package versions in `bundle.json`. A TVM module built for the board's CPU (`mcpu`) may not load "
              "on another CPU: rebuild it from its frontend input with the passes and target above.", ""]
    return "\n".join(lines)


def _slug(text: str) -> str:
    """A file name from a configuration or image name: ``torch->onnx [tvm:basic]`` ->
    ``torch-onnx_tvm-basic``."""
    text = text.replace("->", "-").replace(" [", "_").replace("]", "").replace(":", "-")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def write_bundle(results: Path | str, a: str, b: str, *, image: str | None = None, model: str | None = None,
                 out: Path | str | None = None, data_root: Path | str | None = None,
                 hops: bool = True) -> Bundle:
    """Write the reproducer bundle of configuration ``b`` against reference ``a`` (names as
    the tables show them, or the study's own chain names; ``@device`` picks a device kind)
    into ``out`` (default ``results/repro/<model>__<A>__vs__<B>``). ``image``: that image
    only; default every image whose top-1 differs, or else the one with the largest logit
    difference. ``hops``: attribute a label flip between a chain and its source to a hop
    (runs the chain's missing prefixes on the flipped images)."""
    results = Path(results)
    store = Store(results)
    manifest = store.read_manifest()
    study = manifest.get("study", {})
    user.register_from_study(study)
    builds = store.scan("builds").filter(pl.col("status") == "ok").collect()
    row_a = build_row(builds, a, model)
    row_b = build_row(builds, b, model or row_a["model"])
    if row_a["model"] != row_b["model"]:
        raise StoreError(f"{a!r} is model {row_a['model']} but {b!r} is {row_b['model']}")
    chosen = _images(store, store.shard_keys(row_a), store.shard_keys(row_b), image)
    ids = chosen["image_id"].to_list()
    where = ("", "") if row_a["device"] == row_b["device"] else (f"@{row_a['device']}", f"@{row_b['device']}")
    name = f"{row_a['model']}__{_slug(row_a['config'] + where[0])}__vs__{_slug(row_b['config'] + where[1])}"
    folder = Path(out) if out is not None else results / "repro" / name[:180]
    if folder.exists():
        if not (folder / "bundle.json").is_file() and any(folder.iterdir()):
            raise StoreError(f"{folder}: exists and is not a reproducer folder; pick another --out (an earlier "
                             "bundle is replaced, anything else is left alone)")
        shutil.rmtree(folder)
    (folder / "inputs").mkdir(parents=True)
    (folder / "outputs").mkdir()
    root = Path(data_root) if data_root else Path.cwd()
    x = {side: dataset.replay(study, row["model"], row["variant"], ids,
                              dict(zip(ids, chosen["input_hash" + ("" if side == "a" else "_b")], strict=True)), root)
         for side, row in (("a", row_a), ("b", row_b))}
    images = []
    for i, r in enumerate(chosen.iter_rows(named=True)):
        entry = {"id": r["image_id"], "top1_a": r["top1"], "top1_b": r["top1_b"]}
        for side, suffix in (("a", ""), ("b", "_b")):
            same = side == "b" and r["input_hash_b"] == r["input_hash"]
            path = f"inputs/{_slug(r['image_id'])}.npy" if side == "a" or same else \
                f"inputs/{_slug(r['image_id'])}.b.npy"
            if not (folder / path).exists():
                np.save(folder / path, x[side][i : i + 1])
            entry[f"input_{side}"], entry[f"hash_{side}"] = path, r["input_hash" + suffix]
            stored = f"outputs/{side}_{_slug(r['image_id'])}.npy"
            np.save(folder / stored, np.asarray([r["logits" + suffix]], np.float32))
            entry[f"stored_{side}"] = stored
        entry["max_abs_dlogit"] = float(np.abs(np.asarray(r["logits"], np.float64)
                                               - np.asarray(r["logits_b"], np.float64)).max())
        images.append(entry)
    artifacts = ArtifactCache(results / "artifacts")
    bundle: dict[str, Any] = {
        "deltann_version": manifest.get("deltann_version"), "created": dt.datetime.now(dt.UTC).isoformat(),
        "results": str(results.resolve()), "model": row_a["model"],
        "a": _side(store, row_a, artifacts, folder, "a"), "b": _side(store, row_b, artifacts, folder, "b"),
        "images": images, "environment": manifest.get("environment", {}),
        "fingerprint": fingerprint(manifest.get("environment", {})),
        "time_ratio_b_over_a": _time_ratio(store, row_a, row_b),
        "localize": _layers(store, row_a, row_b, folder), "hops": None,
    }
    flipped = [e["id"] for e in images if e["top1_a"] != e["top1_b"]]
    if hops and flipped:
        found = attribute(results, row_a, row_b, flipped, data_root=data_root)
        if found is not None:
            bundle["hops"] = asdict(found) | {"sentence": found.sentence()}
    (folder / "bundle.json").write_text(json.dumps(bundle, indent=2, default=str))
    (folder / "README.md").write_text(_readme(bundle))
    shutil.copy2(SCRIPT, folder / "repro.py")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return Bundle(folder, row_a["config"], row_b["config"], ids, flipped, files,
                  trust="torch" in (row_a["runtime"], row_b["runtime"]))
