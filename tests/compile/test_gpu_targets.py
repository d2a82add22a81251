"""The GPU and ARM kinds, as far as a machine without their boards allows: tiny_cnn built
through the boards' own path (TvmBuild, the catalogue's target and host) for
``gpu-xavier`` (CUDA sm_72, aarch64 host) and ``arm-hikey`` (OpenCL on Mali, aarch64
host), without running it. Checked: the build holds device kernels for the GPU (CUDA C /
OpenCL C with thread bindings) and aarch64 host code.

What cannot be built here, and why (recorded as each test's ``not_built_here`` property,
shown with ``-rA``):
- running either build: no CUDA GPU or Mali here (the boards run them);
- CUDA binaries for sm_72: the CUDA here is 13.x, which dropped Volta (nvcc has no
  compute_72); Xavier's JetPack 5 ships CUDA 11.4, so its image builds TVM against it
  (images/gpu-xavier/Dockerfile). Where an nvcc that knows compute_72 is found, the test
  compiles the kernels with it instead;
- an aarch64 shared library: linking needs an aarch64 toolchain; the objects are checked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from deltann.compile import settings
from deltann.convert.chain import ArtifactCache
from deltann.core.device_catalogue import DEFAULT_CATALOGUE, load_catalogue
from deltann.runtimes.tvm_rt import TvmBuild

KINDS = load_catalogue(DEFAULT_CATALOGUE)
#: ELF e_machine of AArch64
EM_AARCH64 = 183
#: what a kernel of each device language starts with
KERNEL = {"cuda": re.compile(r'extern "C" __global__ void __launch_bounds__\(\d+\) \w+_kernel\('),
          "opencl": re.compile(r"__kernel void \w+_kernel\(")}


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ArtifactCache(tmp_path_factory.mktemp("artifacts")).get("tiny_cnn", "torch->onnx").payload


def _build(kind_name: str, setting: str, model: Path) -> tuple[object, object]:
    kind = KINDS[kind_name]
    builder = TvmBuild("onnx", model, (1, 3, 64, 64), settings.passes_of(setting), json.dumps(kind.target),
                       json.dumps(kind.host))
    return builder(), builder


def _device_modules(executable: object) -> list[object]:
    (host,) = executable.mod.imports  # the VM executable's compiled library
    return list(host.imports)


def _host_machines(executable: object, folder: Path) -> set[int]:
    """ELF machine of every object file ``export_library`` writes (a .tar: no linking)."""
    executable.export_library(str(folder / "lib.tar"))
    machines = set()
    with tarfile.open(folder / "lib.tar") as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            assert data[:4] == b"\x7fELF", member.name
            machines.add(int.from_bytes(data[18:20], "little"))
    return machines


@pytest.mark.parametrize("setting", ["basic", "extended"])
@pytest.mark.parametrize("kind_name", ["gpu-xavier", "arm-hikey"])
def test_builds_device_kernels_and_aarch64_host_code(kind_name: str, setting: str, onnx_model: Path,
                                                     tmp_path: Path, record_property) -> None:
    executable, builder = _build(kind_name, setting, onnx_model)
    language = KINDS[kind_name].target["kind"]
    target = json.loads(builder.resolved_target)
    assert target["host"]["mtriple"] == "aarch64-linux-gnu" and target["kind"] == language
    (device,) = _device_modules(executable)
    assert device.kind == language
    source = device.inspect_source("")
    kernels = KERNEL[language].findall(source)
    assert len(kernels) >= 5, source[:500]  # conv/relu/mean/dense kernels, not host loops
    assert "threadIdx.x" in source if language == "cuda" else "get_local_id(0)" in source
    assert _host_machines(executable, tmp_path) == {EM_AARCH64}
    record_property("not_built_here", f"running it: no {language} device on this machine")


def _nvcc_arches() -> list[str]:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return []
    out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=60)
    return out.stdout.split()


def test_cuda_kernels_for_sm_72_compile_where_an_nvcc_knows_volta(onnx_model: Path, record_property) -> None:
    from tvm.support import nvcc

    arches = _nvcc_arches()
    if not arches:
        record_property("not_built_here", "CUDA binaries: no nvcc on this machine")
        pytest.skip("no nvcc here: the CUDA C source is checked by the test above")
    executable, builder = _build("gpu-xavier", "default", onnx_model)
    (device,) = _device_modules(executable)
    from deltann.compile.pipeline import make_target

    with make_target(json.dumps(KINDS["gpu-xavier"].target), ""):
        if "compute_72" in arches:
            ptx = nvcc.compile_cuda(device.inspect_source(""), target_format="ptx", compiler="nvcc")
            assert b".target sm_72" in bytes(ptx)
            return
        with pytest.raises(RuntimeError, match="Unsupported gpu architecture 'compute_72'"):
            nvcc.compile_cuda(device.inspect_source(""), target_format="ptx", compiler="nvcc")
    why = (f"CUDA binaries for sm_72: this nvcc ({arches[0]}..{arches[-1]}) has no compute_72 (CUDA 13 dropped "
           "Volta); Xavier's image builds TVM against JetPack 5's CUDA 11.4")
    record_property("not_built_here", why)
    print(why)
