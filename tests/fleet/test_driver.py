"""Real runs through Ray in-process (the embedded default)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from deltann.fleet.driver import run_study
from deltann.store import Store


def test_every_unit_streams_rows_into_the_store(tiny_results: Path) -> None:
    store = Store(tiny_results)
    builds = store.scan("builds").collect()
    assert builds.height == 6 and set(builds["status"]) == {"ok"}
    predictions = store.scan("predictions").collect()
    assert predictions.height == 6 * 4
    assert predictions.group_by("unit_key").len()["len"].to_list() == [4] * 6
    assert predictions["logits"].list.len().unique().to_list() == [1000]
    # each timing row keeps its raw samples (int64 ns), as many as `repeat`
    timings = store.scan("timings").collect()
    assert timings["samples_ns"].list.len().to_list() == [3] * 6
    assert timings.schema["samples_ns"] == pl.List(pl.Int64)
    # TVM rows carry build times; every row names its board
    tvm = builds.filter(pl.col("runtime") == "tvm")
    assert (tvm["compile_s"] > 0).all() and tvm.height == 4
    assert builds["board"].str.len_chars().min() > 0


def test_same_inputs_for_every_configuration(tiny_results: Path) -> None:
    p = Store(tiny_results).scan("predictions").collect()
    per_image = p.group_by("image_id").agg(pl.col("input_hash").n_unique().alias("n"))
    assert per_image["n"].to_list() == [1] * 4


def test_second_run_does_no_work(tiny_results: Path, capsys) -> None:
    study = tiny_results.parent / "study.toml"
    before = {p: p.stat().st_mtime_ns for p in tiny_results.rglob("*.parquet")}
    summary = run_study(study, tiny_results, progress=True)
    assert (summary.planned, summary.skipped, summary.ran) == (6, 6, 0)
    assert "nothing to do" in capsys.readouterr().err
    after = {p: p.stat().st_mtime_ns for p in tiny_results.rglob("*.parquet")}
    assert after == before
    assert len(Store(tiny_results).read_manifest()["runs"]) == 2


def test_a_failing_build_becomes_a_row(study_file, tmp_path: Path, monkeypatch, ray_session: None) -> None:
    # A device catalogue whose target this TVM cannot build for: a real build failure
    # (the same path a typo in cluster/devices.toml takes). Native units still run.
    catalogue = tmp_path / "devices.toml"
    catalogue.write_text('[kinds.local]\nresource = "local"\ntarget = { kind = "no-such-target" }\n')
    monkeypatch.setenv("DELTANN_DEVICES", str(catalogue))
    study = study_file('name = "fail"\nmodels = ["tiny_cnn"]\nsettings = ["basic"]\n[dataset]\nlimit = 2\n')
    summary = run_study(study, tmp_path / "out", progress=False)
    assert (summary.ran, summary.failed) == (2, 1)
    builds = Store(tmp_path / "out").scan("builds").collect()
    failed = builds.filter(pl.col("status") == "failed").row(0, named=True)
    assert failed["stage"] == "build" and failed["outcome"] == "exception"
    assert failed["error_type"] == "ValueError" and "no-such-target" in failed["message"]
    ok = builds.filter(pl.col("status") == "ok").row(0, named=True)
    assert ok["config"] == "torch [torch]"
    # the failed unit wrote no predictions; the good one did
    assert Store(tmp_path / "out").scan("predictions").collect()["config"].unique().to_list() == ["torch [torch]"]
