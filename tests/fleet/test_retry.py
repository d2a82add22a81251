"""Which failures the next run tries again (issue 15, item 4): the ones that say nothing
about the model. (A real full disk during a conversion, tried again once there is space:
tests/hardening/test_sharing.py.)"""

from __future__ import annotations

import errno

from deltann.fleet.failure import failure_outcome
from deltann.fleet.retry import to_retry, transient


def _row(key: str, stage: str, outcome: str, message: str = "", error_type: str = "X") -> dict[str, str]:
    return {"unit_key": key, "config": f"c{key}", "device": "local", "stage": stage, "outcome": outcome,
            "error_type": error_type, "message": message}


def test_transient_failures_are_tried_again_and_deterministic_ones_are_not() -> None:
    rows = [
        _row("1", "convert", "nospace", "[Errno 28] No space left on device"),
        _row("2", "build", "oom", "std::bad_alloc"),
        _row("3", "execute", "crash", "the actor died"),
        _row("4", "build", "timeout", "still in stage 'build' after 600 s"),
        _row("5", "container", "exception", "image not found"),
        _row("6", "convert", "exception", "hop torch->onnx failed: OSError: [Errno 28] No space left on device"),
        _row("7", "convert", "exception", "onnx2tf refused: unsupported op GridSample"),
        _row("8", "build", "exception", "TVMError: operator not supported"),
        _row("9", "verify", "mismatch", "output shape (1, 10), expected (1, 1000)"),
        _row("10", "verify", "nan", "output has 3 NaN"),
    ]
    assert [transient(r) for r in rows] == ["nospace", "oom", "crash", "timeout", "container did not start",
                                            "no space left on device", "", "", "", ""]
    retry = to_retry(rows)
    assert sorted(retry, key=int) == ["1", "2", "3", "4", "5", "6"]
    assert retry["1"] == {"config": "c1", "device": "local", "stage": "convert", "outcome": "nospace",
                          "error_type": "X", "message": "[Errno 28] No space left on device", "why": "nospace"}
    everything = to_retry(rows, everything=True)
    assert len(everything) == 10 and everything["7"]["why"] == "--retry-failed"


def test_a_failure_is_classified_when_it_happens() -> None:
    assert failure_outcome(OSError(errno.ENOSPC, "No space left on device"), "") == "nospace"
    assert failure_outcome(OSError(errno.EDQUOT, "Disk quota exceeded"), "") == "nospace"
    assert failure_outcome(MemoryError(), "") == "oom"
    assert failure_outcome(RuntimeError("x"), "std::bad_alloc in TVM") == "oom"
    assert failure_outcome(RuntimeError("x"), "ConversionError: ... No space left on device") == "nospace"
    assert failure_outcome(ValueError("unsupported op"), "unsupported op") == "exception"
