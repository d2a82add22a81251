"""MetaSchedule tuning for the ``tuned`` setting, spread over a device kind's boards.

Before the tuned units of a study run, for each (model variant, device kind) they share:

1. one board of the kind materialises the variant, imports it into Relax and extracts
   the kernels as tasks (``extract``), resolving the target as it builds (``mcpu =
   "native"`` becomes its CPU);
2. the tuning database already in the store under the same key (variant identity +
   resolved target) is read; if it covers the study's budget it is used as it is
   (a rerun, another study, another board of the kind: no tuning), else only the
   difference is tuned, starting from those records (a resumed search);
3. the tasks are split over the kind's live boards (balanced by estimated work), each
   board tunes its share in a Ray task placed by the kind's resource, measuring with
   the board's thread policy, and returns JSON records;
4. the driver writes them to the store (``table=tuning``) and hands every tuned unit
   the merged records, best per kernel, which its board's build applies.

A failure anywhere (no artifact, extraction, a board's tuning, no valid record at all)
becomes a ``builds`` row with stage ``tune`` for each unit of the group; the study goes
on, and records that did come back are kept for the next run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from typing import Any

import pyarrow as pa
import ray

from deltann import plan, zoo
from deltann.compile import metaschedule as ms_tuning, settings as compile_settings
from deltann.compile.frontends import import_relax
from deltann.compile.pipeline import make_target, resolved_spec, tuning_target_of
from deltann.convert._tools import input_shape
from deltann.convert.chain import ArtifactCache
from deltann.convert.chain_spec import framework_dist, parse_chain
from deltann.core import runtime_registry as registry
from deltann.core.device_catalogue import DeviceKind
from deltann.errors import StoreError
from deltann.fleet.failure import Failure, Stage
from deltann.fleet.placement import alive_boards, placement
from deltann.plan import Unit
from deltann.store import SCHEMAS, Store, tag
from deltann.study import Study
from deltann.zoo import user

log = logging.getLogger("deltann.fleet")

#: The stage of a tuning failure in the ``builds`` table.
STAGE = Stage.TUNE


@ray.remote(num_cpus=0, max_retries=0)
def extract_remote(unit: Unit, cache_dir: str) -> dict[str, Any]:
    """On a board: the variant's artifact, its Relax module, the tuned setting's tasks, and
    the target as this board resolves it (JSON)."""
    import socket

    if unit.user_model:
        user.register_json(unit.user_model)
    spec = zoo.get(unit.model)
    artifact = ArtifactCache(cache_dir).get(unit.model, unit.variant)
    mod = import_relax(unit.frontend, artifact.payload, input_shape(spec.input_shape, artifact.layout))
    target = make_target(unit.target, unit.host)
    tasks = ms_tuning.extract(mod, unit.passes, target)
    return {"tasks": [t.__dict__ for t in tasks], "target": json.dumps(resolved_spec(unit.target, unit.host),
                                                                       sort_keys=True),
            "node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}


@ray.remote(num_cpus=0, max_retries=0)
def tune_remote(tasks: list[dict[str, Any]], target_json: str, trials: int, trials_per_task: int | None,
                previous: str, seconds: float | None = None) -> dict[str, Any]:
    """On a board: tune ``tasks`` (compile.metaschedule.Task fields) for the resolved target with
    ``trials`` candidates, or within ``seconds`` (compile.metaschedule.tune_budgeted) when given,
    starting from ``previous`` records (JSON); JSON records back."""
    import socket

    target = tuning_target_of(target_json)
    start = time.perf_counter()
    task_list = [ms_tuning.Task(**t) for t in tasks]
    if seconds is not None:
        records, report = ms_tuning.tune_budgeted(task_list, target, seconds,
                                                  previous=ms_tuning.records_from_json(previous))
        trials, stopped = report.trials, report.stopped
    else:
        records = ms_tuning.tune(task_list, target, trials, trials_per_task=trials_per_task,
                                 previous=ms_tuning.records_from_json(previous))
        stopped = "trials"
    return {"records": ms_tuning.records_to_json(records), "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": socket.gethostname(), "seconds": time.perf_counter() - start, "trials": trials,
            "stopped": stopped}


def tuning_key(unit: Unit, resolved_target: str) -> str:
    """What a tuning database is valid for: the variant's identity (model, weights,
    source framework and conversion chain with tool versions, frontend, TVM version, the
    passes that shape the kernels) and the target as resolved on the board. Not the
    device kind's name: two kinds with the same target share records."""
    source = parse_chain(unit.variant)[0].framework
    return plan.content_key({
        "model": unit.model, "weights": zoo.get(unit.model).weights_id(),
        "source": [source, plan.dist_version(framework_dist(source))],
        "chain": plan._chain_identity(unit.variant), "frontend": unit.frontend,
        "tvm": plan.dist_version("apache-tvm"), "passes": list(ms_tuning.prefix_passes(unit.passes)),
        "target": json.loads(resolved_target),
    })


