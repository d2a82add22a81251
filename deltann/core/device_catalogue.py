"""The device catalogue (``cluster/devices.toml``): board kind -> Ray resource, TVM
target, host target, container image. Users add kinds by editing the file."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from deltann.core.targets import host_of

from deltann.errors import StudyError

DEFAULT_CATALOGUE = Path(__file__).resolve().parents[2] / "cluster" / "devices.toml"


class DeviceKind(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    resource: str
    target: dict[str, Any]
    host: dict[str, Any] = {"kind": "llvm"}
    image: str = ""
    container: bool = False

    @model_validator(mode="after")
    def _host_matches_a_cpu_target(self) -> DeviceKind:
        try:
            host_of(self.target, self.host)
        except ValueError as exc:  # a CPU kind's host that names another CPU
            raise ValueError(f"host: {exc}") from None
        return self


def catalogue_path(explicit: Path | None = None) -> Path:
    if explicit is not None:
        return explicit
    env = os.environ.get("DELTANN_DEVICES")
    return Path(env) if env else DEFAULT_CATALOGUE


def load_catalogue(path: Path | None = None) -> dict[str, DeviceKind]:
    path = catalogue_path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise StudyError(f"{path}: device catalogue not found; set DELTANN_DEVICES or restore cluster/devices.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{path}: not valid TOML ({exc})") from None
    kinds = raw.get("kinds")
    if not isinstance(kinds, dict) or not kinds:
        raise StudyError(f"{path}: expected [kinds.<name>] tables")
    out = {}
    for name, body in kinds.items():
        try:
            out[name] = DeviceKind(name=name, **body)
        except (ValidationError, TypeError) as exc:
            first = exc.errors()[0] if isinstance(exc, ValidationError) else {"loc": (), "msg": str(exc)}
            where = ".".join([f"kinds.{name}", *(str(p) for p in first["loc"])])
            raise StudyError(f"{path}: {where}: {first['msg'].removeprefix('Value error, ')}") from None
    return out
