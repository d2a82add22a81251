"""A timing session on a board: the units of one model, timed together, interleaved.

The board loads every unit of the :class:`~deltann.plan.TimingJob` (TVM units from its
compiled-module cache, so nothing is compiled twice on the board that ran them), times
them in alternating blocks with :class:`~deltann.runtimes.interleave.Session` and yields,
for each unit, one ``timings`` row per timed image, then the session's ``sessions`` row
(protocol, order, machine state, failures). A configuration that cannot load or fails
mid-session drops out (named in the row) and the others are still timed; nothing raises
out of :func:`time_session`."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from deltann.convert.chain import ArtifactCache
from deltann.core.runner import Runner
from deltann.dataset import CHUNK, InputSet, Inputs, TensorCache, take_to_file
from deltann.fleet.execute import TENSORS, load_runner, runtime_threads
from deltann.fleet.failure import Failure, Outcome, Stage
from deltann.fleet.markers import progress, unit_columns
from deltann.plan import TimingJob, Unit
from deltann.runtimes.interleave import Protocol, Session, Slot
from deltann.store import SCHEMAS, tag
from deltann.zoo import user

log = logging.getLogger("deltann.fleet")

#: Progress stage of a session's markers (the driver's clock for ``unit_timeout_s``).
STAGE = Stage.TIME


def _loader(unit: Unit, artifacts: ArtifactCache) -> Any:
    def load() -> Runner:
        return load_runner(unit, artifacts).runner

    return load


def time_session(job: TimingJob, inputs: dict[str, Inputs] | dict[str, InputSet], artifacts: ArtifactCache, *, study: str,
                 board: str, hostname: str) -> Iterator[pa.Table]:
    """Yield a progress marker per block, then the ``timings`` tables (one per unit) and
    the ``sessions`` row of ``job``."""
    protocol = Protocol(**dict(job.protocol))
    yield progress(job.key, STAGE)
    start = time.perf_counter()
    idx = list(job.images)
    slots, ids = [], {}
    failure: Failure | None = None
    result = None
    made: dict[str, Inputs] = {}  # the timed images' tensors, made here once per input batch
    try:
        for unit in job.units:
            if unit.user_model:
                user.register_json(unit.user_model)
            name = unit.inputs or unit.model
            if name not in made:
                made[name] = timed_inputs(inputs[name], idx, artifacts.root)
            slots.append(Slot(unit.key, _loader(unit, artifacts), made[name].tensors))
            ids[unit.key] = made[name].ids
        session = Session(slots, protocol)
        for block in session.run():
            yield progress(job.key, f"{STAGE} {block + 1}/{protocol.blocks}")
        result = session.result
    except Exception as exc:  # noqa: BLE001 - errors are data: a failed session is a row
        log.warning("timing session %s failed: %s: %s", job.key[:12], type(exc).__name__, exc)
        failure = Failure(STAGE, Outcome.EXCEPTION, type(exc).__name__,
                          " ".join(str(exc).split()) or type(exc).__name__)
    configs = {u.key: u.config for u in job.units}
    rows = 0
    if result is not None:
        order = " | ".join(configs[k] for k in result.orders[0]) if result.orders else ""
        for seq, unit in enumerate(job.units):
            samples = result.samples.get(unit.key)
            if samples is None:
                continue
            table = _timings_table(job, unit, samples, ids[unit.key], result, order, seq, study=study, board=board,
                                   hostname=hostname)
            rows += table.num_rows
            yield table
        if not result.samples:
            failure = Failure(STAGE, Outcome.EXCEPTION, "NothingTimed", "no configuration could be timed: "
                              + "; ".join(f"{configs[k]}: {e}" for k, e in result.errors.items()))
    yield session_row(job, study=study, board=board, hostname=hostname, failure=failure, result=result,
                      seconds=time.perf_counter() - start, rows=rows)


#: Timed images' tensors above this many bytes are made into a file the session reads
#: (memory-mapped) instead of being held: a session over 50,000 images needs 30 GB of
#: tensors at 224 x 224. Made before the first block, never while a block is timed.
IN_MEMORY_BYTES = 512 << 20


def timed_inputs(batch: Inputs | InputSet, idx: list[int], cache: Path) -> Inputs:
    """The tensors of images ``idx`` of ``batch``: in memory when small, else written a
    chunk at a time to ``cache/timed-<pid>-<n>.npy`` and memory-mapped."""
    crops = TensorCache(cache / TENSORS)  # the units' runs made them: read, not decoded again
    if len(idx) <= CHUNK:
        return batch.take(idx, crops)
    first = batch.take(idx[:1], crops)
    if first.tensors[0].nbytes * len(idx) <= IN_MEMORY_BYTES:
        return batch.take(idx, crops)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"timed-{os.getpid()}-{time.time_ns()}.npy"
    made = take_to_file(batch, idx, path, crops)
    path.unlink()  # the mapping keeps the data until the session drops it
    return made


def session_row(job: TimingJob, *, study: str, board: str, hostname: str, failure: Failure | None,
                result: Any = None, seconds: float = 0.0, rows: int = 0) -> pa.Table:
    """The ``sessions`` row of ``job``: ``failure`` None when it ended well (the table has
    no stage column: a session's stage is always :data:`STAGE`); ``result`` (a
    SessionResult) when the blocks ran; ``rows`` the timings rows written before it (a part
    of them gone later: the session is missing)."""
    configs = {u.key: u.config for u in job.units}
    before = after = None
    if result is not None:
        before, after = result.before, result.after
    row = {
        "session": job.key, "study": study, "model": job.model, "device": job.device, "board": board,
        "hostname": hostname, "lab": job.units[0].lab if job.units else "",
        "cpu": job.units[0].cpu if job.units else "", "status": "failed" if failure is not None else "ok",
        "outcome": failure.outcome.value if failure is not None else Outcome.OK.value,
        "error_type": failure.error_type if failure is not None else "",
        "message": failure.message if failure is not None else "",
        "unit_keys": [u.key for u in job.units], "configs": [u.config for u in job.units],
        "dropped": json.dumps({configs[k]: e for k, e in (result.errors if result is not None else {}).items()}),
        **{k: int(v) for k, v in job.protocol}, "images": len(job.images), "cores": os.cpu_count() or 1,
        "load_before": before.load1 if before else None, "load_after": after.load1 if after else None,
        "others_before": before.others_busy if before else None,
        "others_after": after.others_busy if after else None,
        "mhz_before": before.cpu_mhz if before else None, "mhz_after": after.cpu_mhz if after else None,
        "seconds": seconds, "rows": rows, "finished_at": dt.datetime.now(dt.UTC),
    }
    return tag(pa.Table.from_pylist([row], schema=SCHEMAS["sessions"]), "sessions", job.key, 0)


def _timings_table(job: TimingJob, unit: Unit, samples: np.ndarray, image_ids: list[str], result: Any,
                   order: str, seq: int, *, study: str, board: str, hostname: str) -> pa.Table:
    """One row per timed image: its samples in block order, each sample's block."""
    n_images, blocks, repeat = samples.shape
    ident = unit_columns(unit, study=study, board=board, hostname=hostname)
    positions = [o.index(unit.key) for o in result.orders]
    sample_block = np.repeat(np.arange(blocks, dtype=np.int32), repeat).tolist()
    p = result.protocol
    rows = []
    for i in range(n_images):
        flat = samples[i].reshape(-1)
        rows.append(ident | {
            "session": job.key, "image_id": image_ids[i], "image_index": int(job.images[i]),
            "warmup": p.warmup, "number": p.number, "repeat": p.repeat, "min_repeat_ms": p.min_repeat_ms,
            "blocks": p.blocks, "pause_ms": p.pause_ms, "threads": runtime_threads(unit.runtime),
            "resident": bool(result.resident.get(unit.key, True)), "order": order, "positions": positions,
            "samples_ns": flat.tolist(), "sample_block": sample_block, "median_ns": int(np.median(flat)),
        })
    return tag(pa.Table.from_pylist(rows, schema=SCHEMAS["timings"]), "timings", job.key, seq)
