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
    blocks = 20
"""

from __future__ import annotations

import json
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from deltann import convert, zoo
from deltann.compile import settings as compile_settings
from deltann.convert.chain_spec import parse_chain
from deltann.core.device_catalogue import load_catalogue
from deltann.errors import StudyError
from deltann.runtimes.interleave import Protocol
from deltann.zoo import user
from deltann.zoo.user import UserModel

RUNTIME_KINDS = ("native", "tvm")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dataset(_Strict):
    source: str = Field("samples", description="'samples' or a folder of images (relative to the study file)")
    limit: int | None = Field(None, ge=1, le=1_000_000)
    shard: int = Field(1000, ge=1, le=1_000_000,
                       description="images per unit of work: a configuration over more images is split into "
                       "shards that boards of its kind run in parallel")


class Timing(_Strict):
    """How a board times (deltann.runtimes.interleave): the configurations of one model are
    timed together in ``blocks`` alternating blocks, each configuration's block beginning
    with a ``pause_ms`` settle pause and ``warmup`` untimed calls; within a block every
    timed image gets TVM ``time_evaluator``'s protocol (one untimed call, then ``repeat``
    samples, each the mean of ``number`` calls, ``number`` growing until one sample lasts
    at least ``min_repeat_ms``). ``images``: time that many images, evenly spaced through
    the dataset (deterministic), instead of every image."""

    warmup: int = Field(1, ge=0, le=1000)
    number: int = Field(1, ge=1, le=1_000_000)
    repeat: int = Field(1, ge=1, le=10_000)
    min_repeat_ms: int = Field(0, ge=0, le=600_000)
    blocks: int = Field(20, ge=1, le=1000)
    pause_ms: int = Field(100, ge=0, le=60_000)
    images: int | None = Field(None, ge=1, le=1_000_000)

    def protocol(self) -> Any:
        """The board-side :class:`~deltann.runtimes.interleave.Protocol`."""
        return Protocol(**self.model_dump(exclude={"images"}))

    def timed_indices(self, n: int) -> list[int]:
        """Which of ``n`` images are timed: all, or ``images`` of them evenly spaced."""
        if self.images is None or self.images >= n:
            return list(range(n))
        return sorted({round(i * (n - 1) / max(1, self.images - 1)) for i in range(self.images)})


class Tuning(_Strict):
    """MetaSchedule's budget for the ``tuned`` setting (deltann.compile.metaschedule); part of
    the tuned units' content keys. Without ``[tuning]`` these defaults apply."""

    trials: int = Field(64, ge=1, le=1_000_000, description="measured candidates in all, over the kind's boards")
    trials_per_task: int | None = Field(None, ge=1, le=100_000, description="at most this many per kernel")
    tasks: Literal["heavy", "all"] = Field("heavy", description="'heavy': conv2d/matmul kernels only; 'all'")
    minutes: float | None = Field(None, gt=0, le=7 * 24 * 60,
                                  description="budget in minutes of board time per model variant and kind, instead "
                                  "of trials: spread over the kind's boards (two boards: half the wall time), "
                                  "heaviest measured kernels first, each until it stops improving")
    timeout_s: float | None = Field(None, gt=0, le=7 * 86_400,
                                    description="tuning of one variant still running after this many seconds fails "
                                    "its tuned units as 'tune' rows (not part of any key)")

    def budget(self) -> dict[str, object]:
        """What changes a tuned build's result: the content key's part (not the timeout)."""
        return self.model_dump(exclude={"timeout_s"})


def _allowed(what: str, value: str, allowed: list[str] | tuple[str, ...]) -> ValueError:
    return ValueError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")


