"""The driver: study -> plan -> board actors -> store.

Starts Ray in-process when no cluster address is given (the embedded default: this
machine is one board of kind ``local``), creates one :class:`~deltann.fleet.actor.Board`
per live board of each kind the study names, spreads the units over them, and writes
every Arrow table as soon as any board yields it."""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltann import dataset, plan, zoo
from deltann.fleet.devices import DeviceKind, load_catalogue
from deltann.store import Store
from deltann.study import Study, load_study

log = logging.getLogger("deltann.fleet")


@dataclass
class RunSummary:
    out: Path
    planned: int = 0
    skipped: int = 0
    ran: int = 0
    failed: int = 0
    pending: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def prepare_inputs(study: Study, root: Path) -> dict[str, dataset.Inputs]:
    """Decode the dataset once and preprocess it with each model's recipe."""
    images = dataset.loader_for(study.dataset.source, root)(study.dataset.limit)
    by_recipe: dict[str, dataset.Inputs] = {}
    out = {}
    for model in study.models:
        recipe = zoo.get(model).preprocess
        if recipe.key() not in by_recipe:
            by_recipe[recipe.key()] = dataset.preprocess(images, recipe)
        out[model] = by_recipe[recipe.key()]
    return out


def _ensure_ray(address: str | None, kinds: dict[str, DeviceKind], wanted: list[str]) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        return
    # Embedded default: this process hosts a one-node cluster that advertises the
    # resources of the kinds the study asks for that run locally (no container).
    local = {kinds[k].resource: 1.0 for k in wanted if not kinds[k].container}
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        resources=local,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )


def alive_boards(resource: str) -> list[str]:
    """Node ids of live Ray nodes that advertise ``resource``."""
    import ray

    return [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(resource, 0) > 0]


def _spread(units: list[plan.Unit], boards: int) -> list[list[plan.Unit]]:
    """Round-robin by (model, variant) group, so each board materialises few artifacts."""
    groups: dict[tuple[str, str], list[plan.Unit]] = defaultdict(list)
    for u in units:
        groups[(u.model, u.variant)].append(u)
    shares: list[list[plan.Unit]] = [[] for _ in range(boards)]
    for i, group in enumerate(groups.values()):
        shares[i % boards].extend(group)
    # Fill empty boards by splitting the largest share.
    for share in shares:
        if not share:
            donor = max(shares, key=len)
            if len(donor) > 1:
                share.extend(donor[len(donor) // 2 :])
                del donor[len(donor) // 2 :]
    return [s for s in shares if s]


def run_study(
    study_path: Path | str,
    out: Path | str | None = None,
    *,
    address: str | None = None,
    progress: bool = True,
) -> RunSummary:
    """Run every unit of the study not already in the store at ``out``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from deltann.fleet.actor import Board

    console = Console(stderr=True, quiet=not progress)
    study_path = Path(study_path)
    t0 = time.perf_counter()
    kinds = load_catalogue()
    study = load_study(study_path, kinds)
    out = Path(out) if out is not None else Path("results") / study.name
    summary = RunSummary(out=out)
    started = dt.datetime.now(dt.UTC).isoformat()

    inputs = prepare_inputs(study, study_path.parent)
    summary.seconds["inputs"] = time.perf_counter() - t0
    t = time.perf_counter()
    units = plan.expand(study, inputs, kinds)
    store = Store(out)
    done = store.completed_keys()
    todo = [u for u in units if u.key not in done]
    summary.planned, summary.skipped = len(units), len(units) - len(todo)
    summary.seconds["plan"] = time.perf_counter() - t
    if not todo:
        console.print(f"[green]nothing to do[/]: all {len(units)} units of {study.name!r} are already in {out}")
        store.write_manifest(study.model_dump(), {"started": started, "planned": len(units), "ran": 0,
                                                  "skipped": summary.skipped})
        return summary

    t = time.perf_counter()
    _ensure_ray(address, kinds, sorted({u.device for u in todo}))
    by_kind: dict[str, list[plan.Unit]] = defaultdict(list)
    for u in todo:
        by_kind[u.device].append(u)
    streams: list[Any] = []
    cache_dir = str((out / "artifacts").resolve())
    for kind_name, kind_units in by_kind.items():
        kind = kinds[kind_name]
        boards = alive_boards(kind.resource)
        if not boards:
            summary.pending.extend(u.key for u in kind_units)
            console.print(f"[yellow]{len(kind_units)} units pending[/]: no live board of kind {kind_name!r} "
                          f"(Ray resource {kind.resource!r})")
            continue
        for node_id, share in zip(boards, _spread(kind_units, len(boards)), strict=False):
            actor = Board.options(
                resources={kind.resource: 0.01},
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote(kind_name, cache_dir, study.name)
            streams.append(actor.run.options(num_returns="streaming").remote(share, inputs))
    summary.seconds["start"] = time.perf_counter() - t

    t = time.perf_counter()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"{study.name}: {len(todo) - len(summary.pending)} units", total=len(todo) - len(summary.pending))
        active = list(streams)
        while active:
            ready, _ = ray.wait(active, num_returns=1, timeout=None)
            for gen in ready:
                try:
                    ref = next(gen)
                except StopIteration:
                    active.remove(gen)
                    continue
                table = ray.get(ref)
                store.write(table)
                meta = table.schema.metadata
                if meta[b"deltann.table"] == b"builds":
                    row = table.to_pylist()[0]
                    summary.ran += 1
                    if row["status"] != "ok":
                        summary.failed += 1
                        console.print(f"[red]failed[/] {escape(row['config'])} on {row['device']}: {row['stage']}: "
                                      f"{row['error_type']}: {escape(row['message'][:200])}")
                    bar.update(task, advance=1, description=escape(f"{study.name}: {row['config']}"))
    summary.seconds["run"] = time.perf_counter() - t
    store.write_manifest(study.model_dump(), {
        "started": started, "finished": dt.datetime.now(dt.UTC).isoformat(), "planned": len(units),
        "ran": summary.ran, "failed": summary.failed, "skipped": summary.skipped, "pending": len(summary.pending),
    })
    console.print(f"{summary.ran} units run ({summary.failed} failed), {summary.skipped} already in the store, "
                  f"{len(summary.pending)} pending; results in {out}")
    return summary

