"""What a model *is*, independent of any framework: its preprocessing recipe, its label
space and the loaders that materialise it natively in each framework.

Metadata, never guesses: the 1000 vs 1001 class offset and the input recipe are declared
here per model, not inferred from file names (the seed's mistake).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Layout = Literal["NCHW", "NHWC"]


@dataclass(frozen=True)
class Preprocess:
    """Input recipe: resize the shorter side keeping the aspect ratio, centre-crop, scale,
    normalise. Applied once per model family, so every variant sees the same tensor."""

    size: int = 224
    resize_shorter: int = 256
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LabelSpace:
    """A model's own class space and how it maps onto the common 1000-class ImageNet space:
    ``imagenet_index = own_index - offset`` (TF-slim's 1001 classes have background at 0)."""

    num_classes: int = 1000
    offset: int = 0

    def to_imagenet(self, logits: Any) -> Any:
        """Slice ``(N, num_classes)`` logits to the ``(N, 1000)`` common space."""
        return logits[:, self.offset : self.offset + 1000]


@dataclass(frozen=True)
class ModelSpec:
    """A model family entry of the zoo.

    ``loaders`` maps a source framework (``torch``, ``keras``, ...) to a zero-argument
    callable returning the native model object; ``weights_id`` names the exact weights
    cheaply (it is part of every content key)."""

    name: str
    description: str
    preprocess: Preprocess
    labels: LabelSpace
    layout: Layout
    loaders: dict[str, Callable[[], Any]]
    weights_id: Callable[[], str]
    architecture: str = ""
    input_shape: tuple[int, ...] = field(default=(1, 3, 224, 224))
    #: Per source framework, only where that framework's model needs its own recipe (Keras
    #: applications scale to [-1, 1], torchvision normalises by ImageNet mean/std): the
    #: report can then say which variants did not see the same tensor.
    source_preprocess: dict[str, Preprocess] = field(default_factory=dict)
    #: Per source framework, only where its class space differs (TF-slim's 1001 classes).
    source_labels: dict[str, LabelSpace] = field(default_factory=dict)
    #: Per source framework: the architecture when it differs (Keras ResNet101V2 vs
    #: torchvision ResNet101 v1), so the report can show it.
    source_architecture: dict[str, str] = field(default_factory=dict)

    @property
    def frameworks(self) -> list[str]:
        return sorted(self.loaders)

    def preprocess_for(self, source: str) -> Preprocess:
        """The recipe of the model as ``source`` ships it; all its variants share it."""
        return self.source_preprocess.get(source, self.preprocess)

    def labels_for(self, source: str) -> LabelSpace:
        """The class space of the model as ``source`` ships it; conversions keep it."""
        return self.source_labels.get(source, self.labels)
