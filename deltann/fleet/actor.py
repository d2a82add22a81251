"""The board actor: one per board, placed by its kind's Ray custom resource. It runs
units one after another and streams their Arrow tables back through a Ray streaming
generator, so the driver stores rows while the board is still working."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from deltann.dataset import Inputs
from deltann.plan import Unit

log = logging.getLogger("deltann.fleet")


@ray.remote(num_cpus=0)
class Board:
    def __init__(self, kind: str, cache_dir: str, study: str) -> None:
        from deltann.convert.chain import ArtifactCache

        self.kind = kind
        self.study = study
        self.node_id = ray.get_runtime_context().get_node_id()
        self.hostname = socket.gethostname()
        self.artifacts = ArtifactCache(Path(cache_dir))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "node_id": self.node_id, "hostname": self.hostname}

    def run(self, units: list[Unit], inputs: dict[str, Inputs]) -> Iterator[pa.Table]:
        from deltann.fleet.execute import run_unit

        for unit in units:
            yield from run_unit(unit, inputs[unit.model], self.artifacts, study=self.study,
                                board=self.node_id, hostname=self.hostname)
