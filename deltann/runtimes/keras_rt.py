"""Keras runtime: the model's own ``__call__`` (``training=False``, traced once by
``tf.function``), in Keras 3 or in
tf-keras — whichever wrote the artifact, as its metadata ``keras_api`` says (onnx2tf
writes tf-keras files that Keras 3 cannot read). Files load with ``safe_mode=True``.

Per-layer capture: a sub-model over every layer's output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deltann._native import before_tensorflow
from deltann.convert._tools import keras_model
from deltann.convert.chain_spec import Produced
from deltann.core.runner import Runner
from deltann.core.runtime_registry import register
from deltann.core.trace import Layer, Trace, dedupe, to_layout


#: the Keras APIs a model can be loaded with: Keras 3, or the TF-bundled Keras 2
KERAS_APIS = ("keras", "tf_keras")


class KerasRunner(Runner):
    name = "keras"
    framework = "keras"
    dist = framework_dist = "keras"
    suffixes = (".keras", ".h5", ".hdf5")
    default_layout = "NHWC"

    def __init__(self, payload: Any, layout: str = "NHWC", keras_api: str = "keras") -> None:
        super().__init__(layout)
        if keras_api not in KERAS_APIS:
            raise ValueError(f"unknown keras_api {keras_api!r}; allowed: {', '.join(KERAS_APIS)}")
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

    @classmethod
    def from_artifact(cls, payload: Any, layout: str = "NHWC", meta: dict[str, Any] | None = None, *,
                      target: str = "") -> Runner:
        return cls(payload, layout, (meta or {}).get("keras_api", "keras"))

    @classmethod
    def save_payload(cls, payload: Any, layout: str, input_shape: tuple[int, ...], dst: Path) -> Path:
        """The model as a ``.keras`` file."""
        path = dst.with_suffix(".keras")
        payload.save(str(path))
        return path

    @classmethod
    def capture(cls, payload: Any, x: np.ndarray, layout: str, *, meta: dict[str, Any] | None = None,
                **options: Any) -> Trace:
        return capture_keras(keras_model(Produced(payload, layout, meta or {})), x, layout)


def _keras_producers(layer: Any) -> tuple[str, ...] | None:
    """Names of the layers feeding ``layer`` (first call), from Keras 3's
    ``parent_nodes`` or tf-keras's ``inbound_layers``; None when neither is there."""
    try:
        node = layer._inbound_nodes[0]
    except (AttributeError, IndexError):
        return None
    parents = getattr(node, "parent_nodes", None)
    if parents is not None:
        return dedupe(p.operation.name for p in parents if type(p.operation).__name__ != "InputLayer")
    inbound = getattr(node, "inbound_layers", None)
    if inbound is None:
        return None
    inbound = inbound if isinstance(inbound, (list, tuple)) else [inbound]
    return dedupe(lyr.name for lyr in inbound if type(lyr).__name__ != "InputLayer")


def capture_keras(model: Any, x: np.ndarray, layout: str = "NHWC") -> Trace:
    """A sub-model over every layer's output (Keras 3 or tf-keras: both have
    ``Model(inputs, outputs)`` over a functional model)."""
    import importlib

    api = "tf_keras" if type(model).__module__.startswith("tf_keras") else "keras"
    keras = importlib.import_module(api)
    layers = [lyr for lyr in model.layers if not type(lyr).__name__ == "InputLayer"]
    outs = [lyr.output for lyr in layers]
    sub = keras.Model(inputs=model.inputs, outputs=outs)
    values = sub(to_layout(x, layout), training=False)
    if not isinstance(values, (list, tuple)):
        values = [values]
    result = []
    for lyr, val in zip(layers, values, strict=True):
        params = {w.path if hasattr(w, "path") else w.name: np.asarray(w.numpy()) for w in lyr.weights}
        act = getattr(getattr(lyr, "activation", None), "__name__", "linear")
        result.append(Layer(lyr.name, type(lyr).__name__, np.asarray(val), (lyr.name,), params,
                            fused_act=act not in ("linear", None), inputs=_keras_producers(lyr)))
    return Trace("keras", layout, result)


register(KerasRunner)
