"""Framework names, conversion chains and the conversion-hop record shared by plan and
artifacts.

A chain is written ``torch->onnx->tf->tflite:dynamic-range``: frameworks joined by
``->``; a step may carry ``:<quantize>`` (``none``, ``dynamic-range``, ``float16``), the
quantisation its hop applies. A step without one is ``none``, so plain chains such as
``torch->onnx`` stay valid and mean full precision. The source (first step) is never
quantised: it is the model as its framework ships it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from deltann.core.runtime_registry import framework_dist, frameworks

__all__ = ["QUANTIZE", "Hop", "Layout", "Produced", "Step", "chain_framework", "chain_quantize", "format_chain",
           "framework_dist", "frameworks", "parse_chain"]

#: (The frameworks, and the distribution whose version identifies a model of each, are
#: declared by the runtime that runs the framework natively: deltann.core.runtime_registry.)
QUANTIZE: tuple[str, ...] = ("none", "dynamic-range", "float16")

Layout = Literal["NCHW", "NHWC"]


@dataclass(frozen=True)
class Step:
    """One framework of a chain and the quantisation of the hop that produced it."""

    framework: str
    quantize: str = "none"

    def __str__(self) -> str:
        return self.framework if self.quantize == "none" else f"{self.framework}:{self.quantize}"


def parse_chain(chain: str) -> list[Step]:
    """Split a chain into steps. Raises ``ValueError`` naming the bad part (the study turns
    it into a one-line error)."""
    steps = []
    for i, part in enumerate(chain.split("->")):
        name, _, quant = part.strip().partition(":")
        name, quant = name.strip(), (quant.strip() or "none")
        if name not in frameworks():
            raise ValueError(f"unknown framework {name!r} in {chain!r}; allowed: {', '.join(frameworks())}")
        if quant not in QUANTIZE:
            raise ValueError(f"unknown quantize {quant!r} in {chain!r}; allowed: {', '.join(QUANTIZE)}")
        if i == 0 and quant != "none":
            raise ValueError(f"{chain!r}: the source {name!r} cannot be quantised; put ':{quant}' on a hop")
        steps.append(Step(name, quant))
    return steps


def format_chain(steps: list[Step]) -> str:
    return "->".join(str(s) for s in steps)


def chain_framework(chain: str) -> str:
    """The framework a chain ends in (what runs it)."""
    return parse_chain(chain)[-1].framework


def chain_quantize(chain: str) -> str:
    """The variant's quantisation as one word for tables: ``none`` when every hop is full
    precision, else the modes its hops applied, in chain order, joined by ``+``."""
    modes: list[str] = []
    for step in parse_chain(chain):
        if step.quantize != "none" and step.quantize not in modes:
            modes.append(step.quantize)
    return "+".join(modes) or "none"


@dataclass
class Produced:
    """What a hop (or a source loader) made: the payload — a native object (a
    ``torch.nn.Module``) or a :class:`~pathlib.Path` to a file or folder — its input layout,
    declared by the tool's documented behaviour (never read off a shape), and any other
    metadata a runner needs (e.g. ``keras_api``: which Keras wrote the file)."""

    payload: Any
    layout: Layout
    meta: dict[str, Any] = field(default_factory=dict)
    #: the distribution that really did the work when it is not the hop's usual tool
    #: (Keras export of a tf-keras model is done by tf-keras, not Keras 3)
    tool: str = ""


@dataclass(frozen=True)
class Hop:
    """One conversion ``src -> dst`` by a maintained tool.

    ``fn(parent, spec, out_dir, quantize) -> Produced`` where ``parent`` is the
    :class:`Produced` of the previous step. ``tool`` is the PyPI distribution whose version
    goes into the content key; ``quantize`` lists the modes the hop can apply."""

    src: str
    dst: str
    tool: str
    fn: Callable[[Produced, Any, Path, str], Produced]
    quantize: tuple[str, ...] = ("none",)
