"""A checksum per part (issue 15): written with the part, checked by every reader; a bad
part makes its unit (or timing session, or tuning database) missing as a whole; the run
records of concurrent runs never race; several labs are shown side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deltann import SCHEMA_VERSION
from deltann.commands.verify import verify
from deltann.store import SCHEMAS, Store, tag
from deltann.store_integrity import check_part, read_sidecar, sidecar_path


def _part(store: Store, table: str, key: str) -> Path:
    return next(store.root.glob(f"table={table}/model=*/device=*/part-{key}-0000.parquet"))


def test_every_part_gets_a_checksum_of_its_bytes(store_rows, tmp_path: Path) -> None:
    store = store_rows.new_store(tmp_path)
    store_rows.write_unit(store, "u1")
    part = _part(store, "predictions", "u1")
    sidecar = read_sidecar(part)
    import hashlib

    assert sidecar is not None and sidecar.sha256 == hashlib.sha256(part.read_bytes()).hexdigest()
    assert (sidecar.bytes, sidecar.rows, sidecar.table, sidecar.group) == (part.stat().st_size, 2, "predictions",
                                                                          "u1")
    assert pq.ParquetFile(part).metadata.num_rows == 2
    assert [c.state for c in store.checks("predictions")] == ["ok"]


@pytest.mark.parametrize("table", ["predictions", "builds"])
def test_a_flipped_bit_makes_its_whole_unit_missing(store_rows, tmp_path: Path, table: str,
                                                     caplog) -> None:
    store = store_rows.new_store(tmp_path)
    store_rows.write_unit(store, "u1")
    store_rows.write_unit(store, "u2")
    part = _part(store, table, "u1")
    data = bytearray(part.read_bytes())
    data[len(data) // 3] ^= 0x10
    part.write_bytes(bytes(data))
    fresh = Store(tmp_path)
    assert check_part(part, table, SCHEMAS[table]).state == "corrupt"
    assert fresh.completed_keys() == {"u2"}
    assert set(fresh.scan("predictions").collect()["unit_key"]) == {"u2"}  # the other part of u1 too
    assert set(fresh.scan("builds").collect()["unit_key"]) == {"u2"}
    assert [m for m in caplog.messages if "skipping" in m and str(part) in m]
    found = verify(tmp_path)
    assert len(found.problems) == 1 and found.problems[0].startswith("corrupt") and part.name in found.problems[0]


def test_a_truncated_part_and_a_deleted_one_are_named(store_rows, tmp_path: Path) -> None:
    store = store_rows.new_store(tmp_path)
    for key in ("u1", "u2", "u3"):
        store_rows.write_unit(store, key)
    short = _part(store, "predictions", "u1")
    short.write_bytes(short.read_bytes()[:-10])
    _part(store, "predictions", "u2").unlink()  # its checksum file stays
    gone = _part(store, "predictions", "u3")
    gone.unlink()
    sidecar_path(gone).unlink()  # deleted with its checksum: the builds row still counts its rows
    found = verify(tmp_path)
    states = sorted(line.split()[0] for line in found.problems)
    assert states == ["incomplete", "missing", "truncated"], found.problems
    assert "unit u3 (c on local) has 0 of the 2 prediction rows it wrote" in "\n".join(found.problems)
    assert Store(tmp_path).completed_keys() == set()


def test_a_bad_timings_part_makes_its_session_missing(store_rows, tmp_path: Path) -> None:
    store = store_rows.new_store(tmp_path)
    store_rows.write_unit(store, "u1")
    store_rows.write_session(store, "s1", ["u1"])
    store_rows.write_session(store, "s2", ["u1"])
    part = _part(store, "timings", "s1")
    part.write_bytes(part.read_bytes()[:50])
    fresh = Store(tmp_path)
    assert set(fresh.scan("sessions").collect()["session"]) == {"s2"}
    assert set(fresh.scan("timings").collect()["session"]) == {"s2"}
    assert fresh.completed_keys() == {"u1"}  # units are not touched by a session's part
    # a timings part deleted with its checksum: the sessions row counts the rows it wrote
    gone = _part(fresh, "timings", "s2")
    gone.unlink()
    sidecar_path(gone).unlink()
    again = Store(tmp_path)
    assert again.scan("sessions").collect().height == 0
    assert "timing session s2" in "\n".join(again.shortfalls.values())


def test_quarantine_moves_only_what_is_still_bad(store_rows, tmp_path: Path) -> None:
    store = store_rows.new_store(tmp_path)
    store_rows.write_unit(store, "u1")
    store_rows.write_unit(store, "u2")
    bad = _part(store, "predictions", "u1")
    bad.write_bytes(b"PAR1 not really")
    good = _part(store, "predictions", "u2")
    moved = store.quarantine([bad, good])
    assert moved == [bad] and good.exists() and not bad.exists()
    kept = tmp_path / "quarantine" / bad.relative_to(tmp_path)
    assert kept.read_bytes() == b"PAR1 not really" and sidecar_path(kept).exists()
    # out of the layout, the bad part is no longer a problem of its own; its unit stays
    # incomplete until a run makes it again
    assert [p.split(" (")[0] for p in verify(tmp_path).problems] == ["incomplete unit u1"]
    assert Store(tmp_path).completed_keys() == {"u2"}


#: Programs for the concurrency tests, each run by its own interpreter with only deltann
#: importable (as two `deltann run` processes are): a spawn'd multiprocessing child would
#: have to import this test module, which is not on its path outside pytest.
WRITE_SAME_PART = """
import sys
import pyarrow as pa
from deltann.store import SCHEMAS, Store, tag
root, n, value = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = Store(root)
store.replaceable.add("same")  # each may replace the unit's part (as a retry may)
for i in range(n):
    row = {name: None for name in SCHEMAS["builds"].names} | {
        "unit_key": "same", "model": "m", "device": "local", "status": "ok", "passes": [],
        "total_s": float(value * 1000 + i), "rows": 0}
    store.write(tag(pa.Table.from_pylist([row], schema=SCHEMAS["builds"]), "builds", "same", 0))
