"""The runtimes by name: each runtime module registers its one
:class:`~deltann.core.runner.Runner` subclass here (``register(TorchRunner)`` at its
end), and everything that needs a fact about a runtime or a framework — the planner, the
converters, user models, the board that runs a unit, the capture of its layers — asks
this registry instead of keeping a table of names.

Adding a runtime is one module with one registration line: a built-in one is listed in
:data:`BUILTIN`; one outside deltann (a plugin, a test) is a Python file or module named
in ``DELTANN_RUNTIMES`` (``os.pathsep``-separated), imported on first lookup in every
process — a board actor gets the variable through :func:`worker_env`. Runtime modules
import only numpy at their top, so loading them all is cheap."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import sys
from pathlib import Path
from typing import TypeVar

from deltann.core.runner import Runner

log = logging.getLogger("deltann.runtimes")

#: the runtime modules shipped with deltann, under this package; imported by dotted name
#: on first lookup, so the registry (foundation) never imports a runner module itself
BUILTIN_PACKAGE = "deltann.runtimes"
BUILTIN: tuple[str, ...] = ("torch_rt", "onnxrt", "keras_rt", "tf_rt", "litert_rt", "tvm_rt")
#: extra runtime modules: Python files or module names, separated by os.pathsep
PLUGINS_ENV = "DELTANN_RUNTIMES"

_RUNNERS: dict[str, type[Runner]] = {}
_LOADED: set[str] = set()

R = TypeVar("R", bound=type[Runner])


def register(cls: R) -> R:
    """Register runner class ``cls`` under ``cls.name``. The same class loaded again (a
    plugin file imported under a second module name) replaces itself; another class
    under a taken name is refused."""
    if not (isinstance(cls, type) and issubclass(cls, Runner)) or cls.name == Runner.name:
        raise TypeError(f"{cls!r}: a runtime is a Runner subclass with its own 'name'")
    old = _RUNNERS.get(cls.name)
    if old is not None and old is not cls and _origin(old) != _origin(cls):
        raise ValueError(f"runtime {cls.name!r} is already registered by {_origin(old)[1]}")
    if cls.framework:
        other = next((r for r in _RUNNERS.values() if r.framework == cls.framework and r.name != cls.name), None)
        if other is not None:
            raise ValueError(f"framework {cls.framework!r} already runs natively in {other.name!r}; "
                             f"{cls.name!r} must declare another framework")
    _RUNNERS[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Forget runtime ``name`` (a plugin's, when a test is done with it)."""
    _RUNNERS.pop(name, None)


def _origin(cls: type) -> tuple[str, str]:
    try:
        where = str(Path(inspect.getfile(cls)).resolve())
    except (TypeError, OSError):
        where = cls.__module__
    return cls.__qualname__, where


def _load() -> None:
    """Import the built-in runtime modules once, and any plugin not imported yet."""
    for name in BUILTIN:
        if name not in _LOADED:
            _LOADED.add(name)
            importlib.import_module(f"{BUILTIN_PACKAGE}.{name}")
    for entry in filter(None, os.environ.get(PLUGINS_ENV, "").split(os.pathsep)):
        if entry not in _LOADED:
            _LOADED.add(entry)  # first: a plugin that looks a runtime up while it loads
            try:
                _import_plugin(entry)
            except BaseException:
                _LOADED.discard(entry)  # every lookup says so until it is fixed
                raise


def _import_plugin(entry: str) -> None:
    path = Path(entry)
    if path.suffix != ".py":
        try:
            importlib.import_module(entry)
        except ModuleNotFoundError as exc:
            raise RuntimeError(f"{PLUGINS_ENV}: cannot import {entry!r} ({exc}); name a Python file or an "
                               "importable module that registers a runtime") from None
        return
    if not path.is_file():
        raise RuntimeError(f"{PLUGINS_ENV}: {entry} not found; name a Python file or an importable module "
                           "that registers a runtime")
    spec = importlib.util.spec_from_file_location(f"deltann_runtime_plugin_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import does: its classes can name their file
    spec.loader.exec_module(module)
    log.debug("runtime plugin %s loaded", path)


def worker_env() -> dict[str, str]:
    """Environment a board process needs to find the same runtimes as this one."""
    value = os.environ.get(PLUGINS_ENV, "")
    return {PLUGINS_ENV: value} if value else {}


def _ordered() -> list[type[Runner]]:
    """The registered classes, built-in ones in :data:`BUILTIN` order whatever imported
    them first (error messages and the framework list stay stable), then the others in
    the order they registered."""
    _load()

    def rank(cls: type[Runner]) -> int:
        package, _, module = cls.__module__.rpartition(".")
        return BUILTIN.index(module) if package == BUILTIN_PACKAGE and module in BUILTIN else len(BUILTIN)

    return sorted(_RUNNERS.values(), key=rank)


def runners() -> dict[str, type[Runner]]:
    """Every registered runner class by runtime name."""
    return {r.name: r for r in _ordered()}


def get(runtime: str) -> type[Runner]:
    """The runner class of ``runtime``; a one-line error naming the known ones."""
    _load()
    try:
        return _RUNNERS[runtime]
    except KeyError:
        raise ValueError(f"no runner for runtime {runtime!r}; known: {', '.join(sorted(_RUNNERS))}") from None


def native(framework: str) -> type[Runner] | None:
    """The runner that runs ``framework``'s models as they are, or None."""
    return next((r for r in _ordered() if r.framework == framework), None)


def native_of(framework: str) -> type[Runner]:
    """:func:`native`, where a framework without a runtime is an error naming the known."""
    runner = native(framework)
    if runner is None:
        raise ValueError(f"no runtime runs framework {framework!r}; known: {', '.join(frameworks())}")
    return runner


def frameworks() -> tuple[str, ...]:
    """Every framework some runtime runs natively, in registration order."""
    return tuple(r.framework for r in _ordered() if r.framework)


def framework_dist(framework: str) -> str:
    """The distribution whose version identifies a model of ``framework``."""
    runner = native_of(framework)
    return runner.framework_dist or runner.dist


def framework_of_suffix(suffix: str) -> str | None:
    """The framework of a model file by its suffix (``.onnx`` -> ``onnx``), or None."""
    return next((r.framework for r in _ordered() if suffix.lower() in r.suffixes), None)


def suffixes() -> tuple[str, ...]:
    """Every model file suffix some framework opens."""
    return tuple(s for r in _ordered() for s in r.suffixes)


def compiled() -> tuple[str, ...]:
    """The runtimes that run a build (stage ``build`` before ``load``): TVM."""
    return tuple(r.name for r in _ordered() if r.compiles)
