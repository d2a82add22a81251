"""``deltann tuning export/import``: real MetaSchedule records of tiny_cnn (a few trials)
stored in one results folder, exported, imported into another, where the fleet's tuning
phase finds them under the same key and budget; imported twice, nothing is added; bad
files are one-line errors naming them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deltann import zoo
from deltann.compile import metaschedule as tuning, settings
from deltann.errors import StoreError


@pytest.fixture(scope="module")
def records() -> list[tuning.Record]:
    from deltann.compile.frontends import from_torch
    from deltann.compile.pipeline import make_target

    mod = from_torch(zoo.get("tiny_cnn").loaders["torch"](), (1, 3, 64, 64))
    target = make_target(json.dumps({"kind": "llvm", "mcpu": "native"}), "")
    heavy = tuning.select(tuning.extract(mod, settings.passes_of("tuned"), target), "heavy")
    return tuning.tune(heavy[:2], target, 4, threads=1)


def _unit(model: str = "tiny_cnn", device: str = "local") -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(model=model, variant="torch", device=device, lab="a")


def _store_with(root: Path, records: list[tuning.Record], key: str, trials: int, unit: Any = None) -> Any:
    from deltann.fleet import tuning_driver as fleet_tuning
    from deltann.store import Store

    store = Store(root)
    store.ensure_manifest({"name": "s"})
    store.write(fleet_tuning._rows(records, key=key, unit=unit or _unit(), study="s", target='{"target": {}}',
                                   board="node", hostname="host", round_id=f"round-{key}", trials_total=trials))
    return store


def test_export_import_keeps_best_records_and_budget(records: list[tuning.Record], tmp_path: Path) -> None:
    from deltann.fleet import tuning_driver as fleet_tuning
    from deltann.store import Store

    assert len({r.workload_hash for r in records}) == 2 and len(records) > 2  # several records per kernel
    a = _store_with(tmp_path / "a", records, "key-1", 512)
    _store_with(tmp_path / "a", records[:1], "key-2", 64, _unit("other", "x86-server"))
    out = tmp_path / "exported.parquet"
    n = fleet_tuning.export_records(a, out, devices=["local"])
    assert n == 2  # the fastest record of each of the two kernels, only the local kind's

    b = Store(tmp_path / "b")
    b.ensure_manifest({"name": "t"})
    assert fleet_tuning.import_records(out, b) == (2, 0)
    got, trials = fleet_tuning.stored_records(b, "key-1")
    assert trials == 512  # a study there with a budget up to 512 trials does not tune again
    best = {r.workload_hash: r for r in tuning.best_only(records)}
    assert {r.workload_hash: r.record_json for r in got} == {h: r.record_json for h, r in best.items()}
    assert fleet_tuning.stored_records(b, "key-2") == ([], 0)
    tuning.database_from_json(tuning.records_to_json(got))  # what a tuned build applies: it loads
    assert fleet_tuning.import_records(out, b) == (0, 2)  # imported twice: nothing added, nothing replaced
    assert Store(tmp_path / "b").scan("tuning", complete_only=False).collect().height == 2

    every = tmp_path / "all.parquet"
    assert fleet_tuning.export_records(a, every, best_only=False) == len(records) + 1


def test_cli_and_clear_errors(records: list[tuning.Record], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deltann.cli import main
    from deltann.fleet import tuning_driver as fleet_tuning

    _store_with(tmp_path / "a", records, "key-1", 8)
    out = tmp_path / "t.parquet"
    assert main(["tuning", "export", str(tmp_path / "a"), str(out), "--model", "tiny_cnn"]) == 0
    assert main(["tuning", "import", str(out), str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert "2 tuning record(s) written" in printed and "2 tuning record(s) added" in printed

    assert main(["tuning", "export", str(tmp_path / "a"), str(out), "--model", "resnet101"]) == 2
    assert "no tuning records for device(s) any and model(s) ['resnet101']" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["tuning", "export", str(tmp_path / "empty"), str(out)]) == 2
    assert "no tuning records (table=tuning)" in capsys.readouterr().err
    bogus = tmp_path / "bogus.parquet"
    bogus.write_text("not parquet")
    with pytest.raises(StoreError, match=r"bogus\.parquet: not a Parquet file"):
        fleet_tuning.read_export(bogus)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    assert main(["tuning", "import", str(tmp_path / "other.parquet"), str(tmp_path / "b")]) == 2
    assert "other.parquet: not a deltann tuning export" in capsys.readouterr().err
    assert main(["tuning", "import", str(tmp_path / "missing.parquet"), str(tmp_path / "b")]) == 2
    assert "missing.parquet: no such file" in capsys.readouterr().err
