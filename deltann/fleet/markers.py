"""Tables the fleet makes besides a board's results: progress markers a board yields
between stages, and the ``builds`` row the driver writes for a unit whose board could not
report on it itself (``crash``: the actor died under it; ``timeout``: it ran past the
study's ``unit_timeout_s``)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pyarrow as pa

from deltann.plan import Unit
from deltann.store import SCHEMAS, UNIT_FIELDS, tag

#: ``deltann.table`` value of marker tables. The driver reads them (which unit a board is
#: on, in which stage, since when) and never stores them.
PROGRESS = "progress"


def progress(unit_key: str, stage: str) -> pa.Table:
    """A zero-row marker: unit ``unit_key`` has entered ``stage`` on this board."""
    meta = {b"deltann.table": PROGRESS.encode(), b"deltann.unit": unit_key.encode(),
            b"deltann.stage": stage.encode()}
    return pa.table({"stage": pa.array([], pa.string())}).replace_schema_metadata(meta)


def is_progress(table: pa.Table) -> bool:
    return (table.schema.metadata or {}).get(b"deltann.table") == PROGRESS.encode()


def unit_columns(unit: Unit, *, study: str, board: str, hostname: str) -> dict[str, Any]:
    """The identity columns every row of ``unit`` carries, read off the store's schema so
    a column added there (and to :class:`~deltann.plan.Unit`) is filled here too."""
    # getattr, not dataclass fields: derived columns (``quantize``) are Unit properties.
    given = {"unit_key": unit.key, "study": study, "board": board, "hostname": hostname, "config": unit.config}
    return {f.name: given[f.name] if f.name in given else getattr(unit, f.name, None) for f in UNIT_FIELDS}


def failure_row(unit: Unit, *, study: str, board: str, hostname: str, stage: str, outcome: str,
                error_type: str, message: str, seconds: float) -> pa.Table:
    """A ``builds`` row (it completes the unit) for a failure the board could not write."""
    row = unit_columns(unit, study=study, board=board, hostname=hostname) | {
        "status": "failed", "stage": stage, "outcome": outcome, "error_type": error_type, "message": message[:2000],
        "frontend": unit.frontend, "passes": list(unit.passes), "target": unit.target, "hops": json.dumps([]),
        "convert_s": 0.0, "import_s": 0.0, "compile_s": 0.0, "load_s": 0.0, "total_s": seconds, "rows": 0,
        "finished_at": dt.datetime.now(dt.UTC),
    }
    return tag(pa.Table.from_pylist([row], schema=SCHEMAS["builds"]), "builds", unit.key, 0)
