"""Typed errors. The library raises these; only the CLI turns them into exit codes."""

from __future__ import annotations


class DeltannError(Exception):
    """Base of every error deltann raises on purpose (never an internal bug). The message
    is one line; ``details`` holds what did not fit (every error of a study file), which
    the CLI prints with ``-v``."""

    def __init__(self, message: str = "", *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = list(details or [])


class StudyError(DeltannError):
    """A study file is invalid. The message is one line naming the file, the key and the fix."""


class WeightsNotFound(DeltannError):
    """Pretrained weights are neither cached nor downloadable; says which file to put where."""


class DatasetError(DeltannError):
    """A dataset folder or image cannot be used; names the file."""


class StoreError(DeltannError):
    """A results folder cannot be read or written as asked."""


class ConversionError(DeltannError):
    """A conversion hop is not available or failed."""


class FleetError(DeltannError):
    """The fleet cannot do what was asked: no container engine, an image build failed, ..."""