def stored_records(store: Store, key: str) -> tuple[list[ms_tuning.Record], int]:
    """The records under ``key`` and the largest budget a completed round reached."""
    import polars as pl

    frame = store.scan("tuning", complete_only=False).filter(pl.col("tuning_key") == key).collect()
    if frame.is_empty():
        return [], 0
    return _records(frame), int(frame["trials_total"].max())


def stored_budget_s(store: Store, key: str) -> float:
    """The largest time budget (s) a completed round under ``key`` reached (0: none)."""
    import polars as pl

    frame = store.scan("tuning", complete_only=False).filter(pl.col("tuning_key") == key).collect()
    if frame.is_empty() or "budget_s" not in frame.columns:
        return 0.0
    return float(frame["budget_s"].fill_null(0.0).max() or 0.0)


def _records(frame: Any) -> list[ms_tuning.Record]:
    """The records of ``table=tuning`` rows."""
    fields = [f.name for f in dataclasses.fields(ms_tuning.Record)]
    return [ms_tuning.Record(**r) for r in frame.select(fields).iter_rows(named=True)]


def records_for_build(store: Store, row: dict[str, Any]) -> str:
    """The records (JSON, as tuned units carry them) that the ``tuned`` build of a
    ``builds`` row used: the tuning rows of its model, variant and device kind, for the
    target it was built for (``deltann localize`` rebuilds it with them)."""
    import polars as pl

    frame = store.scan("tuning", complete_only=False).filter(
        pl.col("model") == row["model"], pl.col("variant") == row["variant"], pl.col("device") == row["device"],
    ).collect()
    keys = sorted(set(frame["tuning_key"]))
    if len(keys) > 1:  # several targets of one kind (boards with other CPUs): the row's own
        def built_for(key: str) -> bool:
            target = json.loads(frame.filter(pl.col("tuning_key") == key)["target"][0])["target"]
            return all(str(v) in row["target"] for k, v in target.items() if k in ("kind", "mcpu", "mtriple"))

        keys = [k for k in keys if built_for(k)]
    if len(keys) != 1:
        raise StoreError(f"{store.root}: {'no' if not keys else 'more than one'} tuning database for "
                         f"{row['config']}@{row['device']} in table=tuning; rerun the study to tune it again")
    records = _records(frame.filter(pl.col("tuning_key") == keys[0]))
    return ms_tuning.records_to_json(ms_tuning.best_only(records))


def _rows(records: list[ms_tuning.Record], *, key: str, unit: Unit, study: str, target: str, board: str,
          hostname: str, round_id: str, trials_total: int, budget_s: float | None = None) -> pa.Table:
    now = dt.datetime.now(dt.UTC)
    rows = [{"tuning_key": key, "study": study, "model": unit.model, "variant": unit.variant, "device": unit.device,
             "target": target, "board": board, "hostname": hostname, "lab": unit.lab, "round": round_id,
             "trials_total": trials_total, "budget_s": budget_s, "task": r.task, "workload_hash": r.workload_hash,
             "workload_json": r.workload_json, "record_json": r.record_json, "run_ms": r.run_ms,
             "finished_at": now} for r in records]
    return tag(pa.Table.from_pylist(rows, schema=SCHEMAS["tuning"]), "tuning", round_id, 0)


