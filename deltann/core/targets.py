"""Target facts every stage may read: a target's kind, whether it compiles CPU code, and
the host part of a board kind's target. Pure dictionaries and attribute reads, no TVM:
the device catalogue (:mod:`deltann.core.device_catalogue`) and the identity of a board
need them before anything is built. Building, and every check of a target's kind by name
(``cuda``, ``opencl``, ...), stays in the one TVM path, :mod:`deltann.compile.pipeline`."""

from __future__ import annotations

import json
from typing import Any

#: The CPU target kind: its kernels are host code, run on the ``cpu`` device.
CPU_KIND = "llvm"

#: The target a build gets when none is named (localize, bisect): generic CPU code.
DEFAULT_TARGET = json.dumps({"kind": CPU_KIND})


def kind_of(target: Any) -> str:
    """The kind of ``target``: a ``tvm.target.Target``, a spec dict, or a kind name."""
    if isinstance(target, str):
        return target
    if isinstance(target, dict):
        return str(target.get("kind", ""))
    return str(target.kind.name)


def is_cpu(target: Any) -> bool:
    """Whether ``target`` (as :func:`kind_of` takes it) compiles CPU (LLVM host) code."""
    return kind_of(target) == CPU_KIND


def is_gpu(target: Any) -> bool:
    """Whether a ``tvm.target.Target`` is a GPU target (its keys say ``gpu``: cuda, rocm,
    opencl, vulkan, metal): kernels need a thread binding."""
    return "gpu" in target.keys


def is_native(spec: dict[str, Any] | None) -> bool:
    """Whether a catalogue spec names ``mcpu = "native"``: the CPU of the board that builds."""
    return bool(spec) and is_cpu(spec) and spec.get("mcpu") == "native"


def host_of(target: dict[str, Any], host: dict[str, Any] | None) -> dict[str, Any] | None:
    """The host part of a kind's target. On a CPU target (``llvm``) the kernels are host
    code, so the host *is* the target: a host that leaves out the CPU (``{kind = "llvm"}``)
    takes the target's keys, and one that names another CPU or triple is refused. Why:
    TVM compiles every CPU kernel with the host's LLVM target, so a host without ``mcpu``
    made every kernel generic x86-64 (SSE2) whatever the target said (issue 13: 2-3x
    slower). On an accelerator target the host is the board's CPU side, as given."""
    if not is_cpu(target):
        return host
    if host is None:
        return dict(target)
    clash = {k: (v, target.get(k)) for k, v in host.items() if k in target and target[k] != v}
    extra = sorted(set(host) - set(target))
    if clash or extra or not is_cpu(host):
        named = ", ".join([f"{k} = {a!r} (target: {b!r})" for k, (a, b) in clash.items()] + [f"{k}" for k in extra])
        raise ValueError(f"a CPU target's host must be the target itself or left out; the host sets {named}")
    return dict(target)
