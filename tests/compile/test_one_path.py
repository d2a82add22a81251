"""One TVM path (issue 17, item 2): a run's build and localize's build of the same (frontend,
payload, passes, target) are the same module for the same resolved target, read from the
built modules themselves; and no second build, VM or target-kind check hides elsewhere in
deltann (a target bug once lived in one of four copies: issue 13)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "deltann"
ONE_PATH = PACKAGE / "compile" / "pipeline.py"

#: Files of deltann/ that build or run TVM modules on their own, and why.
STANDALONE = {
    # written into a repro bundle and run where deltann is not installed (its docstring)
    PACKAGE / "report" / "repro_script.py",
}

#: Files that compare target kinds for something other than TVM, and why.
NOT_TVM: set[Path] = set()  # none: even the host devices a container is handed are asked of the one path

#: TVM target kinds as a target spec names them.
KINDS = {"llvm", "cuda", "rocm", "opencl", "vulkan", "metal"}

#: A call that builds a Relax module or makes a VM.
BUILD_OR_VM = re.compile(r"\b(?:tvm\.compile|relax\.build|VirtualMachine)\s*\(")


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _llvm_facts(executable: Any) -> dict[str, Any]:
    """What the compiled CPU code says about itself: the CPUs and features every function
    was compiled for (kernels and host functions alike), the triple, the kernels defined."""
    (llvm,) = [m for m in executable.mod.imports if m.kind == "llvm"]
    ir = llvm.inspect_source("ll")
    return {"cpus": set(re.findall(r'"target-cpu"="([^"]*)"', ir)),
            "features": set(re.findall(r'"target-features"="([^"]*)"', ir)),
            "triple": re.findall(r'^target triple = "([^"]*)"', ir, re.M),
            "functions": sorted(set(re.findall(r"^define .*@(\w+)\(", ir, re.M)))}


def test_a_run_and_localize_build_one_module_for_one_resolved_target(monkeypatch: pytest.MonkeyPatch) -> None:
    from tvm.target import codegen

    from deltann import zoo
    from deltann.compile import pipeline
    from deltann.compile.settings import passes_of
    from deltann.core.device_catalogue import load_catalogue
    from deltann.runtimes import layers
    from deltann.runtimes.tvm_rt import TvmBuild

    built: list[pipeline.Compiled] = []
    real = pipeline.compile_payload

    def spy(*args: Any, **kwargs: Any) -> pipeline.Compiled:
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(pipeline, "compile_payload", spy)
    kind = load_catalogue()["local"]  # mcpu = "native", and the host the catalogue gives
    target_json, host_json = json.dumps(kind.target), json.dumps(kind.host)
    spec = zoo.get("tiny_cnn")
    model = spec.loaders["torch"]()
    passes = passes_of("extended")

    run = TvmBuild("torch.export", model, spec.input_shape, passes, target_json, host_json)
    run_exe = run()
    x = np.random.default_rng(0).standard_normal((1, *spec.input_shape[1:])).astype(np.float32)
    trace = layers.capture_tvm_kernels("torch.export", model, x, passes, target_json, host_json)
    assert trace.layers  # localize really ran the build it captured

    assert len(built) == 2 and built[0].executable is run_exe  # both went through the one path
    run_facts, localize_facts = _llvm_facts(run_exe), _llvm_facts(built[1].executable)
    assert run_facts == localize_facts  # same kernels, same CPU, same features, same triple
    # the board's CPU for kernels and host functions alike, never generic x86-64
    assert run_facts["cpus"] == {codegen.llvm_get_system_cpu()}
    resolved = json.loads(run.resolved_target)
    assert resolved["mcpu"] == resolved["host"]["mcpu"] == codegen.llvm_get_system_cpu()


def test_no_build_or_vm_outside_the_one_path() -> None:
    found = {p.relative_to(PACKAGE).as_posix(): BUILD_OR_VM.findall(p.read_text()) for p in _sources()
             if p != ONE_PATH and p not in STANDALONE}
    assert {name: calls for name, calls in found.items() if calls} == {}
    # the scan sees the calls where they are
    assert sorted(BUILD_OR_VM.findall(ONE_PATH.read_text())) == ["VirtualMachine(", "tvm.compile("]


def _kind_checks(tree: ast.AST) -> list[int]:
    """Lines comparing something with a TVM target kind's name (``kind == "llvm"``,
    ``target.kind.name != "cuda"``, ``kind in ("cuda", "rocm")``)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            names = {c.value for o in operands for c in ast.walk(o) if isinstance(c, ast.Constant)}
            if names & KINDS:
                lines.append(node.lineno)
    return lines


def test_target_kind_checks_live_in_the_one_path() -> None:
    found = {p.relative_to(PACKAGE).as_posix(): _kind_checks(ast.parse(p.read_text())) for p in _sources()
             if p != ONE_PATH and p not in STANDALONE | NOT_TVM}
    assert {name: lines for name, lines in found.items() if lines} == {}
    assert _kind_checks(ast.parse(ONE_PATH.read_text()))  # the scan sees them where they are


def test_kind_helpers() -> None:
    import tvm

    from deltann.compile import pipeline

    assert pipeline.is_cpu(tvm.target.Target("llvm")) and pipeline.is_cpu({"kind": "llvm"})
    assert not pipeline.is_cpu(tvm.target.Target({"kind": "cuda", "arch": "sm_72"}))
    assert pipeline.is_gpu(tvm.target.Target({"kind": "opencl", "device": "mali"}))
    assert not pipeline.is_gpu(tvm.target.Target("llvm"))
    assert pipeline.is_native({"kind": "llvm", "mcpu": "native"}) and not pipeline.is_native({"kind": "llvm"})
    assert str(pipeline.device("llvm")) == str(tvm.cpu(0))
    with pytest.raises(RuntimeError, match="'metal' has no device on this machine"):  # Metal: macOS only
        pipeline.device(tvm.target.Target({"kind": "metal"}), check=True)


def test_tuning_measures_candidates_built_for_the_boards_cpu() -> None:
    """A catalogue host without ``mcpu`` ({kind = "llvm"}) once made every MetaSchedule
    candidate generic x86-64 code while the tuned build ran this CPU's: the tuning target
    carries the target's CPU in its host, and the stored key's spec stays as given."""
    from deltann.compile import pipeline

    spec = pipeline.resolved_spec('{"kind": "llvm", "mcpu": "native"}', '{"kind": "llvm"}')
    assert spec["host"] == {"kind": "llvm"}  # the key reads the catalogue as written
    target = pipeline.tuning_target_of(json.dumps(spec))
    cpu = str(target.attrs["mcpu"])
    assert cpu and cpu != "native" and str(target.host.attrs["mcpu"]) == cpu
