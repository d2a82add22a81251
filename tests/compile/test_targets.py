"""The target a board builds for is the target it runs on (issue 13): checked on the built
module itself, not on the target object deltann made."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from deltann.compile.pipeline import host_of
from deltann.errors import StudyError
from deltann.core.device_catalogue import load_catalogue


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_the_local_kind_compiles_every_kernel_for_this_cpu() -> None:
    from tvm.target import codegen

    from deltann import zoo
    from deltann.compile.settings import passes_of
    from deltann.runtimes.tvm_rt import TvmBuild

    kind = load_catalogue()["local"]
    spec = zoo.get("tiny_cnn")
    builder = TvmBuild("torch.export", spec.loaders["torch"](), spec.input_shape, passes_of("extended"),
                       json.dumps(kind.target), json.dumps(kind.host))
    executable = builder()
    llvm = [m for m in executable.mod.imports if m.kind == "llvm"]
    assert len(llvm) == 1
    ir = llvm[0].inspect_source("ll")
    kernels = re.findall(r"^define .*@(\w+)\(", ir, re.M)
    assert len(kernels) >= 5  # the model's kernels and the host functions around them
    # Every function's attribute group names this CPU as LLVM detects it: none is generic x86-64
    # (a host without mcpu compiled them all for "generic", the 2-3x of issue 13).
    assert set(re.findall(r'"target-cpu"="([^"]*)"', ir)) == {codegen.llvm_get_system_cpu()}
    if "avx2" in _cpu_flags():  # and the machine code uses the CPU's wide vector registers
        assert re.search(r"%[yz]mm\d", llvm[0].inspect_source("asm"))
    resolved = json.loads(builder.resolved_target)  # recorded in every builds row, host included
    assert resolved["mcpu"] == resolved["host"]["mcpu"] == codegen.llvm_get_system_cpu()


def test_a_cpu_kinds_host_is_its_target() -> None:
    cpu = {"kind": "llvm", "mcpu": "native"}
    assert host_of(cpu, None) == cpu
    assert host_of(cpu, {"kind": "llvm"}) == cpu  # the catalogue's old `host = { kind = "llvm" }`
    assert host_of(cpu, {"kind": "llvm", "mcpu": "native"}) == cpu
    with pytest.raises(ValueError, match="mcpu = 'skylake'"):
        host_of(cpu, {"kind": "llvm", "mcpu": "skylake"})
    with pytest.raises(ValueError, match="mtriple"):
        host_of(cpu, {"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    gpu_host = {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}  # an accelerator's host is the board's CPU side
    assert host_of({"kind": "cuda", "arch": "sm_72"}, gpu_host) == gpu_host


def test_a_catalogue_whose_cpu_host_names_another_cpu_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "devices.toml"
    path.write_text('[kinds.lab]\nresource = "lab"\ntarget = { kind = "llvm", mcpu = "native" }\n'
                    'host = { kind = "llvm", mcpu = "skylake" }\n')
    with pytest.raises(StudyError) as err:
        load_catalogue(path)
    message = str(err.value)
    assert message.startswith(f"{path}: kinds.lab: host:") and "\n" not in message
    assert "target itself or left out" in message
