"""TVM settings against onnxruntime, side by side in one run.

For each model: export torch -> ONNX once, run it on onnxruntime (the reference for
both latency and outputs), import the same ONNX into TVM Relax, build it under each
setting, and print latency ratios TVM/onnxruntime and the largest logit difference.
The two runtimes are timed in alternating blocks and the ratio is the median of the
blocks' ratios (see side_by_side): on a shared machine a ratio of neighbours is stable
where the absolute times are not.

    .venv/bin/python bench/compile.py                       # all four models
    .venv/bin/python bench/compile.py --models mobilenet_v2 --repeat 100
    .venv/bin/python bench/compile.py --settings default,extended
    .venv/bin/python bench/compile.py --models mobilenet_v2 --settings basic,default,extended,tuned \
        --trials 512 --records /tmp/mnv2.json   # MetaSchedule: tune, then time beside the others

``tuned`` tunes the model's heavy kernels (``--tasks``) with ``--trials`` measured
candidates in this process (deltann.compile.tuning, as a board does), then builds and
times it like the other settings; the row says the budget and the tuning time. With
``--records FILE`` the records are kept there (MetaSchedule JSON) and a later run resumes
from them: a larger ``--trials`` tunes only the difference.

torchvision weights cannot be downloaded here: MobileNetV2, ResNet101 and InceptionV3
are built with seeded random weights (fine for latency; re-initialised so that their
logits are O(1) and the difference columns mean something). EfficientNet-Lite0 has
its real ImageNet weights (deltann.zoo). Untuned ResNet101/InceptionV3 take seconds per
call under ``basic``: keep ``--repeat`` low (it is at least 3 calls per block).
"""

from __future__ import annotations

import os

from deltann.runtimes.base import thread_env

# The board actor's thread policy (every logical core, for every runtime), set before any
# framework starts its thread pool, so the comparison is of code, not of thread counts.
for _name, _value in thread_env(os.cpu_count() or 1).items():
    os.environ.setdefault(_name, _value)

import argparse  # noqa: E402
import statistics
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

#: Alternating timing blocks per setting, and the pause before each (see side_by_side).
BLOCKS = 5
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


def export_onnx(model: Any, shape: tuple[int, ...], out_dir: Path) -> Path:
    """torch -> ONNX as deltann's ``torch->onnx`` hop does it (TorchScript exporter, opset
    17, constant folding)."""
    import torch

    path = out_dir / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], do_constant_folding=True)
    return path


def ort_runner(path: Path, x: np.ndarray) -> tuple[Callable[[], Any], np.ndarray]:
    """(one onnxruntime call, its output): the reference for latency and outputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ["OMP_NUM_THREADS"])
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    return (lambda: sess.run(None, feed)), sess.run(None, feed)[0]


def side_by_side(tvm_call: Callable[[], Any], ort_call: Callable[[], Any], repeat: int,
                 blocks: int = BLOCKS) -> tuple[float, float, float]:
    """Median ms of each and the ratio TVM/onnxruntime, timed in alternating blocks
    (TVM, onnxruntime, TVM, ...) of ``repeat // blocks`` calls each, both through the
    same Python loop. Why blocks: on a shared 2-core machine the load shifts within a
    run (both runtimes measured 30% slower for minutes at a time here), so each ratio
    compares neighbours; the ratio printed is the median of the blocks' ratios. Why not
    call by call, and why a pause before each block: each runtime's thread pool keeps
    spinning for milliseconds after a call and, on 2 cores, takes one from the other
    runtime (onnxruntime measured 2.7x slower in 3-call blocks right after TVM's)."""
    per_block = max(3, repeat // blocks)
    tvm_ms, ort_ms = [], []
    for _ in range(blocks):
        for call, out in ((tvm_call, tvm_ms), (ort_call, ort_ms)):
            time.sleep(SETTLE_S)  # the other runtime's pool threads stop spinning
            call()  # untimed: this runtime's thread pool awake, its buffers in cache
            samples = []
            for _ in range(per_block):
                t0 = time.perf_counter()
                call()
                samples.append(time.perf_counter() - t0)
            out.append(statistics.median(samples) * 1e3)
    ratios = [a / b for a, b in zip(tvm_ms, ort_ms, strict=True)]
    return statistics.median(tvm_ms), statistics.median(ort_ms), statistics.median(ratios)


def make_target(which: str) -> Any:
    """``host``: llvm with this machine's CPU as ``mcpu`` (what onnxruntime's kernels use
    too, by runtime dispatch); ``generic``: plain llvm (SSE2 on x86-64); else a JSON dict."""
    import json

    import tvm
    from tvm.target import codegen

    if which == "host":
        return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})
    if which == "generic":
        return tvm.target.Target({"kind": "llvm"})
    return tvm.target.Target(json.loads(which))


