"""The model zoo: a registry of :class:`ModelSpec` by name.

A new model family is a new module here that calls :func:`register`; nothing else
changes. The registry is filled on first use so that ``import deltann`` stays light.
"""

from __future__ import annotations

from deltann.zoo.base import LabelSpace, ModelSpec, Preprocess

__all__ = ["LabelSpace", "ModelSpec", "Preprocess", "get", "names", "register"]

_REGISTRY: dict[str, ModelSpec] = {}
_LOADED = False


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtin() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        from deltann.zoo import efficientnet_lite, tiny, torchvision_models  # noqa: F401


def names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get(name: str) -> ModelSpec:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(names())}") from None
