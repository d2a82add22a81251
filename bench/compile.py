"""TVM settings against the native runtimes, through each TVM frontend, side by side in one run.

For each model: export torch -> ONNX once, run it on onnxruntime (the reference for
outputs, and for latency with LiteRT), make its TFLite form when asked (deltann's
``onnx->tf->tflite`` hops: onnx2tf, TF's converter; LiteRT with XNNPACK runs it as the
second reference), import the model into TVM through each ``--frontends`` entry (ONNX,
torch.export of the torch module itself, TFLite), build it under each setting and print,
per model x frontend x setting: TVM ms, onnxruntime ms, LiteRT ms (where the model has a
TFLite form), the ratio to the faster native runtime (``/best``, with the spread of its
per-block ratios) and to onnxruntime (``/ort``), the kernels without a vector schedule
(``nosched``, deltann.compile.schedules.kernels_without_schedule, as the builds table's
``unscheduled`` column), and the largest logit difference to onnxruntime. A last line per
model and setting gives the spread of TVM ms over the frontends (slowest / fastest).

The TVM side is the product's own path, exactly as a board of the device kind
(``--kind``, default ``local``) runs it: the kind's target from cluster/devices.toml
resolved on this machine (deltann.compile.pipeline.make_target, host included), built by
deltann.runtimes.tvm_rt.TvmBuild, run by TvmRunner, timed by the boards' interleaved
session (deltann.runtimes.interleave: alternating blocks, settle pause, untimed call)
with the boards' thread policy. Ratios are paired by block as the study's are
(deltann.analysis.stats.paired_ratio: the median over blocks of each block's ratio).

    .venv/bin/python bench/compile.py                       # all four models, ONNX frontend
    .venv/bin/python bench/compile.py --frontends onnx,torch.export,tflite --settings extended
    .venv/bin/python bench/compile.py --models mobilenet_v2 --repeat 100
    .venv/bin/python bench/compile.py --models mobilenet_v2 --settings extended,tuned \
        --minutes 30 --records /tmp/mnv2.json     # MetaSchedule, 30 minutes, then timed beside extended
    .venv/bin/python bench/compile.py --models mobilenet_v2 --settings tuned --trials 512 \
        --records /tmp/mnv2.json --merge /tmp/other.mobilenet_v2.onnx.json   # trials; merge another search
    .venv/bin/python bench/compile.py --kind x86-server   # another kind's target (it must run here)

``tuned`` tunes the model's heavy kernels (``--tasks``) in this process
(deltann.compile.metaschedule, as a board does), within ``--minutes`` of wall time (heaviest
measured kernels first, each until it stops improving) or with ``--trials`` measured
candidates, then builds and times it like the other settings; the row says the budget.
With ``--records FILE`` the records are kept (FILE.<model>.<frontend>.json) and a later
run resumes from them: a larger budget tunes only the difference. The TFLite forms are
kept under ``--cache`` (onnx2tf takes minutes per model here).

torchvision weights cannot be downloaded here: MobileNetV2, ResNet101 and InceptionV3
are built with seeded random weights (fine for latency; re-initialised so that their
logits are O(1) and the difference columns mean something). EfficientNet-Lite0 has
its real ImageNet weights (deltann.zoo). Untuned ResNet101/InceptionV3 take seconds per
call under ``basic``: keep ``--repeat`` low (it is at least 3 calls per block).
"""

from __future__ import annotations

import os

from deltann.core.runner import thread_env

# The board actor's thread policy (every logical core, for every runtime), set before any
# framework starts its thread pool, so the comparison is of code, not of thread counts.
for _name, _value in thread_env(os.cpu_count() or 1).items():
    os.environ.setdefault(_name, _value)

import argparse  # noqa: E402
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Alternating timing blocks per setting, and the pause before each (see side_by_side).
BLOCKS = 12
SETTLE_S = 0.2

TORCHVISION = {"mobilenet_v2": 224, "resnet101": 224, "inception_v3": 299}
MODELS = ("mobilenet_v2", "resnet101", "inception_v3", "efficientnet_lite0")


def load(name: str) -> tuple[Any, tuple[int, ...], str]:
    """(torch module, input shape, weights note)."""
    import torch
    import torchvision.models as tvm_models

    from deltann import zoo

    if name in TORCHVISION:
        torch.manual_seed(0)
        kwargs = {"aux_logits": False, "init_weights": True} if name == "inception_v3" else {}
        model = getattr(tvm_models, name)(weights=None, **kwargs).eval()
        _variance_preserving(model)
        size = TORCHVISION[name]
        return model, (1, 3, size, size), "random (seed 0)"
    spec = zoo.get(name)
    return spec.loaders["torch"](), spec.input_shape, "ImageNet"


