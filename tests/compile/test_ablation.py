"""Ablation: setting names, the study option's expansion into units, and the tables."""

from __future__ import annotations

import polars as pl
import pytest

from deltann.analysis import pass_tables as ablation
from deltann.compile import catalogue
from deltann.compile import settings as compile_settings


def test_ablation_names_are_the_right_builds() -> None:
    names = compile_settings.ablation_names()
    mapped = catalogue.names(mapped_only=True)
    added = [n for n in names if n.startswith("basic+")]
    removed = [n for n in names if n.startswith("extended-")]
    assert added == [f"basic+{n}" for n in mapped if n not in ("SimplifyInference", "DefaultSchedule")]
    assert removed == [f"extended-{n}" for n in mapped if n in compile_settings.ENABLED["extended"]]
    # the schedule is in both bases: basic+X and extended-X are measured over scheduled kernels,
    # and what the schedule does alone is `unscheduled` against basic
    assert names[-1] == compile_settings.UNSCHEDULED and "extended-DefaultSchedule" in names
    for name in [*added, *removed]:
        assert (compile_settings.passes_of(name)[-1] == "DefaultSchedule") == (name != "extended-DefaultSchedule")
    assert "basic+CanonicalizeOps" not in names  # "none" passes build nothing new
    for name in added:
        entry = catalogue.get(name.split("+")[1])
        passes = compile_settings.passes_of(name)
        basic = compile_settings.SETTINGS["basic"]
        assert all(p in passes for p in entry.passes) and all(p in passes for p in basic)
        assert len(passes) == len(basic) + len(entry.passes)
    assert "FastMathTransform" not in compile_settings.passes_of("extended-FastMath")
    assert "FuseOps" not in compile_settings.passes_of("extended-OpFusion")
    # the one Relax pass two seed passes share goes when either is removed
    assert "CombineParallelMatmul" not in compile_settings.passes_of("extended-CombineParallelDense")


@pytest.mark.parametrize("bad", ["basic+Nope", "fast+FoldConstant", "basic*FastMath", "O3"])
def test_unknown_setting_names_are_refused(bad: str) -> None:
    assert not compile_settings.is_known(bad)
    with pytest.raises(KeyError):
        compile_settings.passes_of(bad)


def test_study_ablation_expands_into_units() -> None:
    from deltann import dataset, zoo
    from deltann.core.device_catalogue import load_catalogue
    from deltann.plan import expand
    from deltann.study import Study

    inputs = {"tiny_cnn": dataset.preprocess(dataset.load_samples(1), zoo.get("tiny_cnn").preprocess)}
    base = {"name": "a", "models": ["tiny_cnn"], "variants": ["torch"], "runtimes": ["tvm"],
            "settings": ["basic", "extended"]}
    plain = expand(Study.model_validate(base), inputs, load_catalogue())
    units = expand(Study.model_validate(base | {"ablation": True}), inputs, load_catalogue())
    settings = [u.setting for u in units]
    assert settings == ["basic", "extended", *compile_settings.ablation_names()]
    assert {u.key for u in plain} <= {u.key for u in units}  # the named settings keep their keys
    by = {u.setting: u for u in units}
    assert by["basic+FastMath"].passes == compile_settings.passes_of("basic+FastMath")
    assert len({u.key for u in units}) == len(units)
    # an ablation setting can also be named on its own
    one = expand(Study.model_validate(base | {"settings": ["extended-OpFusion"]}), inputs, load_catalogue())
    assert [u.setting for u in one] == ["extended-OpFusion"]


def test_every_named_setting_but_unscheduled_ends_with_the_schedule() -> None:
    """Scheduling is part of lowering: the settings differ in graph-level passes only."""
    graph = {}
    for name in compile_settings.names():
        passes = compile_settings.passes_of(name)
        assert (passes[-1] == "DefaultSchedule") == (name != compile_settings.UNSCHEDULED), name
        graph[name] = tuple(p for p in passes if p != "DefaultSchedule")
    assert graph[compile_settings.UNSCHEDULED] == graph["basic"]
    assert compile_settings.without("basic", "DefaultSchedule") == compile_settings.UNSCHEDULED
    assert compile_settings.without("basic", "SimplifyInference") is None


