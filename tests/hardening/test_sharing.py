"""Sharing results between labs (issue 15): a store that never silently loses, replaces or
corrupts a row. Real runs (tiny_cnn, in-process Ray), real folders, real file systems:
bit flips in data pages of every table, a truncated part then deleted, two labs merged,
concurrent runs and a killed one, a full disk and a read-only folder on a small tmpfs
(mounted where this process may; you are root in CI), names that are not UTF-8.

Each case counts, besides rows lost: *rows replaced* (rows of a folder left changed
where they went) and *wrong values reported* (a number shown after a part was damaged
that differs from the one computed before; a bad part must make numbers absent, never
different)."""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest

from deltann.commands.verify import verify
from deltann.store import Store
from deltann.store_integrity import sidecar_path

pytestmark = pytest.mark.hardening

ROOT = Path(__file__).resolve().parents[2]
STUDY = ('name = "share"\nmodels = ["tiny_cnn"]\nvariants = ["torch", "torch->onnx"]\nruntimes = ["native", "tvm"]\n'
         'settings = ["basic"]\n[dataset]\nlimit = 2\n[timing]\nblocks = 2\npause_ms = 0\n')


def _cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
         ) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "deltann", *args], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=timeout)


def numbers(root: Path) -> dict[tuple[Any, ...], float]:
    """Every number the report's main tables show, keyed so that a number is only ever
    compared with the same number (latencies by the session they come from)."""
    from deltann import analysis

    store = Store(root, sites=True)
    out: dict[tuple[Any, ...], float] = {}
    pairs = analysis.pairwise_agreement(store)
    for r in pairs.iter_rows(named=True):
        for col in ("n_images", "disagree", "top5_jaccard", "max_abs_dlogit", "mean_max_abs_dlogit"):
            out[("pair", r["model"], r["device"], r["config_a"], r["config_b"], col)] = r[col]
    per = analysis.session_latency(store)
    for r in per.iter_rows(named=True):
        for col in ("median_ms", "q1_ms", "q3_ms", "samples"):
            out[("latency", r["model"], r["device"], r["config"], r["session"], col)] = r[col]
    for r in analysis.speedup_table(per).iter_rows(named=True):
        out[("speedup", r["model"], r["device"], r["A"], r["B"], r["session"])] = r["speedup_pct"]
    failed = analysis.failures(store)
    out[("failures",)] = failed.height
    return out


def wrong_values(before: dict[tuple[Any, ...], float], after: dict[tuple[Any, ...], float]) -> list[str]:
    """Numbers shown after that were not shown before, or differ (a missing one is fine)."""
    wrong = []
    for key, value in after.items():
        if key == ("failures",):
            continue
        was = before.get(key)
        same = was is not None and (was == value or (isinstance(was, float) and isinstance(value, float)
                                                      and math.isnan(was) and math.isnan(value)))
        if not same:
            wrong.append(f"{key}: {was} -> {value}")
    return wrong


@pytest.fixture
def shared(tiny_results: Path, tmp_path: Path) -> Path:
    """A copy of a real results folder, beside the study file that made it."""
    dst = tmp_path / "shared"
    shutil.copytree(tiny_results, dst, ignore=shutil.ignore_patterns("report"))
    shutil.copy(tiny_results.parent / "study.toml", tmp_path / "study.toml")
    return dst


def _part_of(root: Path, table: str, index: int = 0) -> Path:
    return sorted(root.glob(f"table={table}/model=*/device=*/part-*.parquet"))[index]