def _variance_preserving(model: Any) -> None:
    """Re-initialise so that activations keep unit scale through the network (He
    normal, fan-in) and batch-norm statistics are non-trivial: torchvision's own init
    gives logits ~1e-9, which would make any output comparison pass trivially."""
    import torch

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.1 * torch.randn(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(1 + 0.1 * torch.rand(n, generator=gen))
        for m in model.modules():  # residual blocks: keep the sum of branches at unit scale
            last_bn = getattr(m, "bn3", None) if hasattr(m, "conv3") else None
            if isinstance(last_bn, torch.nn.BatchNorm2d):
                last_bn.weight.mul_(0.2)


def export_onnx(model: Any, shape: tuple[int, ...], out_dir: Path, dynamic: bool = False) -> Path:
    """torch -> ONNX as deltann's ``torch->onnx`` hop does it (TorchScript exporter, opset
    17, constant folding); ``dynamic``: with a dynamic batch, as many users' files are."""
    import torch

    path = out_dir / "model.onnx"
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], do_constant_folding=True,
                          dynamic_axes=axes)
    return path


def ort_runner(path: Path, x: np.ndarray) -> tuple[Any, np.ndarray]:
    """(an active onnxruntime runner, its output): the reference for latency and outputs.
    deltann's OnnxrtRunner is a plain InferenceSession (CPU provider, the board's thread
    count): the same session a user would make."""
    from deltann.runtimes.onnxrt import OnnxrtRunner

    runner = OnnxrtRunner(path)
    runner.activate()
    return runner, runner.infer(x)


def side_by_side(tvm: Any, natives: dict[str, Any], x: np.ndarray, repeat: int,
                 blocks: int = BLOCKS) -> tuple[float, dict[str, float], dict[str, float], str, float, float]:
    """TVM and the native runtimes (onnxruntime, LiteRT where the model has a TFLite form)
    timed by the boards' interleaved session: ``blocks`` alternating blocks of
    ``repeat // blocks`` samples each (at least 3). Returns TVM's median (ms), each native
    runtime's median (ms), TVM's paired ratio to each native runtime (as a study's time
    change pairs them), the faster native runtime, and the smallest and largest per-block
    ratio to that one."""
    from deltann.analysis.stats import paired_ratio
    from deltann.runtimes.interleave import Protocol, Slot, time_interleaved

    per_block = max(3, repeat // blocks)
    protocol = Protocol(warmup=1, number=1, repeat=per_block, min_repeat_ms=0, blocks=blocks,
                        pause_ms=round(SETTLE_S * 1000))
    slots = [Slot("tvm", lambda: _live(tvm), x)]
    slots += [Slot(name, lambda r=runner: _live(r), x) for name, runner in natives.items()]
    result = time_interleaved(slots, protocol)
    ms = {name: result.samples[name] / 1e6 for name in ["tvm", *natives]}  # (images, blocks, repeat) ms
    medians = {name: float(np.median(v)) for name, v in ms.items()}
    cells = {name: np.median(v, axis=2) for name, v in ms.items()}  # (images, blocks)
    ratios = {n: paired_ratio(cells["tvm"], cells[n]) for n in natives}
    best = min(natives, key=lambda n: medians[n])
    per_block_ratio = np.median(ms["tvm"], axis=(0, 2)) / np.median(ms[best], axis=(0, 2))
    return (medians["tvm"], {n: medians[n] for n in natives}, ratios, best,
            float(per_block_ratio.min()), float(per_block_ratio.max()))


def _live(runner: Any) -> Any:
    """``runner``, activated again if a session ended it (one onnxruntime runner serves every
    setting of a model)."""
    if not runner.active:
        runner.activate()
    return runner


def board_target(kind_name: str) -> tuple[str, str]:
    """The device kind's target and host as a board receives them (JSON, as in a unit)."""
    import json

    from deltann.core.device_catalogue import load_catalogue

    kind = load_catalogue()[kind_name]
    return json.dumps(kind.target, sort_keys=True), json.dumps(kind.host, sort_keys=True)


def tflite_form(onnx_path: Path, out_dir: Path) -> Path:
    """The model's TFLite form as deltann's ``onnx->tf->tflite`` hops make it (onnx2tf to
    an NHWC SavedModel, then TF's converter, float32): the file LiteRT runs and TVM's
    TFLite frontend imports. Kept in ``out_dir`` (several minutes per model on 2 cores)."""
    from deltann.convert.chain_spec import Produced
    from deltann.convert.onnx_tf import onnx_to_tf
    from deltann.convert.tf_tflite import tf_to_tflite

    path = out_dir / "model.tflite"
    if path.is_file():
        return path
    (out_dir / "tf").mkdir(parents=True, exist_ok=True)
    saved = onnx_to_tf(Produced(onnx_path, "NCHW"), None, out_dir / "tf", "none")
    made = Path(tf_to_tflite(saved, None, out_dir, "none").payload)
    return made


def frontend_input(frontend: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], str]:
    """(the artifact's own input shape, its layout) as a board imports it: the TFLite form
    is NHWC (deltann.convert._tools.input_shape)."""
    if frontend == "tflite":
        n, c, h, w = shape
        return (n, h, w, c), "NHWC"
    return shape, "NCHW"