"""
START_RUNS = """
import sys
from deltann.store import Store
store = Store(sys.argv[1])
for i in range(int(sys.argv[2])):
    path = store.start_run({"name": "s"}, {"lab": "x"})
    if i % 2 == 0:
        store.finish_run(path, {"ran": i})
"""


def _together(program: str, argvs: list[list[str]]) -> None:
    """Run ``program`` once per argument list, all at the same time; each must succeed."""
    procs = [subprocess.Popen([sys.executable, "-c", program, *argv], stderr=subprocess.PIPE, text=True)
             for argv in argvs]
    errors = [proc.communicate(timeout=300)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * len(procs), errors


def test_two_writers_of_one_part_never_leave_it_beside_the_others_checksum(tmp_path: Path) -> None:
    """Two processes rewriting the same part 40 times each (two runs making one unit at
    once): part and checksum change together under the folder's lock."""
    _together(WRITE_SAME_PART, [[str(tmp_path), "40", str(k)] for k in (1, 2)])
    assert [c.state for c in Store(tmp_path).checks("builds")] == ["ok"]


def test_concurrent_runs_never_lose_a_run_record(tmp_path: Path) -> None:
    _together(START_RUNS, [[str(tmp_path), "10"]] * 6)
    runs = Store(tmp_path).read_manifest()["runs"]
    assert len(runs) == 60 and len({r["run"] for r in runs}) == 60
    assert sum(r["status"] == "started" for r in runs) == 30  # never finished: on record as such
    assert all(r["study"] == "s" and r["lab"] == "x" for r in runs)


def test_an_older_folder_keeps_its_runs_and_is_raised_to_this_schema(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({
        "schema_version": 2, "created": "2026-01-01", "study": {"name": "old"},
        "runs": [{"study": "old", "started": "2026-01-01T00:00:00", "ran": 3}]}))
    store = Store(tmp_path)
    store.write_manifest({"name": "old"}, {"ran": 0})
    manifest = store.read_manifest()
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert [r["ran"] for r in manifest["runs"]] == [3, 0]


def test_several_labs_are_shown_side_by_side(store_rows, tmp_path: Path) -> None:
    store = store_rows.new_store(tmp_path)
    store_rows.write_unit(store, "a1", lab="lab-a")
    assert set(Store(tmp_path, sites=True).scan("predictions").collect()["device"]) == {"local"}  # one lab
    store_rows.write_unit(store, "b1", lab="lab-b")
    both = Store(tmp_path, sites=True)
    assert set(both.scan("predictions").collect()["device"]) == {"local@lab-a", "local@lab-b"}
    assert set(both.scan("builds").collect()["device"]) == {"local@lab-a", "local@lab-b"}
    assert set(Store(tmp_path).scan("builds").collect()["device"]) == {"local"}  # writers see the kind
    labs = Store(tmp_path).labs()
    assert labs["lab"].to_list() == ["lab-a", "lab-b"] and labs["units"].to_list() == [1, 1]


def test_rows_without_a_lab_are_told_apart_by_host(store_rows, tmp_path: Path) -> None:
    store = store_rows.new_store(tmp_path)
    store_rows.write_unit(store, "a1", lab=None)  # type: ignore[arg-type] - written before labs existed
    store_rows.write_unit(store, "b1", lab="lab-b")
    for path in tmp_path.glob("table=*/model=*/device=*/part-a1-*.parquet"):
        table = pq.read_table(path)
        hosts = pa.array(["old-host"] * len(table))
        table = table.set_column(table.schema.get_field_index("hostname"), "hostname", hosts)
        pq.write_table(table, path)
        sidecar_path(path).unlink()
    assert set(Store(tmp_path, sites=True).scan("builds").collect()["device"]) == {"local@old-host", "local@lab-b"}


def test_a_damaged_checksum_file_is_named_and_its_part_still_read(store_rows, tmp_path: Path) -> None:
    store = store_rows.new_store(tmp_path)
    store_rows.write_unit(store, "u1")
    part = _part(store, "predictions", "u1")
    sidecar_path(part).write_text("{not json")
    found = verify(tmp_path)
    assert len(found.problems) == 1 and found.problems[0].startswith(f"checksum   {part.relative_to(tmp_path)}")
    assert Store(tmp_path).completed_keys() == {"u1"}  # it decodes: read, and named
