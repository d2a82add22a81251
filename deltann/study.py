"""The study file: a validated description of the comparison matrix.

A study is TOML (never evaluated). Unknown keys and impossible combinations are refused
with :class:`~deltann.errors.StudyError`, one line naming the file, the key and the
allowed values. Example (``studies/quickstart.toml``)::

    name = "quickstart"
    models = ["efficientnet_lite0"]
    variants = ["torch", "torch->onnx"]
    runtimes = ["native", "tvm"]
    settings = ["basic", "default", "extended"]
    devices = ["local"]
    [dataset]
    source = "samples"
    [timing]
    repeat = 5
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deltann import convert, zoo
from deltann.compile import settings as compile_settings
from deltann.convert.base import parse_chain
from deltann.errors import StudyError

RUNTIME_KINDS = ("native", "tvm")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dataset(_Strict):
    source: str = Field("samples", description="'samples' or a folder of images (relative to the study file)")
    limit: int | None = Field(None, ge=1, le=1_000_000)


class Timing(_Strict):
    """TVM ``time_evaluator``'s protocol: ``warmup`` untimed calls, then ``repeat``
    samples, each the mean of ``number`` calls (``number`` grows until one sample lasts
    at least ``min_repeat_ms``)."""

    warmup: int = Field(1, ge=0, le=1000)
    number: int = Field(1, ge=1, le=1_000_000)
    repeat: int = Field(5, ge=1, le=10_000)
    min_repeat_ms: int = Field(0, ge=0, le=600_000)


def _allowed(what: str, value: str, allowed: list[str] | tuple[str, ...]) -> ValueError:
    return ValueError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")


class Study(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    description: str = ""
    models: list[str] = Field(min_length=1, max_length=64)
    variants: list[str] = Field(["torch"], min_length=1, max_length=64)
    runtimes: list[Literal["native", "tvm"]] = Field(["native", "tvm"], min_length=1)
    settings: list[str] = Field(default_factory=lambda: ["default"], max_length=64)
    ablation: bool = Field(False, description="add every catalogue pass alone on top of 'basic' and every "
                           "pass removed from 'extended' (settings 'basic+X', 'extended-X')")
    devices: list[str] = Field(["local"], min_length=1, max_length=64)
    dataset: Dataset = Dataset()
    timing: Timing = Timing()
    replicate: bool = Field(False, description="run every unit on every board of its kind (board-to-board variance)")
    unit_timeout_s: float | None = Field(None, gt=0, le=86_400,
                                         description="a unit still running after this many seconds fails as 'timeout'")

    @field_validator("models")
    @classmethod
    def _models_known(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in zoo.names():
                raise _allowed("model", name, zoo.names())
        return v

    @field_validator("variants")
    @classmethod
    def _variants_known(cls, v: list[str]) -> list[str]:
        """Each entry is a chain (``torch->onnx``, ``torch->tf->tflite:dynamic-range``;
        see :mod:`deltann.convert.base`). A pair with no direct tool is expanded to the
        route it really takes (``torch->tf`` is ``torch->onnx->tf``), so the variant names
        every hop; a quantize mark must be one its hop can apply."""
        available = convert.hops()
        resolved = []
        for chain in v:
            parse_chain(chain)  # ValueError names the unknown framework or quantize mode
            try:
                full = convert.resolve(chain)
            except KeyError:
                hops = [f"{x}->{y}" for x, y in sorted(available)]
                raise _allowed("conversion", chain, hops) from None
            steps = parse_chain(full)
            for a, b in zip(steps, steps[1:], strict=False):
                hop = available[(a.framework, b.framework)]
                if b.quantize not in hop.quantize:
                    raise ValueError(f"{chain!r}: hop {a.framework}->{b.framework} ({hop.tool}) cannot apply "
                                     f"quantize {b.quantize!r}; allowed: {', '.join(hop.quantize)}")
            resolved.append(full)
        return resolved

    @field_validator("settings")
    @classmethod
    def _settings_known(cls, v: list[str]) -> list[str]:
        for s in v:
            if not compile_settings.is_known(s):  # a named setting, or an ablation one ('basic+FastMath')
                raise _allowed("setting", s, compile_settings.names())
        return v

    @model_validator(mode="after")
    def _combinations(self) -> Study:
        # Messages start with the key they are about (see _one_line).
        for model in self.models:
            spec = zoo.get(model)
            for i, chain in enumerate(self.variants):
                source = chain.split("->")[0]
                if source not in spec.loaders:
                    raise ValueError(
                        f"variants.{i}: {chain!r} starts from {source!r} but model {model!r} exists natively "
                        f"only in: {', '.join(spec.frameworks)}"
                    )
        if "tvm" in self.runtimes and not self.settings:
            raise ValueError("settings: runtime 'tvm' needs at least one setting; allowed: "
                             + ", ".join(compile_settings.names()))
        if "tvm" not in self.runtimes and self.settings and "settings" in self.model_fields_set:
            raise ValueError("settings: given, but runtime 'tvm' is not in 'runtimes'; add it or drop 'settings'")
        for name in ("models", "variants", "settings", "devices"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: lists an entry twice; remove the duplicate")
        return self


def _one_line(path: Path, exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(_fields_at(err["loc"][:-1]))
        msg = f"unknown key; allowed keys here: {allowed}"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{path}: {loc + ': ' if loc else ''}{msg}{more}"


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed at a location of the study (top level, dataset, timing)."""
    model: type[BaseModel] = Study
    for part in loc:
        annotation = model.model_fields[str(part)].annotation if str(part) in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return list(model.model_fields)


def parse_study(data: dict[str, Any], path: Path, catalogue: dict[str, Any] | None = None) -> Study:
    """Validate a parsed study mapping; ``catalogue`` is the device catalogue to check
    ``devices`` against (loaded from cluster/devices.toml when None)."""
    from deltann.fleet.devices import load_catalogue

    try:
        study = Study.model_validate(data)
    except ValidationError as exc:
        raise StudyError(_one_line(path, exc)) from None
    kinds = catalogue if catalogue is not None else load_catalogue()
    for i, kind in enumerate(study.devices):
        if kind not in kinds:
            raise StudyError(f"{path}: devices.{i}: unknown device kind {kind!r}; allowed: {', '.join(kinds)}")
    return study


def load_study(path: Path | str, catalogue: dict[str, Any] | None = None) -> Study:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StudyError(f"{path}: study file not found; see studies/quickstart.toml for an example") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError(f"{path}: cannot read study file ({type(exc).__name__}); give a UTF-8 TOML file") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    return parse_study(data, path, catalogue)
