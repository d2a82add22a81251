"""Do a study's stored times agree with the side-by-side bench and with an independent
reference? (issue 13: a study once stored TVM 4.5x onnxruntime while the bench measured
1.36x, because the board's host target lacked the CPU and the bench shared the bug.)

    .venv/bin/python bench/agreement.py [--images 10] [--repeat 25]

In one run, on this machine:

1. **study**: ``deltann run`` of EfficientNet-Lite0 ``torch->onnx`` on onnxruntime and
   TVM ``extended`` (device kind ``local``, the quickstart's ``[timing]`` protocol) into
   a temporary folder; its TVM/onnxruntime ratio as the report's time-change table has
   it.
2. **bench**: bench/compile.py's side-by-side measurement of the same model and setting
   (the product's build path and interleaved timing, onnxruntime as the reference).
3. **reference**: code that shares nothing with deltann's target or timing: the study's
   own ONNX file on a bare ``onnxruntime.InferenceSession`` timed with
   ``time.perf_counter``, and TVM built for a target written out here (``llvm``, this
   CPU as ``mcpu`` for target and host) timed by TVM's own C++ ``time_evaluator``, the
   two alternating in blocks. (The Relax passes are deltann's ``extended`` list: the
   reference checks where and how the module is built and timed, not which passes.)

It prints the three TVM/onnxruntime ratios and their agreement (goal 0.85-1.15), and the
study's TVM time over the reference's TVM time.
"""

from __future__ import annotations

import os

from deltann.core.runner import thread_env

for _name, _value in thread_env(os.cpu_count() or 1).items():  # the board's thread policy
    os.environ.setdefault(_name, _value)

import argparse  # noqa: E402
import importlib.util
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
MODEL = "efficientnet_lite0"
VARIANT = "torch->onnx"
SETTING = "extended"
ORT_CONFIG = f"{VARIANT} [onnxruntime]"
TVM_CONFIG = f"{VARIANT} [tvm:{SETTING}]"


def study_file(folder: Path, images: int) -> Path:
    """The agreement study, with the quickstart's timing protocol."""
    timing = tomllib.loads((ROOT / "studies" / "quickstart.toml").read_text()).get("timing", {})
    body = (f'name = "agreement"\nmodels = ["{MODEL}"]\nvariants = ["{VARIANT}"]\nruntimes = ["native", "tvm"]\n'
            f'settings = ["{SETTING}"]\ndevices = ["local"]\n[dataset]\nsource = "samples"\nlimit = {images}\n'
            "[timing]\n" + "".join(f"{k} = {v}\n" for k, v in timing.items()))
    path = folder / "agreement.toml"
    path.write_text(body)
    return path


def study_ratio(out: Path) -> tuple[float, float, float]:
    """(TVM ms, onnxruntime ms, TVM/onnxruntime) from the study's time-change table."""
    from deltann import analysis
    from deltann.store import Store

    table = analysis.speedup_stats(Store(out))
    row = table.filter((pl.col("A") == ORT_CONFIG) & (pl.col("B") == TVM_CONFIG)).row(0, named=True)
    return row["t_B_ms"], row["t_A_ms"], 1 / row["ratio"]


def bench_ratio(repeat: int) -> tuple[float, float, float]:
    """bench/compile.py's side-by-side row for the model and setting."""
    spec = importlib.util.spec_from_file_location("bench_compile", ROOT / "bench" / "compile.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(models=MODEL, settings=SETTING, repeat=repeat, kind="local", trials=0,
                              trials_per_task=None, tasks="heavy", records=None)
    row = bench.run(args, bench.board_target("local"))[0]
    return row["tvm_ms"], row["ort_ms"], row["ratio"]


def reference_ratio(onnx_path: Path, x: np.ndarray, repeat: int, blocks: int = 5) -> tuple[float, float, float]:
    """The independent reference (see the module docstring)."""
    import onnxruntime as ort
    import tvm
    from tvm import relax
    from tvm.target import codegen

    from deltann.compile.frontends import from_onnx
    from deltann.compile.pipeline import build
    from deltann.compile.settings import passes_of

    # Deliberately not deltann's one TVM path (compile.pipeline's make_target, Vm,
    # runtimes.tvm_rt): the reference writes its own target and VM and times with TVM's
    # time_evaluator, so a bug in the product's path cannot hide in both (issue 13).
    cpu = codegen.llvm_get_system_cpu()
    target = tvm.target.Target({"kind": "llvm", "mcpu": cpu}, host={"kind": "llvm", "mcpu": cpu})
    vm = relax.VirtualMachine(build(from_onnx(onnx_path), passes_of(SETTING), target), tvm.cpu())
    arg = tvm.runtime.tensor(x, device=tvm.cpu())
    per_block = max(3, repeat // blocks)
    evaluator = vm.time_evaluator("main", tvm.cpu(), number=1, repeat=per_block)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    tvm_s: list[float] = []
    ort_s: list[float] = []
    for _ in range(blocks):
        time.sleep(0.2)
        tvm_s += list(evaluator(arg).results)  # one untimed call inside, then the samples
        time.sleep(0.2)
        session.run(None, feed)
        for _ in range(per_block):
            t0 = time.perf_counter()
            session.run(None, feed)
            ort_s.append(time.perf_counter() - t0)
    tvm_ms, ort_ms = float(np.median(tvm_s) * 1e3), float(np.median(ort_s) * 1e3)
    return tvm_ms, ort_ms, tvm_ms / ort_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10, help="sample photos in the study")
    parser.add_argument("--repeat", type=int, default=25, help="timed calls per runtime in the bench and reference")
    args = parser.parse_args()

    from deltann.convert.chain import ArtifactCache
    from deltann.fleet.driver import prepare_inputs, run_study
    from deltann.study import load_study

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = study_file(folder, args.images)
        t0 = time.perf_counter()
        run_study(path, folder / "results", progress=False)
        study_s = time.perf_counter() - t0
        import ray

        ray.shutdown()  # the board's processes end: the bench and reference run on a quiet machine
        s_tvm, s_ort, s_ratio = study_ratio(folder / "results")
        b_tvm, b_ort, b_ratio = bench_ratio(args.repeat)
        onnx_path = Path(ArtifactCache(folder / "results" / "artifacts").get(MODEL, VARIANT).payload)
        x = prepare_inputs(load_study(path), folder)[MODEL].tensors[:1]
        r_tvm, r_ort, r_ratio = reference_ratio(onnx_path, x, args.repeat)

    rows: list[tuple[str, Any, Any, Any]] = [("study (stored)", s_tvm, s_ort, s_ratio),
                                             ("bench/compile.py", b_tvm, b_ort, b_ratio),
                                             ("independent reference", r_tvm, r_ort, r_ratio)]
    print(f"\n{MODEL} {VARIANT}, TVM {SETTING} vs onnxruntime; study took {study_s:.0f} s")
    print(f"{'measured by':<24} {'tvm ms':>8} {'ort ms':>8} {'tvm/ort':>8}")
    for name, t, o, r in rows:
        print(f"{name:<24} {t:>8.2f} {o:>8.2f} {r:>8.3f}")
    print(f"agreement study/bench     {s_ratio / b_ratio:.3f}   (goal 0.85-1.15)")
    print(f"agreement study/reference {s_ratio / r_ratio:.3f}   (goal 0.85-1.15)")
    print(f"agreement bench/reference {b_ratio / r_ratio:.3f}   (goal 0.85-1.15)")
    print(f"TVM ms, study/reference   {s_tvm / r_tvm:.3f}   (the target and timing path alone)")


if __name__ == "__main__":
    main()
