"""MetaSchedule for the ``tuned`` setting: task extraction, tuning a share of the tasks,
and the database as JSON rows.

Why this shape: tuning is the one build step that costs minutes to hours, so it is done
once per (model variant, resolved target) and its records are kept in the results store
(``table=tuning``, :mod:`deltann.fleet.tuning_driver`), shared by every board of the kind and
reused by reruns. Tasks are independent, so a kind's boards tune disjoint shares of them
and the driver merges the records. Everything that crosses a process or node boundary
is JSON text (TVM's own ``save_json`` of the task's IRModule, MetaSchedule's workload and
tuning-record JSON), never a pickle.

The ``tuned`` setting is ``extended`` with ``MetaScheduleApplyDatabase`` placed right
before ``DefaultSchedule``: a kernel with a record gets its tuned schedule; the
others keep deltann's tuning-free schedule (dlight's ``ApplyDefaultSchedule`` skips
kernels already scheduled). Tasks are extracted from the module after exactly the passes
that precede ``MetaScheduleApplyDatabase`` in the setting, so the kernels tuned are
structurally the kernels the build looks up.

deltann's own schedule of each task is measured after the search and competes with
its candidates as one more record, so a kernel's best record is never slower than what
``extended`` runs (by that measurement) and a small budget cannot make ``tuned``
slower than ``extended``. After, not before: its trace samples nothing, so the
evolutionary search could not mutate it and it would only take a place in the search's
initial population. For the same reason a resumed search starts from the previous
records that MetaSchedule sampled; fixed ones like it are kept and compete again at
the end.

Candidates are built and timed in the tuning process (``_in_process``), not in worker
processes, and only the CPU tensor intrinsics are loaded (``_cpu_intrinsics_only``):
each saves a fixed cost of every tuning call that would dwarf a small budget on a
small board.

Which tasks are tuned (``tasks``): ``heavy`` (the default) only kernels with a
convolution or matmul (``conv2d``, ``matmul``, ``dense`` in the fused kernel's name),
which hold nearly all of a CNN's time; ``all`` every kernel.

One file because extraction, tuning, the record format and the database a build applies
must agree on one workload identity.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from deltann.compile.catalogue import make_pass
from deltann.compile.schedules import lanes_for, schedule_func
from deltann.compile.settings import APPLY_DATABASE
from deltann.core.runner import thread_count
from deltann.core.targets import is_cpu

log = logging.getLogger("deltann.compile")

#: The pass that applies the database (settings.APPLY_DATABASE).
APPLY = APPLY_DATABASE

#: Substrings of a fused kernel's name that make it a "heavy" task.
HEAVY = ("conv2d", "matmul", "dense")

#: Tuning records kept per workload: the best few (the best one is what a build applies;
#: the others seed the search when a rerun with more budget resumes).
TOP_K = 4


#: MetaSchedule logs every trace it samples at INFO: its tasks log here, at WARNING.
_QUIET = logging.getLogger("deltann.compile.tune")
_QUIET.setLevel(logging.WARNING)


@dataclass(frozen=True)
class Task:
    """One extracted kernel: its name, how often the model calls it, and its IRModule as
    TVM JSON (what a board needs to tune it)."""

    name: str
    weight: int
    flops: float
    mod_json: str

    @property
    def heavy(self) -> bool:
        return any(h in self.name for h in HEAVY)


def prefix_passes(passes: tuple[str, ...]) -> tuple[str, ...]:
    """The passes of a setting that run before the database is applied."""
    if APPLY not in passes:
        raise ValueError(f"setting has no {APPLY} pass: nothing to tune")
    return passes[: passes.index(APPLY)]


def tuning_target(target: Any, threads: int) -> Any:
    """``target`` with ``num-cores`` (MetaSchedule's parallel rules need it) = the board's
    thread count (core.runner.thread_count)."""
    import tvm

    spec = dict(target.export())
    host = spec.pop("host", None)
    if is_cpu(target):
        spec["num-cores"] = threads
    return tvm.target.Target(spec, host=host) if host else tvm.target.Target(spec)


def prepare(mod: Any, passes: tuple[str, ...], target: Any) -> Any:
    """The module as the build has it when ``MetaScheduleApplyDatabase`` runs: TVM's
    library dispatch, then the setting's passes before it (see pipeline.build)."""
    import tvm
    from tvm import relax

    dispatch = relax.pipeline.library_dispatch_passes(target)
    seq = tvm.transform.Sequential(dispatch + [make_pass(p) for p in prefix_passes(passes)])
    with target:
        return seq(mod)


def extract(mod: Any, passes: tuple[str, ...], target: Any) -> list[Task]:
    """The kernels of ``mod`` as tuning tasks, heaviest (flops x calls) first."""
    import tvm
    from tvm.s_tir import analysis as s_tir_analysis
    from tvm.s_tir import meta_schedule as ms

    prepared = prepare(mod, passes, target)
    tasks = []
    for t in ms.relax_integration.extract_tasks(prepared, target):
        func_mod = t.dispatched[0]
        try:
            flops = float(s_tir_analysis.estimate_tir_flops(func_mod))
        except Exception:  # noqa: BLE001 - flops only order the tasks; unknown counts as 0
            flops = 0.0
        tasks.append(Task(str(t.task_name), int(t.weight), flops, tvm.ir.save_json(func_mod)))
    return sorted(tasks, key=lambda t: (-t.flops * t.weight, t.name))


def select(tasks: list[Task], which: str) -> list[Task]:
    """The tasks a study tunes: ``heavy`` or ``all`` (see the module docstring)."""
    if which == "all":
        return list(tasks)
    if which == "heavy":
        return [t for t in tasks if t.heavy]
    raise ValueError(f"unknown task selection {which!r}; allowed: heavy, all")


def split(tasks: list[Task], boards: int) -> list[list[Task]]:
    """Tasks over ``boards`` shares, balanced by estimated work (flops x calls, greedy
    largest first), each share in the order given."""
    shares: list[list[Task]] = [[] for _ in range(max(1, boards))]
    loads = [0.0] * len(shares)
    for task in tasks:  # heaviest first (extract's order)
        i = min(range(len(shares)), key=lambda j: (loads[j], len(shares[j]), j))
        shares[i].append(task)
        loads[i] += max(task.flops, 1.0) * task.weight
    return shares


def share_budget(total: int, share: int, tasks: int) -> int:
    """A share's part of a global trial budget, proportional to its task count (at least
    one trial per task of the share)."""
    if tasks == 0 or share == 0:
        return 0
    return max(share, round(total * share / tasks))


@dataclass(frozen=True)
class Record:
    """One tuning record as the store keeps it: MetaSchedule's JSON, never a pickle."""

    task: str
    workload_hash: str
    workload_json: str  # Workload.as_json(): [structural hash, IRModule JSON]
    record_json: str  # TuningRecord.as_json(): [trace, run_secs, target, args_info]
    run_ms: float  # mean measured time of the candidate


def workload_hash(mod: Any) -> str:
    """MetaSchedule's structural hash of a kernel's IRModule (how its database finds it)."""
    from tvm.s_tir import meta_schedule as ms

    return str(ms.database.Workload(mod).as_json()[0])


def records_to_database(records: Iterable[Record]) -> Any:
    """A MetaSchedule in-memory database holding ``records``."""
    from tvm.s_tir import meta_schedule as ms

    return _commit(ms.database.MemoryDatabase(), records)


def _commit(db: Any, records: Iterable[Record]) -> Any:
    from tvm.s_tir import meta_schedule as ms

    workloads: dict[str, Any] = {}
    for rec in records:
        wl = workloads.get(rec.workload_hash)
        if wl is None:
            wl = db.commit_workload(ms.database.Workload.from_json(json.loads(rec.workload_json)).mod)
            workloads[rec.workload_hash] = wl
        db.commit_tuning_record(ms.database.TuningRecord.from_json(json.loads(rec.record_json), wl))
    return db


def database_to_records(db: Any, names: dict[str, str], top_k: int = TOP_K) -> list[Record]:
    """The best ``top_k`` records of each workload of ``db`` with a valid measurement.
    ``names`` maps a workload's structural hash to its task name."""
    out = []
    seen: dict[str, Any] = {}
    for rec in db.get_all_tuning_records():
        seen.setdefault(workload_hash(rec.workload.mod), rec.workload)
    for whash, wl in seen.items():
        wl_json = json.dumps(wl.as_json())
        for rec in db.get_top_k(wl, top_k):
            secs = [float(s) for s in (rec.run_secs or [])]
            if not secs:
                continue
            out.append(Record(names.get(whash, ""), whash, wl_json, json.dumps(rec.as_json()),
                              1e3 * sum(secs) / len(secs)))
    return out


def _in_process() -> tuple[Any, Any]:
    """A MetaSchedule builder and runner that compile and time candidates in this
    process. Why not ``LocalBuilder``/``LocalRunner``: they start worker processes that
    import TVM (its builder a fresh pool per round) and link every candidate with the
    system compiler, ~30 s of fixed cost per tuning call on a 2-core board, more than
    measuring a few dozen candidates. The cost: a candidate that crashed would take the
    tuning process with it; MetaSchedule's postprocessors verify every llvm candidate
    before it is built, and on a board the process is the tuning task, whose death is a
    ``tune`` failure row (deltann.fleet.tuning_driver)."""
    import itertools

    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, PyRunner
    from tvm.s_tir.meta_schedule.runner.local_runner import (
        LocalRunnerFuture,
        default_alloc_argument,
        default_run_evaluator,
    )
    from tvm.ir.utils import derived_object

    built: dict[str, Any] = {}
    counter = itertools.count()

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs: list[Any]) -> list[Any]:
            results = []
            for inp in build_inputs:
                try:
                    token = f"in-process:{next(counter)}"
                    built[token] = default_build(inp.mod, inp.target, None)
                    results.append(BuilderResult(token, None))
                except Exception as exc:  # noqa: BLE001 - a failed candidate is a result, as in LocalBuilder
                    results.append(BuilderResult(None, f"{type(exc).__name__}: {exc}"))
            return results

    config = EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20, enable_cpu_cache_flush=False)

    @derived_object
    class InProcessRunner(PyRunner):
        def run(self, runner_inputs: list[Any]) -> list[Any]:
            import tvm

            futures = []
            for inp in runner_inputs:
                rt_mod = built.pop(str(inp.artifact_path), None)
                try:
                    if rt_mod is None:
                        raise RuntimeError(f"no built candidate {inp.artifact_path}")
                    device = tvm.runtime.device(str(inp.device_type), 0)
                    args = default_alloc_argument(device, [a.as_json() for a in inp.args_info], 1)
                    costs = default_run_evaluator(rt_mod, device, config, args)
                    futures.append(LocalRunnerFuture(res=costs, error_message=None))
                except Exception as exc:  # noqa: BLE001 - a failed candidate is a result, as in LocalRunner
                    futures.append(LocalRunnerFuture(res=None, error_message=f"{type(exc).__name__}: {exc}"))
            return futures

    return InProcessBuilder(), InProcessRunner()


