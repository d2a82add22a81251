"""Keras runtime: the model's own ``__call__`` (``training=False``, traced once by
``tf.function``), in Keras 3 or in
tf-keras — whichever wrote the artifact, as its metadata ``keras_api`` says (onnx2tf
writes tf-keras files that Keras 3 cannot read). Files load with ``safe_mode=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deltann._native import before_tensorflow
from deltann.runtimes.base import Runner


class KerasRunner(Runner):
    name = "keras"

    def __init__(self, payload: Any, layout: str = "NHWC", keras_api: str = "keras") -> None:
        super().__init__(layout)
        if keras_api not in ("keras", "tf_keras"):
            raise ValueError(f"unknown keras_api {keras_api!r}; allowed: keras, tf_keras")
        self.payload, self.keras_api = payload, keras_api
        self.model: Any = None
        self.fn: Any = None

    def activate_impl(self) -> None:
        before_tensorflow()
        import tensorflow as tf

        self._load()
        self._constant = tf.constant
        # Why a tf.function: onnx2tf's tf-keras models are hundreds of TFOpLambda layers,
        # seconds per eager call (and slower each call); traced once, the same __call__
        # runs in milliseconds. Traced here, so infer times only the call.
        self.fn = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
        shape = tuple(self.model.input_shape)
        if all(isinstance(d, int) for d in shape[1:]):
            self.fn(tf.zeros((1, *shape[1:]), tf.float32))

    def _load(self) -> None:
        if not isinstance(self.payload, (str, Path)):
            self.model = self.payload
        elif self.keras_api == "tf_keras":
            import tf_keras

            self.model = tf_keras.models.load_model(str(self.payload), safe_mode=True, compile=False)
        else:
            import keras

            self.model = keras.saving.load_model(str(self.payload), safe_mode=True, compile=False)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.fn(self._constant(x)))

    def deactivate_impl(self) -> None:
        self.model = self.fn = None
