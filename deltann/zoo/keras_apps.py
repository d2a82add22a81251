"""``keras.applications`` classifiers with their ImageNet weights, as Keras ships them.

Keras downloads the weights on first use into ``$KERAS_HOME/models`` (default
``~/.keras/models``). Offline with an empty cache, :class:`WeightsNotFound` names the file
and where to put it. The models are built with ``classifier_activation=None`` so they
return logits, as every other variant does (Keras' default is a softmax)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from deltann._native import before_tensorflow
from deltann.convert.chain_spec import Produced
from deltann.errors import WeightsNotFound

BASE = "https://storage.googleapis.com/tensorflow/keras-applications"

#: name in keras.applications -> (weights file with top, URL folder)
APPS: dict[str, tuple[str, str]] = {
    "MobileNetV2": ("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5", f"{BASE}/mobilenet_v2"),
    "ResNet101V2": ("resnet101v2_weights_tf_dim_ordering_tf_kernels.h5", f"{BASE}/resnet"),
    "InceptionV3": ("inception_v3_weights_tf_dim_ordering_tf_kernels.h5", f"{BASE}/inception_v3"),
}


def cache_dir() -> Path:
    """Where Keras looks for (and downloads) application weights."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "models"


def weights_id(app: str) -> str:
    return f"keras.applications.{app}:imagenet:{APPS[app][0]}"


def loader(app: str) -> Callable[[], Produced]:
    """A zero-argument loader of ``keras.applications.<app>(weights="imagenet")``: an
    in-memory Keras 3 model, NHWC, logits."""
    filename, folder = APPS[app]

    def load() -> Produced:
        before_tensorflow()  # Keras 3's TF backend imports TensorFlow
        import keras

        try:
            model = getattr(keras.applications, app)(weights="imagenet", classifier_activation=None)
        except Exception as exc:  # the download is the only network access here
            raise WeightsNotFound(
                f"Keras {app} ImageNet weights are not cached and cannot be downloaded ({type(exc).__name__}); "
                f"put {filename} (from {folder}/{filename}) at {cache_dir() / filename}"
            ) from exc
        return Produced(model, "NHWC", {"keras_api": "keras"})

    return load
