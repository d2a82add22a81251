"""The driver: study -> plan -> board actors -> store.

Starts Ray in-process when no cluster address is given (the embedded default: this
machine is one board of kind ``local``), creates one :class:`~deltann.fleet.actor.Board`
per live board of each kind the study names, feeds the units to them in batches, and
writes every Arrow table as soon as any board yields it. Faults are handled here: a lost
node's unfinished units move to another board of the kind (or stay pending), a dead
actor's unit becomes a ``crash`` row, a unit past ``unit_timeout_s`` a ``timeout`` row.

One file because dispatch, fault handling, the tuning hand-off and the run's bookkeeping
share the dispatcher's state (lanes, pending units, the summary); what shares none of it
lives beside it (placement, progress, retry, markers)."""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path
from collections.abc import Callable
from typing import Any

from deltann import dataset, plan, zoo
from deltann.convert.chain_spec import parse_chain
from deltann.core import identity, runtime_registry as registry
from deltann.core.device_catalogue import DeviceKind, load_catalogue
from deltann.core.runner import thread_env
from deltann.errors import DeltannError
from deltann.fleet.execute import TENSORS
from deltann.fleet.failure import Failure, Outcome, Stage
from deltann.fleet.markers import builds_row, is_progress
from deltann.fleet.placement import BOARD_SHARE, alive_boards, probe
from deltann.fleet.progress import Display
from deltann.fleet.retry import to_retry
from deltann.fleet.session import session_row
from deltann.store import SESSION_TABLES, Store, check_out_folder
from deltann.study import Study, load_study
from deltann.zoo.base import Preprocess

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
    #: dataset files not used (unreadable images), with the reason; also in the manifest
    skipped_images: list[dataset.Skipped] = field(default_factory=list)
    #: ``sessions`` rows of the timing sessions this run made, and how many it could not run
    sessions: list[dict[str, Any]] = field(default_factory=list)
    timing_pending: int = 0

    def line(self) -> str:
        """The one line a run ends with (printed even with ``--quiet``)."""
        timing = ""
        if self.sessions or self.timing_pending:
            failed = sum(1 for r in self.sessions if r.get("status") != "ok")
            timing = f"; {len(self.sessions)} timing sessions ({failed} failed, {self.timing_pending} pending)"
        return (f"{self.ran} units run ({self.failed} failed), {self.skipped} already in the store, "
                f"{len(self.pending)} pending{timing}; results in {self.out}")


def prepare_inputs(study: Study, root: Path, skipped: list[dataset.Skipped] | None = None,
                   cache: Path | None = None, crops: Path | None = None) -> dict[str, dataset.InputSet]:
    """The manifest of the dataset under each model's recipe (and each source framework's
    own recipe where its model needs one; see plan.inputs_key): ids, labels and the hash
    of every tensor, made a chunk at a time and not kept (:func:`dataset.input_sets`);
    the boards make the tensors where they use them. ``cache``: where the tensor hashes
    of images seen before are kept; ``crops``: the tensor cache of a board that is this
    machine (embedded), filled on the way. With ``skipped``, unreadable images are listed
    there instead of refused."""
    wanted: dict[str, Preprocess] = {}
    sources = sorted({parse_chain(chain)[0].framework for chain in study.variants})
    for model in study.models:
        spec = zoo.get(model)
        wanted[model] = spec.preprocess
        for s in sources:
            if s in spec.loaders:
                wanted[plan.inputs_key(model, s)] = spec.preprocess_for(s)
    sets = dataset.input_sets(study.dataset.source, root, list(wanted.values()), study.dataset.limit, skipped, cache,
                              dataset.TensorCache(crops) if crops is not None else None)
    return {key: sets[recipe.key()] for key, recipe in wanted.items()}


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


def node_alive(node_id: str, settle_s: float = 3.0) -> bool:
    """Whether ``node_id`` is still a live node. A board's stream can fail a moment before
    the GCS marks its node dead, so a node that looks alive is asked again for
    ``settle_s`` before we conclude the actor (not the node) died."""
    import ray

    deadline = time.monotonic() + settle_s
    while True:
        alive = any(n["NodeID"] == node_id and n.get("Alive") for n in ray.nodes())
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.25)


def replica_key(unit_key: str, node_id: str) -> str:
    """Key of one board's run of a unit when a study has ``replicate = true``: every board
    runs the unit, and each run is resumable on its own."""
    return plan.content_key({"unit": unit_key, "board": node_id})


#: Tables a board may have produced and the driver not yet taken (Ray's
#: ``_generator_backpressure_num_objects``): a board faster than the store pauses at its
#: next ``yield`` instead of filling the object store and the driver's memory.
BACKPRESSURE = 4
#: Images above which a study that times every image (no ``[timing] images``) is told so.
TIME_ALL_IMAGES = 1000
#: Most units one stream carries; fewer when the queue is short, so boards finish together.
MAX_BATCH = 16
#: Streams queued per board. 2 would hide the driver round trip between batches (~10 ms
#: warm), but commits a board to work before the unit estimates exist and measured worse
#: balance (bench/fleet.py: makespan/ideal 1.29 with 2, 1.20 with 1).
DEPTH = 1
#: A unit whose board died under it moves to another board at most this many times.
MAX_MOVES = 3
#: A board whose actor died (its node still alive) gets a new actor at most this often.
MAX_RESTARTS = 3


