"""How steady is this machine? The A/A noise floor a study can reach here, measured without
deltann's timing path (issue 13, item 7: ``noise_pct`` <= 3 % "on a quiet machine").

    .venv/bin/python bench/steadiness.py [--onnx MODEL.onnx] [--seconds 60] [--pairs 10]

With nothing else running, three workloads take turns in short windows (``--window`` s,
each as many calls as fit) for ``--seconds``:

- ``ort xN``: a bare ``onnxruntime.InferenceSession`` on the model with every logical
  core (the boards' thread policy);
- ``ort x1``: the same session options with one thread;
- ``python``: a fixed pure-Python loop (one core, no library, no memory traffic).

Per workload it prints the windows' median call time (ms): p10, p50, p90, p90/p10 and
the share of windows over 1.3x the fast state (the windows' 20th percentile); the
share of CPU time the hypervisor reports stolen (``/proc/stat``) and the load average.
Then the A/A a study would see: a configuration's block ``2k`` against its block
``2k + 1`` is two measurements one round of the session apart (``--round`` s; the
quickstart's 8 configurations x ~0.3 s), so pairs of windows that far apart are drawn,
``--pairs`` at a time (the default protocol's 20 blocks give 10), and the median of
their log ratios taken as the study's A/A estimate is; over 2,000 draws it prints the
estimate's median size and its 90th percentile. A machine where that is over 3 % cannot
give the quickstart's A/A floor, whatever the harness does with the samples.

The model defaults to EfficientNet-Lite0 exported from torch (deltann's zoo only makes
the file: nothing of deltann's build, runtime or timing code runs here).
"""

from __future__ import annotations

import argparse
import os
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


def cpu_times() -> np.ndarray:
    """The machine's cumulative CPU times (user nice system idle iowait irq softirq steal ...)."""
    with open("/proc/stat") as f:
        return np.array([int(v) for v in f.readline().split()[1:]])


def windows(calls: dict[str, Callable[[], object]], seconds: float, window: float) -> tuple[dict[str, np.ndarray], float]:
    """Each workload's median call time (s) per window, the workloads taking turns; and the
    share of CPU time stolen over the whole run."""
    for call in calls.values():  # warm
        for _ in range(5):
            call()
    out: dict[str, list[float]] = {name: [] for name in calls}
    start = cpu_times()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for name, call in calls.items():
            times = []
            t_end = time.perf_counter() + window
            while time.perf_counter() < t_end:
                t = time.perf_counter()
                call()
                times.append(time.perf_counter() - t)
            out[name].append(float(np.median(times)))
    delta = cpu_times() - start
    stolen = float(delta[7] / delta.sum()) if delta.size > 7 and delta.sum() else float("nan")
    return {name: np.asarray(v) for name, v in out.items()}, stolen


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
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        onnx = args.onnx or default_model(Path(tmp))
        cores = os.cpu_count() or 1
        calls = {f"ort x{cores}": ort_call(onnx, cores), "ort x1": ort_call(onnx, 1), "python": python_loop}
        load_before = os.getloadavg()[0]
        series, stolen = windows(calls, args.seconds, args.window)
    turn = args.window * len(calls)  # seconds between a workload's windows
    gap = max(1, round(args.round / turn))
    rng = np.random.default_rng(0)
    print(f"{onnx.name}: {len(next(iter(series.values())))} windows of {args.window} s per workload in "
          f"{args.seconds:.0f} s; load {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"CPU time stolen {stolen * 100:.1f} %")
    print(f"{'workload':<10} {'p10 ms':>8} {'p50 ms':>8} {'p90 ms':>8} {'p90/p10':>8} {'slow':>6}"
          f" {'A/A med':>8} {'A/A p90':>8}")
    for name, s in series.items():
        p10, p20, p50, p90 = np.percentile(s, [10, 20, 50, 90])
        aa = aa_estimates(s, gap, args.pairs, 2000, rng)
        print(f"{name:<10} {p10 * 1e3:>8.2f} {p50 * 1e3:>8.2f} {p90 * 1e3:>8.2f} {p90 / p10:>8.2f}"
              f" {np.mean(s > SLOW * p20) * 100:>5.0f}% {np.median(aa):>7.1f}% {np.percentile(aa, 90):>7.1f}%")
    print(f"A/A: median log ratio of {args.pairs} window pairs {gap * turn:.1f} s apart (a configuration's "
          "blocks 2k and 2k+1), 2,000 draws; the quickstart's goal is <= 3 % for each of its 8 configurations")


if __name__ == "__main__":
    main()
