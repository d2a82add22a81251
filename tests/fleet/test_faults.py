"""Faults and flow control on the in-process Ray (kind ``local``): a unit that runs past
the study's ``unit_timeout_s`` becomes a ``timeout`` row and the board goes on; a board
that produces faster than the driver stores is held back by Ray's generator
backpressure instead of piling tables up."""

from __future__ import annotations

import time
from pathlib import Path

from deltann.fleet import driver
from deltann.fleet.devices import load_catalogue
from deltann.store import Store


def test_a_unit_past_its_timeout_fails_as_a_row(study_file, tmp_path: Path, ray_session: None) -> None:
    # A real long unit, not a fake hang: its timing protocol asks for 10 minutes of samples.
    study = study_file(
        'name = "hang"\nmodels = ["tiny_cnn"]\nvariants = ["torch", "torch->onnx"]\nruntimes = ["native"]\n'
        "unit_timeout_s = 4\n[dataset]\nlimit = 1\n[timing]\nrepeat = 1\nmin_repeat_ms = 600000\n"
    )
    t0 = time.monotonic()
    summary = driver.run_study(study, tmp_path / "out", progress=False)
    assert time.monotonic() - t0 < 90
    assert (summary.ran, summary.failed, summary.pending) == (2, 2, [])
    b = Store(tmp_path / "out").scan("builds").collect()
    assert b.height == 2 and set(b["outcome"]) == {"timeout"} and set(b["stage"]) == {"execute"}
    assert set(b["status"]) == {"failed"} and (b["total_s"] >= 4).all()
    assert b["message"].str.contains("unit_timeout_s").all()
    assert b["board"].str.len_chars().min() > 0  # the row names the board it hung on


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


def test_a_board_process_that_dies_under_a_unit_makes_a_crash_row(study_file, tmp_path: Path,
                                                                  ray_session: None) -> None:
    """A real crash: the board's worker process is SIGKILLed (as a segfault in native code
    would end it) while the unit measures. Only this session's own workers are looked
    at: descendants of this pytest process."""
    import os
    import signal
    import threading

    import psutil

    study = study_file(
        'name = "crash"\nmodels = ["tiny_cnn"]\nvariants = ["torch"]\nruntimes = ["native"]\n'
        "[dataset]\nlimit = 1\n[timing]\nrepeat = 1\nmin_repeat_ms = 600000\n"
    )
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_board_when_measuring() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            if list(out.glob("table=predictions/*/*/part-*.parquet")):  # predictions stored: now measuring
                for proc in psutil.Process(os.getpid()).children(recursive=True):
                    try:
                        if "ray::Board" in " ".join(proc.cmdline()):
                            os.kill(proc.pid, signal.SIGKILL)
                            killed.append(proc.pid)
                    except psutil.NoSuchProcess:
                        continue
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_board_when_measuring, daemon=True)
    watcher.start()
    summary = driver.run_study(study, out, progress=False)
    watcher.join(timeout=5)
    assert killed, "no board process was found to kill"
    assert (summary.ran, summary.failed, summary.pending) == (1, 1, [])
    row = Store(out).scan("builds").collect().row(0, named=True)
    assert (row["status"], row["outcome"], row["stage"]) == ("failed", "crash", "execute")
    assert row["error_type"] and row["board"]
