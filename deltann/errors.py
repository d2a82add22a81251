"""Typed errors. The library raises these; only the CLI turns them into exit codes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


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


def storage_error(exc: OSError, folder: object, doing: str) -> StoreError | None:
    """The one-line refusal for a write the file system will not take: a full disk, a
    read-only mount, a folder one may not write. None for any other ``OSError`` (a bug or a
    fault to report as such). ``folder`` is shown as given; ``doing`` says what was being
    written."""
    import errno
    import os

    where = os.fsencode(str(folder)).decode("utf-8", "backslashreplace")
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"{where}: disk full ({doing}: {exc.strerror}); free space on that disk or give --out a "
                          "folder on another one, then rerun (what is complete is kept)")
    if code == errno.EROFS:
        return StoreError(f"{where}: read-only file system ({doing}); give --out a writable folder, or copy the "
                          "results to one")
    if code in (errno.EACCES, errno.EPERM):
        return StoreError(f"{where}: permission denied ({doing}); give --out a folder you may write")
    if code == errno.ENOTDIR:
        return StoreError(f"{where}: part of the path is a file, not a folder ({doing}); give --out a folder path")
    return None


@contextlib.contextmanager
def refusing(folder: object, doing: str) -> Iterator[None]:
    """Turn a write the file system will not take into its one-line :class:`StoreError`
    (see :func:`storage_error`); any other ``OSError`` goes on as it is."""
    try:
        yield
    except OSError as exc:
        refusal = storage_error(exc, folder, doing)
        if refusal is None:
            raise
        raise refusal from None