def test_bit_flips_in_data_pages_of_every_table_are_found_left_out_and_made_again(shared: Path, tally, store_rows,
                                                                                 ray_session: None) -> None:
    """One flipped bit inside a data page of a part of each table, a truncated part that is
    then deleted with its checksum file (as the old warning advised), a part deleted on
    its own: ``verify`` names each; ``report`` shows no number from them and no other
    number changes; ``run`` makes every one of them again."""
    from deltann.fleet.driver import run_study

    clean = numbers(shared)
    clean_rows = {t: Store(shared).scan(t).collect().height for t in ("predictions", "builds")}
    clean_units = set(Store(shared).scan("builds").collect()["unit_key"])
    damaged = {
        "predictions": (_part_of(shared, "predictions", 0), "logits"),
        "builds": (_part_of(shared, "builds", 1), "message"),
        "timings": (_part_of(shared, "timings", 0), "samples_ns"),
        "sessions": (_part_of(shared, "sessions", 0), "configs"),
    }
    for table, (path, column) in damaged.items():
        store_rows.flip_in_data_page(path, column)
    truncated = _part_of(shared, "predictions", 2)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    gone = _part_of(shared, "predictions", 3)
    gone.unlink()  # its checksum file stays: "missing"
    found = verify(shared)
    lines = "\n".join(found.problems)
    for table, (path, _) in damaged.items():
        with tally.case("sharing", f"bit-flip-{table}") as case:
            assert f"corrupt    {path.relative_to(shared)}" in lines, lines
            case.refused(next(line for line in found.problems if str(path.relative_to(shared)) in line))
    with tally.case("sharing", "truncated-part") as case:
        assert f"truncated  {truncated.relative_to(shared)}" in lines, lines
        case.refused(lines)
    with tally.case("sharing", "deleted-part") as case:
        assert f"missing    {gone.relative_to(shared)}" in lines, lines
        case.refused(lines)
    # Deleted as the old warning advised, with its checksum file: the unit's builds row
    # still counts the rows it wrote, so the unit is incomplete.
    truncated.unlink()
    sidecar_path(truncated).unlink()
    found = verify(shared)
    with tally.case("sharing", "truncated-then-deleted") as case:
        assert any(line.startswith("incomplete unit") for line in found.problems), found.problems
        case.refused(found.problems[-1])

    with tally.case("sharing", "report-over-damaged-parts") as case:
        proc = _cli(["report", str(shared), "--out", str(shared.parent / "report")], shared.parent)
        case.tracebacks = (proc.stdout + proc.stderr).count("Traceback")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "left out 5 bad parts and 1 incomplete units or sessions" in proc.stdout, proc.stdout[:3000]
        wrong = wrong_values(clean, numbers(shared))
        case.wrong_values = len(wrong)
        assert not wrong, wrong[:10]
        case.refused(proc.stderr)

    with tally.case("sharing", "run-makes-bad-parts-again") as case:
        summary = run_study(shared.parent / "study.toml", shared, progress=False)
        assert summary.failed == 0 and summary.ran == 4, summary  # the 4 units with a bad part
        assert len(summary.sessions) == 1 and summary.sessions[0]["status"] == "ok"  # timed again
        after = verify(shared)
        assert not after.problems, after.problems
        store = Store(shared)
        assert {t: store.scan(t).collect().height for t in clean_rows} == clean_rows
        assert set(store.scan("builds").collect()["unit_key"]) == clean_units
        record = store.read_manifest()["runs"][-1]
        assert len(record["regenerated"]) == 4 and record["status"] == "finished"
        assert len(record["quarantined"]) == 5  # the bad parts, kept for inspection
        assert len(list((shared / "quarantine").rglob("part-*.parquet"))) == 4
        case.accepted()


def test_every_random_bit_flip_in_a_logits_page_is_found(shared: Path, tally, store_rows) -> None:
    """Issue 15 saw 9 of 15 random flips in a logits page decode, one of them to max
    |Δlogit| 1.395 in the report: with checksums, every flip is found."""
    from deltann.store_integrity import check_part
    from deltann.store import SCHEMAS

    part = _part_of(shared, "predictions")
    good = part.read_bytes()
    rng = random.Random(15)
    for i in range(15):
        part.write_bytes(good)
        store_rows.flip_in_data_page(part, "logits", rng)
        with tally.case("sharing", f"logits-flip-{i}") as case:
            check = check_part(part, "predictions", SCHEMAS["predictions"])
            assert check.state == "corrupt", check
            case.refused(check.reason)
    part.write_bytes(good)


#: A column of each table, and how a group of that table is named in its rows.
FLIP_COLUMNS = {"predictions": ("logits", "unit_key"), "builds": ("message", "unit_key"),
                "timings": ("samples_ns", "session"), "sessions": ("configs", "session"),
                "tuning": ("record_json", "tuning_key"), "layers": ("max_abs", "pair")}


