"""Tuning spread over a kind's boards: the same tuning of one model on one board and on
two boards of a real two-node ``ray.cluster_utils.Cluster``; prints each wall time and the
ratio (issue 19's goal: two boards <= 0.6 of one board's wall time).

    .venv/bin/python bench/tuning_fleet.py                                 # tiny_cnn, 64 trials
    .venv/bin/python bench/tuning_fleet.py --model efficientnet_lite0 --trials 512
    .venv/bin/python bench/tuning_fleet.py --model efficientnet_lite0 --minutes 30

The product's path: the study's tuned units (deltann.plan.expand) go through the driver's
tuning phase (deltann.fleet.tuning_driver.tune_units): one board extracts the kernels, the
driver splits them over the kind's live boards (balanced by work), each board tunes its
share in a Ray task placed by the kind's resource, the records land in a fresh results
folder. Each board is a node with ``--cpus`` CPUs (default 1: two boards use this
machine's two cores) and tunes with that many threads, as a board actor does. The wall
time is that of tune_units, extraction included. With ``--trials`` both runs do the same
work (the two boards each half the trials, on their half of the kernels); with
``--minutes`` the budget is board time in all, so two boards get half each: the wall
time halves by construction, and the table shows what each run reached (the tuned
kernels' summed time, from each board's report in the log).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KIND = '[kinds.duo]\nresource = "duo"\ntarget = { kind = "llvm", mcpu = "native" }\nhost = { kind = "llvm" }\n'


def tune_on(boards: int, args: argparse.Namespace, work: Path) -> tuple[float, Any, int]:
    """(wall seconds of the tuning phase, its outcome, records stored) with ``boards`` boards."""
    import ray
    from ray.cluster_utils import Cluster

    from deltann import dataset, zoo
    from deltann.core.device_catalogue import load_catalogue
    from deltann.fleet.tuning_driver import tune_units
    from deltann.plan import expand
    from deltann.store import Store
    from deltann.study import Study

    catalogue = work / "devices.toml"
    catalogue.write_text(KIND)
    kinds = load_catalogue(catalogue)
    budget: dict[str, Any] = {"minutes": args.minutes} if args.minutes else {"trials": args.trials}
    study = Study.model_validate({"name": "tunefleet", "models": [args.model], "variants": [args.variant],
                                  "runtimes": ["tvm"], "settings": ["tuned"], "devices": ["duo"],
                                  "tuning": budget | {"tasks": args.tasks}})
    spec = zoo.get(args.model)
    inputs = {args.model: dataset.preprocess(dataset.load_samples(1), spec.preprocess)}
    units = expand(study, inputs, kinds)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(boards):
            cluster.add_node(num_cpus=args.cpus, resources={"duo": 1.0})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        store = Store(work / f"results-{boards}")
        store.ensure_manifest({"name": study.name})
        failures: list[str] = []
        start = time.perf_counter()
        outcome = tune_units(study, units, store, kinds, str(work / "artifacts"),
                             lambda unit, board, failure: failures.append(f"{failure.error_type}: {failure.message}"))
        wall = time.perf_counter() - start
        if failures:
            raise RuntimeError(f"tuning failed on {boards} board(s): {failures[0]}")
        stored = store.scan("tuning", complete_only=False).collect().height
        return wall, outcome, stored
    finally:
        ray.shutdown()
        cluster.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny_cnn", help="a zoo model whose weights are on this machine")
    parser.add_argument("--variant", default="torch", help="its variant (conversion chain)")
    parser.add_argument("--trials", type=int, default=64, help="trial budget (the same work on 1 and 2 boards)")
    parser.add_argument("--minutes", type=float, default=None, help="time budget in board-minutes instead")
    parser.add_argument("--tasks", default="heavy", choices=("heavy", "all"))
    parser.add_argument("--cpus", type=int, default=1, help="CPUs (and tuning threads) per board")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for noisy in ("tvm", "ray", "deltann.compile.tune"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    walls = {}
    with tempfile.TemporaryDirectory(prefix="deltann-tunefleet-") as tmp:
        for boards in (1, 2):
            work = Path(tmp) / f"b{boards}"
            work.mkdir()
            wall, outcome, stored = tune_on(boards, args, work)
            walls[boards] = wall
            print(f"{boards} board(s): tuning wall {wall:.1f} s, {outcome.trials_run} trials, {stored} records, "
                  f"kernels per board {sorted(len(v) for v in outcome.tasks_by_board.values())}", flush=True)
    budget = f"{args.minutes:g} board-minutes" if args.minutes else f"{args.trials} trials"
    print(f"{args.model} ({budget}, {args.cpus} CPU per board): two boards / one board wall time = "
          f"{walls[2] / walls[1]:.2f} (goal <= 0.6; this machine has {__import__('os').cpu_count()} cores, shared)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
