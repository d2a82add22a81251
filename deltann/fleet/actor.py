"""The board actor: one per board, placed by its kind's Ray custom resource. It runs
units one after another and streams their Arrow tables back through a Ray streaming
generator, so the driver stores rows while the board is still working.

Where the kind runs in a container (``container = true`` in cluster/devices.toml) the
actor does not build or execute anything itself: it hands the units to the kind's image
through the docker SDK (:mod:`deltann.fleet.container`) and streams the Arrow IPC files
the container writes."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from deltann.convert.chain import ArtifactCache
from deltann.core.device_catalogue import DeviceKind
from deltann.dataset import Inputs
from deltann.fleet.container import inside_image, run_in_container, time_in_container
from deltann.fleet.execute import run_unit
from deltann.fleet.failure import Stage
from deltann.fleet.markers import progress
from deltann.fleet.session import time_session
from deltann.plan import TimingJob, Unit
from deltann.store import SCHEMAS, tag

log = logging.getLogger("deltann.fleet")


@ray.remote(num_cpus=0, max_restarts=0)
class Board:
    """Why ``num_cpus=0``: a board is one machine; what bounds its work is the kind's
    custom resource the driver requests (a fraction, so other work needing that resource
    is not starved), not Ray's CPU accounting."""

    def __init__(self, kind: DeviceKind, cache_dir: str, study: str) -> None:
        self.kind = kind
        self.study = study
        self.cache_dir = Path(cache_dir)
        self.node_id = ray.get_runtime_context().get_node_id()
        self.hostname = socket.gethostname()
        self._artifacts: Any = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind.name, "node_id": self.node_id, "hostname": self.hostname}

    def run(self, units: list[Unit], inputs: dict[str, Inputs]) -> Iterator[pa.Table]:
        """Stream every table of ``units``, in order (call with ``num_returns="streaming"``)."""
        if self.kind.container and not inside_image(self.kind):
            yield from run_in_container(self.kind, units, inputs, self.cache_dir, study=self.study,
                                        board=self.node_id, hostname=self.hostname)
            return

        for unit in units:
            yield from run_unit(unit, inputs[unit.inputs or unit.model], self._cache(), study=self.study,
                                board=self.node_id, hostname=self.hostname)

    def time(self, job: TimingJob, inputs: dict[str, Inputs]) -> Iterator[pa.Table]:
        """Stream one timing session's tables (deltann.fleet.session), in the kind's image
        where the kind runs in a container."""
        if self.kind.container and not inside_image(self.kind):
            yield from time_in_container(self.kind, job, inputs, self.cache_dir, study=self.study,
                                         board=self.node_id, hostname=self.hostname)
            return

        yield from time_session(job, inputs, self._cache(), study=self.study, board=self.node_id,
                                hostname=self.hostname)

    def _cache(self) -> Any:
        """This board's artifact cache, kept for the actor's life (converted models in
        memory, compiled TVM modules on disk)."""
        if self._artifacts is None:
            self._artifacts = ArtifactCache(self.cache_dir)
        return self._artifacts

    def synthetic(self, tables: int, rows: int, unit_prefix: str = "synthetic") -> Iterator[pa.Table]:
        """Stream ``tables`` tagged ``timings`` tables of ``rows`` rows each, as fast as the
        board can: a producer faster than any store, for the ingest benchmark and the
        backpressure test. Each table's metadata carries the wall time it was made at."""
        schema = SCHEMAS["timings"]
        base = {f.name: pa.array([f.name] * rows, f.type) for f in schema if pa.types.is_string(f.type)}
        base |= {"board": pa.array([self.node_id] * rows), "hostname": pa.array([self.hostname] * rows),
                 "device": pa.array([self.kind.name] * rows), "model": pa.array(["synthetic"] * rows)}
        ints = pa.array(np.arange(rows, dtype=np.int32))
        samples = pa.array([[1, 2, 3]] * rows, pa.list_(pa.int64()))
        for i in range(tables):
            cols = {f.name: base.get(f.name) for f in schema}
            for f in schema:
                if cols[f.name] is None:  # the other columns: their type's null
                    cols[f.name] = ints if f.type == pa.int32() else pa.nulls(rows, f.type)
            cols["samples_ns"] = samples
            cols["median_ns"] = pa.array(np.full(rows, i, dtype=np.int64))
            key = f"{unit_prefix}-{self.node_id[:8]}-{i}"
            cols["unit_key"] = pa.array([key] * rows)
            table = tag(pa.table(cols, schema=schema), "timings", key, 0)
            meta = dict(table.schema.metadata) | {b"deltann.made_at": str(time.time()).encode()}
            yield table.replace_schema_metadata(meta)

    def replay(self, units: list[Unit], recordings: dict[str, dict[str, Any]]) -> Iterator[pa.Table]:
        """A simulated board (bench/fleet.py): for each unit, wait as long as the recorded
        real run of its configuration took, then yield that run's tables re-keyed to this
        unit and this actor. Lets 32 boards share a 2-core machine without 32 copies of
        torch, while the driver does exactly what it does for real boards."""
        me = ray.get_runtime_context().get_actor_id()
        for unit in units:
            yield progress(unit.key, Stage.CONVERT)
            record = recordings[unit.config]
            time.sleep(record["seconds"])
            for name in ("predictions", "timings", "builds"):
                table = record["tables"][name]
                for col, value in (("unit_key", unit.key), ("board", me), ("hostname", self.hostname)):
                    table = table.set_column(table.schema.get_field_index(col), col,
                                             pa.array([value] * table.num_rows, pa.string()))
                yield tag(table, name, unit.key, 0)