def _cpu_intrinsics_only(target: Any) -> None:
    """Register only the CPU tensor intrinsics (x86, Arm) before MetaSchedule imports the
    whole ``tvm.s_tir.tensor_intrin`` package. Why: that package builds every target's
    intrinsics at import, CUDA's alone ~18 s and ~28 s in all on this machine, paid by
    every tuning process (a Ray worker per board), while an llvm target's schedule rules
    use only the CPU ones. The package module is stood in by an empty one with the real
    path, so its submodules import as usual; other targets get the full import."""
    import importlib
    import importlib.util
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules or not is_cpu(target):
        return
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return
    package = types.ModuleType(name, "CPU tensor intrinsics only (deltann.compile.metaschedule)")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules[name] = package
    for sub in ("x86", "arm_cpu"):
        setattr(package, sub, importlib.import_module(f"{name}.{sub}"))


def _sampled(record: Record) -> bool:
    """Whether MetaSchedule sampled this record's schedule (its trace draws tile sizes or
    other decisions) rather than it being a fixed one such as deltann's default."""
    return '"Sample' in record.record_json


def _add_default_schedule(db: Any, contexts: list[Any], target: Any, builder: Any, runner: Any) -> int:
    """Measure deltann's tuning-free schedule (compile.schedules) of every task and commit
    it to ``db`` as an ordinary tuning record. Why: with a budget of a few trials per
    kernel MetaSchedule's best candidate is often slower than that schedule (measured on
    MobileNetV2: 256 trials for 31 kernels gave 12.5 ms against extended's 7.5 ms), and a
    kernel whose record is slower would make ``tuned`` slower than ``extended``. With it,
    the best record of each kernel is the faster of the two by the same measurement.
    Called after the search (module docstring). Returns how many kernels got one."""
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.database import TuningRecord
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    # what MetaSchedule's own runner inputs name: the device ("cpu"), not the target kind
    device_type = str(tvm.runtime.device(target.get_target_device_type(), 0)).partition(":")[0]
    added = 0
    for ctx in contexts:
        func = ctx.mod["main"]
        sch = schedule_func(func, lanes_for(target))
        if sch is None:
            continue
        (built,) = builder.build([BuilderInput(sch.mod, target)])
        if built.error_msg:
            log.debug("default schedule of %s did not build: %s", ctx.task_name, built.error_msg)
            continue
        args_info = ArgInfo.from_prim_func(func)
        (future,) = runner.run([RunnerInput(built.artifact_path, device_type, args_info)])
        result = future.result()
        if result.error_msg or not result.run_secs:
            log.debug("default schedule of %s did not run: %s", ctx.task_name, result.error_msg)
            continue
        workload = db.commit_workload(ctx.mod)
        db.commit_tuning_record(TuningRecord(sch.trace, workload, result.run_secs, target, args_info))
        added += 1
    return added


