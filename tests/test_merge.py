"""``deltann merge`` (issue 15): every part of every source kept, with its checksum; the same
key with other rows a conflict in one line, never a replacement; a source's bad unit left
out whole; every run of every source recorded once, older manifests' runs included.
(Real two-lab runs merged: tests/hardening/test_sharing.py.)"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from deltann.cli import main
from deltann.commands.verify import verify
from deltann.errors import StoreError
from deltann.store_merge import merge
from deltann.store import Store
from deltann.store_integrity import sidecar_path


def lab_folder(store_rows, root: Path, lab: str, units: list[str]) -> Path:  # noqa: ANN001 - the fixture
    store = store_rows.new_store(root)
    for key in units:
        store_rows.write_unit(store, key, lab=lab)
    store_rows.write_session(store, f"s-{lab}", units, lab=lab)
    store.write_manifest({"name": "s"}, {"lab": lab, "ran": len(units)})
    return root


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.glob("table=*/model=*/device=*/part-*.parquet")}


def test_two_labs_are_kept_whole_with_every_run(store_rows, tmp_path: Path, capsys) -> None:
    a = lab_folder(store_rows, tmp_path / "a", "lab-a", ["a1", "a2"])
    b = lab_folder(store_rows, tmp_path / "b", "lab-b", ["b1"])
    into = tmp_path / "m"
    assert main(["merge", str(a), str(b), "--into", str(into)]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("0 conflicts, 0 left out for bad parts"), out
    merged = digests(into)
    for src in (a, b):
        assert digests(src).items() <= merged.items()  # every part, byte for byte
    assert len(merged) == len(digests(a)) + len(digests(b))
    assert not verify(into).problems
    runs = Store(into).read_manifest()["runs"]
    assert sorted(r["lab"] for r in runs) == ["lab-a", "lab-b"]
    assert {r["source"] for r in runs} == {str(a.resolve()), str(b.resolve())}
    assert json.loads((into / "manifest.json").read_text())["merges"][0]["parts_copied"] == len(merged)
    again = merge([a, b], into)  # idempotent
    assert (again.copied, again.runs, again.conflicts) == (0, 0, [])


def test_the_same_key_with_other_rows_is_a_conflict_and_nothing_is_replaced(store_rows,
                                                                          tmp_path: Path) -> None:
    a = lab_folder(store_rows, tmp_path / "a", "lab-a", ["u1", "u2"])
    fork = tmp_path / "fork"
    shutil.copytree(a, fork)
    store = Store(fork)
    store.replaceable.add("u1")
    store_rows.write_unit(store, "u1", lab="lab-a", images=3)  # another attempt at u1: other rows, same key
    before = digests(a)
    result = merge([fork], a)
    assert len(result.conflicts) == 1 and result.conflicts[0].startswith("conflict: unit u1 (c on local@lab-a)")
    assert digests(a) == before  # nothing of a's replaced
    assert result.copied == 0 and result.present >= 3


def test_a_bad_unit_in_a_source_is_left_out_whole(store_rows, tmp_path: Path) -> None:
    a = lab_folder(store_rows, tmp_path / "a", "lab-a", ["u1", "u2"])
    part = next(a.glob("table=builds/model=*/device=*/part-u1-0000.parquet"))
    part.write_bytes(part.read_bytes()[:-3])
    result = merge([a], tmp_path / "m")
    assert len(result.bad) == 1 and "unit u1" in result.bad[0] and "truncated" in result.bad[0]
    merged = Store(tmp_path / "m")
    assert merged.completed_keys() == {"u2"}
    assert not list((tmp_path / "m").glob("table=predictions/**/part-u1-*.parquet"))  # not half of it either
    assert not verify(tmp_path / "m").problems


def test_runs_an_older_manifest_lists_are_recorded_once(store_rows, tmp_path: Path) -> None:
    old = tmp_path / "old"
    store = Store(old)
    store_rows.write_unit(store, "o1", lab=None)  # type: ignore[arg-type]
    for p in old.glob("table=*/model=*/device=*/*.sum"):
        p.unlink()  # an older deltann wrote no checksums
    (old / "manifest.json").write_text(json.dumps({
        "schema_version": 2, "created": "2026-01-01", "study": {"name": "s"},
        "environment": {"hostname": "old-host"},
        "runs": [{"study": "s", "started": "2026-01-01T00:00:00", "ran": 1}]}))
    into = tmp_path / "m"
    assert merge([old], into).runs == 1
    assert merge([old], into).runs == 0
    runs = Store(into).read_manifest()["runs"]
    assert len(runs) == 1 and runs[0]["ran"] == 1 and runs[0]["source"] == str(old.resolve())
    assert all(sidecar_path(p).exists() for p in into.glob("table=*/model=*/device=*/part-*.parquet"))
    assert Store(into).completed_keys() == {"o1"}


def test_merge_refuses_what_it_cannot_merge(store_rows, tmp_path: Path) -> None:
    a = lab_folder(store_rows, tmp_path / "a", "lab-a", ["u1"])
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("x")
    with pytest.raises(StoreError, match="not empty and not a deltann results folder"):
        merge([a], tmp_path / "notes")
    with pytest.raises(StoreError, match="no manifest"):
        merge([tmp_path / "notes"], tmp_path / "m2")
    with pytest.raises(StoreError, match="nothing to merge"):
        merge([a], a)


@pytest.mark.slow
def test_two_labs_run_the_quickstart_and_merge(tmp_path: Path, ray_session: None, capsys) -> None:
    """Issue 15's check: two labs each run the quickstart with tiny_cnn into their own
    folders, ``deltann merge`` joins them, the report shows both labs side by side and
    every row of both is present (byte for byte). Prints one summary line."""
    import time

    import polars as pl

    from deltann.fleet.driver import run_study

    root = Path(__file__).resolve().parents[1]
    study = tmp_path / "quickstart.toml"
    study.write_text((root / "studies" / "quickstart.toml").read_text()
                     .replace('models = ["efficientnet_lite0"]', 'models = ["tiny_cnn"]'))
    seconds, rows = {}, {}
    for lab in ("lab-a", "lab-b"):
        t = time.perf_counter()
        summary = run_study(study, tmp_path / lab, progress=False, lab=lab)
        seconds[lab] = time.perf_counter() - t
        assert (summary.ran, summary.failed) == (8, 0), summary
        rows[lab] = {t: Store(tmp_path / lab).scan(t).collect().height for t in ("predictions", "timings", "builds")}
    sources = {lab: digests(tmp_path / lab) for lab in rows}
    t = time.perf_counter()
    assert main(["merge", str(tmp_path / "lab-a"), str(tmp_path / "lab-b"), "--into", str(tmp_path / "m")]) == 0
    merge_s = time.perf_counter() - t
    merged = digests(tmp_path / "m")
    present = sum(merged.get(rel) == d for src in sources.values() for rel, d in src.items())
    replaced = sum(rel in merged and merged[rel] != d for src in sources.values() for rel, d in src.items())
    total = sum(len(src) for src in sources.values())
    assert present == total and replaced == 0 and len(merged) == total
    store = Store(tmp_path / "m")
    got = {t: store.scan(t).collect().height for t in ("predictions", "timings", "builds")}
    assert got == {t: rows["lab-a"][t] + rows["lab-b"][t] for t in got}
    t = time.perf_counter()
    assert main(["report", str(tmp_path / "m")]) == 0
    report_s = time.perf_counter() - t
    out = capsys.readouterr().out
    latency = pl.read_csv(tmp_path / "m" / "report" / "latency.csv")
    assert sorted(set(latency["device"])) == ["local@lab-a", "local@lab-b"] and latency.height == 16
    assert "Labs (2): lab-a: 8 units" in out and "lab-b: 8 units" in out
    assert not verify(tmp_path / "m").problems
    with capsys.disabled():
        print(f"\nlabs: 2 labs x 8 tiny_cnn configurations x 10 photos; merged {present} of {total} parts "
              f"({got['predictions']} prediction, {got['timings']} timing, {got['builds']} build rows; 0 replaced, "
              f"0 conflicts); report: {', '.join(sorted(set(latency['device'])))} side by side; run lab-a "
              f"{seconds['lab-a']:.0f} s, lab-b {seconds['lab-b']:.0f} s, merge {merge_s:.1f} s, "
              f"report {report_s:.0f} s (shared 2-core machine)")


def test_two_machines_calling_their_lab_by_one_name_are_noted(store_rows, tmp_path: Path) -> None:
    a = lab_folder(store_rows, tmp_path / "a", "vm", ["a1"])
    b = lab_folder(store_rows, tmp_path / "b", "vm", ["b1"])
    for folder, lab_id in ((a, "1111"), (b, "2222")):  # what two unnamed labs on hosts named "vm" record
        for path in (folder / "runs").glob("*.json"):
            path.write_text(json.dumps(json.loads(path.read_text()) | {"lab_id": lab_id}))
    result = merge([a, b], tmp_path / "m")
    assert len(result.notes) == 1 and "2 different machines call their lab 'vm'" in result.notes[0]
    assert Store(tmp_path / "m").completed_keys() == {"a1", "b1"}  # still both, never one over the other
