"""Tables the fleet makes besides a board's results: progress markers a board yields
between stages, and the ``builds`` row that completes a unit, made in :func:`builds_row`
alone: by the board that ran it, or by the driver or container path for a failure the
board could not report itself (``crash``: it died under the unit; ``timeout``: it ran past
the study's ``unit_timeout_s``; a container that never ran it; tuning that failed)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from deltann.fleet.failure import Failure, Outcome
from deltann.plan import Unit
from deltann.store import SCHEMAS, UNIT_FIELDS, tag

#: ``deltann.table`` value of marker tables. The driver reads them (which unit a board is
#: on, in which stage, since when) and never stores them.
PROGRESS = "progress"
#: The ``builds`` columns of each loading stage's seconds (0.0 for a stage never reached).
STAGE_SECONDS = ("convert_s", "import_s", "compile_s", "load_s")


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


def builds_row(unit: Unit, failure: Failure | None, *, study: str, board: str, hostname: str, seconds: float,
               times: Mapping[str, float] | None = None, target: str = "", hops: Sequence[Any] = (),
               layout: str | None = None, unscheduled: int | None = None, rows: int = 0) -> pa.Table:
    """The ``builds`` row of ``unit`` (it completes the unit): ``failure`` None when it ran
    well. The one place such a row is made, by the board that ran the unit
    (:func:`~deltann.fleet.execute.run_unit`) and by whoever writes the failure the board
    could not (driver: crash, timeout, tuning; container: refusal, crash). ``times`` the
    stage seconds (convert_s, import_s, compile_s, load_s), ``seconds`` the total;
    ``target`` the target as the board resolved it (default: the unit's); ``layout`` None
    when no board got as far as making the artifact; ``rows`` the prediction rows written
    (a unit failing midway wrote some: they stay, marked by this row)."""
    failed = failure is not None
    row = unit_columns(unit, study=study, board=board, hostname=hostname) | {
        "status": "failed" if failed else "ok",
        "stage": failure.stage.value if failed else "",
        "outcome": failure.outcome.value if failed else Outcome.OK.value,
        "error_type": failure.error_type if failed else "",
        "message": failure.message if failed else "",
        "frontend": unit.frontend, "passes": list(unit.passes), "target": target or unit.target,
        "hops": json.dumps(list(hops)), "layout": layout,
        **(dict.fromkeys(STAGE_SECONDS, 0.0) | dict(times or {})),
        "unscheduled": unscheduled, "total_s": seconds, "rows": rows,
        "finished_at": dt.datetime.now(dt.UTC),
    }
    return tag(pa.Table.from_pylist([row], schema=SCHEMAS["builds"]), "builds", unit.key, 0)