@dataclass
class Lane:
    """One board: its actor, the stream it is working through and what is left of it."""

    kind: DeviceKind
    node_id: str
    hostname: str
    threads: int = 1  # the board's CPUs: every runtime on it measures with this many threads
    platform: str = ""  # its Platform.key (deltann.core.identity); "" when not resolved
    actor: Any = None
    flights: list[Any] = field(default_factory=list)  # streams sent to the actor, oldest first
    batch: list[plan.Unit] = field(default_factory=list)  # units of those streams not yet complete, in order
    pinned: list[plan.Unit] = field(default_factory=list)  # replicate: units only this board runs
    current: plan.Unit | None = None
    jobs: list[plan.TimingJob] = field(default_factory=list)  # timing sessions meant for this board
    job: plan.TimingJob | None = None  # the timing session in flight
    job_ended: bool = False  # its ``sessions`` row has arrived
    done_images: int = 0  # prediction rows of the units in ``batch`` that have arrived (progress)
    stage: str = ""
    since: float = 0.0
    restarts: int = 0
    dead: bool = False

    @property
    def pool(self) -> str:
        """The units this board may run: its kind's, of its platform (plan.pool)."""
        return plan.pool(self.kind.name, self.platform)


@dataclass
class Group:
    """The units of one model on one device kind (one board, with ``replicate``) that are
    timed together once all of them are complete (see :class:`~deltann.plan.TimingJob`)."""

    units: list[plan.Unit]
    waiting: set[str]  # not complete yet in this run
    ok: set[str]  # complete, status ok: these are timed
    n_images: int  # size of their input batches
    board: str = ""  # replicate: the board that runs and times them
    ran_on: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # board -> units it ran now
    scheduled: bool = False
    #: unit keys of the sessions in the store that timed this group's configurations with
    #: the study's protocol: units made again (a lost part) are not timed again if one holds them
    timed_before: list[frozenset[str]] = field(default_factory=list)


