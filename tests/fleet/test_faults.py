"""Faults and flow control on the in-process Ray (kind ``local``): a unit that runs past
the study's ``unit_timeout_s`` becomes a ``timeout`` row and the board goes on; a board
that produces faster than the driver stores is held back by Ray's generator
backpressure instead of piling tables up."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from deltann.fleet import driver
from deltann.core.device_catalogue import load_catalogue
from deltann.store import Store


def test_a_unit_past_its_timeout_fails_as_a_row(study_file, tmp_path: Path, ray_session: None) -> None:
    # A real long unit, not a fake hang: EfficientNet-Lite0's `extended` TVM build takes
    # ~20 s here, after the board loaded torch and the weights (the unit's `convert`, a few
    # seconds, longer on a loaded machine).
    study = study_file(
        'name = "hang"\nmodels = ["efficientnet_lite0"]\nvariants = ["torch"]\nruntimes = ["native", "tvm"]\n'
        'settings = ["extended"]\nunit_timeout_s = 12\n[dataset]\nlimit = 1\n'
    )
    t0 = time.monotonic()
    summary = driver.run_study(study, tmp_path / "out", progress=False)
    assert time.monotonic() - t0 < 180
    assert (summary.ran, summary.failed, summary.pending) == (2, 1, [])
    b = Store(tmp_path / "out").scan("builds").collect()
    hung = b.filter(b["status"] == "failed").row(0, named=True)
    assert (hung["config"], hung["outcome"]) == ("torch [tvm:extended]", "timeout")
    assert hung["stage"] in ("convert", "build")  # where it was when its time ran out
    assert hung["total_s"] >= 12 and "unit_timeout_s" in hung["message"]
    assert hung["board"]  # the row names the board it hung on
    # the board went on: the other unit ran, and was timed on its own
    assert len(summary.sessions) == 1 and summary.sessions[0]["configs"] == ["torch [torch]"]


def test_a_timing_session_past_its_limit_fails_as_a_session_row(study_file, tmp_path: Path,
                                                                 ray_session: None) -> None:
    # A real long session: its protocol asks for 10 minutes of samples per image; the limit
    # is unit_timeout_s per configuration of the session (one here).
    study = study_file(
        'name = "slow"\nmodels = ["tiny_cnn"]\nvariants = ["torch"]\nruntimes = ["native"]\n'
        'unit_timeout_s = 15\n[dataset]\nlimit = 1\n[timing]\nrepeat = 1\nmin_repeat_ms = 600000\n'
    )
    t0 = time.monotonic()
    summary = driver.run_study(study, tmp_path / "out", progress=False)
    assert time.monotonic() - t0 < 90
    assert (summary.ran, summary.failed, summary.pending) == (1, 0, [])  # the unit predicted
    store = Store(tmp_path / "out")
    session = store.scan("sessions", complete_only=False).collect().row(0, named=True)
    assert (session["status"], session["outcome"]) == ("failed", "timeout")
    assert "unit_timeout_s" in session["message"] and session["seconds"] >= 15 and session["board"]
    assert store.scan("timings").collect().height == 0
    assert len(summary.sessions) == 1
    manifest = store.read_manifest()["runs"][-1]
    assert manifest["timing_sessions"][0]["outcome"] == "timeout"


def test_a_fast_board_waits_for_the_driver(ray_session: None, tmp_path: Path) -> None:
    import ray

    from deltann.fleet.actor import Board

    kinds = load_catalogue()
    driver._ensure_ray(None, kinds, ["local"])
    board = Board.options(resources={"local": driver.BOARD_SHARE}).remote(kinds["local"], str(tmp_path), "bp")
    stream = board.synthetic.options(
        num_returns="streaming", _generator_backpressure_num_objects=driver.BACKPRESSURE
    ).remote(12, 10)
    made, taken = [], []
    for ref in stream:
        table = ray.get(ref)
        made.append(float(table.schema.metadata[b"deltann.made_at"]))
        taken.append(time.time())
        time.sleep(0.3)  # a slow store
    ray.kill(board)
    assert len(made) == 12
    # Table i cannot be made before the driver took table i - BACKPRESSURE - 1: the board
    # never runs more than BACKPRESSURE tables ahead of the consumer.
    ahead = driver.BACKPRESSURE + 1
    for i in range(ahead, 12):
        assert made[i] >= taken[i - ahead] - 0.05, (i, made[i] - taken[i - ahead])
    # without backpressure the whole stream would be made within the first sleep
    assert made[-1] - made[0] > 0.3 * (12 - ahead - 1)


def test_ingest_drains_concurrent_streams(ray_session: None, tmp_path: Path) -> None:
    from deltann.fleet.actor import Board

    kind = "local"
    kinds = load_catalogue()
    driver._ensure_ray(None, kinds, [kind])
    boards = [Board.options(resources={kind: driver.BOARD_SHARE}).remote(kinds[kind], str(tmp_path), "ingest")
              for _ in range(3)]
    streams = [b.synthetic.options(num_returns="streaming",
                                   _generator_backpressure_num_objects=driver.BACKPRESSURE).remote(4, 1000, f"s{i}")
               for i, b in enumerate(boards)]
    rows = driver.ingest(streams, Store(tmp_path / "out"))
    assert rows == 3 * 4 * 1000
    frame = Store(tmp_path / "out").scan("timings", complete_only=False).collect()
    assert frame.height == rows and frame["unit_key"].n_unique() == 12
    assert frame.group_by("board").len().height == 1 and frame["board"].str.len_chars().min() > 0


def _boards() -> list[Any]:
    """This session's board worker processes: descendants of this pytest process only, so
    no other Ray on the machine is ever touched."""
    import os

    import psutil

    found = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "ray::Board" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def _kill_board_when(ready: Any, killed: list[int], delay_s: float = 0.0) -> None:
    """SIGKILL the board worker (as a segfault in native code would end it) once
    ``ready()`` holds, after ``delay_s``."""
    import os
    import signal

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not killed:
        if ready():
            time.sleep(delay_s)
            for proc in _boards():
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
                except ProcessLookupError:
                    continue
        time.sleep(0.2)


def test_a_board_process_that_dies_under_a_unit_makes_a_crash_row(study_file, tmp_path: Path,
                                                                  ray_session: None) -> None:
    """A real crash while the unit builds: EfficientNet-Lite0's ``extended`` build runs from
    about 5 s (torch, the weights and torch.export loaded) to about 25 s after the board
    starts; it is killed at 12 s."""
    import threading

    study = study_file(
        'name = "crash"\nmodels = ["efficientnet_lite0"]\nvariants = ["torch"]\nruntimes = ["tvm"]\n'
        'settings = ["extended"]\n[dataset]\nlimit = 1\n'
    )
    out = tmp_path / "out"
    killed: list[int] = []
    watcher = threading.Thread(target=_kill_board_when, args=(lambda: bool(_boards()), killed, 12.0), daemon=True)
    watcher.start()
    summary = driver.run_study(study, out, progress=False)
    watcher.join(timeout=5)
    assert killed, "no board process was found to kill"
    assert (summary.ran, summary.failed, summary.pending) == (1, 1, [])
    row = Store(out).scan("builds").collect().row(0, named=True)
    assert (row["status"], row["outcome"], row["stage"]) == ("failed", "crash", "build")
    assert row["error_type"] and row["board"]
    assert summary.sessions == []  # nothing left to time


def test_a_board_process_that_dies_in_a_timing_session_makes_a_session_row(study_file, tmp_path: Path,
                                                                           ray_session: None) -> None:
    import threading

    study = study_file(
        'name = "crash2"\nmodels = ["tiny_cnn"]\nvariants = ["torch"]\nruntimes = ["native"]\n'
        "[dataset]\nlimit = 1\n[timing]\nrepeat = 1\nmin_repeat_ms = 600000\n"
    )
    out = tmp_path / "out"
    killed: list[int] = []

    def timing() -> bool:  # the unit is complete: its board is now timing it
        return bool(list(out.glob("table=builds/*/*/part-*.parquet")))

    watcher = threading.Thread(target=_kill_board_when, args=(timing, killed, 1.0), daemon=True)
    watcher.start()
    summary = driver.run_study(study, out, progress=False)
    watcher.join(timeout=5)
    assert killed, "no board process was found to kill"
    assert (summary.ran, summary.failed) == (1, 0)
    session = Store(out).scan("sessions", complete_only=False).collect().row(0, named=True)
    assert (session["status"], session["outcome"]) == ("failed", "crash") and session["error_type"]
    # the next run times it again (and only that)
    rerun = study.read_text().replace("min_repeat_ms = 600000", "min_repeat_ms = 0")
    study.write_text(rerun)
    again = driver.run_study(study, out, progress=False)
    assert again.ran == 0 and [r["status"] for r in again.sessions] == ["ok"]
