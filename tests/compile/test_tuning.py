"""The ``tuned`` setting: MetaSchedule on tiny_cnn with a handful of trials, for real (TVM
extraction, tuning, database, build), its study budget and key, and the fleet's tuning
phase (records in the store, reuse by a rerun, a failure as a ``tune`` row)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from deltann import dataset, zoo
from deltann.compile import metaschedule as tuning, settings
from deltann.errors import StudyError
from deltann.core.device_catalogue import load_catalogue
from deltann.plan import expand
from deltann.study import Study, parse_study

TRIALS = 4  # a handful: enough for every heavy kernel of tiny_cnn to get a measured record


def test_tuned_is_extended_with_the_database_before_the_default_schedule() -> None:
    ext, tuned = settings.passes_of("extended"), settings.passes_of("tuned")
    i = tuned.index(tuning.APPLY)
    assert tuned[:i] + tuned[i + 1:] == ext
    assert tuned[i + 1] == "DefaultSchedule"
    assert settings.is_tuned("tuned") and not settings.is_tuned("extended")
    assert "tuned" in settings.names() and "tuned" not in settings.ablation_names()
    assert "basic+MetaSchedule" not in settings.ablation_names()


def test_budget_defaults_validation_and_key() -> None:
    base = {"name": "t", "models": ["tiny_cnn"], "variants": ["torch"], "runtimes": ["tvm"]}
    study = Study.model_validate(base | {"settings": ["tuned"]})
    assert (study.tuning.trials, study.tuning.trials_per_task, study.tuning.tasks) == (64, None, "heavy")
    with pytest.raises(StudyError, match=r"s\.toml: tuning: given, but no setting is tuned; add 'tuned'"):
        parse_study(base | {"settings": ["extended"], "tuning": {"trials": 8}}, Path("s.toml"))
    with pytest.raises(StudyError, match=r"tuning\.trials_per_task: 9 is more than tuning\.trials \(8\)"):
        parse_study(base | {"settings": ["tuned"], "tuning": {"trials": 8, "trials_per_task": 9}}, Path("s.toml"))
    with pytest.raises(StudyError, match=r"tuning\.tasks"):
        parse_study(base | {"settings": ["tuned"], "tuning": {"tasks": "some"}}, Path("s.toml"))
    with pytest.raises(StudyError, match=r"tuning\.budget: unknown key"):
        parse_study(base | {"settings": ["tuned"], "tuning": {"budget": 8}}, Path("s.toml"))

    kinds = load_catalogue()
    inputs = {"tiny_cnn": dataset.preprocess(dataset.load_samples(1), zoo.get("tiny_cnn").preprocess)}

    def keys(trials: int) -> dict[str, str]:
        s = Study.model_validate(base | {"settings": ["extended", "tuned"], "tuning": {"trials": trials}})
        return {u.setting: u.key for u in expand(s, inputs, kinds)}

    a, b = keys(8), keys(16)
    assert a["extended"] == b["extended"] and a["tuned"] != b["tuned"]


@pytest.fixture(scope="module")
def tiny_tuned() -> dict[str, Any]:
    """tiny_cnn through the ONNX-free torch frontend, its tasks and TRIALS trials of tuning."""
    from deltann.compile.frontends import from_torch
    from deltann.compile.pipeline import make_target

    mod = from_torch(zoo.get("tiny_cnn").loaders["torch"](), (1, 3, 64, 64))
    target = make_target(json.dumps({"kind": "llvm", "mcpu": "native"}), "")
    tasks = tuning.extract(mod, settings.passes_of("tuned"), target)
    heavy = tuning.select(tasks, "heavy")
    records = tuning.tune(heavy, target, TRIALS, threads=1)
    return {"mod": mod, "target": target, "tasks": tasks, "heavy": heavy, "records": records}


def test_extraction_orders_and_selects_tasks(tiny_tuned: dict[str, Any]) -> None:
    tasks, heavy = tiny_tuned["tasks"], tiny_tuned["heavy"]
    assert [t.name for t in heavy] == [t.name for t in tasks if "conv2d" in t.name or "matmul" in t.name]
    assert len(heavy) == 4 and len(tasks) > len(heavy)  # three convs + the classifier; mean etc. are not heavy
    work = [t.flops * t.weight for t in tasks]
    assert work == sorted(work, reverse=True)
    shares = tuning.split(heavy, 2)
    assert sorted(t.name for s in shares for t in s) == sorted(t.name for t in heavy)
    assert all(shares)
    assert tuning.share_budget(10, 2, 4) == 5 and tuning.share_budget(3, 2, 4) == 2


def test_tuned_build_matches_basic(tiny_tuned: dict[str, Any]) -> None:
    import tvm
    from tvm import relax

    from deltann.compile.pipeline import build

    records = tiny_tuned["records"]
    assert records, "no measured record"
    assert {r.task for r in records} <= {t.name for t in tiny_tuned["heavy"]}
    # JSON round trip: what the store keeps and a unit carries is all a build needs
    best = tuning.records_from_json(tuning.records_to_json(tuning.best_only(records)))
    assert len(best) == len({r.workload_hash for r in records})
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)

    def run(passes: tuple[str, ...], database: Any = None) -> np.ndarray:
        vm = relax.VirtualMachine(build(tiny_tuned["mod"], passes, tiny_tuned["target"], database), tvm.cpu())
        out = vm["main"](tvm.runtime.tensor(x))
        return (out if hasattr(out, "numpy") else out[0]).numpy()

    database = tuning.records_to_database(best)
    # the records are found: every tuned kernel is scheduled by the database, before the
    # tuning-free schedule would see it
    scheduled = _scheduled_by(database, tiny_tuned)
    assert sorted(scheduled) == sorted({r.task for r in best}), scheduled
    tuned = run(settings.passes_of("tuned"), database)
    np.testing.assert_allclose(tuned, run(settings.passes_of("basic")), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="without a tuning database"):
        build(tiny_tuned["mod"], settings.passes_of("tuned"), tiny_tuned["target"])


def test_resumed_tuning_starts_from_previous_records(tiny_tuned: dict[str, Any]) -> None:
    """More budget on a rerun: the previous records seed the search and the best of them
    survives unless beaten."""
    previous = tiny_tuned["records"]
    task = [t for t in tiny_tuned["heavy"] if t.name in {r.task for r in previous}][:1]
    more = tuning.tune(task, tiny_tuned["target"], 2, previous=[r for r in previous if r.task == task[0].name],
                       threads=1)
    before = min(r.run_ms for r in previous if r.task == task[0].name)
    assert more and min(r.run_ms for r in more) <= before



def test_default_schedule_competes_after_the_search_and_survives_a_resume(tiny_tuned: dict[str, Any]) -> None:
    """deltann's own schedule of each kernel is a record beside MetaSchedule's sampled ones
    (TRIALS trials over four kernels: at most one sampled candidate each, so the best
    four of a kernel hold both); a resumed search does not start from it, yet it is
    kept and competes again."""
    records, heavy = tiny_tuned["records"], tiny_tuned["heavy"]
    fixed = {r.task for r in records if not tuning._sampled(r)}
    assert fixed == {t.name for t in heavy}
    assert any(tuning._sampled(r) for r in records)
    task = heavy[:1]
    previous = [r for r in records if r.task == task[0].name]
    more = tuning.tune(task, tiny_tuned["target"], 2, previous=previous, threads=1, default_schedule=False)
    kept = [r for r in previous if not tuning._sampled(r)]
    assert kept and {r.record_json for r in kept} <= {r.record_json for r in more}


def test_a_kernel_whose_best_record_is_the_default_schedule_gets_the_current_rule(tiny_tuned: dict[str, Any]
                                                                                    ) -> None:
    """The database a build applies holds sampled records only: a kernel whose best record
    is deltann's own schedule is left to DefaultSchedule (the rule of the build, not the
    trace of the rule that was current when it was tuned)."""
    records = tiny_tuned["records"]
    sampled = next(r for r in records if tuning._sampled(r))
    fixed = next(r for r in records if not tuning._sampled(r) and r.task != sampled.task)
    # as the best of their kernels: the sampled one, and the default one of another kernel
    database = tuning.database_from_json(tuning.records_to_json([sampled, fixed]))
    assert _scheduled_by(database, tiny_tuned) == [sampled.task]
    assert tuning.database_from_json("") is None


def _scheduled_by(database: Any, tiny_tuned: dict[str, Any]) -> list[str]:
    """The kernels of tiny_tuned's module that ``database`` schedules (MetaScheduleApplyDatabase)."""
    import tvm
    from tvm import relax

    prepared = tuning.prepare(tiny_tuned["mod"], settings.passes_of("tuned"), tiny_tuned["target"])
    with tiny_tuned["target"], database:
        applied = relax.transform.MetaScheduleApplyDatabase()(prepared)
    return [gv.name_hint for gv, f in applied.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and f.attrs.get("tirx.is_scheduled")]


