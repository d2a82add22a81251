"""Faults on a board (issue 8, item 4), on top of tests/fleet/test_faults.py (node loss,
actor death, driver restart): a TVM build that exhausts its memory, and a unit that
hangs. Each ends as a failure row with its stage and the study ends. (A container that
fails to start: tests/hardening/test_security.py, with a mocked docker client.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.hardening


def test_a_build_that_exhausts_memory_is_an_oom_row_and_the_board_goes_on(tmp_path: Path, tally,
                                                                         ray_session: None) -> None:
    """A real board actor whose builds may allocate 16 MiB (``DELTANN_BUILD_MEMORY_MB``,
    set the way a board's environment sets it): TVM's build of tiny_cnn needs more, gets
    a real MemoryError, and the unit after it runs on the same actor."""
    import ray

    from deltann import plan
    from deltann.fleet import driver
    from deltann.fleet.actor import Board
    from deltann.core.device_catalogue import load_catalogue
    from deltann.fleet.execute import BUILD_MEMORY_ENV
    from deltann.study import parse_study

    kinds = load_catalogue()
    study = parse_study({"name": "oom", "models": ["tiny_cnn"], "runtimes": ["native", "tvm"], "settings": ["basic"],
                         "dataset": {"limit": 1}, "timing": {"repeat": 1}}, tmp_path / "s.toml", kinds)
    inputs = driver.prepare_inputs(study, tmp_path)
    units = sorted(plan.expand(study, inputs, kinds), key=lambda u: u.runtime != "tvm")  # the build first
    driver._ensure_ray(None, kinds, ["local"])
    board = Board.options(resources={"local": driver.BOARD_SHARE},
                          runtime_env={"env_vars": {BUILD_MEMORY_ENV: "16"}}).remote(kinds["local"],
                                                                                     str(tmp_path / "cache"), "oom")
    rows = []
    try:
        for ref in board.run.options(num_returns="streaming").remote(units, ray.put(inputs)):
            table = ray.get(ref)
            if table.schema.metadata.get(b"deltann.table") == b"builds":
                rows.append(table.to_pylist()[0])
    finally:
        ray.kill(board)
    with tally.case("faults", "build-out-of-memory") as case:
        assert [r["runtime"] for r in rows] == ["tvm", "torch"]
        oom, after = rows
        assert (oom["status"], oom["stage"], oom["outcome"]) == ("failed", "build", "oom"), (oom["error_type"], oom["message"])
        assert after["status"] == "ok", after  # the board survived its failed build
        case.refused(f"{oom['error_type']}: {oom['message']}")


@pytest.mark.slow
def test_a_timing_session_that_hangs_ends_as_a_timeout_row_and_the_study_ends(study_file, tmp_path: Path, tally,
                                                                               ray_session: None) -> None:
    """A real hang as far as the driver can tell: the timing protocol asks for ten minutes
    of samples; ``unit_timeout_s = 3`` (per configuration of the session) ends it."""
    from deltann.fleet.driver import run_study
    from deltann.store import Store

    study = study_file('name = "hang"\nmodels = ["tiny_cnn"]\nvariants = ["torch"]\nruntimes = ["native"]\n'
                       "unit_timeout_s = 3\n[dataset]\nlimit = 1\n[timing]\nrepeat = 1\nmin_repeat_ms = 600000\n")
    with tally.case("faults", "session-hangs") as case:
        t0 = time.monotonic()
        summary = run_study(study, tmp_path / "out", progress=False)
        assert time.monotonic() - t0 < 120  # a guard against a hung test, not a speed claim
        assert (summary.ran, summary.failed, summary.pending) == (1, 0, [])
        row = Store(tmp_path / "out").scan("sessions", complete_only=False).collect().row(0, named=True)
        assert (row["status"], row["outcome"]) == ("failed", "timeout"), row
        assert "unit_timeout_s" in row["message"]
        case.refused(row["message"])