@pytest.mark.parametrize("table", list(FLIP_COLUMNS))
def test_a_bit_flip_in_a_data_page_of_any_table_is_found(tmp_path: Path, tally, store_rows,
                                                        table: str) -> None:
    """Every table, ``tuning`` and ``layers`` included (parts written as their writers
    write them): the flipped part is named by ``verify`` and its rows are not read."""
    from deltann.store import SCHEMAS, tag

    import pyarrow as pa

    store = store_rows.new_store(tmp_path)
    column, group = FLIP_COLUMNS[table]
    values = {"predictions": {"logits": [0.5] * 1000}, "builds": {"message": "m" * 200, "passes": []},
              "timings": {"samples_ns": list(range(500))}, "sessions": {"configs": [f"c{i}" for i in range(50)]},
              "tuning": {"record_json": "{" + "r" * 500 + "}"}, "layers": {"max_abs": 0.25}}[table]
    for key in ("g1", "g2"):
        rows = [store_rows.row(table, **values, **{group: key}) for _ in range(8)]
        store.write(tag(pa.Table.from_pylist(rows, schema=SCHEMAS[table]), table, key, 0))
    part = sorted(tmp_path.glob(f"table={table}/model=*/device=*/part-g1-*.parquet"))[0]
    store_rows.flip_in_data_page(part, column)
    with tally.case("sharing", f"bit-flip-any-table-{table}") as case:
        found = verify(tmp_path)
        assert len(found.problems) == 1 and found.problems[0].startswith(f"corrupt    {part.relative_to(tmp_path)}")
        seen = Store(tmp_path).scan(table, complete_only=False).collect()
        assert set(seen[group]) == {"g2"} and seen.height == 8
        case.refused(found.problems[0])


def _run_lab(study: Path, out: Path, lab: str) -> None:
    from deltann.fleet.driver import run_study

    summary = run_study(study, out, progress=False, lab=lab)
    assert summary.failed == 0 and summary.ran == summary.planned, summary