class Study(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    description: str = ""
    # Before ``models``: pydantic validates in this order, and ``models`` may name these.
    user_models: dict[str, UserModel] = Field(default_factory=dict, max_length=64,
                                              description="models by path: [user_models.<name>] (zoo/user.py)")
    models: list[str] = Field(min_length=1, max_length=64)
    variants: list[str] = Field(["torch"], min_length=1, max_length=64)
    runtimes: list[Literal["native", "tvm"]] = Field(["native", "tvm"], min_length=1)
    settings: list[str] = Field(default_factory=lambda: ["default"], max_length=64)
    ablation: bool = Field(False, description="add every catalogue pass alone on top of 'basic' and every "
                           "pass removed from 'extended' (settings 'basic+X', 'extended-X')")
    devices: list[str] = Field(["local"], min_length=1, max_length=64)
    dataset: Dataset = Dataset()
    timing: Timing = Timing()
    tuning: Tuning = Tuning()
    replicate: bool = Field(False, description="run every unit on every board of its kind (board-to-board variance)")
    unit_timeout_s: float | None = Field(None, gt=0, le=86_400,
                                         description="a unit still running after this many seconds fails as 'timeout'")

    @field_validator("user_models")
    @classmethod
    def _user_names(cls, v: dict[str, UserModel]) -> dict[str, UserModel]:
        # The name goes into artifact folders and store partitions: a plain word only.
        for name in v:
            if not _NAME.match(name):
                raise ValueError(f"{name!r}: a user model name is letters, digits, '_', '.', '-' "
                                 "(at most 64, not starting with '.' or '-')")
            if name in zoo.names():
                raise ValueError(f"{name!r} is the name of a zoo model; pick another name")
        return v

    @field_validator("models")
    @classmethod
    def _models_known(cls, v: list[str], info: ValidationInfo) -> list[str]:
        user = list(info.data.get("user_models") or {})
        for name in v:
            if name not in zoo.names() and name not in user:
                raise _allowed("model", name, [*zoo.names(), *user])
        return v

    @field_validator("variants")
    @classmethod
    def _variants_known(cls, v: list[str]) -> list[str]:
        """Each entry is a chain (``torch->onnx``, ``torch->tf->tflite:dynamic-range``;
        see :mod:`deltann.convert.chain_spec`). A pair with no direct tool is expanded to the
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
        for name, um in self.user_models.items():
            if name not in self.models:
                raise ValueError(f"user_models.{name}: defined but not in 'models'; add it there or remove the table")
        for model in self.models:
            if model in self.user_models:
                um = self.user_models[model]
                for i, chain in enumerate(self.variants):
                    source = chain.split("->")[0]
                    if source != um.framework:
                        raise ValueError(
                            f"variants.{i}: {chain!r} starts from {source!r} but user model {model!r} "
                            f"({Path(um.path).name}) is a {um.framework!r} model; start its variants from "
                            f"{um.framework!r}"
                        )
                continue
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
        if "tuning" in self.model_fields_set and not any(compile_settings.is_tuned(s) for s in self.settings):
            raise ValueError("tuning: given, but no setting is tuned; add 'tuned' to 'settings' or drop [tuning]")
        per_task = self.tuning.trials_per_task
        if self.tuning.minutes is not None:
            given = sorted({"trials", "trials_per_task"} & self.tuning.model_fields_set)
            if given:
                raise ValueError(f"tuning.minutes: a time budget; drop tuning.{given[0]} (a trial budget) or "
                                 "'minutes'")
        if per_task is not None and per_task > self.tuning.trials:
            raise ValueError(f"tuning.trials_per_task: {per_task} is more than tuning.trials "
                             f"({self.tuning.trials}); raise 'trials' or lower 'trials_per_task'")
        for name in ("models", "variants", "settings", "devices"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: lists an entry twice; remove the duplicate")
        return self


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_+-]+$")


def _key_text(part: object) -> str:
    """One step of a key's location as the message shows it: a plain key as it is, any
    other (a key holding a newline, a dot, a quote) quoted as TOML would, so the message
    stays one line and the key is unambiguous (the fuzzer found ``[dataset]`` key "\\n")."""
    text = str(part)
    return text if _PLAIN_KEY.match(text) else json.dumps(text)


def _line(path: Path, err: Any) -> str:
    """One validation error as a line naming the file, the key and the fix."""
    loc = ".".join(_key_text(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(_fields_at(err["loc"][:-1]))
        msg = f"unknown key; allowed keys here: {allowed}"
    return " ".join(f"{path}: {loc + ': ' if loc else ''}{_elide(msg)}".splitlines())


_LONG_WORD = re.compile(r"\S{201,}")


def _elide(text: str) -> str:
    """``text`` with each word over 200 characters cut in its middle (the fuzzer found a
    5,000-character model name repeated whole in the error), so the line stays readable."""
    return _LONG_WORD.sub(lambda m: f"{m[0][:120]}…({len(m[0]):,} characters)…{m[0][-40:]}", text)


def _one_line(path: Path, exc: ValidationError) -> str:
    more = f" (and {exc.error_count() - 1} more; -v lists every one)" if exc.error_count() > 1 else ""
    return _line(path, exc.errors()[0]) + more


def _study_error(path: Path, exc: ValidationError) -> StudyError:
    """The first error as the message; every error in ``details`` (the CLI prints them
    with ``-v``), so none is out of reach."""
    return StudyError(_one_line(path, exc), details=[_line(path, e) for e in exc.errors()])


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed at a location of the study (top level, dataset, timing)."""
    model: type[BaseModel] = Study
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        annotation = model.model_fields[str(part)].annotation if str(part) in model.model_fields else None
        if typing.get_origin(annotation) is dict and parts:  # user_models.<name>: the value's fields
            annotation = typing.get_args(annotation)[1]
            parts.pop(0)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return list(model.model_fields)


def parse_study(data: dict[str, Any], path: Path, catalogue: dict[str, Any] | None = None) -> Study:
    """Validate a parsed study mapping; ``catalogue`` is the device catalogue to check
    ``devices`` against (loaded from cluster/devices.toml when None)."""
    try:
        # Paths in the study (user model files) are relative to the study file's folder.
        study = Study.model_validate(data, context={"root": Path(path).parent.resolve()})
    except ValidationError as exc:
        raise _study_error(path, exc) from None

    for name, um in study.user_models.items():  # this process plans them; units carry them to boards
        user.register(name, um)
    kinds = catalogue if catalogue is not None else load_catalogue()
    for i, kind in enumerate(study.devices):
        if kind not in kinds:
            raise StudyError(f"{path}: devices.{i}: unknown device kind {kind!r}; allowed: {', '.join(kinds)}")
    return study


#: Study files are a few hundred bytes; anything this large is a wrong path.
MAX_STUDY_BYTES = 1 << 20


def load_study(path: Path | str, catalogue: dict[str, Any] | None = None) -> Study:
    path = Path(path)
    try:
        # A device file (/dev/zero) or a huge file is not a study: refuse before reading it.
        if path.exists() and (not path.is_file() or path.stat().st_size > MAX_STUDY_BYTES):
            raise StudyError(f"{path}: not a study file (a regular TOML file under {MAX_STUDY_BYTES // 1024} KiB)")
        text = path.read_text()
    except FileNotFoundError:
        raise StudyError(f"{path}: study file not found; see studies/quickstart.toml for an example") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError(f"{path}: cannot read study file ({type(exc).__name__}); give a UTF-8 TOML file") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    except RecursionError:  # tomllib recurses per nesting level: [[[[...]]]] of 100k levels
        raise StudyError(f"{path}: values nested too deeply; a study needs at most a few levels") from None
    return parse_study(data, path, catalogue)