def tvm_runner(frontend: str, payload: Any, shape: tuple[int, ...], passes: tuple[str, ...],
               target: tuple[str, str], x: np.ndarray, tuning: str = "") -> tuple[Any, np.ndarray, float, str, int]:
    """(an active TvmRunner of ``payload`` imported through ``frontend`` and built under
    ``passes``, its output, build seconds, the target as resolved, kernels without a
    schedule): deltann.runtimes.tvm_rt as a board builds and runs."""
    import json

    from deltann.runtimes.tvm_rt import TvmBuild, TvmRunner

    own_shape, layout = frontend_input(frontend, shape)
    builder = TvmBuild(frontend, payload, own_shape, passes, target[0], target[1], tuning=tuning)
    t0 = time.perf_counter()
    exe = builder()
    build_s = time.perf_counter() - t0
    runner = TvmRunner(exe, device=json.loads(target[0])["kind"], layout=layout)
    runner.activate()
    return runner, runner.infer(x), build_s, builder.resolved_target, int(builder.unscheduled or 0)


def tune(frontend: str, payload: Any, shape: tuple[int, ...], passes: tuple[str, ...], target: tuple[str, str],
         args: argparse.Namespace, name: str) -> tuple[str, str]:
    """MetaSchedule records for the tuned setting as the JSON a tuned unit carries, and the
    row's label: the setting with its budget. With ``--minutes`` the budget is wall time
    (deltann.compile.metaschedule.tune_budgeted: heaviest measured kernels first, a kernel stops
    when it stops improving), else ``--trials`` (tuning.tune). Records resume from
    ``--records`` (written back, merged) and every ``--merge`` file (other searches of the
    same model: tuning.merge_records keeps the best of all)."""
    import json

    from deltann.compile import metaschedule as tuning
    from deltann.compile.frontends import import_relax
    from deltann.compile.pipeline import make_target

    minutes = getattr(args, "minutes", None)
    records: list[tuning.Record] = []
    done, spent_s = 0, 0.0
    saved_path = args.records.with_suffix(f".{name}.{frontend}.json") if args.records else None
    if saved_path is not None and saved_path.exists():
        saved = json.loads(saved_path.read_text())
        records, done = tuning.records_from_json(json.dumps(saved["records"])), int(saved["trials"])
        spent_s = float(saved.get("seconds", 0.0))
    for other in getattr(args, "merge", None) or []:
        merged = json.loads(Path(other).read_text())
        records = tuning.merge_records(records, tuning.records_from_json(json.dumps(merged.get("records", merged))))
    tvm_target = make_target(*target)
    tasks = tuning.select(tuning.extract(import_relax(frontend, payload, frontend_input(frontend, shape)[0]), passes,
                                           tvm_target), args.tasks)
    t0 = time.perf_counter()
    note = ""
    if minutes is not None and minutes * 60 > spent_s:
        new, report = tuning.tune_budgeted(tasks, tvm_target, minutes * 60 - spent_s, previous=records)
        records = tuning.merge_records(records, new)
        done += report.trials
        spent_s += report.seconds
        converged = sum(t.converged for t in report.tasks)
        note = (f", stopped by {report.stopped} ({converged}/{len(report.tasks)} kernels converged), tuned kernels "
                f"{report.estimate_ms(start=True):.2f} -> {report.estimate_ms():.2f} ms")
    elif minutes is None and args.trials > done:
        new = tuning.tune(tasks, tvm_target, args.trials - done, trials_per_task=args.trials_per_task,
                          previous=records)
        records = tuning.merge_records(records, new)
        done = args.trials
        spent_s += time.perf_counter() - t0
    if saved_path is not None:
        saved_path.write_text(json.dumps({"trials": done, "seconds": spent_s,
                                          "records": json.loads(tuning.records_to_json(records))}))
    tune_s = time.perf_counter() - t0
    tuned = {r.workload_hash for r in records}
    print(f"  tuned {name} ({frontend}): {len(tasks)} {args.tasks} kernels, {len(tuned)} with a record, {done} trials "
          f"in {spent_s / 60:.1f} min in all, {tune_s:.0f} s in this run{note}", flush=True)
    label = f"tuned({minutes:g}m)" if minutes is not None else f"tuned({done})"
    return tuning.records_to_json(tuning.best_only(records)), label