def tune(tasks: list[Task], target: Any, trials: int, *, trials_per_task: int | None = None,
         previous: Iterable[Record] = (), threads: int | None = None, seed: int = 0,
         default_schedule: bool = True) -> list[Record]:
    """Tune ``tasks`` for ``target`` with ``trials`` measured candidates in all, starting
    from ``previous`` records (a resumed search starts from the best of them). Measures
    with the board's thread policy: the runner's worker processes inherit
    ``TVM_NUM_THREADS`` (core.runner.thread_env), builders and search threads are
    limited to ``threads`` (default: core.runner.thread_count). With ``default_schedule``
    deltann's own schedule of each task is measured after the search and competes as a
    record (:func:`_add_default_schedule`). Returns the best
    records of every task tuned (``previous`` ones included where still the best)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    threads = threads or thread_count()
    target = tuning_target(target, threads)
    if not tasks or trials <= 0:
        return []
    _cpu_intrinsics_only(target)
    previous = list(previous)
    db = records_to_database(r for r in previous if _sampled(r))  # what the search starts from
    # The evolutionary search's population scales with the trials each task gets: its
    # default (512, 4 generations) costs ~10 s of search per round on 2 cores, more than
    # measuring a handful of candidates does.
    per_task = max(1, trials // len(tasks))
    population = min(512, max(32, 16 * per_task))
    contexts, weights, names = [], [], {}
    for i, task in enumerate(tasks):
        func_mod = tvm.ir.load_json(task.mod_json)
        contexts.append(ms.TuneContext(
            mod=func_mod, target=target, space_generator="post-order-apply",
            search_strategy=ms.search_strategy.EvolutionarySearch(
                population_size=population, init_min_unmeasured=min(50, population // 2),
                genetic_num_iters=4 if population >= 256 else 2),
            task_name=task.name, rand_state=seed + i, num_threads=threads,
            logger=_QUIET,
        ).clone())
        weights.append(float(task.weight))
        names[workload_hash(contexts[-1].mod)] = task.name  # as the context normalised it
    builder, runner = _in_process()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deltann-tune-") as work_dir:
        ms.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=work_dir, max_trials_global=trials,
            max_trials_per_task=trials_per_task, num_trials_per_iter=min(64, per_task),
            builder=builder, runner=runner, database=db,
            # the default callbacks minus RemoveBuildArtifact: in-process candidates have no files
            measure_callbacks=[ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel()], cost_model="xgb", task_scheduler="gradient",
        )
    _commit(db, (r for r in previous if not _sampled(r)))
    if default_schedule:
        _add_default_schedule(db, contexts, target, builder, runner)
    log.info("tuned %d tasks, %d trials, in %.1f s", len(tasks), trials, time.perf_counter() - start)
    wanted = set(names)
    return [r for r in database_to_records(db, names) if r.workload_hash in wanted]


@dataclass
class TaskProgress:
    """How a budgeted search went for one kernel (:func:`tune_budgeted`)."""

    name: str
    weight: int
    start_ms: float  # the best before the search: deltann's own schedule, or a previous record
    best_ms: float
    trials: int = 0
    rounds: int = 0
    stale: int = 0  # rounds in a row that gained less than min_gain
    converged: bool = False

    @property
    def share_ms(self) -> float:
        """The kernel's part of the model's time now: its best time x its calls."""
        return self.best_ms * self.weight


@dataclass
class BudgetReport:
    """What :func:`tune_budgeted` did: per kernel progress, trials and seconds spent, and
    why it stopped (``converged``: every kernel stopped improving; ``budget``: time ran
    out first)."""

    tasks: list[TaskProgress]
    trials: int
    seconds: float
    stopped: str

    def estimate_ms(self, start: bool = False) -> float:
        """The tuned kernels' summed time per call of the model (their best, or at the start)."""
        return sum((t.start_ms if start else t.best_ms) * t.weight for t in self.tasks)


