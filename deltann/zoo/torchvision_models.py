"""torchvision's ImageNet classifiers with their pretrained weights.

The weights come from torch hub's cache (``$TORCH_HOME/hub/checkpoints``), downloaded on
first use where the machine can reach download.pytorch.org. Offline with an empty cache,
:class:`WeightsNotFound` says which file to put where.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from deltann.errors import WeightsNotFound
from deltann.zoo import keras_apps, register, tf_files
from deltann.zoo.base import LabelSpace, ModelSpec, Preprocess

# name -> (torchvision builder, weights enum member, checkpoint file, preprocessing, architecture)
# The checkpoint file names are checked against torchvision's own metadata in the tests.
_MODELS: dict[str, tuple[str, str, str, Preprocess, str]] = {
    "mobilenet_v2": (
        "mobilenet_v2",
        "MobileNet_V2_Weights.IMAGENET1K_V1",
        "mobilenet_v2-b0353104.pth",
        Preprocess(size=224, resize_shorter=256),
        "MobileNetV2 (torchvision)",
    ),
    "resnet101": (
        "resnet101",
        "ResNet101_Weights.IMAGENET1K_V1",
        "resnet101-63fe2227.pth",
        Preprocess(size=224, resize_shorter=256),
        "ResNet101 v1 (torchvision; Keras has ResNet101V2, a different architecture)",
    ),
    "inception_v3": (
        "inception_v3",
        "Inception_V3_Weights.IMAGENET1K_V1",
        "inception_v3_google-0cc3c7bd.pth",
        Preprocess(size=299, resize_shorter=342),
        "InceptionV3 (torchvision port of the Google weights)",
    ),
}


def checkpoint_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _loader(builder: str, weights: str, filename: str) -> Callable[[], Any]:
    def load() -> Any:
        import torchvision.models as tvm_models

        enum_name, member = weights.split(".")
        weights_obj = getattr(getattr(tvm_models, enum_name), member)
        try:
            model = getattr(tvm_models, builder)(weights=weights_obj)
        except Exception as exc:  # the download is the only network access here
            target = checkpoint_dir() / filename
            raise WeightsNotFound(
                f"{builder} weights are not cached and cannot be downloaded ({type(exc).__name__}); "
                f"put {weights_obj.url.rsplit('/', 1)[-1]} (from {weights_obj.url}) at {target}"
            ) from exc
        return model.eval()

    return load


# The same families as the other frameworks ship them (issue 3: the seed's matrix).
# Keras applications and the TF-slim files scale inputs to [-1, 1] ("tf" mode) instead
# of torchvision's mean/std: a different recipe, declared per source. TF-slim files have
# 1001 classes with background at 0 (offset 1) and output softmax probabilities in the
# TFLite file; the frozen graphs are read at their pre-softmax logits tensor.
_SLIM = "https://storage.googleapis.com/download.tensorflow.org/models"
_KERAS_SOURCES: dict[str, dict[str, Callable[[], Any]]] = {
    "mobilenet_v2": {"keras": keras_apps.loader("MobileNetV2")},
    "resnet101": {"keras": keras_apps.loader("ResNet101V2")},
    "inception_v3": {"keras": keras_apps.loader("InceptionV3")},
}
#: the TF-slim files by source framework: 1001 classes, background at 0
_SLIM_SOURCES: dict[str, dict[str, Callable[[], Any]]] = {
    "mobilenet_v2": {
        "tf": tf_files.frozen_graph_loader("mobilenet_v2_1.0_224_frozen.pb",
                                           f"{_SLIM}/tflite_11_05_08/mobilenet_v2_1.0_224.tgz",
                                           "input:0", "MobilenetV2/Logits/output:0"),
        "tflite": tf_files.tflite_loader("mobilenet_v2_1.0_224.tflite",
                                         f"{_SLIM}/tflite_11_05_08/mobilenet_v2_1.0_224.tgz"),
    },
    "inception_v3": {
        "tf": tf_files.frozen_graph_loader("inception_v3_2016_08_28_frozen.pb",
                                           f"{_SLIM}/inception_v3_2016_08_28_frozen.pb.tar.gz",
                                           "input:0", "InceptionV3/Logits/SpatialSqueeze:0"),
        "tflite": tf_files.tflite_loader("inception_v3.tflite", f"{_SLIM}/tflite_11_05_08/inception_v3_2018_04_27.tgz"),
    },
}
_KERAS_ARCH = {"resnet101": "ResNet101V2 (Keras: pre-activation v2, not torchvision's v1)"}


def _tf_recipe(pre: Preprocess) -> Preprocess:
    return Preprocess(size=pre.size, resize_shorter=pre.resize_shorter, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


for _name, (_builder, _weights, _file, _pre, _arch) in _MODELS.items():
    _slim = _SLIM_SOURCES.get(_name, {})
    _others = {**_KERAS_SOURCES.get(_name, {}), **_slim}
    register(
        ModelSpec(
            name=_name,
            description=f"{_arch}, {_weights}",
            architecture=_arch,
            preprocess=_pre,
            labels=LabelSpace(1000, 0),
            layout="NCHW",
            loaders={"torch": _loader(_builder, _weights, _file), **_others},
            weights_id=(lambda w=_weights, f=_file: f"{w}:{f}"),
            input_shape=(1, 3, _pre.size, _pre.size),
            source_preprocess={src: _tf_recipe(_pre) for src in _others},
            source_labels={src: LabelSpace(1001, 1) for src in _slim},
            source_architecture={"keras": _KERAS_ARCH[_name]} if _name in _KERAS_ARCH else {},
        )
    )
