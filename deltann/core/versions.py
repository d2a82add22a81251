"""Installed versions of the tools a result depends on, as content keys and rows record
them: a distribution's version, or ``absent`` where it is not installed here (a board
without that framework still plans and keys the units it does not run)."""

from __future__ import annotations

from functools import cache
from importlib import metadata


@cache
def dist_version(dist: str) -> str:
    """The installed version of distribution ``dist``, or ``"absent"``."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"
