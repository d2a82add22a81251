"""Shared results folders (issue 8, item 3): a part truncated in a copy, stray files, a
missing, corrupt or newer manifest. Readers skip what is broken with a warning naming it
or refuse in one line; ``deltann run`` into a folder that holds another study's rows
never replaces or removes them. Rows lost = rows of readable parts that are gone or
changed afterwards."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from deltann import SCHEMA_VERSION
from deltann.errors import StoreError
from deltann.store import Store

pytestmark = pytest.mark.hardening


@pytest.fixture
def shared(tiny_results: Path, tmp_path: Path) -> Path:
    """A copy of a real results folder (someone's shared folder)."""
    dst = tmp_path / "shared"
    shutil.copytree(tiny_results, dst, ignore=shutil.ignore_patterns("artifacts", "report"))
    return dst


def _a_part(root: Path, table: str) -> Path:
    return sorted(root.glob(f"table={table}/model=*/device=*/part-*.parquet"))[0]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return subprocess.run([sys.executable, "-m", "deltann", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_broken_and_stray_parts_are_skipped_with_a_warning_naming_them(shared: Path, tally, parts,
                                                                       caplog) -> None:
    full = {t: Store(shared).scan(t).collect().height for t in ("predictions", "timings", "builds")}
    truncated = _a_part(shared, "predictions")
    lost_rows = pq.read_metadata(truncated).num_rows
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    folder = truncated.parent
    strays = {
        "text-part": folder / "part-notes-0000.parquet",
        "empty-part": folder / "part-empty-0000.parquet",
        "wrong-types": folder / "part-wrongtypes-0000.parquet",
        "outside-layout": shared / "table=predictions" / "junk" / "part-x-0000.parquet",
    }
    strays["text-part"].write_text("these are not the rows you are looking for")
    strays["empty-part"].write_bytes(b"")
    import pyarrow as pa

    pq.write_table(pa.table({"unit_key": ["k"], "top1": ["not an int"]}), strays["wrong-types"])
    strays["outside-layout"].parent.mkdir()
    shutil.copy(_a_part(shared, "predictions"), strays["outside-layout"])
    (folder / "README.txt").write_text("a stray file that is not a part")
    (folder / ".part-half-0000.parquet.123.tmp").write_bytes(b"PAR1")  # a writer that died
    (folder / "part-dir-0000.parquet").mkdir()  # a folder named like a part
    before = parts.snapshot(shared)

    store = Store(shared)
    with caplog.at_level(logging.WARNING, logger="deltann.store"):
        preds = store.scan("predictions").collect()
        store.scan("predictions").collect()  # warned once per part, not per scan
    assert preds.height == full["predictions"] - lost_rows
    warned = [r.getMessage() for r in caplog.records]
    named = {p: [m for m in warned if str(p) in m] for p in [truncated, *strays.values(), folder / "part-dir-0000.parquet"]}
    for what, path in [("truncated-part", truncated), *strays.items(), ("dir-part", folder / "part-dir-0000.parquet")]:
        with tally.case("results", what) as case:
            if what == "outside-layout":
                assert not named[path]  # not in the layout: never a part, so never read
                assert path not in store.files("predictions")
            else:
                assert len(named[path]) == 1 and "skipping" in named[path][0], (what, warned)
                assert path in store.skipped
            case.refused("; ".join(named[path]))
    assert "is string, expected int32" in store.skipped[strays["wrong-types"]]
    # The truncated part's unit is missing as a whole (issue 15: no table shows a number
    # from part of a unit); every other unit's rows are all there.
    unit = truncated.name[len("part-"):-len("-0000.parquet")]
    everything = {t: Store(shared).scan(t, complete_only=False) for t in ("timings", "builds")}
    assert store.scan("builds").collect().height == full["builds"] - 1
    timed = everything["timings"].filter(pl.col("unit_key") == unit).collect().height
    assert timed > 0 and store.scan("timings").collect().height == full["timings"] - timed
    assert sum(parts.changed(before, shared)) == 0


def test_report_over_a_truncated_part_warns_and_completes(shared: Path, tally) -> None:
    part = _a_part(shared, "timings")
    part.write_bytes(part.read_bytes()[:100])
    with tally.case("results", "report-truncated-part") as case:
        proc = _cli(["report", str(shared), "--out", str(shared.parent / "report")], shared.parent)
        case.tracebacks = (proc.stdout + proc.stderr).count("Traceback")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        warnings = [line for line in proc.stderr.splitlines() if "skipping" in line]
        assert len(warnings) == 1 and str(part) in warnings[0], proc.stderr[-3000:]
        assert (shared.parent / "report" / "report.html").exists()
        case.refused(warnings[0])


@pytest.mark.parametrize("manifest", ["missing", "newer", "not-json", "not-an-object", "no-version", "no-study"])
def test_a_bad_manifest_is_refused_in_one_line(shared: Path, tally, manifest: str) -> None:
    path = shared / "manifest.json"
    good = json.loads(path.read_text())
    bodies = {
        "missing": None,
        "newer": json.dumps(good | {"schema_version": SCHEMA_VERSION + 1}),
        "not-json": path.read_text()[:50],
        "not-an-object": "[1, 2, 3]",
        "no-version": json.dumps({k: v for k, v in good.items() if k != "schema_version"}),
        "no-study": json.dumps(good | {"study": 5}),
    }
    if bodies[manifest] is None:
        path.unlink()
    else:
        path.write_text(bodies[manifest])
    with tally.case("results", f"manifest-{manifest}") as case:
        from deltann.report import build_report

        with pytest.raises(StoreError) as info:
            build_report(shared, shared.parent / "report")
        message = str(info.value)
        assert "\n" not in message and message.startswith(str(path)), message
        if manifest == "newer":
            assert "newer than this deltann" in message
            with pytest.raises(StoreError, match="newer than this deltann"):
                Store(shared).scan("builds")  # the analysis layer refuses too, not only the report
        case.refused(message)


def test_run_into_a_folder_with_a_newer_schema_writes_nothing(shared: Path, tmp_path: Path, tally) -> None:
    path = shared / "manifest.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"schema_version": SCHEMA_VERSION + 1}))
    (tmp_path / "s.toml").write_text('name = "other"\nmodels = ["tiny_cnn"]\nruntimes = ["native"]\n'
                                     "[dataset]\nlimit = 1\n")
    before = sorted(p for p in shared.rglob("*"))
    with tally.case("results", "run-into-newer-schema") as case:
        proc = _cli(["run", "s.toml", "--out", str(shared), "--quiet"], tmp_path)
        case.tracebacks = (proc.stdout + proc.stderr).count("Traceback")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "newer than this deltann" in lines[0], proc.stderr
        assert sorted(p for p in shared.rglob("*")) == before
        case.refused(lines[0])


def test_a_second_study_into_a_shared_folder_keeps_every_row(shared: Path, study_file, tally, parts,
                                                             ray_session: None) -> None:
    """Another study (and a rerun of the first) into the same folder, with its manifest
    gone: nothing already there is replaced or removed, and both studies are recorded."""
    from deltann.fleet.driver import run_study

    (shared / "manifest.json").unlink()  # someone copied the parts but not the manifest
    shutil.rmtree(shared / "runs")  # (its run records, one file per run, are part of it)
    before = parts.snapshot(shared)
    builds_before = Store(shared).scan("builds").collect().height
    study = study_file('name = "second"\nmodels = ["tiny_cnn"]\nvariants = ["torch", "torch->onnx"]\n'
                       'runtimes = ["native"]\n[dataset]\nlimit = 2\n[timing]\nrepeat = 1\n')
    with tally.case("results", "second-study-same-folder") as case:
        summary = run_study(study, shared, progress=False)
        assert (summary.ran, summary.failed) == (2, 0), summary
        case.rows_lost = sum(parts.changed(before, shared))
        assert Store(shared).scan("builds").collect().height == builds_before + 2
        manifest = Store(shared).read_manifest()
        assert [r["study"] for r in manifest["runs"]] == ["second"]
        case.accepted()
    again = parts.snapshot(shared)
    with tally.case("results", "rerun-same-folder") as case:
        summary = run_study(study, shared, progress=False)
        assert (summary.ran, summary.skipped) == (0, 2)
        case.rows_lost = sum(parts.changed(again, shared))
        case.accepted()


def test_the_store_never_replaces_a_part_of_a_unit_another_run_completed(shared: Path, tally, parts) -> None:
    import pyarrow as pa

    from deltann.store import SCHEMAS, tag

    part = _a_part(shared, "builds")
    table = pq.read_table(part)
    key = table.column("unit_key")[0].as_py()
    model, device = part.parent.parent.name.split("=", 1)[1], part.parent.name.split("=", 1)[1]
    table = table.append_column("model", pa.array([model])).append_column("device", pa.array([device]))
    table = table.select(SCHEMAS["builds"].names)
    before = parts.snapshot(shared)
    with tally.case("results", "overwrite-completed-unit") as case:
        with pytest.raises(StoreError, match="another run completed; refusing") as info:
            Store(shared).write(tag(table, "builds", key, 0))
        case.rows_lost = sum(parts.changed(before, shared))
        case.refused(str(info.value))