def test_two_labs_merge_side_by_side_and_nothing_is_replaced(parts, tmp_path: Path, tally,
                                                             ray_session: None) -> None:
    """Two labs run the same study into their own folders (lab B a second study too): copying
    one folder over the other replaces nothing now; ``deltann merge`` keeps every row of both
    with its origin and lists every run; the report shows both labs; a unit held with other
    rows under the same key is a conflict reported in one line, never a replacement."""
    study = tmp_path / "share.toml"
    study.write_text(STUDY)
    other = tmp_path / "other.toml"
    other.write_text(STUDY.replace('name = "share"', 'name = "other"').replace("limit = 2", "limit = 3")
                     .replace('runtimes = ["native", "tvm"]\nsettings = ["basic"]\n', 'runtimes = ["native"]\n'))
    a, b = tmp_path / "lab-a", tmp_path / "lab-b"
    _run_lab(study, a, "lab-a")
    _run_lab(study, b, "lab-b")
    _run_lab(other, b, "lab-b")
    parts_a, parts_b = parts.snapshot(a), parts.snapshot(b)

    with tally.case("sharing", "copy-one-lab-over-another") as case:
        copied = tmp_path / "copied"
        shutil.copytree(a, copied)
        shutil.copytree(b, copied, dirs_exist_ok=True)
        replaced, lost = parts.changed(parts_a, copied)
        case.rows_replaced, case.rows_lost = replaced, lost
        runs = Store(copied).read_manifest()["runs"]
        assert sorted((r["lab"], r["study"]) for r in runs) == [("lab-a", "share"), ("lab-b", "other"),
                                                               ("lab-b", "share")]
        case.accepted()

    merged = tmp_path / "merged"
    with tally.case("sharing", "merge-two-labs") as case:
        proc = _cli(["merge", str(a), str(b), "--into", str(merged)], tmp_path)
        case.tracebacks = (proc.stdout + proc.stderr).count("Traceback")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "0 conflicts" in proc.stdout and "0 left out" in proc.stdout, proc.stdout
        ra, la = parts.changed(parts_a, merged)
        rb, lb = parts.changed(parts_b, merged)
        case.rows_replaced, case.rows_lost = ra + rb, la + lb
        assert len(parts.snapshot(merged)) == len(parts_a) + len(parts_b)
        runs = Store(merged).read_manifest()["runs"]
        assert len(runs) == 3 and {r["source"] for r in runs} == {str(a.resolve()), str(b.resolve())}
        builds = Store(merged).scan("builds").collect()
        assert builds.group_by("lab").len().sort("lab").rows() == [("lab-a", 4), ("lab-b", 6)]
        assert not verify(merged).problems
        case.accepted()

    with tally.case("sharing", "report-two-labs") as case:
        proc = _cli(["report", str(merged)], tmp_path)
        case.tracebacks = (proc.stdout + proc.stderr).count("Traceback")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Labs (2): lab-a:" in proc.stdout and "lab-b:" in proc.stdout
        latency = pl.read_csv(merged / "report" / "latency.csv")
        assert set(latency["device"]) == {"local@lab-a", "local@lab-b"}  # side by side, never pooled
        assert latency.height == 4 + 4  # lab B's second study timed the same configurations again
        pooled = _cli(["report", str(merged), "--pool", "--out", str(tmp_path / "pooled")], tmp_path)
        assert pooled.returncode == 0 and "Pooled (--pool)" in pooled.stdout, pooled.stderr[-2000:]
        assert set(pl.read_csv(tmp_path / "pooled" / "latency.csv")["device"]) == {"local"}
        case.accepted()

    with tally.case("sharing", "merge-again-is-idempotent") as case:
        before = parts.snapshot(merged)
        proc = _cli(["merge", str(a), str(b), "--into", str(merged)], tmp_path)
        assert proc.returncode == 0 and "0 parts copied" in proc.stdout, proc.stdout
        case.rows_replaced, case.rows_lost = parts.changed(before, merged)
        assert len(Store(merged).read_manifest()["runs"]) == 3
        case.accepted()

    with tally.case("sharing", "merge-conflict") as case:
        # The same unit key with other rows: lab A's folder copied, one unit's builds row
        # rewritten there (another attempt at it, say) with a fresh checksum.
        fork = tmp_path / "fork"
        shutil.copytree(a, fork)
        part = _part_of(fork, "builds")
        table = pq.read_table(part)
        table = table.set_column(table.schema.get_field_index("total_s"), "total_s",
                                 pl.Series([123.0]).to_arrow())
        pq.write_table(table, part)
        from deltann.store_integrity import Sidecar, file_digest, sidecar_bytes

        digest, size = file_digest(part)
        sidecar_path(part).write_bytes(sidecar_bytes(Sidecar(digest, size, 1, "builds", part.name[5:-13])))
        into = tmp_path / "into"
        shutil.copytree(a, into)
        before = parts.snapshot(into)
        proc = _cli(["merge", str(fork), "--into", str(into)], tmp_path)
        conflicts = [line for line in proc.stdout.splitlines() if line.startswith("conflict:")]
        assert proc.returncode == 1 and len(conflicts) == 1, proc.stdout + proc.stderr
        assert part.name[5:21] in conflicts[0] and "kept" in conflicts[0]
        case.rows_replaced, case.rows_lost = parts.changed(before, into)
        case.refused(conflicts[0])


def test_concurrent_runs_each_leave_a_run_record(parts, shared: Path, tally) -> None:
    """Six reruns into one folder at once: six run records (the issue saw five entries of
    six); each finished."""
    before = parts.snapshot(shared)
    n0 = len(Store(shared).read_manifest()["runs"])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-m", "deltann", "run", "study.toml", "--out", str(shared),
                               "--quiet"], cwd=shared.parent, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outputs = [p.communicate(timeout=600) for p in procs]
    with tally.case("sharing", "six-concurrent-reruns") as case:
        assert all(p.returncode == 0 for p in procs), outputs
        runs = Store(shared).read_manifest()["runs"]
        assert len(runs) == n0 + 6 and all(r["status"] == "finished" for r in runs[n0:]), runs[n0:]
        case.rows_replaced, case.rows_lost = parts.changed(before, shared)
        case.accepted()