FRONTENDS = ("onnx", "torch.export", "tflite")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: " + ", ".join(MODELS))
    parser.add_argument("--frontends", default="onnx",
                        help="comma-separated TVM frontends, from: " + ", ".join(FRONTENDS)
                        + " (tflite: the model's TFLite form, made with deltann's onnx->tf->tflite hops)")
    parser.add_argument("--settings", default="basic,default,extended", help="comma-separated setting names")
    parser.add_argument("--repeat", type=int, default=15,
                        help=f"timed calls of each runtime per setting, in {BLOCKS} alternating blocks")
    parser.add_argument("--kind", default="local", help="device kind of cluster/devices.toml whose target TVM builds for")
    parser.add_argument("--litert", choices=("auto", "yes", "no"), default="auto",
                        help="LiteRT (XNNPACK) as a second reference: auto = when the tflite frontend is asked for "
                        "(the TFLite form is made anyway), yes = always (makes it), no = never")
    parser.add_argument("--onnx-dynamic", action="store_true",
                        help="export the ONNX with a dynamic batch, as many users' files are (TVM builds it at "
                        "the artifact's static shape)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "deltann" / "bench-compile",
                        help="where the TFLite forms are kept between runs")
    parser.add_argument("--minutes", type=float, default=None,
                        help="tuned: tuning budget in minutes of wall time per model and frontend (instead of "
                        "--trials): heaviest measured kernels first, each until it stops improving")
    parser.add_argument("--merge", type=Path, action="append", default=None,
                        help="tuned: records of another search (a --records file) to merge in; repeatable")
    parser.add_argument("--trials", type=int, default=64, help="tuned: measured candidates in all")
    parser.add_argument("--trials-per-task", type=int, default=None, help="tuned: at most this many per kernel")
    parser.add_argument("--tasks", default="heavy", choices=("heavy", "all"), help="tuned: which kernels to tune")
    parser.add_argument("--records", type=Path, default=None,
                        help="tuned: JSON file of tuning records to resume from and write back")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.frontends.split(",")) - set(FRONTENDS))
    if unknown:
        parser.error(f"unknown frontend(s) {', '.join(unknown)}; allowed: {', '.join(FRONTENDS)}")
    target = board_target(args.kind)
    rows = run(args, target)
    return 0 if rows else 1