# --- the fleet's tuning phase (in-process Ray, as `deltann run`) -----------------------

CATALOGUE = """
[kinds.local]
resource = "local"
target = { kind = "llvm", mcpu = "native" }
host = { kind = "llvm" }

# A CUDA board kind whose boards here have no GPU: tuning for it fails for real
# (MetaSchedule refuses the target), which must become a 'tune' row.
[kinds.cudabox]
resource = "local"
target = { kind = "cuda" }
host = { kind = "llvm" }
"""


@pytest.mark.slow  # ~50 s: two studies, and MetaSchedule's full import for the CUDA kind
def test_fleet_tunes_stores_reuses_and_records_failures(tmp_path: Path, study_file: Any, ray_session: None) -> None:
    from deltann.fleet import tuning_driver as fleet_tuning
    from deltann.fleet.driver import run_study
    from deltann.store import Store

    catalogue = tmp_path / "devices.toml"
    catalogue.write_text(CATALOGUE)
    body = f"""
        name = "tuned"
        models = ["tiny_cnn"]
        variants = ["torch"]
        runtimes = ["tvm"]
        settings = ["extended", "tuned"]
        devices = ["local", "cudabox"]
        [tuning]
        trials = {TRIALS}
        [dataset]
        limit = 2
        [timing]
        repeat = 1
        """
    out = tmp_path / "results"
    summary = run_study(study_file(body), out, progress=False, catalogue=catalogue)
    store = Store(out)
    builds = store.scan("builds").collect()
    by = {(r["setting"], r["device"]): r for r in builds.iter_rows(named=True)}
    assert by[("tuned", "local")]["status"] == "ok", by[("tuned", "local")]
    assert by[("extended", "local")]["status"] == "ok"
    failed = by[("tuned", "cudabox")]
    assert (failed["status"], failed["stage"]) == ("failed", "tune") and failed["message"]
    assert summary.ran == 4

    # the tuned build's answers are extended's (same kernels, other schedules)
    preds = store.scan("predictions").filter(pl.col("device") == "local").collect()
    logits = {r["setting"]: np.array(r["logits"]) for r in preds.filter(pl.col("image_index") == 0).iter_rows(named=True)}
    np.testing.assert_allclose(logits["tuned"], logits["extended"], rtol=1e-4, atol=1e-4)

    rows = store.scan("tuning", complete_only=False).collect()
    assert rows.height > 0 and set(rows["device"]) == {"local"} and set(rows["model"]) == {"tiny_cnn"}
    kinds = load_catalogue(catalogue)
    unit = next(u for u in expand(Study.model_validate({"name": "x", "models": ["tiny_cnn"], "variants": ["torch"],
                                                        "runtimes": ["tvm"], "settings": ["tuned"]}),
                                  {"tiny_cnn": dataset.preprocess(dataset.load_samples(1),
                                                                  zoo.get("tiny_cnn").preprocess)}, kinds))
    resolved = rows["target"][0]
    assert json.loads(resolved)["target"]["mcpu"] != "native"  # resolved on the board
    assert set(rows["tuning_key"]) == {fleet_tuning.tuning_key(unit, resolved)}
    assert set(rows["trials_total"]) == {TRIALS}
    assert (out / "table=tuning" / "model=tiny_cnn" / "device=local").is_dir()

    # `deltann localize` rebuilds the tuned build with its stored records: kernel by kernel,
    # tuned and extended agree (same kernels, other schedules).
    from deltann.commands.localize import localize_pair

    found = localize_pair(out, "torch [tvm:extended]@local", "torch [tvm:tuned]@local", images="all", kernels=True)
    assert found.localization.alignment_rate > 0.95 and found.localization.first_divergent is None

    # A rerun over another image: new unit keys (a timing protocol alone no longer changes
    # them: timing is the sessions'), the same variant and target, so the tuned unit builds
    # from the stored records without tuning again.
    summary2 = run_study(study_file(body.replace("limit = 2", "limit = 3"), "rerun.toml"), out, progress=False,
                         catalogue=catalogue)
    assert summary2.ran == 4 and summary2.skipped == 0
    rows2 = Store(out).scan("tuning", complete_only=False).collect()
    assert rows2.height == rows.height and set(rows2["round"]) == set(rows["round"])
    builds2 = Store(out).scan("builds").collect().filter(pl.col("setting") == "tuned", pl.col("device") == "local")
    assert builds2.height == 2 and set(builds2["status"]) == {"ok"}


