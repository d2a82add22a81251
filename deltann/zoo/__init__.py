"""The model zoo: a registry of :class:`ModelSpec` by name.

A new model family is a new module here that calls :func:`register` and one name in
:data:`BUILTIN`. The registry is filled on first use so that ``import deltann`` stays
light; the family modules are imported by dotted name (as the runtime registry imports
its runners), so this package never imports a module that imports it.
"""

from __future__ import annotations

import importlib

from deltann.zoo.base import LabelSpace, ModelSpec, Preprocess

__all__ = ["LabelSpace", "ModelSpec", "Preprocess", "get", "is_user", "names", "register", "register_user"]

_REGISTRY: dict[str, ModelSpec] = {}
#: User models (a study's ``[user_models]``, see :mod:`deltann.zoo.user`): replaced when a
#: later study defines the name again, and never listed by :func:`names`, so a study can
#: only use a user model it defines itself.
_USER: dict[str, ModelSpec] = {}
_LOADED = False
#: the model-family modules shipped with deltann (under this package)
BUILTIN: tuple[str, ...] = ("efficientnet_lite", "tiny", "torchvision_models")


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtin() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for module in BUILTIN:
            importlib.import_module(f"{__name__}.{module}")


def register_user(spec: ModelSpec) -> ModelSpec:
    _load_builtin()
    if spec.name in _REGISTRY:
        raise ValueError(f"user model {spec.name!r} has the name of a zoo model; pick another name")
    _USER[spec.name] = spec
    return spec


def is_user(name: str) -> bool:
    return name in _USER


def names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get(name: str) -> ModelSpec:
    _load_builtin()
    try:
        return _REGISTRY[name] if name in _REGISTRY else _USER[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(names())}") from None