def run(args: argparse.Namespace, target: tuple[str, str]) -> list[dict[str, Any]]:
    """Print the table; return its rows (bench/agreement.py reads them)."""
    from deltann.compile import settings as compile_settings
    from deltann.runtimes.litert_rt import LiteRTRunner

    settings = args.settings.split(",")
    frontends = getattr(args, "frontends", "onnx").split(",")
    litert = getattr(args, "litert", "auto")
    cache = getattr(args, "cache", None) or Path(tempfile.gettempdir()) / "deltann-bench-compile"
    print(f"threads: {os.environ['TVM_NUM_THREADS']} (TVM) and {os.environ['OMP_NUM_THREADS']} (onnxruntime, "
          "LiteRT)")
    from deltann.compile.pipeline import make_target

    built_for = make_target(*target)  # as a board resolves it: mcpu "native" named, the host included
    print(f"kind {args.kind!r}: target {built_for}; medians over {BLOCKS} interleaved blocks "
          "(batch 1, this machine; lower is better)")
    print("/best = TVM ms / the faster native runtime's ms (blocks: the per-block ratios' range), /ort = TVM / "
          "onnxruntime; nosched = kernels without a vector schedule (a naive fallback counts); max|d| = largest "
          "|TVM - onnxruntime| logit difference, rel = max|d| / max|logit|")
    print(f"{'model':<19} {'frontend':<12} {'setting':<13} {'tvm ms':>8} {'ort ms':>7} {'lite ms':>7} {'/best':>6} "
          f"{'blocks':>11} {'/ort':>5} {'nosched':>7} {'max|d|':>8} {'rel':>7} {'build s':>7}")
    rows: list[dict[str, Any]] = []
    resolved = ""
    for name in args.models.split(","):
        model, shape, weights = load(name)
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model, shape, Path(tmp), getattr(args, "onnx_dynamic", False))
            ort, ref = ort_runner(path, x)
            natives: dict[str, Any] = {"ort": ort}
            lite_path = None
            if "tflite" in frontends or litert == "yes":
                try:
                    lite_path = tflite_form(path, cache / f"{name}-{weights.split()[0]}")
                except Exception as exc:  # no TFLite form: its rows say so, the others go on
                    print(f"{name:<19} tflite       (no TFLite form: {type(exc).__name__}: {exc})"[:200])
                if lite_path is not None and litert != "no":
                    lite = LiteRTRunner(lite_path, threads=int(os.environ["OMP_NUM_THREADS"]))
                    lite.activate()
                    natives["litert"] = lite
            payloads = {"onnx": path, "torch.export": model, "tflite": lite_path}
            for frontend in frontends:
                if payloads[frontend] is None:
                    continue
                for setting in settings:
                    label, records = setting, ""
                    try:
                        passes = compile_settings.passes_of(setting)
                        if compile_settings.is_tuned(setting):
                            records, label = tune(frontend, payloads[frontend], shape, passes, target, args, name)
                        tvm, out, build_s, resolved, nosched = tvm_runner(frontend, payloads[frontend], shape,
                                                                          passes, target, x, records)
                    except Exception as exc:  # a failed build is a row, as in the seed's Table IV
                        print(f"{name:<19} {frontend:<12} {label:<13} FAILED {type(exc).__name__}: {exc}"[:200])
                        continue
                    ms, native_ms, ratios, fastest, low, high = side_by_side(tvm, natives, x, args.repeat)
                    best = ratios[fastest]
                    tvm.deactivate()
                    out = np.asarray(out).reshape(ref.shape)
                    diff = float(np.abs(out - ref).max())
                    rel = diff / max(float(np.abs(ref).max()), 1e-30)
                    lite_ms = native_ms.get("litert")
                    lite_txt = f"{lite_ms:>7.2f}" if lite_ms is not None else f"{'-':>7}"
                    print(f"{name:<19} {frontend:<12} {label:<13} {ms:>8.2f} {native_ms['ort']:>7.2f} {lite_txt} "
                          f"{best:>6.2f} {low:>5.2f}-{high:<5.2f} {ratios['ort']:>5.2f} {nosched:>7d} "
                          f"{diff:>8.1e} {rel:>7.1e} {build_s:>7.1f}", flush=True)
                    rows.append({"model": name, "frontend": frontend, "setting": label, "tvm_ms": ms,
                                 "ort_ms": native_ms["ort"], "litert_ms": lite_ms, "ratio": ratios["ort"],
                                 "best_ratio": best, "unscheduled": nosched, "max_abs": diff})
            for runner in natives.values():
                if runner.active:
                    runner.deactivate()
    if resolved:
        print(f"built for {resolved}")
    _summary(rows)
    return rows


def _summary(rows: list[dict[str, Any]]) -> None:
    """The issue's frontend-parity figure: per model and setting built through more than one
    frontend, the spread of TVM ms across frontends (slowest / fastest)."""
    groups: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["setting"]), {})[r["frontend"]] = r["tvm_ms"]
    for (model, setting), by_frontend in groups.items():
        if len(by_frontend) > 1:
            fast, slow = min(by_frontend.values()), max(by_frontend.values())
            print(f"frontends {model} {setting}: slowest/fastest TVM = {slow / fast:.2f} ("
                  + ", ".join(f"{f} {v:.2f} ms" for f, v in by_frontend.items()) + ")")


if __name__ == "__main__":
    sys.exit(main())
