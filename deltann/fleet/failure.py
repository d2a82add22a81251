"""What a failed unit or timing session ended with, as one typed record.

Errors are data (DESIGN.md): a failure is a row with its stage, outcome, exception type
and message, and the study goes on. The stages and outcomes are named here once, so the
board (:mod:`deltann.fleet.execute`), the driver (crash, timeout, tuning), the container
path and the retry policy (:mod:`deltann.fleet.retry`) all speak the same words; the one
``builds`` row made from a record is :func:`deltann.fleet.markers.builds_row`. The shape
follows NNSmith's checked-compile report: a stage and a symptom, never an untyped dict.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger("deltann.fleet")

#: A stored message keeps at most this many characters (a TVM error can run to pages).
MESSAGE_LIMIT = 2000


class Stage(StrEnum):
    """Where a unit (or a timing session) was when it failed; the ``stage`` column."""

    CONTAINER = "container"  # its board's container never ran it
    CONVERT = "convert"  # materialising the artifact (zoo, conversion chain)
    BUILD = "build"  # TVM import and compile
    LOAD = "load"  # activating the runner
    EXECUTE = "execute"  # inference
    VERIFY = "verify"  # checking the outputs (shape, finite values)
    TUNE = "tune"  # MetaSchedule tuning before the unit ran (deltann.fleet.tuning_driver)
    TIME = "time"  # a timing session (deltann.fleet.session; its rows have no stage column)

    @classmethod
    def of(cls, text: str) -> Stage:
        """The stage a progress marker named (``""`` before the first one: ``convert``)."""
        try:
            return cls(text or cls.CONVERT)
        except ValueError:  # a board of another version: its row is kept, at the first stage
            log.warning("unknown stage %r in a progress marker: recorded as %r", text, cls.CONVERT.value)
            return cls.CONVERT


class Outcome(StrEnum):
    """How it ended; the ``outcome`` column of ``builds`` and ``sessions``."""

    OK = "ok"
    EXCEPTION = "exception"  # it raised (the error type says what)
    CRASH = "crash"  # the board process or container died under it
    TIMEOUT = "timeout"  # past the study's unit_timeout_s
    MISMATCH = "mismatch"  # outputs of the wrong shape
    NAN = "nan"  # non-finite outputs
    OOM = "oom"  # out of memory (transient)
    NOSPACE = "nospace"  # disk full or quota (transient)


#: ``error_type`` of a :class:`UnitFailure` by its outcome (its own class name says nothing).
_CHECK_ERROR = {Outcome.NAN: "NonFiniteOutput", Outcome.MISMATCH: "OutputMismatch"}


class UnitFailure(Exception):
    """Raised inside a unit when a check of its outputs fails (not a crash of the code)."""

    def __init__(self, stage: Stage, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.stage, self.outcome = Stage(stage), Outcome(outcome)


@dataclass(frozen=True)
class Failure:
    """A failure as stored: stage, outcome, exception type and message (one line, at most
    :data:`MESSAGE_LIMIT` characters). Only the constructors below make the outcome from
    an event, so the same event always gives the same row."""

    stage: Stage
    outcome: Outcome
    error_type: str
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage", Stage(self.stage))
        object.__setattr__(self, "outcome", Outcome(self.outcome))
        if self.outcome is Outcome.OK:
            raise ValueError("a Failure cannot have outcome 'ok' (no failure is None)")
        object.__setattr__(self, "message", self.message[:MESSAGE_LIMIT])

    @classmethod
    def from_exception(cls, stage: Stage, exc: BaseException) -> Failure:
        """The failure of a unit that raised ``exc`` in ``stage``: a :class:`UnitFailure`
        keeps its own stage and outcome; anything else is classified by
        :func:`failure_outcome` (``oom``, ``nospace``, else ``exception``)."""
        if isinstance(exc, UnitFailure):
            return cls(exc.stage, exc.outcome, _CHECK_ERROR.get(exc.outcome, "OutputMismatch"), str(exc))
        message = " ".join(str(exc).strip().splitlines())
        return cls(stage, failure_outcome(exc, message), type(exc).__name__,
                   message[:MESSAGE_LIMIT] or type(exc).__name__)

    @classmethod
    def crash(cls, stage: Stage, error_type: str, message: str) -> Failure:
        """The board process or its container died while the unit was in ``stage``."""
        return cls(stage, Outcome.CRASH, error_type, message)

    @classmethod
    def timeout(cls, stage: Stage, message: str) -> Failure:
        """The unit (or session) ran past the study's ``unit_timeout_s`` in ``stage``."""
        return cls(stage, Outcome.TIMEOUT, "Timeout", message)

    @classmethod
    def refused(cls, stage: Stage, error_type: str, message: str) -> Failure:
        """The fleet would not (or could not) run the unit: no image, no engine, a missing
        module, tuning that failed. An ``exception`` outcome of ``stage``."""
        return cls(stage, Outcome.EXCEPTION, error_type, message)


def failure_outcome(exc: BaseException, message: str) -> Outcome:
    """The outcome of a unit that raised: ``oom`` (Python's MemoryError, an OS call's
    ENOMEM, C++'s std::bad_alloc surfacing through TVM), ``nospace`` (a full disk while
    converting or caching), else ``exception``. The first two pass with time, and the next
    run tries the unit again (deltann.fleet.retry)."""
    code = getattr(exc, "errno", None)
    lowered = message.lower()
    if (isinstance(exc, MemoryError) or code == errno.ENOMEM
            or any(s in lowered for s in ("bad_alloc", "out of memory", "cannot allocate memory"))):
        return Outcome.OOM
    if code in (errno.ENOSPC, errno.EDQUOT) or "no space left on device" in lowered or "disk quota exceeded" in lowered:
        return Outcome.NOSPACE
    return Outcome.EXCEPTION
