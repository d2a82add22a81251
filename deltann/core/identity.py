"""Who made a result: the lab that ran the study, and the platform of the board that ran it
(issue 15).

Results from two labs must sit side by side and never replace each other, so a unit's
content key holds what makes a measurement different beyond the study itself:

- the **lab**: ``deltann run --lab NAME`` or ``DELTANN_LAB``; unnamed, the driver's
  hostname, keyed together with the machine's id (``/etc/machine-id``), so a folder
  copied to another machine is never taken for that machine's own results, while a
  rerun on the same machine finds its units;
- the **platform** of the board: the kind's TVM target as that board resolves it
  (``mcpu = "native"`` becomes its CPU) and its CPU (model, architecture and instruction
  set extensions, which also decide which kernels onnxruntime, torch and TFLite pick).

Boards, their node ids and hostnames are recorded in every row but are not part of the
key: boards of one kind and platform are interchangeable, so a rerun may run on any of
them and still skips what is done.

``mcpu = "native"`` is resolved on the board, never in the driver: before planning, the
driver asks each live board of a kind for its platform with a cheap Ray task placed like
the board's actor (:func:`deltann.fleet.placement.probe`). On the embedded default the
board is this machine, so it is resolved here (:func:`local_platform`). LLVM's CPU name
needs TVM (slow and large to import), so it is kept per machine in ``~/.cache/deltann`` keyed by the CPU's
identity and the TVM version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform as py_platform
import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deltann.core.targets import host_of, is_native
from deltann.errors import FleetError
from deltann.core.device_catalogue import DeviceKind

log = logging.getLogger("deltann.fleet")

#: Environment variable naming the lab (``deltann run --lab`` wins over it).
LAB_ENV = "DELTANN_LAB"
_LAB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Seconds a board has to answer the platform probe before it is left out of the run.
PROBE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Lab:
    """``name`` is shown in every row; ``key`` is what unit keys hash."""

    name: str
    key: str

    @property
    def id(self) -> str:
        """A short digest of the key, recorded with each run (the machine id stays private):
        two labs of one name but different machines are told apart by it."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:12]


def _machine_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value:
            return value
    return ""


def lab(name: str | None = None) -> Lab:
    """The lab running this driver: ``name``, else ``$DELTANN_LAB``, else this machine."""
    given = name or os.environ.get(LAB_ENV, "")
    if given:
        if not _LAB_NAME.match(given):
            where = "--lab" if name else LAB_ENV
            raise FleetError(f"{where} {given!r}: a lab name is letters, digits, '_', '.', '-' (at most 64, not "
                             "starting with '.' or '-'); choose another")
        return Lab(given, given)
    host = socket.gethostname() or "unknown-host"
    return Lab(host, f"{host}/{_machine_id()}")


@dataclass(frozen=True)
class Platform:
    """One board's platform for one device kind (see the module docstring)."""

    target: str  # JSON of the kind's target as resolved on the board ("" when it has none)
    host: str  # JSON of the host part, resolved the same way ("" when none)
    cpu: str  # "AMD EPYC 7B13 (x86_64)"
    isa: str  # digest of the CPU's feature flags

    @property
    def key(self) -> str:
        """A short id of the platform (boards with equal keys are interchangeable)."""
        blob = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def cpu_facts() -> tuple[str, str]:
    """This machine's CPU: ``"model (arch)"`` and a digest of its feature flags."""
    model, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and not model:
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = value
    except OSError:
        pass
    model = model or py_platform.processor() or "unknown CPU"
    isa = hashlib.sha256(" ".join(sorted(set(flags.split()))).encode()).hexdigest()[:16]
    return f"{model} ({py_platform.machine()})", isa


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deltann"


def llvm_cpu() -> str:
    """LLVM's name for this machine's CPU (what ``mcpu = "native"`` resolves to), from
    the per-machine cache when it has it."""
    from importlib import metadata

    cpu, isa = cpu_facts()
    try:
        tvm_version = metadata.version("apache-tvm")
    except metadata.PackageNotFoundError:
        tvm_version = "absent"
    digest = hashlib.sha256(f"{cpu}\n{isa}\n{tvm_version}".encode()).hexdigest()[:16]
    cached = _cache_dir() / f"llvm-cpu-{digest}.txt"
    try:
        name = cached.read_text().strip()
        if name:
            return name
    except OSError:
        pass
    from tvm.target import codegen

    name = str(codegen.llvm_get_system_cpu())
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        tmp.write_text(name + "\n")
        os.replace(tmp, cached)
    except OSError:  # a read-only home: resolve again next time
        pass
    return name


def resolve_spec(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """``spec`` with ``mcpu = "native"`` replaced by this machine's CPU (as
    :func:`deltann.compile.pipeline.resolve_native`, through the cache)."""
    if spec is None or not is_native(spec):
        return spec
    return {**spec, "mcpu": llvm_cpu()}


def local_platform(kind: DeviceKind) -> Platform:
    """This machine's platform for ``kind`` (run on the board)."""
    cpu, isa = cpu_facts()
    target = dict(kind.target)
    host = host_of(target, dict(kind.host) if kind.host else None)
    resolved = resolve_spec(target)
    resolved_host = resolve_spec(host)
    return Platform(target=json.dumps(resolved, sort_keys=True),
                    host=json.dumps(resolved_host, sort_keys=True) if resolved_host is not None else "",
                    cpu=cpu, isa=isa)