def tvm_runner(mod: Any, passes: tuple[str, ...], target: Any, x: np.ndarray,
               database: Any = None) -> tuple[Callable[[], Any], np.ndarray, float]:
    """(one call of the module built under ``passes``, its output, build seconds)."""
    import tvm
    from tvm import relax

    from deltann.compile.pipeline import build

    t0 = time.perf_counter()
    ex = build(mod, passes, target, database)
    build_s = time.perf_counter() - t0
    dev = tvm.cpu()
    main = relax.VirtualMachine(ex, dev)["main"]
    arg = tvm.runtime.tensor(x, device=dev)
    out = main(arg)
    out = (out if hasattr(out, "numpy") else out[0]).numpy()
    return (lambda: main(arg)), out, build_s


def tune(mod: Any, passes: tuple[str, ...], target: Any, args: argparse.Namespace, name: str) -> tuple[Any, str]:
    """MetaSchedule database for the tuned setting (resumed from ``--records``), and the
    row's label: the setting with its budget."""
    import json

    from deltann.compile import tuning

    records: list[tuning.Record] = []
    done = 0
    path = args.records.with_suffix(f".{name}.json") if args.records else None
    if path is not None and path.exists():
        saved = json.loads(path.read_text())
        records, done = tuning.records_from_json(json.dumps(saved["records"])), int(saved["trials"])
    tasks = tuning.select(tuning.extract(mod, passes, target), args.tasks)
    t0 = time.perf_counter()
    if args.trials > done:
        new = tuning.tune(tasks, target, args.trials - done, trials_per_task=args.trials_per_task, previous=records)
        keep = {r.workload_hash for r in new}
        records = new + [r for r in records if r.workload_hash not in keep]
        done = args.trials
        if path is not None:
            path.write_text(json.dumps({"trials": done, "records": json.loads(tuning.records_to_json(records))}))
    tune_s = time.perf_counter() - t0
    tuned = {r.workload_hash for r in records}
    print(f"  tuned: {len(tasks)} {args.tasks} kernels, {len(tuned)} with a record, budget {done} trials, "
          f"{tune_s:.0f} s of tuning in this run", flush=True)
    return tuning.records_to_database(tuning.best_only(records)), f"tuned({done})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: " + ", ".join(MODELS))
    parser.add_argument("--settings", default="basic,default,extended", help="comma-separated setting names")
    parser.add_argument("--repeat", type=int, default=15,
                        help=f"timed calls of each runtime per setting, in {BLOCKS} alternating blocks")
    parser.add_argument("--target", default="host",
                        help="'host' (llvm, mcpu = this CPU), 'generic' (plain llvm) or a JSON target dict")
    parser.add_argument("--trials", type=int, default=64, help="tuned: measured candidates in all")
    parser.add_argument("--trials-per-task", type=int, default=None, help="tuned: at most this many per kernel")
    parser.add_argument("--tasks", default="heavy", choices=("heavy", "all"), help="tuned: which kernels to tune")
    parser.add_argument("--records", type=Path, default=None,
                        help="tuned: JSON file of tuning records to resume from and write back")
    args = parser.parse_args(argv)
    target = make_target(args.target)

    from deltann.compile import settings as compile_settings
    from deltann.compile.frontends import from_onnx

    settings = args.settings.split(",")
    print(f"threads: {os.environ['TVM_NUM_THREADS']} (TVM) and {os.environ['OMP_NUM_THREADS']} (onnxruntime)")
    print(f"target {target}; ratio = median over {BLOCKS} alternating blocks of TVM ms / onnxruntime ms "
          "(batch 1, this machine); lower is better")
    print("max|d| = largest |TVM - onnxruntime| logit difference, rel = max|d| / max|logit|")
    print(f"{'model':<20} {'weights':<20} {'setting':<22} {'tvm ms':>9} {'ort ms':>8} {'ratio':>7} "
          f"{'max|d|':>9} {'rel':>8} {'build s':>8}")
    for name in args.models.split(","):
        model, shape, weights = load(name)
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model, shape, Path(tmp))
            ort_call, ref = ort_runner(path, x)
            mod = from_onnx(path)
            for setting in settings:
                label, database = setting, None
                try:
                    if compile_settings.is_tuned(setting):
                        database, label = tune(mod, compile_settings.passes_of(setting), target, args, name)
                    tvm_call, out, build_s = tvm_runner(mod, compile_settings.passes_of(setting), target, x,
                                                        database)
                except Exception as exc:  # a failed build is a row, as in the seed's Table IV
                    print(f"{name:<20} {weights:<20} {label:<22} FAILED {type(exc).__name__}: {exc}"[:200])
                    continue
                ms, ort_ms, ratio = side_by_side(tvm_call, ort_call, args.repeat)
                diff = float(np.abs(out - ref).max())
                rel = diff / max(float(np.abs(ref).max()), 1e-30)
                print(f"{name:<20} {weights:<20} {label:<22} {ms:>9.2f} {ort_ms:>8.2f} {ratio:>7.2f} "
                      f"{diff:>9.2e} {rel:>8.1e} {build_s:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