#: Trials of one round of a budgeted search (one kernel, one MetaSchedule call): enough for
#: its evolutionary search to produce a generation, small enough to re-rank often.
ROUND_TRIALS = 32

#: A kernel stops after PATIENCE rounds in a row that each made it less than MIN_GAIN faster.
PATIENCE = 2
MIN_GAIN = 0.01


def _best_ms(db: Any, ctx: Any) -> float | None:
    """The fastest measured record of ``ctx``'s kernel in ``db`` (ms), or None."""
    if not db.has_workload(ctx.mod):
        return None
    top = db.get_top_k(db.commit_workload(ctx.mod), 1)
    secs = [float(v) for v in (top[0].run_secs or [])] if top else []
    return 1e3 * sum(secs) / len(secs) if secs else None


def tune_budgeted(tasks: list[Task], target: Any, seconds: float, *, previous: Iterable[Record] = (),
                  threads: int | None = None, seed: int = 0, round_trials: int = ROUND_TRIALS,
                  patience: int = PATIENCE, min_gain: float = MIN_GAIN,
                  max_trials: int | None = None) -> tuple[list[Record], BudgetReport]:
    """Tune ``tasks`` for ``target`` within ``seconds`` of wall time, spending trials where
    the measured time is. Why not MetaSchedule's own loop: it takes a trial count, not a
    time; it shares trials by gradient from the first round on, estimated, and keeps
    searching a kernel that stopped improving. Here:

    1. deltann's own schedule of every kernel is measured first (it competes as a record,
       as in :func:`tune`), so each kernel's share of the model's time is known from the
       start: its best measured time x its calls, previous records included;
    2. rounds of ``round_trials`` go to the kernel with the largest share now (re-ranked
       after every round: a kernel that got faster gives way);
    3. a kernel stops when ``patience`` rounds in a row each gained less than
       ``min_gain`` (a fraction of its time); the search stops when every kernel has
       stopped, when the time left is less than the slowest round so far, or after
       ``max_trials`` in all.

    Each kernel keeps its cost model across its rounds, and every round starts from the
    database's best records, so a round resumes the search rather than starting over.
    Returns the best records of every task (``previous`` ones where still the best) and
    a :class:`BudgetReport`."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    start = time.perf_counter()
    threads = threads or thread_count()
    target = tuning_target(target, threads)
    if not tasks or seconds <= 0:
        return [], BudgetReport([], 0, 0.0, "budget")
    _cpu_intrinsics_only(target)
    previous = list(previous)
    db = records_to_database(previous)
    population = min(512, max(32, 16 * round_trials))
    contexts, names = [], {}
    for i, task in enumerate(tasks):
        contexts.append(ms.TuneContext(
            mod=tvm.ir.load_json(task.mod_json), target=target, space_generator="post-order-apply",
            search_strategy=ms.search_strategy.EvolutionarySearch(
                population_size=population, init_min_unmeasured=min(50, population // 2), genetic_num_iters=2),
            task_name=task.name, rand_state=seed + i, num_threads=threads, logger=_QUIET,
        ).clone())
        names[workload_hash(contexts[-1].mod)] = task.name
    builder, runner = _in_process()
    have_default = {workload_hash(ctx.mod) for ctx in contexts if _best_ms(db, ctx) is not None
                    and any(not _sampled(r) for r in previous if r.workload_hash == workload_hash(ctx.mod))}
    _add_default_schedule(db, [c for c in contexts if workload_hash(c.mod) not in have_default], target, builder,
                          runner)
    progress = []
    for task, ctx in zip(tasks, contexts, strict=True):
        best = _best_ms(db, ctx)
        progress.append(TaskProgress(task.name, task.weight, best if best is not None else float("inf"),
                                     best if best is not None else float("inf")))
    models = [ms.cost_model.CostModel.create("xgb", num_tuning_cores=threads) for _ in contexts]
    trials, slowest, stopped = 0, 0.0, "converged"
    with tempfile.TemporaryDirectory(prefix="deltann-tune-") as work_dir:
        while True:
            active = [k for k, p in enumerate(progress) if not p.converged]
            if not active:
                break
            left = seconds - (time.perf_counter() - start)
            if left <= 0 or left < slowest or (max_trials is not None and trials >= max_trials):
                stopped = "budget"
                break
            # heaviest first; a kernel never measured (its default did not build) goes first
            k = max(active, key=lambda j: (progress[j].share_ms, -j))
            p, ctx = progress[k], contexts[k]
            n = round_trials if max_trials is None else min(round_trials, max_trials - trials)
            t0 = time.perf_counter()
            ms.tune_tasks(tasks=[ctx.clone()], task_weights=[1.0], work_dir=work_dir, max_trials_global=n,
                          num_trials_per_iter=n, builder=builder, runner=runner, database=db,
                          measure_callbacks=[ms.measure_callback.AddToDatabase(),
                                             ms.measure_callback.UpdateCostModel()],
                          cost_model=models[k], task_scheduler="round-robin")
            slowest = max(slowest, time.perf_counter() - t0)
            trials += n
            best = _best_ms(db, ctx)
            gain = 0.0 if best is None or p.best_ms in (0.0, float("inf")) else (p.best_ms - best) / p.best_ms
            if best is not None and best < p.best_ms:
                p.best_ms = best
            p.trials += n
            p.rounds += 1
            p.stale = p.stale + 1 if gain < min_gain else 0
            p.converged = p.stale >= patience
            log.info("round %d: %s %.3f ms (%+.1f%%), %d trials, %.0f s left", p.rounds, p.name, p.best_ms,
                     -100 * gain, p.trials, seconds - (time.perf_counter() - start))
    report = BudgetReport(progress, trials, time.perf_counter() - start, stopped)
    log.info("budgeted tuning: %d tasks, %d trials in %.0f s (%s); tuned kernels %.2f -> %.2f ms", len(tasks),
             trials, report.seconds, stopped, report.estimate_ms(start=True), report.estimate_ms())
    wanted = set(names)
    return [r for r in database_to_records(db, names) if r.workload_hash in wanted], report


def merge_records(*searches: Iterable[Record], top_k: int = TOP_K) -> list[Record]:
    """The records of several searches of the same kernels (runs resumed, other seeds,
    other boards, another lab's export) as one set: each record once, the ``top_k``
    fastest of each kernel. What was done by hand to reach 0.98x onnxruntime on
    MobileNetV2 (issue 19): no search alone found every kernel's best."""
    seen: dict[tuple[str, str], Record] = {}
    for records in searches:
        for rec in records:
            key = (rec.workload_hash, rec.record_json)
            if key not in seen or rec.run_ms < seen[key].run_ms:
                seen[key] = rec
    by_kernel: dict[str, list[Record]] = {}
    for rec in seen.values():
        by_kernel.setdefault(rec.workload_hash, []).append(rec)
    return [r for recs in by_kernel.values() for r in sorted(recs, key=lambda r: r.run_ms)[:top_k]]


def records_to_json(records: Iterable[Record]) -> str:
    """A database as one JSON document (what a tuned unit carries to its board)."""
    return json.dumps([asdict(r) for r in records])


def records_from_json(text: str) -> list[Record]:
    return [Record(**r) for r in json.loads(text)] if text else []


def database_from_json(text: str) -> Any:
    """The database a build applies, from the records JSON a tuned unit carries (None
    for "": an untuned build). A kernel whose best record is deltann's own schedule
    (:func:`_add_default_schedule`) gets no record: ``DefaultSchedule``, which follows
    the database in the setting, schedules it with the rule of the build, so records
    kept from before that rule changed cannot pin its older version."""
    if not text:
        return None
    return records_to_database(r for r in best_only(records_from_json(text)) if _sampled(r))


def best_only(records: Iterable[Record]) -> list[Record]:
    """The fastest record of each workload (all a build needs)."""
    best: dict[str, Record] = {}
    for rec in records:
        if rec.workload_hash not in best or rec.run_ms < best[rec.workload_hash].run_ms:
            best[rec.workload_hash] = rec
    return list(best.values())