@dataclass
class TuningOutcome:
    """What the tuning phase did: units with their records, units failed as ``tune``
    rows, and for tests and logs, trials run and which board tuned which task."""

    units: dict[str, Unit] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    trials_run: int = 0
    reused: int = 0  # groups served from the store without tuning
    tasks_by_board: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def apply(self, units: list[Unit]) -> list[Unit]:
        """``units`` with tuned ones carrying their records, failed ones left out."""
        return [self.units.get(u.key, u) for u in units if u.key not in self.failed]


class TuningFailed(Exception):
    pass


def tune_units(study: Study, units: list[Unit], store: Store, kinds: dict[str, DeviceKind], cache_dir: str,
               write_failure: Callable[[Unit, str, Failure], None],
               platforms: dict[tuple[str, str], str] | None = None) -> TuningOutcome:
    """Tune what the tuned ``units`` need (see the module docstring). ``write_failure(unit,
    board, failure)`` records a unit's ``tune`` failure row. ``platforms``
    ((kind, node id) -> platform key; one node may serve several kinds): only boards of a
    unit's platform tune for it."""
    outcome = TuningOutcome()
    groups: dict[tuple[str, str, str, str], list[Unit]] = defaultdict(list)
    for u in units:
        if registry.get(u.runtime).compiles and compile_settings.is_tuned(u.setting):
            groups[(u.model, u.variant, u.device, u.platform)].append(u)
    for (model, variant, kind_name, platform), group in groups.items():
        boards = [b for b in alive_boards(kinds[kind_name].resource)
                  if not platform or platforms is None or platforms.get((kind_name, b["node_id"])) == platform]
        if not boards:
            continue  # the driver reports the kind's units as pending
        try:
            records = _tune_group(study, group[0], boards, kinds[kind_name], store, cache_dir, outcome)
        except Exception as exc:  # errors are data: the group's units fail as 'tune', the study goes on
            cause = getattr(exc, "cause", None) or exc  # a RayTaskError carries the board's exception
            message = " ".join(str(cause).strip().splitlines()) or type(cause).__name__
            log.warning("tuning %s %s for %s failed: %s", model, variant, kind_name, message[:200])
            failure = Failure.refused(STAGE, type(cause).__name__, message)
            for u in group:
                write_failure(u, boards[0]["node_id"], failure)
                outcome.failed.add(u.key)
            continue
        carried = ms_tuning.records_to_json(ms_tuning.best_only(records))
        for u in group:
            outcome.units[u.key] = dc_replace(u, tuning=carried)
    return outcome


