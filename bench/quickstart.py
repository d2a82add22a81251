"""Quickstart benchmark: each stage's wall time, and the latency deltann stored for each
TVM configuration against an independent reference measured right after.

    .venv/bin/python bench/quickstart.py [--study studies/quickstart.toml] [--rounds 5]

The reference shares neither deltann's target nor its timing code: the study's own
artifact built for a target written out here (``llvm`` with this CPU as ``mcpu``, for
target and host alike) and timed with TVM's C++ ``time_evaluator`` over the same images.
(An earlier reference built its module with deltann's target code and so shared the bug
that made every stored TVM time 2-3x slow; bench/agreement.py checks the ratios too.)
"""

from __future__ import annotations

import os

from deltann.core.runner import thread_env

# The board actor's thread policy (every logical core, for every runtime), set before any
# framework starts its thread pool, so the comparison is of code, not of thread counts.
for _name, _value in thread_env(os.cpu_count() or 1).items():
    os.environ.setdefault(_name, _value)

import argparse  # noqa: E402
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from deltann import zoo
from deltann.fleet.driver import prepare_inputs, run_study
from deltann.core.device_catalogue import load_catalogue
from deltann.plan import expand
from deltann.report import build_report
from deltann.store import Store
from deltann.study import load_study

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=str(ROOT / "studies" / "quickstart.toml"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results"
        t = time.perf_counter()
        summary = run_study(args.study, out, progress=False)
        total_run = time.perf_counter() - t
        t = time.perf_counter()
        build_report(out)
        report_s = time.perf_counter() - t
        store = Store(out)
        builds = store.scan("builds").collect()

        print(f"study {args.study}: {summary.ran} units ({summary.failed} failed)")
        print("\nstage                          seconds")
        for name, secs in summary.seconds.items():
            print(f"  driver: {name:<21} {secs:8.2f}")
        for col in ("convert_s", "import_s", "compile_s", "load_s", "total_s"):
            print(f"  units (sum): {col:<16} {builds[col].sum():8.2f}")
        print(f"  timing sessions (sum)        {sum(r['seconds'] for r in summary.sessions):8.2f}")
        print(f"  report                       {report_s:8.2f}")
        print(f"  deltann run, total           {total_run:8.2f}")

        # --- stored latency vs an independent reference --------------------------------
        import tvm
        from tvm import relax
        from tvm.target import codegen

        from deltann import analysis
        from deltann.compile.frontends import import_relax
        from deltann.compile.pipeline import build
        from deltann.convert._tools import input_shape
        from deltann.convert.chain import ArtifactCache

        study = load_study(args.study)
        kinds = load_catalogue()
        inputs = prepare_inputs(study, Path(args.study).parent)
        units = [u for u in expand(study, inputs, kinds) if u.runtime == "tvm"]
        latency = analysis.latency_table(store)
        cache = ArtifactCache(out / "artifacts")
        cpu = codegen.llvm_get_system_cpu()
        # Deliberately not deltann's one TVM path (compile.pipeline's make_target, Vm,
        # runtimes.tvm_rt): an independent reference shares neither its target nor its VM
        # and timing code (see the module docstring); only the setting's pass list is deltann's.
        target = tvm.target.Target({"kind": "llvm", "mcpu": cpu}, host={"kind": "llvm", "mcpu": cpu})
        timed = study.timing.timed_indices(len(inputs[units[0].model].ids)) if units else []
        print(f"\nstored median vs independent reference (target llvm -mcpu={cpu}, TVM time_evaluator, "
              f"{args.rounds} samples per image, {len(timed)} images)")
        print(f"  {'configuration':<34} {'store ms':>9} {'ref ms':>9} {'store/ref':>10}")
        for unit in units:
            spec = zoo.get(unit.model)
            artifact = cache.get(unit.model, unit.variant)
            mod = import_relax(unit.frontend, artifact.payload, input_shape(spec.input_shape, artifact.layout))
            vm = relax.VirtualMachine(build(mod, unit.passes, target), tvm.cpu())
            evaluator = vm.time_evaluator("main", tvm.cpu(), number=1, repeat=args.rounds)
            batch = inputs[unit.inputs or unit.model].tensors
            ref = []
            for i in timed:
                x = batch[i : i + 1] if artifact.layout == "NCHW" else batch[i : i + 1].transpose(0, 2, 3, 1)
                ref += list(evaluator(tvm.runtime.tensor(np.ascontiguousarray(x), device=tvm.cpu())).results)
            stored = latency.filter(pl.col("config") == unit.config)["median_ms"].to_list()
            stored_ms = stored[0] if stored else float("nan")
            ref_ms = statistics.median(ref) * 1e3
            print(f"  {unit.config:<34} {stored_ms:9.2f} {ref_ms:9.2f} {stored_ms / ref_ms:10.3f}")


if __name__ == "__main__":
    main()