def _frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    times = {"basic": 100.0, "default": 50.0, "extended": 20.0, "basic+OpFusion": 80.0,
             "basic+FastMath": 99.0, "extended-OpFusion": 40.0, "extended-FastMath": 20.0,
             "unscheduled": 900.0, "extended-DefaultSchedule": 300.0}
    key = {"model": "m", "variant": "torch", "device": "local"}
    builds = [key | {"setting": s, "status": "ok", "runtime": "tvm"} for s in times]
    builds.append(key | {"setting": "basic+AlterOpLayout", "status": "failed", "runtime": "tvm"})
    timings = [key | {"setting": s, "median_ns": int(t * 1e6)} for s, t in times.items()]
    return pl.DataFrame(builds), pl.DataFrame(timings)


def test_mixed_pass_lists_names_the_settings_built_both_ways() -> None:
    """A store that ran under an older deltann (basic without the schedule) and this one."""
    key = {"model": "m", "variant": "torch", "device": "local", "runtime": "tvm", "status": "ok"}
    old, new = list(compile_settings.passes_of("unscheduled")), list(compile_settings.passes_of("basic"))
    builds = pl.DataFrame([key | {"setting": "basic", "passes": old}, key | {"setting": "basic", "passes": new},
                           key | {"setting": "extended", "passes": list(compile_settings.passes_of("extended"))},
                           key | {"setting": "native", "passes": [], "runtime": "torch"}])
    assert ablation.mixed_pass_lists(builds) == {"basic": 2}
    assert ablation.mixed_pass_lists(builds.filter(pl.col("passes").list.len() != len(old))) == {}


def test_tables_follow_the_speedup_convention_and_show_failures() -> None:
    builds, timings = _frames()
    table3 = ablation.settings_table(builds, timings)
    assert table3.filter(pl.col("setting") == "default")["speedup_pct_vs_basic"].item() == "100.0"
    assert table3.filter(pl.col("setting") == "extended")["speedup_pct_vs_basic"].item() == "400.0"
    table4 = ablation.per_pass_table(builds, timings)
    assert table4["pass"].to_list() == catalogue.names()
    row = table4.filter(pl.col("pass") == "OpFusion").row(0, named=True)
    assert row["alone_pct (basic→basic+X)"] == "25.0"  # 100/80 - 1
    assert row["adds_pct (extended-X→extended)"] == "100.0"  # 40/20 - 1
    failed = table4.filter(pl.col("pass") == "AlterOpLayout").row(0, named=True)
    assert failed["basic+X ms"] == "FAILED" and failed["alone_pct (basic→basic+X)"] == "FAILED"
    schedule = table4.filter(pl.col("pass") == "DefaultSchedule").row(0, named=True)
    assert schedule["basic+X ms"] == "100.0" and schedule["alone_pct (basic→basic+X)"] == "800.0"  # 900/100 - 1
    assert schedule["adds_pct (extended-X→extended)"] == "1400.0"  # 300/20 - 1
    simplify = table4.filter(pl.col("pass") == "SimplifyInference").row(0, named=True)
    assert simplify["basic+X ms"] == "100.0" and simplify["alone_pct (basic→basic+X)"] == ""  # nothing without it
    none = table4.filter(pl.col("pass") == "CombineParallelConv2D").row(0, named=True)
    assert none["relax"] == "none" and none["basic+X ms"] == ""
    assert ablation.speedup_pct(100.0, 50.0) == 100.0


@pytest.mark.slow
def test_ablation_study_end_to_end(tmp_path, ray_session: None) -> None:  # noqa: ANN001 - pytest's Path
    """A real study with ``ablation = true`` on the tiny model: every ablation setting is a
    unit, builds, runs, and lands in Tables III and IV (~1 min)."""
    from deltann.fleet.driver import run_study
    from deltann.store import Store

    study = tmp_path / "ablation.toml"
    study.write_text(
        'name = "ablation"\nmodels = ["tiny_cnn"]\nvariants = ["torch"]\nruntimes = ["tvm"]\n'
        'settings = ["basic", "default", "extended"]\nablation = true\n'
        "[dataset]\nlimit = 1\n[timing]\nwarmup = 0\nnumber = 1\nrepeat = 2\n"
    )
    summary = run_study(study, tmp_path / "results", progress=False)
    assert summary.ran == 3 + len(compile_settings.ablation_names()) and summary.failed == 0, summary
    table3, table4 = ablation.from_store(Store(tmp_path / "results"))
    assert table3["setting"].to_list() == ["basic", "default", "extended", "unscheduled"]
    rows = {r["pass"]: r for r in table4.iter_rows(named=True)}
    assert set(rows) == set(catalogue.names())
    for name in catalogue.names(mapped_only=True):
        assert float(rows[name]["basic+X ms"]) > 0, name
    assert rows["CanonicalizeOps"]["relax"] == "none" and rows["CanonicalizeOps"]["basic+X ms"] == ""