def _tune_group(study: Study, unit: Unit, boards: list[dict[str, Any]], kind: DeviceKind, store: Store,
                cache_dir: str, outcome: TuningOutcome) -> list[ms_tuning.Record]:
    deadline = None if study.tuning.timeout_s is None else time.monotonic() + study.tuning.timeout_s

    def wait(ref: Any) -> Any:
        """``ray.get`` within ``tuning.timeout_s`` of the group's start (a hung board's task
        is cancelled and the group fails as ``tune``)."""
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return ray.get(ref, timeout=left)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            raise TuningFailed(f"tuning {unit.variant} for {unit.device} ran past tuning.timeout_s = "
                               f"{study.tuning.timeout_s} s; raise it or lower tuning.trials") from None

    extracted = wait(extract_remote.options(**placement(kind, boards[0])).remote(unit, cache_dir))
    resolved = extracted["target"]
    key = tuning_key(unit, resolved)
    existing, done = stored_records(store, key)
    wanted = study.tuning.trials
    minutes = study.tuning.minutes
    wanted_s = minutes * 60 if minutes is not None else None
    done_s = stored_budget_s(store, key) if wanted_s is not None else 0.0
    if (wanted_s is None and done >= wanted) or (wanted_s is not None and done_s >= wanted_s):
        outcome.reused += 1
        budget = f"{wanted} trials" if wanted_s is None else f"{minutes:g} minutes"
        log.info("tuning %s: %d records in the store cover %s; not tuning", unit.config, len(existing), budget)
        return existing
    tasks = ms_tuning.select([ms_tuning.Task(**t) for t in extracted["tasks"]], study.tuning.tasks)
    if not tasks:
        raise TuningFailed(f"no {study.tuning.tasks} kernel to tune in {unit.variant}; use tuning.tasks = 'all'")
    extra = wanted - done
    shares = [s for s in ms_tuning.split(tasks, len(boards)) if s]
    # A time budget is board time in all: each board gets its part and they run at once, so
    # the wall time is the budget over the number of boards (the shares are balanced by work).
    share_s = None if wanted_s is None else (wanted_s - done_s) / len(shares)
    calls = []
    for board, share in zip(boards, shares, strict=False):
        names = {t.name for t in share}
        previous = ms_tuning.records_to_json(r for r in existing if r.task in names)
        budget = ms_tuning.share_budget(extra, len(share), len(tasks))
        calls.append((board, share, tune_remote.options(**placement(kind, board)).remote(
            [t.__dict__ for t in share], resolved, budget, study.tuning.trials_per_task, previous, share_s)))
        if share_s is None:
            outcome.trials_run += budget
    errors: list[BaseException] = []
    results = []
    for board, share, ref in calls:
        try:
            results.append((board, share, wait(ref)))
        except Exception as exc:  # noqa: BLE001 - collected: the other boards' records are still kept
            errors.append(exc)
    new: list[ms_tuning.Record] = []
    known = {(r.workload_hash, r.record_json) for r in existing}
    for board, share, result in results:
        # A resumed search returns the previous records still among the best: stored once (all
        # of them again only if nothing new came back, so that the round is on record).
        returned = ms_tuning.records_from_json(result["records"])
        got = [r for r in returned if (r.workload_hash, r.record_json) not in known] or returned
        if share_s is not None:
            outcome.trials_run += int(result.get("trials", 0))
        for t in share:
            outcome.tasks_by_board[result["node_id"]].append(t.name)
        if got:
            # A round completes the budget only if every board's share did (else a rerun tunes again).
            round_id = plan.content_key({"key": key, "trials": wanted, "minutes": minutes,
                                         "board": result["node_id"], "tasks": sorted(t.name for t in share)})
            if wanted_s is None:
                trials_total, budget_s = (done if errors else wanted), None
            else:  # what was tuned so far, and the time budget completed (resumes compare to it)
                trials_total, budget_s = done + int(result.get("trials", 0)), (done_s if errors else wanted_s)
            store.write(_rows(got, key=key, unit=unit, study=study.name, target=resolved, board=result["node_id"],
                              hostname=result["hostname"], round_id=round_id, trials_total=trials_total,
                              budget_s=budget_s))
        new.extend(got)
        log.info("board %s tuned %d tasks of %s in %.0f s (%s)", result["node_id"][:12], len(share), unit.config,
                 result["seconds"], result.get("stopped", "trials"))
    if errors:
        raise errors[0]
    records = existing + new
    if not records:
        budget = f"{extra} trials" if wanted_s is None else f"{minutes:g} minutes"
        raise TuningFailed(f"tuning {unit.variant} for {resolved} measured no valid candidate in {budget}")
    return records


# --- records kept between labs (deltann tuning export/import) ------------------------

#: Schema metadata that marks a file as a deltann tuning export (and its format version).
EXPORT_MARK = b"deltann.tuning_export"
EXPORT_VERSION = b"1"