def test_outcome_drops_failed_units_and_carries_records() -> None:
    from deltann.fleet.tuning_driver import TuningOutcome
    from deltann.plan import Unit

    u = Unit("k1", "tiny_cnn", "torch", "tvm", "tuned", (), "torch.export", "local", "{}", "{}", "")
    v = replace(u, key="k2")
    outcome = TuningOutcome(units={"k1": replace(u, tuning="[]")}, failed={"k2"})
    assert outcome.apply([u, v]) == [replace(u, tuning="[]")]


def test_tuning_past_its_timeout_is_a_tune_row(tmp_path: Path, study_file: Any, ray_session: None) -> None:
    """A tuning phase that outlives ``tuning.timeout_s`` fails its tuned units as ``tune``
    rows (its Ray task is cancelled), the study ends, and the timeout is not in any key."""
    from deltann.fleet.driver import run_study
    from deltann.store import Store

    body = """
        name = "tuned-timeout"
        models = ["tiny_cnn"]
        variants = ["torch"]
        runtimes = ["tvm"]
        settings = ["tuned"]
        [tuning]
        trials = 4
        timeout_s = 0.001
        [dataset]
        limit = 1
        [timing]
        repeat = 1
        """
    out = tmp_path / "results"
    summary = run_study(study_file(body), out, progress=False)
    builds = Store(out).scan("builds").collect()
    assert summary.failed == 1 and builds.height == 1
    row = builds.row(0, named=True)
    assert (row["status"], row["stage"]) == ("failed", "tune") and "tuning.timeout_s" in row["message"]
    assert Store(out).scan("tuning", complete_only=False).collect().height == 0
    with_timeout = Study.model_validate({"name": "a", "models": ["tiny_cnn"], "settings": ["tuned"],
                                         "tuning": {"timeout_s": 5}})
    assert with_timeout.tuning.budget() == Study.model_validate(
        {"name": "a", "models": ["tiny_cnn"], "settings": ["tuned"]}).tuning.budget()


