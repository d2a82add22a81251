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
    # one timing row per unit and image, keeping its raw samples (int64 ns): `repeat` in
    # each of the 5 blocks, with the block of each sample
    timings = store.scan("timings").collect()
    assert timings.height == 6 * 4 and timings["samples_ns"].list.len().to_list() == [15] * 24
    assert timings.schema["samples_ns"] == pl.List(pl.Int64)
    assert timings["sample_block"].to_list() == [[b for b in range(5) for _ in range(3)]] * 24
    # the six configurations were timed together, in one session, in rotating order
    assert timings["session"].n_unique() == 1 and timings["resident"].all()
    positions = timings.group_by("config").agg(pl.col("positions").first())["positions"].to_list()
    assert sorted(p[0] for p in positions) == list(range(6))  # block 0: each configuration once
    assert all(p[1] == (p[0] - 1) % 6 for p in positions)  # block 1: the order rotated by one
    session = store.scan("sessions", complete_only=False).collect().row(0, named=True)
    assert session["status"] == "ok" and sorted(session["unit_keys"]) == sorted(builds["unit_key"].to_list())
    assert (session["blocks"], session["repeat"], session["images"]) == (5, 3, 4)
    assert session["others_before"] is not None and session["load_before"] is not None
    # TVM rows carry build times; every row names its board
    tvm = builds.filter(pl.col("runtime") == "tvm")
    assert (tvm["compile_s"] > 0).all() and tvm.height == 4
    # ... and how many kernels got no vector schedule: none, through the torch and ONNX frontends
    assert tvm["unscheduled"].to_list() == [0, 0, 0, 0]
    assert builds.filter(pl.col("runtime") != "tvm")["unscheduled"].null_count() == 2
    assert builds["board"].str.len_chars().min() > 0


def test_same_inputs_for_every_configuration(tiny_results: Path) -> None:
    p = Store(tiny_results).scan("predictions").collect()
    per_image = p.group_by("image_id").agg(pl.col("input_hash").n_unique().alias("n"))
    assert per_image["n"].to_list() == [1] * 4


def test_second_run_does_no_work(tiny_results: Path, capsys) -> None:
    study = tiny_results.parent / "study.toml"
    before = {p: p.stat().st_mtime_ns for p in tiny_results.rglob("*.parquet")}
    summary = run_study(study, tiny_results, progress=True)
    assert (summary.planned, summary.skipped, summary.ran) == (6, 6, 0) and summary.sessions == []
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


def test_a_new_protocol_times_again_without_predicting_again(tiny_results: Path, tmp_path: Path) -> None:
    """Predictions do not depend on the timing protocol; timings do: a study whose [timing]
    changed runs no unit and one new session, and the report then uses the newer one."""
    import shutil

    from deltann import analysis

    out = tmp_path / "copy"
    shutil.copytree(tiny_results, out)
    study = tiny_results.parent / "study.toml"
    changed = tmp_path / "study.toml"
    changed.write_text(study.read_text().replace("repeat = 3", "repeat = 2\npause_ms = 0\nimages = 2")
                       .replace("blocks = 5", "blocks = 2"))
    summary = run_study(changed, out, progress=False)
    assert summary.ran == 0 and len(summary.sessions) == 1 and summary.sessions[0]["status"] == "ok"
    store = Store(out)
    assert store.scan("timings").collect()["session"].n_unique() == 2
    latest = analysis.latency_table(store)
    assert set(latest["session"]) == {summary.sessions[0]["session"]}
    assert set(latest["blocks"]) == {2} and set(latest["images"]) == {2} and set(latest["samples"]) == {2 * 2 * 2}
    again = run_study(changed, out, progress=False)
    assert again.ran == 0 and again.sessions == []  # covered now


def test_quiet_run_still_prints_its_one_line_summary(tiny_results: Path, tmp_path: Path, capsys) -> None:
    import shutil

    from deltann.cli import main

    out = tmp_path / "results"
    shutil.copytree(tiny_results, out)
    assert main(["run", str(tiny_results.parent / "study.toml"), "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"0 units run (0 failed), 6 already in the store, 0 pending; results in {out}\n"
    assert captured.err == ""  # no progress bar, no 'nothing to do' banner


def test_shards_resume_one_by_one_and_are_timed_once(study_file, tmp_path: Path, ray_session: None) -> None:
    """Ten photos in shards of five: each configuration is two units; a shard whose part
    is deleted is made again alone, and the configurations are not timed again."""
    study = study_file('name = "shards"\nmodels = ["tiny_cnn"]\nvariants = ["torch", "torch->onnx"]\n'
                       'runtimes = ["native"]\n[dataset]\nshard = 5\n[timing]\nimages = 3\nblocks = 2\n'
                       'pause_ms = 0\n')
    out = tmp_path / "out"
    first = run_study(study, out, progress=False)
    store = Store(out)
    builds = store.scan("builds").collect()
    assert (first.planned, first.ran, first.failed) == (4, 4, 0) and builds["rows"].to_list() == [5] * 4
    preds = store.scan("predictions").collect()
    assert preds.height == 20 and preds.select("config", "image_index").is_unique().all()
    assert sorted(preds["image_index"].unique()) == list(range(10))
    timings = store.scan("timings").collect()
    assert len(first.sessions) == 1 and timings["unit_key"].n_unique() == 2  # one unit per configuration
    assert sorted(timings["image_index"].unique()) == [0, 4, 9]  # spread over the whole set, not one shard
    # one shard's predictions part is lost: only that shard is made again, nothing is timed again
    gone = next(p for p in store.files("predictions") if p.name.startswith(f"part-{builds['unit_key'][3]}"))
    gone.unlink()
    again = run_study(study, out, progress=False)
    assert (again.ran, again.skipped, again.sessions) == (1, 3, [])
    assert Store(out).scan("predictions").collect().height == 20
