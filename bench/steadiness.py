"""How steady is this machine? The A/A noise floor a study can reach here, measured without
deltann's timing path (issue 13, item 7: ``noise_pct`` <= 3 % "on a quiet machine").

    .venv/bin/python bench/steadiness.py [--onnx MODEL.onnx] [--seconds 60] [--pairs 10]

With nothing else running, three workloads take turns in short windows (``--window`` s,
each as many calls as fit) for ``--seconds``:

- ``ort xN``: a bare ``onnxruntime.InferenceSession`` on the model with every logical
  core (the boards' thread policy);
- ``ort x1``: the same session options with one thread;
- ``python``: a fixed pure-Python loop (one core, no library, no memory traffic);
- ``tvm xN`` (``--tvm``): the model built by deltann's TVM path (``extended``, the
  ``local`` kind's target) on every logical core — the machine's behaviour under a
  fork-join runtime, not a check of that path.

Per workload it prints the windows' median call time (ms): p10, p50, p90, p90/p10 and
the share of windows over 1.3x the fast state (the windows' 20th percentile); the
share of CPU time the hypervisor reports stolen (``/proc/stat``) and the load average.
Per workload it also follows this process's threads (``/proc/self/task``): in its slow
windows and in its fast ones, how many distinct CPUs its busy threads ran on and the
share of the window they were on a CPU. Slow windows whose threads ran on separate CPUs
for the whole window, with nothing stolen, are the host's doing: the virtual CPUs ran
slower, not this process's threads less.
Then the A/A a study would see: a configuration's block ``2k`` against its block
``2k + 1`` is two measurements one round of the session apart (``--round`` s; the
quickstart's 8 configurations x ~0.3 s), so pairs of windows that far apart are drawn,
``--pairs`` at a time (the default protocol's 20 blocks give 10), and the median of
their log ratios taken as the study's A/A estimate is; over 2,000 draws it prints the
estimate's median size and its 90th percentile. A machine where that is over 3 % cannot
give the quickstart's A/A floor, whatever the harness does with the samples.

The model defaults to EfficientNet-Lite0 exported from torch (deltann's zoo only makes
the file); with ``--tvm`` deltann builds the TVM workload, the rest is plain onnxruntime
and Python.
"""

from __future__ import annotations

import os

from deltann.core.runner import thread_env

for _name, _value in thread_env(os.cpu_count() or 1).items():  # the boards' thread policy, for TVM too
    os.environ.setdefault(_name, _value)

import argparse  # noqa: E402
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SLOW = 1.3  # a window this much slower than the fast state is in a slow state


def default_model(folder: Path) -> Path:
    """EfficientNet-Lite0 (real weights) as ONNX, exported the way the quickstart's variant is."""
    from deltann.convert.chain import ArtifactCache

    return Path(ArtifactCache(folder).get("efficientnet_lite0", "torch->onnx").payload)


def ort_call(onnx: Path, threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype("float32")}
    return lambda: session.run(None, feed)


def python_loop() -> int:
    return sum(range(150_000))


def tvm_call(onnx: Path, shape: list[int]) -> Callable[[], object]:
    """The model as a board of the ``local`` kind builds it (``extended``), ready to run."""
    import json

    import tvm
    from tvm import relax

    from deltann.compile.frontends import import_relax
    from deltann.compile.pipeline import build, make_target
    from deltann.compile.settings import passes_of
    from deltann.core.device_catalogue import load_catalogue

    kind = load_catalogue()["local"]
    target = make_target(json.dumps(kind.target), json.dumps(kind.host) if kind.host else "")
    vm = relax.VirtualMachine(build(import_relax("onnx", str(onnx), tuple(shape)), passes_of("extended"), target),
                              tvm.cpu())
    arg = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype("float32"), device=tvm.cpu())
    return lambda: vm["main"](arg)


def threads() -> dict[str, tuple[int, int]]:
    """This process's threads: id -> (the CPU it last ran on, its CPU time in clock ticks)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        out[tid] = (int(fields[36]), int(fields[11]) + int(fields[12]))
    return out


def cpu_times() -> np.ndarray:
    """The machine's cumulative CPU times (user nice system idle iowait irq softirq steal ...)."""
    with open("/proc/stat") as f:
        return np.array([int(v) for v in f.readline().split()[1:]])


