"""Quickstart benchmark: each stage's wall time, and the ratio of the latency deltann
reports to a bare TVM ``time_evaluator`` on the same compiled module (target 0.98-1.02).

    .venv/bin/python bench/quickstart.py [--study studies/quickstart.toml] [--rounds 5]

The ratio is measured two ways, both printed:
  * store: the median deltann wrote to the store (measured in the board actor) over the
    median of a bare ``vm.time_evaluator`` on a module built here with the same frontend,
    passes and target (identical code);
  * same process: deltann's measuring path (TvmRunner.measure) vs the bare
    ``time_evaluator`` on one compiled module, interleaved round by round.
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
import tempfile
import time
from pathlib import Path

import polars as pl

from deltann import zoo
from deltann.fleet.driver import prepare_inputs, run_study
from deltann.fleet.devices import load_catalogue
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
        timings = store.scan("timings").collect()

        print(f"study {args.study}: {summary.ran} units ({summary.failed} failed)")
        print("\nstage                          seconds")
        for name, secs in summary.seconds.items():
            print(f"  driver: {name:<21} {secs:8.2f}")
        for col in ("convert_s", "import_s", "compile_s", "load_s", "total_s"):
            print(f"  units (sum): {col:<16} {builds[col].sum():8.2f}")
        print(f"  report                       {report_s:8.2f}")
        print(f"  deltann run, total           {total_run:8.2f}")

        # --- reported latency vs bare time_evaluator -------------------------------
        from deltann.convert.chain import ArtifactCache
        from deltann.runtimes.tvm_rt import TvmBuild, TvmRunner

        study = load_study(args.study)
        kinds = load_catalogue()
        inputs = prepare_inputs(study, Path(args.study).parent)
        units = [u for u in expand(study, inputs, kinds) if u.runtime == "tvm"]
        cache = ArtifactCache(Path(tmp) / "bench-artifacts")
        print(f"\nlatency ratio, deltann / bare time_evaluator ({args.rounds} rounds, target 0.98-1.02)")
        print(f"  {'configuration':<34} {'store ms':>9} {'bare ms':>9} {'store/bare':>10} {'same-proc':>10}")
        for unit in units:
            spec = zoo.get(unit.model)
            artifact = cache.get(unit.model, unit.variant)
            exe = TvmBuild(unit.frontend, artifact.payload, spec.input_shape, unit.passes, unit.target, unit.host)()
            runner = TvmRunner(exe)
            runner.activate()
            x = inputs[unit.model].tensors[:1]
            protocol = dict(warmup=unit.warmup, number=unit.number, repeat=unit.repeat, min_repeat_ms=unit.min_repeat_ms)
            arg = runner._tensor(x)
            evaluator = runner.vm.time_evaluator("main", runner.dev, number=unit.number, repeat=unit.repeat,
                                                 min_repeat_ms=unit.min_repeat_ms)
            ours, bare = [], []
            for _ in range(args.rounds):
                ours.append(statistics.median(runner.measure(x, **protocol)))
                for _ in range(unit.warmup):
                    runner.vm["main"](arg)
                bare.append(statistics.median(evaluator(arg).results) * 1e9)
            runner.deactivate()
            stored = timings.filter(pl.col("unit_key") == unit.key)["median_ns"].to_list()
            stored_ms = stored[0] / 1e6 if stored else float("nan")
            bare_ms = statistics.median(bare) / 1e6
            print(f"  {unit.config:<34} {stored_ms:9.2f} {bare_ms:9.2f} {stored_ms / bare_ms:10.3f} "
                  f"{statistics.median(ours) / statistics.median(bare):10.3f}")


if __name__ == "__main__":
    main()
