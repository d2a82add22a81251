from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from deltann import SCHEMA_VERSION
from deltann.errors import StoreError
from deltann.store import SCHEMAS, Store, tag
from deltann.store_integrity import sidecar_path


def _build_row(key: str, status: str = "ok") -> pa.Table:
    row = {name: None for name in SCHEMAS["builds"].names}
    row |= {"unit_key": key, "model": "m/1", "device": "local", "config": "c", "status": status, "passes": []}
    return tag(pa.Table.from_pylist([row], schema=SCHEMAS["builds"]), "builds", key, 0)


def test_write_is_partitioned_and_atomic(tmp_path: Path) -> None:
    store = Store(tmp_path)
    path = store.write(_build_row("k1"))
    assert path.relative_to(tmp_path).parts[:3] == ("table=builds", "model=m_1", "device=local")
    assert not list(tmp_path.rglob("*.tmp"))
    frame = store.scan("builds").collect()
    assert frame["model"].to_list() == ["m_1"] and frame["unit_key"].to_list() == ["k1"]


def test_rewriting_a_unit_replaces_instead_of_duplicating(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write(_build_row("k1", "failed"))
    store.write(_build_row("k1", "ok"))
    assert store.scan("builds").collect()["status"].to_list() == ["ok"]
    assert store.completed_keys() == {"k1"}


def test_rows_of_incomplete_units_are_hidden(tmp_path: Path) -> None:
    store = Store(tmp_path)
    row = {name: None for name in SCHEMAS["timings"].names} | {"unit_key": "half", "model": "m", "device": "d"}
    store.write(tag(pa.Table.from_pylist([row], schema=SCHEMAS["timings"]), "timings", "half", 0))
    assert store.scan("timings").collect().height == 0
    assert store.scan("timings", complete_only=False).collect().height == 1


def test_untagged_batch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="routing metadata"):
        Store(tmp_path).write(pa.table({"x": [1]}))


def test_manifest_records_runs_and_refuses_newer_schema(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write_manifest({"name": "s"}, {"ran": 1})
    store.write_manifest({"name": "s"}, {"ran": 0})
    manifest = store.read_manifest()
    assert [r["ran"] for r in manifest["runs"]] == [1, 0]
    assert manifest["environment"]["packages"]["pyarrow"] == pa.__version__
    manifest["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="newer than this deltann"):
        store.read_manifest()


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no manifest"):
        Store(tmp_path).read_manifest()


def test_files_from_an_older_version_read_with_nulls(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    store = Store(tmp_path)
    path = store.write(_build_row("k1"))
    old = pq.read_table(path).drop_columns(["message", "lab", "rows"]).append_column("retired", pa.array([1]))
    pq.write_table(old, path)
    sidecar_path(path).unlink()  # an older deltann wrote no checksum files
    frame = store.scan("builds").collect()
    assert frame["message"].to_list() == [None] and "retired" not in frame.columns
    assert frame["lab"].to_list() == [None] and frame["rows"].to_list() == [None]
    assert frame["unit_key"].to_list() == ["k1"]
    assert [c.state for c in store.checks("builds")] == ["unchecked"]


def test_manifest_records_each_runs_study(tmp_path: Path) -> None:
    """A later run that adds a variant shows it: in its own run entry and at the top."""
    store = Store(tmp_path)
    store.write_manifest({"name": "s", "variants": ["torch"]}, {"ran": 2})
    store.write_manifest({"name": "s", "variants": ["torch", "torch->onnx"]}, {"ran": 1})
    store.write_manifest({"name": "other", "variants": ["keras"]}, {"ran": 1})
    manifest = store.read_manifest()
    assert [r["spec"]["variants"] for r in manifest["runs"]] == [["torch"], ["torch", "torch->onnx"], ["keras"]]
    assert [r["study"] for r in manifest["runs"]] == ["s", "s", "other"]
    assert manifest["study"]["variants"] == ["torch", "torch->onnx"]  # the folder's study, as last run
    assert manifest["studies"]["other"]["variants"] == ["keras"]