def _kill_session(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a process started with ``start_new_session`` and every process of its
    session (Ray's own, if it got that far) — only processes this test started."""
    import psutil

    sid = proc.pid
    victims = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(p.pid) == sid:
                victims.append(p)
    for p in victims:
        with contextlib.suppress(psutil.Error):
            p.kill()
    proc.wait(timeout=60)
    psutil.wait_procs(victims, timeout=30)


def test_a_killed_run_stays_on_record_as_started(shared: Path, tally) -> None:
    study = shared.parent / "more.toml"
    study.write_text((shared.parent / "study.toml").read_text().replace('settings = ["basic", "extended"]',
                                                                         'settings = ["basic", "default"]'))
    runs_dir = shared / "runs"
    known = set(runs_dir.glob("*.json"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "deltann", "run", str(study), "--out", str(shared), "--quiet"],
                            cwd=shared.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not set(runs_dir.glob("*.json")) - known:
            assert proc.poll() is None and time.monotonic() < deadline, "the run never recorded its start"
            time.sleep(0.05)
    finally:
        _kill_session(proc)
    with tally.case("sharing", "killed-run-on-record") as case:
        runs = Store(shared).read_manifest()["runs"]
        assert runs[-1]["status"] == "started" and "finished" not in runs[-1]
        notes = verify(shared).unfinished
        assert len(notes) == 1 and "never finished" in notes[0]
        case.accepted()


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at ``where`` (skips the test where this process may not mount)."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte; returns the filler."""
    filler = folder / "filler.bin"
    with open(filler, "wb") as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
    with contextlib.suppress(OSError), open(filler, "ab") as fh:
        while True:
            fh.write(b"\0")
            fh.flush()
    return filler


def test_a_full_disk_mid_run_is_one_line_and_the_rerun_completes(tmp_path: Path, tally) -> None:
    """The results folder on a 16 MiB tmpfs, filled to the last byte once the run has
    started: one line naming the folder, exit 2, no half-written part; space freed, the
    rerun completes (and tries again what failed for want of space)."""
    (tmp_path / "share.toml").write_text(STUDY)
    with tmpfs(tmp_path / "disk", "16m") as disk:
        out = disk / "results"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, "-m", "deltann", "run", "share.toml", "--out", str(out), "--quiet"],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not list((out / "runs").glob("*.json")):
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.05)
            filler = _fill(disk)
            _, stderr = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                _kill_session(proc)
        with tally.case("sharing", "disk-full-mid-run") as case:
            case.tracebacks = stderr.count("Traceback")
            last = stderr.strip().splitlines()[-1]
            assert proc.returncode == 2, stderr[-3000:]
            assert last.startswith("deltann: error: ") and "disk full" in last and str(out) in last, stderr[-3000:]
            assert not list(out.rglob("table=*/**/*.tmp")) and not list(out.rglob("table=*/**/.*.tmp"))
            assert not verify(out).problems  # what is there is whole
            case.refused(last)
        filler.unlink()
        with tally.case("sharing", "disk-full-rerun") as case:
            proc2 = _cli(["run", "share.toml", "--out", str(out), "--quiet"], tmp_path)
            case.tracebacks = (proc2.stdout + proc2.stderr).count("Traceback")
            assert proc2.returncode == 0, proc2.stderr[-3000:]
            builds = Store(out).scan("builds").collect()
            assert builds.height == 4 and set(builds["status"]) == {"ok"}, builds.select("config", "message")
            assert Store(out).scan("predictions").collect().height == 8
            assert not verify(out).problems
            case.accepted()


def test_a_conversion_that_ran_out_of_space_is_tried_again(tmp_path: Path, tally) -> None:
    """The board's artifact folder full (a 16 MiB tmpfs at ``DIR/artifacts``, filled): the ONNX
    export fails as a ``nospace`` row and the study goes on; with space, the next run
    tries those units again, and says so in its run record."""
    (tmp_path / "share.toml").write_text(STUDY)
    out = tmp_path / "results"
    with tmpfs(out / "artifacts", "16m") as artifacts:
        filler = _fill(artifacts)
        proc = _cli(["run", "share.toml", "--out", str(out), "--quiet"], tmp_path)
        failed = Store(out).scan("builds").filter(pl.col("status") == "failed").collect()
        with tally.case("sharing", "conversion-out-of-space") as case:
            case.tracebacks = (proc.stdout + proc.stderr).count("Traceback")
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert failed.height >= 1 and set(failed["outcome"]) == {"nospace"}, failed.select("config", "message")
            case.refused(failed["message"][0])
        filler.unlink()
        with tally.case("sharing", "transient-failure-retried") as case:
            proc = _cli(["run", "share.toml", "--out", str(out)], tmp_path)
            case.tracebacks = (proc.stdout + proc.stderr).count("Traceback")
            assert proc.returncode == 0 and f"trying again {failed.height} failed units" in proc.stderr, proc.stderr
            builds = Store(out).scan("builds").collect()
            assert builds.height == 4 and set(builds["status"]) == {"ok"}
            record = Store(out).read_manifest()["runs"][-1]
            assert {r["unit_key"] for r in record["retried"]} == set(failed["unit_key"])
            assert all(r["why"] == "nospace" for r in record["retried"])
            case.accepted()


def test_a_read_only_folder_is_refused_in_one_line(parts, shared: Path, tmp_path: Path, tally) -> None:
    with tmpfs(tmp_path / "ro", "64m") as ro:
        results = ro / "results"
        shutil.copytree(shared, results, ignore=shutil.ignore_patterns("artifacts"))
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        before = parts.snapshot(results)
        cases = {
            "run-into-read-only": ["run", str(shared.parent / "study.toml"), "--out", str(results), "--quiet"],
            "report-into-read-only": ["report", str(results)],
            "merge-into-read-only": ["merge", str(shared), "--into", str(results)],
        }
        for what, args in cases.items():
            with tally.case("sharing", what) as case:
                proc = _cli(args, tmp_path)
                case.tracebacks = (proc.stdout + proc.stderr).count("Traceback")
                lines = proc.stderr.strip().splitlines()
                assert proc.returncode == 2 and len(lines) >= 1, proc.stderr[-3000:]
                assert lines[-1].startswith("deltann: error: ") and "read-only" in lines[-1], proc.stderr[-2000:]
                case.rows_replaced, case.rows_lost = parts.changed(before, results)
                case.refused(lines[-1])
        with tally.case("sharing", "read-only-folder-still-reads") as case:
            proc = _cli(["report", str(results), "--out", str(tmp_path / "report")], tmp_path)
            assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
            assert _cli(["verify", str(results)], tmp_path).returncode == 0
            case.accepted()


@pytest.mark.parametrize("what", ["out-is-a-file", "out-is-someone-elses-folder", "out-name-not-utf8",
                                  "image-name-not-utf8", "labels-not-utf8"])
def test_bad_out_folders_and_names_are_refused_in_one_line(tmp_path: Path, tally, what: str) -> None:
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image as PILImage

    import numpy as np

    PILImage.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(images / "ok.jpg")
    body = STUDY.replace("[dataset]\nlimit = 2\n", '[dataset]\nsource = "images"\n')
    (tmp_path / "s.toml").write_text(body)
    out: str | bytes = str(tmp_path / "out")
    named = "out"
    if what == "out-is-a-file":
        Path(out).write_text("my notes")
    elif what == "out-is-someone-elses-folder":
        Path(out).mkdir()
        (Path(out) / "thesis.tex").write_text("\\documentclass{article}")
    elif what == "out-name-not-utf8":
        out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/r\xe9sultats")
        named = "r\\xe9sultats"
    elif what == "image-name-not-utf8":
        shutil.copy(images / "ok.jpg", os.fsdecode(os.fsencode(str(images)) + b"/caf\xe9.jpg"))
        named = "caf\\xe9.jpg"
    else:
        (images / "labels.csv").write_bytes(b"file,label\nok.jpg,1\ncaf\xe9.jpg,2\n")
        named = "labels.csv"
    before = sorted(os.fsencode(str(p)) for p in tmp_path.rglob("*"))
    with tally.case("sharing", what) as case:
        proc = subprocess.run([sys.executable, "-m", "deltann", "run", "s.toml", "--out", out, "--quiet"],
                              cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                              timeout=600)
        stderr = proc.stderr.decode("utf-8", "replace")
        case.tracebacks = stderr.count("Traceback")
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, stderr[-3000:]
        assert lines[0].startswith("deltann: error: ") and named in lines[0], lines
        assert sorted(os.fsencode(str(p)) for p in tmp_path.rglob("*")) == before  # nothing written
        case.refused(lines[0])
