"""Do a study's stored times agree with the side-by-side bench and with an independent
reference? (issue 13: a study once stored TVM 4.5x onnxruntime while the bench measured
1.36x, because the board's host target lacked the CPU and the bench shared the bug.)

    .venv/bin/python bench/agreement.py [--images 10] [--repeat 36] [--rounds 3]

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
   two alternating in blocks; its ratio is the median of the blocks' ratios, worked out
   here with numpy. (The Relax passes are deltann's ``extended`` list: the
   reference checks where and how the module is built and timed, not which passes.)

The three run one after another, ``--rounds`` times (the study's later rounds reuse the
first one's converted model and kept TVM module, so they only run and time): this VM
moves between fast and slow states for tens of seconds, and a state that slows one
runtime more than the other falls on one measurement of a round only. It prints each
round, the three TVM/onnxruntime ratios (medians over the rounds) and their agreement
(goal 0.85-1.15), and the study's TVM time over the reference's TVM time.
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


class Reference:
    """The independent reference (see the module docstring), built once and timed once per
    round."""

    def __init__(self, onnx_path: Path, x: np.ndarray) -> None:
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
        self.vm = relax.VirtualMachine(build(from_onnx(onnx_path), passes_of(SETTING), target), tvm.cpu())
        self.arg = tvm.runtime.tensor(x, device=tvm.cpu())
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.feed = {self.session.get_inputs()[0].name: x}

    def ratio(self, repeat: int, blocks: int = 12) -> tuple[float, float, float]:
        """(TVM ms, onnxruntime ms, TVM/onnxruntime paired by block), the two alternating
        in ``blocks`` blocks."""
        import tvm

        per_block = max(3, repeat // blocks)
        evaluator = self.vm.time_evaluator("main", tvm.cpu(), number=1, repeat=per_block)
        tvm_s = np.zeros((blocks, per_block))
        ort_s = np.zeros((blocks, per_block))
        for block in range(blocks):
            time.sleep(0.2)
            tvm_s[block] = evaluator(self.arg).results  # one untimed call inside, then the samples
            time.sleep(0.2)
            self.session.run(None, self.feed)
            for i in range(per_block):
                t0 = time.perf_counter()
                self.session.run(None, self.feed)
                ort_s[block, i] = time.perf_counter() - t0
        ratio = float(np.median(np.median(tvm_s, axis=1) / np.median(ort_s, axis=1)))  # paired by block
        return float(np.median(tvm_s) * 1e3), float(np.median(ort_s) * 1e3), ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10, help="sample photos in the study")
    parser.add_argument("--repeat", type=int, default=36, help="timed calls per runtime in the bench and reference")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the three measurements, one after another (study, bench, reference)")
    args = parser.parse_args()

    import shutil

    import ray

    from deltann.convert.chain import ArtifactCache
    from deltann.fleet.driver import prepare_inputs, run_study
    from deltann.study import load_study

    names = ["study", "bench", "reference"]  # the study (stored), bench/compile.py, the independent reference
    measured: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = study_file(folder, args.images)
        reference = None
        for round_ in range(args.rounds):
            out = folder / f"results{round_}"
            if round_:  # the same converted model and kept TVM module: the round only runs and times
                shutil.copytree(folder / "results0" / "artifacts", out / "artifacts")
            t0 = time.perf_counter()
            run_study(path, out, progress=False)
            study_s = time.perf_counter() - t0
            ray.shutdown()  # the board's processes end: the bench and reference run on a quiet machine
            measured[names[0]].append(study_ratio(out))
            measured[names[1]].append(bench_ratio(args.repeat))
            if reference is None:
                onnx_path = Path(ArtifactCache(out / "artifacts").get(MODEL, VARIANT).payload)
                reference = Reference(onnx_path, prepare_inputs(load_study(path), folder)[MODEL].tensors[:1])
            measured[names[2]].append(reference.ratio(args.repeat))
            print(f"round {round_ + 1}: study {study_s:.0f} s; " + "; ".join(
                f"{name} {t:.2f}/{o:.2f} = {r:.3f}" for name, (t, o, r) in
                ((n, measured[n][-1]) for n in names)), flush=True)

    median = {name: tuple(float(np.median([m[i] for m in measured[name]])) for i in range(3)) for name in names}
    print(f"\n{MODEL} {VARIANT}, TVM {SETTING} vs onnxruntime; medians of {args.rounds} rounds")
    print(f"{'measured by':<24} {'tvm ms':>8} {'ort ms':>8} {'tvm/ort':>8} {'rounds':>13}")
    for name in names:
        t, o, r = median[name]
        ratios = [m[2] for m in measured[name]]
        print(f"{name:<24} {t:>8.2f} {o:>8.2f} {r:>8.3f} {min(ratios):>6.3f}-{max(ratios):<6.3f}")
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        per_round = [x[2] / y[2] for x, y in zip(measured[names[a]], measured[names[b]], strict=True)]
        pair = f"{names[a]}/{names[b]}"
        print(f"agreement {pair:<16} {median[names[a]][2] / median[names[b]][2]:.3f}"
              f"   (goal 0.85-1.15; per round {min(per_round):.3f}-{max(per_round):.3f})")
    print(f"TVM ms, study/reference {median[names[0]][0] / median[names[2]][0]:.3f}   "
          "(the target and timing path alone)")


if __name__ == "__main__":
    main()