def export_records(store: Store, out: Any, *, devices: list[str] | None = None, models: list[str] | None = None,
                   best_only: bool = True) -> int:
    """Write the store's tuning records (``table=tuning``) to ``out``, one Parquet file with
    the table's own schema, so another results folder can import them
    (:func:`import_records`) and its studies skip the tuning they cover. ``devices`` /
    ``models`` narrow it to those kinds and models; ``best_only`` keeps the fastest record
    of each kernel per tuning database (what a build applies), else every stored record
    (also what a resumed search starts from). Returns the number of records written; a
    store without tuning records is a :class:`~deltann.errors.StoreError`."""
    from pathlib import Path

    import polars as pl
    import pyarrow.parquet as pq

    if not store.files("tuning"):
        raise StoreError(f"{store.root}: no tuning records (table=tuning); run a study with setting 'tuned' first")
    frame = store.scan("tuning", complete_only=False)
    if devices:
        frame = frame.filter(pl.col("device").is_in(devices))
    if models:
        frame = frame.filter(pl.col("model").is_in(models))
    rows = frame.collect()
    if rows.is_empty():
        raise StoreError(f"{store.root}: no tuning records for device(s) {devices or 'any'} and model(s) "
                         f"{models or 'any'}; see `deltann tuning export --help`")
    if best_only:
        rows = (rows.with_columns(pl.col("trials_total").max().over("tuning_key"))  # the budget the database reached
                .sort("run_ms").unique(subset=["tuning_key", "workload_hash"], keep="first", maintain_order=True))
    rows = rows.sort(["tuning_key", "task", "run_ms"])
    table = rows.to_arrow().select(SCHEMAS["tuning"].names).cast(SCHEMAS["tuning"])
    table = table.replace_schema_metadata({EXPORT_MARK: EXPORT_VERSION})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(out)
    return table.num_rows


def read_export(path: Any) -> pa.Table:
    """A file :func:`export_records` wrote, checked: a clear one-line error names the file
    when it is missing or is not such an export."""
    from pathlib import Path

    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such file; give the file `deltann tuning export` wrote")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise StoreError(f"{path}: not a Parquet file ({type(exc).__name__}); give the file `deltann tuning "
                         "export` wrote") from None
    if (table.schema.metadata or {}).get(EXPORT_MARK) != EXPORT_VERSION:
        raise StoreError(f"{path}: not a deltann tuning export (version {EXPORT_VERSION.decode()}); make it with "
                         "`deltann tuning export RESULTS OUT`")
    missing = [n for n in SCHEMAS["tuning"].names if n not in table.column_names]
    if missing:
        raise StoreError(f"{path}: tuning export lacks column(s) {', '.join(missing)}; export it again with this "
                         "deltann")
    return table.select(SCHEMAS["tuning"].names).cast(SCHEMAS["tuning"])


def import_records(path: Any, store: Store) -> tuple[int, int]:
    """Add the records of an export (:func:`export_records`) to ``store``'s tuning table,
    each with the identity it was tuned for (tuning key: model variant, TVM version,
    passes, the target as resolved on the board), so a study there whose units share a
    key, with a budget the records cover, uses them without tuning (:func:`_tune_group`),
    and one with a larger budget resumes from them. Records already there are skipped;
    nothing is replaced. Returns (records added, records skipped)."""
    import polars as pl

    table = read_export(path)
    incoming = pl.from_arrow(table)
    assert isinstance(incoming, pl.DataFrame)
    known: set[tuple[str, str, str]] = set()
    if store.files("tuning"):
        have = store.scan("tuning", complete_only=False).select("tuning_key", "workload_hash", "record_json").collect()
        known = set(have.iter_rows())
    fresh = incoming.filter(~pl.struct("tuning_key", "workload_hash", "record_json").map_elements(
        lambda r: (r["tuning_key"], r["workload_hash"], r["record_json"]) in known, return_dtype=pl.Boolean))
    added = 0
    for (key, model, device, round_id), group in fresh.group_by(["tuning_key", "model", "device", "round"],
                                                                maintain_order=True):
        # a round of its own: the import never writes over a part the store already has
        new_round = plan.content_key({"imported": round_id, "records": sorted(group["record_json"].to_list())})
        rows = group.with_columns(pl.lit(new_round).alias("round")).to_arrow().cast(SCHEMAS["tuning"])
        store.write(tag(rows, "tuning", new_round, 0))
        added += group.height
    return added, incoming.height - added
