"""Which failed units the next run tries again (issue 15, item 4).

A failure row completes its unit, so a rerun skips it — right for a failure that will
happen again (a conversion the tool refuses, an operator TVM does not support, outputs
that do not match), wrong for one that said nothing about the model: the disk was full,
memory ran out, the board died, a unit ran past its time, a container did not start.
Those are *transient*: the next run tries them again, and records in its run entry what
each had failed with. ``deltann run --retry-failed`` tries every failed unit again.
"""

from __future__ import annotations

from typing import Any

from deltann.fleet.failure import Outcome, Stage

#: Outcomes that say nothing about the model (deltann.fleet.failure.failure_outcome, the
#: driver's crash and timeout rows).
TRANSIENT_OUTCOMES = (Outcome.OOM, Outcome.NOSPACE, Outcome.CRASH, Outcome.TIMEOUT)
#: Stages whose failure is the board's, not the unit's.
TRANSIENT_STAGES = (Stage.CONTAINER,)
#: Messages of rows written before ``nospace`` existed (or by a tool that wraps the error).
TRANSIENT_TEXT = ("no space left on device", "disk quota exceeded", "cannot allocate memory", "out of memory",
                  "std::bad_alloc", "errno 28")


def transient(row: dict[str, Any]) -> str:
    """Why a failed ``builds`` row's failure is transient ("" when it is deterministic)."""
    outcome, stage = str(row.get("outcome") or ""), str(row.get("stage") or "")
    if outcome in TRANSIENT_OUTCOMES:
        return outcome
    if stage in TRANSIENT_STAGES:
        return f"{stage} did not start"
    message = str(row.get("message") or "").lower()
    for text in TRANSIENT_TEXT:
        if text in message:
            return text
    return ""


def to_retry(failed: list[dict[str, Any]], *, everything: bool = False) -> dict[str, dict[str, Any]]:
    """The failed rows (``builds`` rows with status failed) to run again, by unit key,
    each with ``why``: the transient cause, or ``--retry-failed``."""
    out = {}
    for row in failed:
        why = transient(row) or ("--retry-failed" if everything else "")
        if why:
            out[str(row["unit_key"])] = {k: row.get(k) for k in ("config", "device", "stage", "outcome", "error_type",
                                                                 "message")} | {"why": why}
    return out