def windows(calls: dict[str, Callable[[], object]], seconds: float,
            window: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """Each workload's median call time (s) per window, the workloads taking turns; per
    window (distinct CPUs of its busy threads, their mean share of the window on a CPU);
    and the share of CPU time stolen over the whole run."""
    for call in calls.values():  # warm
        for _ in range(5):
            call()
    out: dict[str, list[float]] = {name: [] for name in calls}
    placed: dict[str, list[tuple[int, float]]] = {name: [] for name in calls}
    tick = os.sysconf("SC_CLK_TCK")
    start = cpu_times()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for name, call in calls.items():
            times = []
            before = threads()
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < window:
                t = time.perf_counter()
                call()
                times.append(time.perf_counter() - t)
            span = (time.perf_counter() - t0) * tick
            busy = [(cpu, (ticks - before.get(tid, (cpu, ticks))[1]) / span)
                    for tid, (cpu, ticks) in threads().items() if tid in before]
            busy = [(cpu, share) for cpu, share in busy if share > 0.2]  # the threads doing the work
            out[name].append(float(np.median(times)))
            placed[name].append((len({cpu for cpu, _ in busy}), float(np.mean([s for _, s in busy])) if busy else 0.0))
    delta = cpu_times() - start
    stolen = float(delta[7] / delta.sum()) if delta.size > 7 and delta.sum() else float("nan")
    return ({name: np.asarray(v) for name, v in out.items()}, {name: np.asarray(v) for name, v in placed.items()},
            stolen)


def aa_estimates(series: np.ndarray, gap: int, pairs: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """|A/A| (%) of ``draws`` estimates, each the median log ratio of ``pairs`` window pairs
    ``gap`` windows apart, drawn from the series."""
    logs = np.log(series)
    ratios = logs[:-gap] - logs[gap:]
    picks = rng.integers(0, ratios.size, size=(draws, pairs))
    return np.abs(np.expm1(np.median(ratios[picks], axis=1))) * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, default=None, help="the model (default: EfficientNet-Lite0 from torch)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--window", type=float, default=0.5, help="seconds per workload per turn")
    parser.add_argument("--round", type=float, default=2.4, help="seconds between a configuration's blocks")
    parser.add_argument("--pairs", type=int, default=10, help="block pairs of one A/A estimate")
    parser.add_argument("--tvm", action="store_true", help="also the model built by deltann's TVM path")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        onnx = args.onnx or default_model(Path(tmp))
        cores = os.cpu_count() or 1
        calls = {f"ort x{cores}": ort_call(onnx, cores), "ort x1": ort_call(onnx, 1), "python": python_loop}
        if args.tvm:
            import onnx as onnx_lib

            dims = onnx_lib.load(str(onnx)).graph.input[0].type.tensor_type.shape.dim
            calls[f"tvm x{cores}"] = tvm_call(onnx, [d.dim_value or 1 for d in dims])
        load_before = os.getloadavg()[0]
        series, placed, stolen = windows(calls, args.seconds, args.window)
    turn = args.window * len(calls)  # seconds between a workload's windows
    gap = max(1, round(args.round / turn))
    rng = np.random.default_rng(0)
    print(f"{onnx.name}: {len(next(iter(series.values())))} windows of {args.window} s per workload in "
          f"{args.seconds:.0f} s; load {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"CPU time stolen {stolen * 100:.1f} %")
    print(f"{'workload':<10} {'p10 ms':>8} {'p50 ms':>8} {'p90 ms':>8} {'p90/p10':>8} {'slow':>6}"
          f" {'A/A med':>8} {'A/A p90':>8}   threads' CPUs and on-CPU share, fast | slow windows")
    for name, s in series.items():
        p10, p20, p50, p90 = np.percentile(s, [10, 20, 50, 90])
        aa = aa_estimates(s, gap, args.pairs, 2000, rng)
        slow = s > SLOW * p20
        where = " | ".join(f"{np.mean(placed[name][m, 0]):.1f} CPUs {np.mean(placed[name][m, 1]) * 100:3.0f}%"
                           if m.any() else "-" for m in (~slow, slow))
        print(f"{name:<10} {p10 * 1e3:>8.2f} {p50 * 1e3:>8.2f} {p90 * 1e3:>8.2f} {p90 / p10:>8.2f}"
              f" {slow.mean() * 100:>5.0f}% {np.median(aa):>7.1f}% {np.percentile(aa, 90):>7.1f}%   {where}")
    print(f"A/A: median log ratio of {args.pairs} window pairs {gap * turn:.1f} s apart (a configuration's "
          "blocks 2k and 2k+1), 2,000 draws; the quickstart's goal is <= 3 % for each of its 8 configurations")


if __name__ == "__main__":
    main()