def test_budgeted_tuning_spends_rounds_on_the_heaviest_measured_kernels(tiny_tuned: dict[str, Any]) -> None:
    """With a gain no round can reach, every kernel stops after its first round: the two
    rounds the trial cap allows go to the two kernels with the largest measured share (best
    time x calls, deltann's schedule measured first), in that order; the others get none."""
    heavy, target = tiny_tuned["heavy"], tiny_tuned["target"]
    records, report = tuning.tune_budgeted(heavy, target, 3600, threads=1, round_trials=4, patience=1,
                                           min_gain=10.0, max_trials=8)
    assert (report.trials, report.stopped) == (8, "budget")
    by_share = sorted(report.tasks, key=lambda t: -t.start_ms * t.weight)
    assert [t.rounds for t in by_share] == [1, 1] + [0] * (len(heavy) - 2)
    assert all(t.converged for t in by_share[:2]) and not any(t.converged for t in by_share[2:])
    assert all(t.best_ms <= t.start_ms < float("inf") for t in report.tasks)
    # every kernel has a record (its default schedule at least), the tuned build applies them
    assert {r.task for r in tuning.best_only(records)} == {t.name for t in heavy}
    assert report.estimate_ms() <= report.estimate_ms(start=True)


def test_budgeted_tuning_stops_when_every_kernel_stops_improving(tiny_tuned: dict[str, Any]) -> None:
    heavy, target = tiny_tuned["heavy"], tiny_tuned["target"]
    _, report = tuning.tune_budgeted(heavy[:1], target, 3600, threads=1, round_trials=4, patience=1, min_gain=10.0)
    assert (report.stopped, report.trials, report.tasks[0].rounds) == ("converged", 4, 1)


def test_merge_records_keeps_each_record_once_and_the_best_per_kernel(tiny_tuned: dict[str, Any]) -> None:
    records = tiny_tuned["records"]
    one = records[: len(records) // 2]
    merged = tuning.merge_records(one, records, records, top_k=2)
    per_kernel: dict[str, list[float]] = {}
    for r in merged:
        per_kernel.setdefault(r.workload_hash, []).append(r.run_ms)
    assert len({(r.workload_hash, r.record_json) for r in merged}) == len(merged)
    assert set(per_kernel) == {r.workload_hash for r in records}
    for whash, times in per_kernel.items():
        best = sorted(r.run_ms for r in records if r.workload_hash == whash)[:2]
        assert sorted(times) == best


def test_minutes_is_a_time_budget_instead_of_trials() -> None:
    base = {"name": "s", "models": ["tiny_cnn"], "settings": ["tuned"]}
    study = parse_study(base | {"tuning": {"minutes": 30}}, Path("s.toml"))
    assert study.tuning.minutes == 30 and "minutes" in study.tuning.budget()
    with pytest.raises(StudyError, match=r"tuning\.minutes: a time budget; drop tuning\.trials"):
        parse_study(base | {"tuning": {"minutes": 30, "trials": 64}}, Path("s.toml"))
