"""TensorFlow runtime: a SavedModel's ``serving_default`` signature (the inference entry
every exporter writes: Keras export, onnx2tf), called with its one input by name; or a
frozen GraphDef (``.pb``), pruned to the input and output tensors its metadata names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deltann._native import before_tensorflow
from deltann.runtimes.base import Runner

SIGNATURE = "serving_default"


class TfRunner(Runner):
    name = "tf"

    def __init__(self, path: Path, layout: str = "NHWC", meta: dict[str, Any] | None = None) -> None:
        super().__init__(layout)
        self.path = Path(path)
        self.meta = meta or {}
        self.loaded: Any = None
        self.fn: Any = None

    def activate_impl(self) -> None:
        before_tensorflow()
        import tensorflow as tf

        self._constant = tf.constant
        if self.path.suffix == ".pb":
            self.fn = frozen_function(self.path, self.meta["input"], self.meta["output"])
            self.input_name = self.output_name = ""
            return
        self.loaded = tf.saved_model.load(str(self.path))
        if SIGNATURE not in self.loaded.signatures:
            raise ValueError(f"{self.path}: no {SIGNATURE!r} signature; has {list(self.loaded.signatures)}")
        self.fn = self.loaded.signatures[SIGNATURE]
        inputs = self.fn.structured_input_signature[1]
        outputs = self.fn.structured_outputs
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{self.path}: {SIGNATURE} has {len(inputs)} inputs and {len(outputs)} outputs; "
                             "an image classifier has one of each")
        self.input_name = next(iter(inputs))
        self.output_name = next(iter(outputs))

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        if not self.input_name:  # frozen graph: positional in, one tensor out
            return self.fn(self._constant(x)).numpy()
        return self.fn(**{self.input_name: self._constant(x)})[self.output_name].numpy()

    def deactivate_impl(self) -> None:
        self.fn = self.loaded = None


def frozen_function(path: Path, input_tensor: str, output_tensor: str) -> Any:
    """A callable over a frozen GraphDef, pruned from ``input_tensor`` to ``output_tensor``
    (TF's documented ``wrap_function`` + ``prune`` route for GraphDefs)."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(Path(path).read_bytes())
    wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    graph = wrapped.graph
    return wrapped.prune(graph.get_tensor_by_name(input_tensor), graph.get_tensor_by_name(output_tensor))