class Dispatcher:
    """Feeds units to board lanes and drains all their streams concurrently.

    Why dynamic batches instead of a fixed share per board: a fast board takes more work,
    and when a board is lost only its current batch has to move."""

    def __init__(self, study: Study, store: Store, inputs_ref: Any, cache_dir: str,
                 on_done: Callable[[dict[str, Any]], None], method: str = "run") -> None:
        self.study, self.store, self.inputs_ref, self.cache_dir = study, store, inputs_ref, cache_dir
        self.on_done = on_done
        #: called with (lane, images) as each predictions table arrives (the progress display)
        self.on_rows: Callable[[Lane, int], None] | None = None
        self.method = method  # the Board method each batch streams from (bench/fleet.py: "replay")
        self.lanes: list[Lane] = []
        self.queues: dict[str, list[plan.Unit]] = defaultdict(list)
        self.moves: dict[str, int] = defaultdict(int)
        self.pending: list[str] = []
        #: seconds per unit seen so far, by configuration (the longest go first)
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.probed: set[str] = set()  # configurations sent once, not yet measured
        self.groups: list[Group] = []
        self.group_of: dict[str, Group] = {}
        self.kind_jobs: dict[str, list[plan.TimingJob]] = defaultdict(list)  # sessions any board of a pool may run
        self.sessions: list[dict[str, Any]] = []  # ``sessions`` rows written in this run
        self.pending_timing: list[plan.TimingJob] = []  # sessions no live board could run

    # --- set-up -------------------------------------------------------------
    def add_lane(self, kind: DeviceKind, board: dict[str, Any], pinned: list[plan.Unit] | None = None) -> Lane:
        lane = Lane(kind, board["node_id"], board["hostname"], threads=board.get("cpus", 1),
                    platform=board.get("platform", ""), pinned=list(pinned or []))
        self._start_actor(lane)
        self.lanes.append(lane)
        return lane

    def _start_actor(self, lane: Lane) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from deltann.fleet.actor import Board  # lazy: loads ray

        # Ray sets OMP_NUM_THREADS=1 in workers that reserve no CPU; a board measures with
        # all of its cores instead, the same count for torch, onnxruntime and TVM, and
        # records it in every timing row (core.runner.thread_count).
        lane.actor = Board.options(
            resources={lane.kind.resource: BOARD_SHARE},
            scheduling_strategy=NodeAffinitySchedulingStrategy(lane.node_id, soft=False),
            runtime_env={"env_vars": thread_env(lane.threads) | registry.worker_env()},
        ).remote(lane.kind, self.cache_dir, self.study.name)

    def add_group(self, group: Group) -> None:
        """Time ``group`` once its waiting units are complete (at once if none is waiting)."""
        self.groups.append(group)
        for u in group.units:
            self.group_of[u.key] = group
        if not group.waiting:
            self._schedule_timing(group)

    def _unit_finished(self, key: str, ok: bool, board: str) -> None:
        group = self.group_of.get(key)
        if group is None or key not in group.waiting:
            return
        group.waiting.discard(key)
        group.ran_on[board] += 1
        if ok:
            group.ok.add(key)
        if not group.waiting:
            self._schedule_timing(group)

    def _schedule_timing(self, group: Group) -> None:
        """A session for the group's ok units, on the board that ran most of them (its
        compiled modules are in that board's cache), else on any board of the kind."""
        units = plan.timed_units(group.units, group.ok)  # configurations whose every shard is ok
        if group.scheduled or not units:
            return
        group.scheduled = True
        if any({u.key for u in units} <= keys for keys in group.timed_before):
            return  # the same configurations, timed under this protocol: only predictions were made again
        job = plan.timing_job(self.study, units, group.n_images, board=group.board)
        kind = plan.pool(units[0].device, units[0].platform)
        lanes = [x for x in self.lanes if x.pool == kind and not x.dead]
        if group.board:
            lanes = [x for x in lanes if x.node_id == group.board]
        elif lanes:
            lanes = [max(lanes, key=lambda x: group.ran_on.get(x.node_id, 0))]
        if lanes:
            lanes[0].jobs.append(job)
            self._feed(lanes[0])
        elif group.board:
            self.pending_timing.append(job)
        else:
            self.kind_jobs[kind].append(job)

    def _feed(self, lane: Lane) -> None:
        """Keep DEPTH batches queued on a lane: a timing session first (its own, then any of
        its kind's), else its pinned units, then its kind's queue, in batches small enough
        (a few per board) that boards finish together."""
        while not lane.dead and len(lane.flights) < DEPTH:
            job = lane.jobs.pop(0) if lane.jobs else (
                self.kind_jobs[lane.pool].pop(0) if self.kind_jobs[lane.pool] else None)
            if job is not None:
                lane.current, lane.job, lane.job_ended = None, job, False
                lane.stage, lane.since = "", time.monotonic()
                lane.flights.append(lane.actor.time.options(
                    num_returns="streaming", _generator_backpressure_num_objects=BACKPRESSURE
                ).remote(job, self.inputs_ref))
                continue
            if lane.pinned:
                batch, lane.pinned = lane.pinned[:MAX_BATCH], lane.pinned[MAX_BATCH:]
            else:
                batch = self._take(lane.pool)
            if not batch:
                return
            if not lane.flights:
                lane.current, lane.stage, lane.since = None, "", time.monotonic()
            lane.batch.extend(batch)
            lane.flights.append(getattr(lane.actor, self.method).options(
                num_returns="streaming", _generator_backpressure_num_objects=BACKPRESSURE
            ).remote(batch, self.inputs_ref))

    def _take(self, kind: str) -> list[plan.Unit]:
        """The next batch of a kind's queue: units of the configuration that has taken
        longest so far (never-seen configurations first, which also measures them).
        Why longest first: list scheduling then ends with short units, so boards finish
        close together (LPT); a study's units differ by 100x (a TVM build vs onnxruntime)."""
        queue = self.queues[kind]
        if not queue:
            return []
        peers = sum(1 for x in self.lanes if x.pool == kind and not x.dead)
        n = max(1, min(MAX_BATCH, len(queue) // (8 * max(1, peers))))
        best = max({u.config for u in queue}, key=lambda c: (self._estimate_config(c), c))
        batch = [u for u in queue if u.config == best][:n]
        self.probed.add(best)
        taken = {u.key for u in batch}
        self.queues[kind] = [u for u in queue if u.key not in taken]
        return batch

    def _estimate_config(self, config: str) -> float:
        """Mean seconds so far; a configuration never sent comes first (to measure it); one
        sent but not yet measured counts as the typical unit."""
        seen = self.seconds.get(config)
        if seen:
            return sum(seen) / len(seen)
        if config not in self.probed:
            return float("inf")
        known = [sum(v) / len(v) for v in self.seconds.values() if v]
        return statistics.median(known) if known else 0.0

    # --- the loop -------------------------------------------------------------
    def run(self) -> None:
        """Until every lane is idle or dead and no live lane can take queued work."""
        import ray

        for lane in self.lanes:
            self._feed(lane)
        while True:
            active = [lane for lane in self.lanes if lane.flights]
            if not active:
                break
            by_stream = {id(lane.flights[0]): lane for lane in active}
            wait_s = None
            limits = {id(lane): self._limit(lane) for lane in active}
            timed = [lane for lane in active if limits[id(lane)] is not None]
            if timed:
                now = time.monotonic()
                wait_s = max(0.05, min(lane.since + limits[id(lane)] - now for lane in timed))
            ready, _ = ray.wait([lane.flights[0] for lane in active], num_returns=1, timeout=wait_s)
            for stream in ready:
                self._step(by_stream[id(stream)])
            now = time.monotonic()
            for lane in timed:
                limit = self._limit(lane)
                if lane.flights and limit is not None and now - lane.since > limit:
                    self._timed_out(lane, now - lane.since)
        for name, queue in self.queues.items():
            self.pending.extend(u.key for u in queue)
            queue.clear()
        for jobs in self.kind_jobs.values():
            self.pending_timing.extend(jobs)
            jobs.clear()
        for lane in self.lanes:
            self.pending_timing.extend(lane.jobs)
            lane.jobs.clear()
        for lane in self.lanes:
            self.pending.extend(u.key for u in lane.pinned)
            lane.pinned.clear()

    def _limit(self, lane: Lane) -> float | None:
        """Seconds the lane's current work may take: ``unit_timeout_s`` for a unit, that
        times the number of configurations for a timing session; None: no limit."""
        timeout_s = self.study.unit_timeout_s
        if timeout_s is None:
            return None
        if lane.job is not None:
            return timeout_s * len(lane.job.units)
        return timeout_s if lane.current is not None else None

    def _step(self, lane: Lane) -> None:
        """Take one table from a ready stream: a marker moves the lane's clock, anything
        else goes to the store as it arrives."""
        import ray
        from ray.exceptions import RayError

        try:
            table = ray.get(next(lane.flights[0]))
        except StopIteration:
            lane.flights.pop(0)
            if lane.job is not None:
                if not lane.job_ended:  # never happens unless a board skipped its session's last row
                    self._session_failed(lane, Failure(Stage.TIME, Outcome.EXCEPTION, "NoResult",
                                                       "the board's stream ended without the session's result"))
                lane.job = None
            if not lane.flights and lane.batch:  # only if a board skipped units; never lose them
                log.warning("board %s ended its streams with %d units unreported", lane.node_id, len(lane.batch))
                self._requeue(lane, lane.batch)
                lane.batch = []
            self._feed(lane)
            return
        except RayError as exc:
            self._lost(lane, exc)
            return
        meta = table.schema.metadata or {}
        key = meta.get(b"deltann.unit", b"").decode()
        if is_progress(table):
            unit = next((u for u in lane.batch if u.key == key), None)
            if unit is not None and (lane.current is None or lane.current.key != key):
                lane.current, lane.since = unit, time.monotonic()
            lane.stage = meta.get(b"deltann.stage", b"").decode()
            return
        self.store.write(table)
        name = meta.get(b"deltann.table")
        if name == b"predictions" and self.on_rows is not None:
            self.on_rows(lane, table.num_rows)
        elif name == b"builds":
            lane.batch = [u for u in lane.batch if u.key != key]
            lane.current, lane.done_images = None, 0
            row = table.to_pylist()[0]
            if row["status"] == "ok":
                self.seconds[row["config"]].append(float(row["total_s"]))
            row["_lane"] = lane
            self.on_done(row)
            self._unit_finished(key, row["status"] == "ok", lane.node_id)
        elif name == b"sessions":
            lane.job_ended = True
            self._session_ended(table.to_pylist()[0])

    def _session_ended(self, row: dict[str, Any]) -> None:
        self.sessions.append(row)
        if row["status"] != "ok":
            log.warning("timing session of %s on %s (board %s) failed: %s: %s", row["model"], row["device"],
                        row["board"][:12], row["outcome"], row["message"][:300])

    def _session_failed(self, lane: Lane, failure: Failure) -> None:
        """The board could not report on its session (crash, timeout): its row, written here."""
        assert lane.job is not None
        table = session_row(lane.job, study=self.study.name, board=lane.node_id, hostname=lane.hostname,
                            failure=failure, seconds=time.monotonic() - lane.since)
        self.store.write(table)
        lane.job_ended = True
        self._session_ended(table.to_pylist()[0])

    # --- faults ---------------------------------------------------------------
    def _requeue(self, lane: Lane, units: list[plan.Unit]) -> None:
        """Units a board will not finish: back to the front of their kind's queue (or
        pending, for a replicate unit pinned to a board that is gone)."""
        movable = []
        for u in units:
            if self.study.replicate:
                if lane.dead:
                    self.pending.append(u.key)
                else:
                    lane.pinned.insert(0, u)
                continue
            self.moves[u.key] += 1
            if self.moves[u.key] > MAX_MOVES:
                self.pending.append(u.key)
            else:
                movable.append(u)
        self.queues[lane.pool][:0] = movable
        for other in self.lanes:
            if other.pool == lane.pool:
                self._feed(other)

    def _retire(self, lane: Lane, why: str) -> None:
        import ray

        lane.dead, lane.flights = True, []
        try:
            ray.kill(lane.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - the actor is already gone with its node
            pass
        log.warning("board %s (%s) retired: %s", lane.node_id[:12], lane.kind.name, why)
        if lane.pinned:
            self.pending.extend(u.key for u in lane.pinned)
            lane.pinned = []
        self._move_jobs(lane, lane.jobs)
        lane.jobs = []

    def _move_jobs(self, lane: Lane, jobs: list[plan.TimingJob]) -> None:
        """Sessions a gone board will not run: to another board of the kind, or pending
        when they were this board's own (``replicate``)."""
        for job in jobs:
            (self.pending_timing if job.board else self.kind_jobs[lane.pool]).append(job)
        for other in self.lanes:
            if other.pool == lane.pool and not other.dead:
                self._feed(other)

    def _lost(self, lane: Lane, exc: Exception) -> None:
        """A stream failed. Node gone: its unfinished units move to other boards of the
        kind. Node alive: the actor died under the current unit, which becomes a
        ``crash`` row; the rest go to a fresh actor on the same board."""
        unfinished, current, stage = lane.batch, lane.current, lane.stage
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        job = lane.job if not lane.job_ended else None
        lane.flights, lane.batch, lane.current, lane.job, lane.done_images = [], [], None, None, 0
        if not node_alive(lane.node_id):
            lane.dead = True
            self._retire(lane, f"node lost ({type(exc).__name__})")
            self._requeue(lane, unfinished)
            if job is not None:  # a session is moved whole: it is timed again from its first block
                self._move_jobs(lane, [plan.renewed(job)])
            return
        if job is not None:
            lane.job = job
            self._session_failed(lane, Failure.crash(Stage.TIME, type(exc).__name__, first_line))
            lane.job = None
        if current is not None:
            self._fail(lane, current, Failure.crash(Stage.of(stage), type(exc).__name__, first_line))
            unfinished = [u for u in unfinished if u.key != current.key]
        if lane.restarts >= MAX_RESTARTS:
            lane.dead = True
            self._retire(lane, f"actor died {lane.restarts + 1} times")
            self._requeue(lane, unfinished)
            return
        lane.restarts += 1
        self._start_actor(lane)
        self._requeue(lane, unfinished)
        self._feed(lane)

    def _timed_out(self, lane: Lane, seconds: float) -> None:
        """The current unit ran past ``unit_timeout_s``: kill the actor (a hang in native
        code cannot be interrupted from inside), record the unit as ``timeout`` and give
        the rest of the batch to a fresh actor on the same board."""
        import ray

        if lane.job is not None:  # a timing session past its limit: a failed session row, the board goes on
            ray.kill(lane.actor, no_restart=True)
            lane.flights = []
            message = (f"still timing ({lane.stage}) after {seconds:.1f} s "
                       f"(unit_timeout_s = {self.study.unit_timeout_s} per configuration)")
            self._session_failed(lane, Failure.timeout(Stage.TIME, message))
            lane.job = None
            self._start_actor(lane)
            self._feed(lane)
            return
        assert lane.current is not None
        current, stage = lane.current, Stage.of(lane.stage)
        unfinished = [u for u in lane.batch if u.key != current.key]
        ray.kill(lane.actor, no_restart=True)
        lane.flights, lane.batch, lane.current, lane.done_images = [], [], None, 0
        self._fail(lane, current, Failure.timeout(stage, f"still in stage {stage.value!r} after {seconds:.1f} s "
                                                         f"(unit_timeout_s = {self.study.unit_timeout_s})"))
        self._start_actor(lane)
        if self.study.replicate:
            lane.pinned[:0] = unfinished
        else:
            self.queues[lane.pool][:0] = unfinished
        self._feed(lane)

    def _fail(self, lane: Lane, unit: plan.Unit, failure: Failure) -> None:
        """The board could not report on ``unit`` (crash, timeout): its row, written here."""
        table = builds_row(unit, failure, study=self.study.name, board=lane.node_id, hostname=lane.hostname,
                           seconds=time.monotonic() - lane.since)
        self.store.write(table)
        self.on_done(table.to_pylist()[0] | {"_lane": lane})
        self._unit_finished(unit.key, False, lane.node_id)


def ingest(streams: list[Any], store: Store) -> int:
    """Drain streams of tagged tables concurrently into ``store``, as the driver does;
    returns the rows written. Used by bench/fleet.py to measure driver ingest alone."""
    import ray

    rows = 0
    active = list(streams)
    while active:
        ready, _ = ray.wait(active, num_returns=1, timeout=None)
        for gen in ready:
            try:
                table = ray.get(next(gen))
            except StopIteration:
                active.remove(gen)
                continue
            store.write(table)
            rows += table.num_rows
    return rows


def unit_status(store: Store) -> dict[str, str]:
    """``status`` (ok | failed) of every unit complete in the store."""
    if not store.files("builds"):
        return {}
    frame = store.scan("builds").select("unit_key", "status").collect()
    return dict(zip(frame["unit_key"].to_list(), frame["status"].to_list(), strict=True))


def timed_sets(store: Store, study: Study) -> list[tuple[frozenset[str], int]]:
    """The unit keys and image count of each session in the store that ended well under
    the study's timing protocol: a group whose ok units are inside one of them, timed on
    as many images, is not timed again."""
    import polars as pl

    if not store.files("sessions"):
        return []
    want = dict(plan.timing_protocol(study))
    frame = store.scan("sessions", complete_only=False).filter(pl.col("status") == "ok").collect()
    out = []
    for row in frame.iter_rows(named=True):
        if all(row.get(k) == v for k, v in want.items()):
            out.append((frozenset(row["unit_keys"]), int(row["images"] or 0)))
    return out


def session_entry(row: dict[str, Any]) -> dict[str, Any]:
    """A session as the manifest's run entry lists it: where, how it ended, how quiet."""
    keys = ("session", "model", "device", "board", "hostname", "status", "outcome", "cores", "load_before",
            "load_after", "others_before", "others_after", "mhz_before", "mhz_after", "seconds")
    return {k: row.get(k) for k in keys}


def board_platforms(kinds: dict[str, DeviceKind], wanted: list[str], embedded: bool
                    ) -> tuple[dict[str, list[identity.Platform]], dict[str, list[dict[str, Any]]]]:
    """The platforms of each wanted kind's live boards (deltann.core.identity), distinct
    and in a stable order, and the boards of each kind with their ``platform`` key.

    Embedded (Ray in-process), a local kind's board is this machine: its platform is
    resolved here and Ray is not started for it (a rerun with nothing to do starts no
    Ray). On a cluster every live board is asked (:func:`~deltann.fleet.placement.probe`); a board that
    cannot answer is left out of the run."""
    import ray

    platforms: dict[str, list[identity.Platform]] = {}
    boards: dict[str, list[dict[str, Any]]] = {}
    for name in wanted:
        kind = kinds[name]
        if embedded:
            if kind.container:
                continue  # no board of a container kind in-process
            mine = identity.local_platform(kind)
            platforms[name] = [mine]
            if ray.is_initialized():
                boards[name] = [b | {"platform": mine.key} for b in alive_boards(kind.resource)]
            continue
        live = alive_boards(kind.resource)
        found = probe(kind, live) if live else {}
        boards[name] = [b | {"platform": found[b["node_id"]].key} for b in live if b["node_id"] in found]
        distinct: dict[str, identity.Platform] = {}
        for b in live:
            if b["node_id"] in found:
                distinct.setdefault(found[b["node_id"]].key, found[b["node_id"]])
        if len(distinct) > 1:
            log.warning("boards of kind %r differ in platform (%s): each runs the units of its own platform",
                        name, "; ".join(f"{p.cpu} {p.target}" for p in distinct.values()))
        platforms[name] = list(distinct.values())
    return platforms, boards


def _failed_rows(store: Store) -> list[dict[str, Any]]:
    import polars as pl

    if not store.files("builds"):
        return []
    return store.scan("builds").filter(pl.col("status") != "ok").collect().to_dicts()


def run_study(
    study_path: Path | str,
    out: Path | str | None = None,
    *,
    address: str | None = None,
    progress: bool = True,
    catalogue: Path | str | None = None,
    lab: str | None = None,
    retry_failed: bool = False,
) -> RunSummary:
    """Run every unit of the study not already in the store at ``out``.

    ``address`` joins a running cluster (``"auto"`` or ``host:port``); without it Ray
    starts in-process. ``catalogue`` overrides cluster/devices.toml (else
    ``DELTANN_DEVICES``). ``lab`` names the lab (else ``DELTANN_LAB``, else this machine;
    see deltann.core.identity). Failed units whose failure was transient are tried again
    (deltann.fleet.retry); ``retry_failed`` tries every failed unit again. Units and timing
    sessions with a bad or missing part are made again."""
    from rich.console import Console

    console = Console(stderr=True, quiet=not progress)
    study_path = Path(study_path)
    t0 = time.perf_counter()
    kinds = load_catalogue(Path(catalogue) if catalogue is not None else None)
    study = load_study(study_path, kinds)
    out = Path(out) if out is not None else Path("results") / study.name
    check_out_folder(out)  # refused before anything is read or written
    store = Store(out)
    store.check_version()
    who = identity.lab(lab)
    summary = RunSummary(out=out)

    # Embedded, the board is this machine: the images made here fill its tensor cache.
    inputs = prepare_inputs(study, study_path.parent, summary.skipped_images, out / "artifacts",
                            out / "artifacts" / TENSORS if address is None else None)
    for s in summary.skipped_images:  # one line each, and recorded in the manifest
        log.warning("dataset file %s skipped: %s", s.file, s.reason)
    summary.seconds["inputs"] = time.perf_counter() - t0
    t = time.perf_counter()
    wanted = sorted(set(study.devices))
    embedded = address is None
    if not embedded:
        _ensure_ray(address, kinds, wanted)
    platforms, boards = board_platforms(kinds, wanted, embedded)
    units = plan.expand(study, inputs, kinds, platforms, who)
    record = store.start_run(study.model_dump(), {
        "lab": who.name, "lab_id": who.id, "address": address or "embedded", "retry_failed": retry_failed,
        "skipped_images": [{"file": s.file, "reason": s.reason} for s in summary.skipped_images],
        "platforms": {k: [p.as_dict() for p in v] for k, v in platforms.items()}})
    entry: dict[str, Any] = {}
    try:
        entry = _run(study, units, inputs, kinds, store, summary, console, who=who, boards=boards,
                     address=address, retry_failed=retry_failed, t=t)
    except KeyboardInterrupt:
        store.finish_run(record, {**entry, "note": "interrupted (Ctrl-C); rerun to finish the missing units"},
                         status="interrupted")
        raise
    except DeltannError as exc:
        try:
            store.finish_run(record, {"note": str(exc)}, status="aborted")
        except DeltannError:  # the disk that refused the rows refuses the record too
            pass
        raise
    store.finish_run(record, entry)
    return summary



def _run(study: Study, units: list[plan.Unit], inputs: dict[str, dataset.InputSet], kinds: dict[str, DeviceKind],
         store: Store, summary: RunSummary, console: Any, *, who: identity.Lab,
         boards: dict[str, list[dict[str, Any]]], address: str | None, retry_failed: bool, t: float) -> dict[str, Any]:
    """The body of :func:`run_study` once the run is on record; returns the run's entry."""
    import ray
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    out = summary.out
    status = unit_status(store)
    done = set(status)
    planned_keys = {u.key for u in units}
    retry = to_retry([r for r in _failed_rows(store) if r["unit_key"] in planned_keys], everything=retry_failed)
    for key in retry:
        status.pop(key, None)
        done.discard(key)
    incomplete = store.incomplete_units() & planned_keys
    # A unit made again replaces its own parts; once its missing part is written again it
    # looks complete, which must not read as another run's finished unit.
    store.replaceable |= set(retry) | incomplete
    todo = [u for u in units if u.key not in done]
    summary.planned, summary.skipped = len(units), len(units) - len(todo)
    timed = timed_sets(store, study)
    n_images = {key: len(batch.ids) for key, batch in inputs.items()}
    entry: dict[str, Any] = {"planned": len(units), "ran": 0, "skipped": summary.skipped}
    if retry:
        entry["retried"] = [{"unit_key": k, **v} for k, v in retry.items()]
        console.print(f"trying again {len(retry)} failed units: "
                      + "; ".join(f"{escape(v['config'])} ({v['why']})" for v in list(retry.values())[:5])
                      + (" …" if len(retry) > 5 else ""))
    if incomplete:
        entry["regenerated"] = sorted(incomplete)
        console.print(f"making again {len(incomplete)} units with a bad or missing part (see the warnings)")

    def group_for(members: list[plan.Unit], board: str = "") -> Group | None:
        """The timing group of ``members`` (one model, one kind), or None when nothing is
        left to run and a session in the store already covers its ok units."""
        waiting = {u.key for u in members if u.key not in done}
        ok = {u.key for u in members if status.get(u.key) == "ok"}
        first = members[0]
        count = n_images[first.inputs or first.model]
        wanted = len(study.timing.timed_indices(count))
        reps = {u.key for u in plan.timed_units(members, ok)}  # one unit per configuration (its first shard)
        if not waiting and (not reps or any(reps <= keys and n == wanted for keys, n in timed)):
            return None
        return Group(members, waiting, ok, count, board=board,
                     timed_before=[keys for keys, n in timed if n == wanted])

    groups = {} if study.replicate else {
        key: g for key, members in plan.timing_groups(units).items() if (g := group_for(members)) is not None}
    summary.seconds["plan"] = time.perf_counter() - t
    most = max(n_images.values(), default=0)
    if groups and study.timing.images is None and most > TIME_ALL_IMAGES:
        console.print(f"[yellow]timing every one of {most:,} images[/] in each timing session (blocks x configurations "
                      "x images calls); set [timing] images = 100 to time an evenly spaced sample")
    if not todo and not groups and not study.replicate:
        console.print(f"[green]nothing to do[/]: all {len(units)} units of {study.name!r} are already in {out}, "
                      "and timed")
        return entry
    # What is made again replaces what was bad: the bad parts go to quarantine/ first.
    moved = store.quarantine(store.bad_parts({u.key for u in todo}, ("predictions", "builds")))
    if groups:
        moved += store.quarantine(store.bad_parts(store.bad_groups(SESSION_TABLES), SESSION_TABLES))
    if moved:
        entry["quarantined"] = [str(p.relative_to(store.root)) for p in moved]

    t = time.perf_counter()
    _ensure_ray(address, kinds, sorted({u.device for u in units}))
    if address is None:  # embedded: the boards are this machine, now that Ray runs
        boards = {k: [b | {"platform": platforms_of(units, k)} for b in alive_boards(kinds[k].resource)]
                  for k in {u.device for u in units} if not kinds[k].container}
    cache_dir = str((out / "artifacts").resolve())
    bar_ref: dict[str, Any] = {}

    def on_done(row: dict[str, Any]) -> None:
        summary.ran += 1
        lane = row.pop("_lane", None)
        if row["status"] != "ok":
            summary.failed += 1
            console.print(f"[red]failed[/] {escape(row['config'])} on {row['device']}: {row['stage']}: "
                          f"{row['outcome']}: {row['error_type']}: {escape(row['message'][:200])}")
        if "display" in bar_ref:
            row = row | {"config": escape(row["config"])}
            if lane is not None:
                bar_ref["display"].unit(row, lane.node_id, lane.pool, lane.kind.name)
            else:
                bar_ref["display"].unit(row)

    # Setting ``tuned`` (deltann.fleet.tuning_driver): MetaSchedule over each kind's boards first;
    # tuned units then carry their records (also those only timed again), and one whose
    # tuning failed is already a row.
    retimed = [u for g in groups.values() for u in g.units if u.key in g.ok]
    if any(u.setting != "native" for u in todo + retimed):
        from deltann.fleet import tuning_driver as fleet_tuning  # lazy: loads ray

        def tune_failed(unit: plan.Unit, board: str, failure: Failure) -> None:
            if unit.key in done:  # complete already: it is left out of its timing session
                log.warning("%s is not timed again: its tuning records failed: %s", unit.config,
                            failure.message[:200])
                return
            table = builds_row(unit, failure, study=study.name, board=board, hostname="", seconds=0.0)
            store.write(table)
            on_done(table.to_pylist()[0])

        # per kind: one node may serve several kinds, each with its own platform (its target)
        node_platforms = {(kind, b["node_id"]): b.get("platform", "") for kind, bs in boards.items() for b in bs}
        tuned = fleet_tuning.tune_units(study, units if study.replicate else todo + retimed, store, kinds,
                                        cache_dir, tune_failed, platforms=node_platforms)
        units, todo = tuned.apply(units), tuned.apply(todo)
        for g in groups.values():
            g.units = tuned.apply(g.units)
            g.ok -= tuned.failed & done
            g.waiting -= tuned.failed  # already a failure row
        summary.seconds["tune"] = time.perf_counter() - t

    dispatcher = Dispatcher(study, store, ray.put(inputs), cache_dir, on_done)
    by_pool: dict[str, list[plan.Unit]] = defaultdict(list)
    for u in units if study.replicate else todo:
        by_pool[plan.pool(u.device, u.platform)].append(u)
    for key in groups:
        by_pool.setdefault(key[1], [])
    total = 0
    if study.replicate:
        summary.planned = summary.skipped = 0
    for pool_name, pool_units in by_pool.items():
        kind_name = pool_name.split("|", 1)[0]
        kind = kinds[kind_name]
        pool_boards = [b for b in boards.get(kind_name, []) if plan.pool(kind_name, b.get("platform", "")) == pool_name]
        pool_groups = [g for key, g in groups.items() if key[1] == pool_name]
        if study.replicate:
            # Every board runs every unit, each run under its own key (resumable per board),
            # and times its own runs.
            replicas = [[dc_replace(u, key=replica_key(u.key, b["node_id"])) for u in pool_units]
                        for b in pool_boards]
            summary.planned += sum(len(share) for share in replicas) or len(pool_units)
            per_board = [[u for u in share if u.key not in done] for share in replicas]
            summary.skipped += sum(len(pool_units) - len(share) for share in per_board)
        if not pool_boards:
            summary.pending.extend(u.key for u in pool_units)
            console.print(f"[yellow]{len(pool_units)} units pending[/]: no live board of kind {kind_name!r} "
                          f"(Ray resource {kind.resource!r})")
            continue
        if study.replicate:
            for board, share, replica in zip(pool_boards, per_board, replicas, strict=True):
                board_groups = [g for members in plan.timing_groups(replica).values()
                                if (g := group_for(members, board["node_id"])) is not None]
                if share or board_groups:
                    dispatcher.add_lane(kind, board, pinned=share)
                    total += len(share)
                for g in board_groups:
                    dispatcher.add_group(g)
        else:
            # Grouped by (model, variant) so consecutive units share an artifact.
            dispatcher.queues[pool_name] = sorted(pool_units, key=lambda u: (u.model, u.variant))
            total += len(pool_units)
            for board in pool_boards[: max(len(pool_units), len(pool_groups))]:
                dispatcher.add_lane(kind, board)
            for g in pool_groups:
                dispatcher.add_group(g)
    summary.seconds["start"] = time.perf_counter() - t

    t = time.perf_counter()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[info]}")]

    def left(pool: str) -> int:
        """Images the units of ``pool`` not yet complete still have (queued and in flight)."""
        pending = dispatcher.queues.get(pool, []) + [u for x in dispatcher.lanes if x.pool == pool
                                                     for u in x.batch + x.pinned]
        done_now = sum(x.done_images for x in dispatcher.lanes if x.pool == pool)
        return max(0, sum(unit_images(u) for u in pending) - done_now)

    def unit_images(u: plan.Unit) -> int:
        return (n_images[u.inputs or u.model] if u.hi is None else u.hi) - u.lo

    def on_rows(lane: Lane, n: int) -> None:
        lane.done_images += n
        if "display" in bar_ref:
            bar_ref["display"].rows(lane.node_id, lane.pool, lane.kind.name, n)

    dispatcher.on_rows = on_rows
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            bar_ref["display"] = Display(bar, f"{study.name}: {total} units", total, left)
            dispatcher.run()
    finally:
        for lane in dispatcher.lanes:
            if not lane.dead:
                try:
                    ray.kill(lane.actor, no_restart=True)
                except Exception:  # noqa: BLE001 - an actor already gone
                    pass
        entry |= {"ran": summary.ran, "failed": summary.failed,
                  "timing_sessions": [session_entry(r) for r in dispatcher.sessions]}
    summary.pending.extend(dispatcher.pending)
    summary.sessions = dispatcher.sessions
    summary.timing_pending = len(dispatcher.pending_timing)
    summary.seconds["run"] = time.perf_counter() - t
    entry |= {"planned": summary.planned, "skipped": summary.skipped, "pending": len(summary.pending),
              "timing_pending": summary.timing_pending}
    console.print(escape(summary.line()))
    return entry


def platforms_of(units: list[plan.Unit], kind: str) -> str:
    """The platform key the plan gave ``kind``'s units on the embedded default (one)."""
    return next((u.platform for u in units if u.device == kind and u.platform), "")
