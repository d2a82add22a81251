"""TensorFlow runtime: a SavedModel's ``serving_default`` signature (the inference entry
every exporter writes: Keras export, onnx2tf), called with its one input by name; or a
frozen GraphDef (``.pb``), pruned to the input and output tensors its metadata names.

Per-layer capture: the signature's graph (or the frozen graph), variables frozen to
constants, pruned to every op's float output (names = op names)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from deltann._native import before_tensorflow
from deltann.core.runner import Runner
from deltann.core.runtime_registry import register
from deltann.core.trace import EMPTY, Layer, Trace, dedupe, stack, to_layout, unique
from deltann.zoo.tf_files import frozen_function

SIGNATURE = "serving_default"


class TfRunner(Runner):
    name = "tf"
    framework = "tf"
    dist = framework_dist = "tensorflow-cpu"
    suffixes = (".pb",)  # a frozen GraphDef; a SavedModel is a folder (deltann.zoo.user)
    default_layout = "NHWC"
    keras_scoped_names = True  # a Keras model's SavedModel names its ops in the layers' scopes

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

    @classmethod
    def from_artifact(cls, payload: Any, layout: str = "NHWC", meta: dict[str, Any] | None = None, *,
                      target: str = "") -> Runner:
        return cls(payload, layout, meta)  # a frozen GraphDef names its tensors in metadata

    @classmethod
    def capture(cls, payload: Any, x: np.ndarray, layout: str, *, meta: dict[str, Any] | None = None,
                **options: Any) -> Trace:
        return capture_tf(Path(payload), x, layout, meta)


_TF_PASSTHROUGH = frozenset({"Identity", "IdentityN", "Placeholder", "PlaceholderWithDefault", "NoOp",
                             "StopGradient", "Snapshot", "Const"})


def _tf_graph(path: Path, meta: dict[str, Any] | None) -> tuple[Any, str]:
    """(GraphDef with variables as constants, input tensor name) of a SavedModel's
    ``serving_default`` signature or of a frozen ``.pb`` (input named in its metadata)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2


    if path.suffix == ".pb":
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(path.read_bytes())
        if not meta or "input" not in meta:
            raise ValueError(f"{path}: a frozen graph needs its input tensor name in the artifact metadata")
        return graph_def, meta["input"]
    loaded = tf.saved_model.load(str(path))
    if SIGNATURE not in loaded.signatures:
        raise ValueError(f"{path}: no {SIGNATURE!r} signature; has {list(loaded.signatures)}")
    frozen = convert_variables_to_constants_v2(loaded.signatures[SIGNATURE])
    inputs = [t for t in frozen.inputs if t.dtype.is_floating]
    if len(inputs) != 1:
        raise ValueError(f"{path}: {SIGNATURE} has {len(inputs)} float inputs; an image classifier has one")
    return frozen.graph.as_graph_def(), inputs[0].name


def _tf_name(op_name: str) -> str:
    """An op name without the call wrappers freezing leaves in front
    (``StatefulPartitionedCall/model/conv/Conv2D`` -> ``model/conv/Conv2D``)."""
    parts = op_name.split("/")
    while len(parts) > 1 and parts[0] in ("StatefulPartitionedCall", "PartitionedCall"):
        parts = parts[1:]
    return "/".join(parts)


def capture_tf(path: Path, x: np.ndarray, layout: str = "NHWC", meta: dict[str, Any] | None = None) -> Trace:
    """Every op's float output of a TF SavedModel's serving signature (or a frozen
    graph), in the graph's topological order: the variables are frozen to constants, the
    GraphDef is re-imported with ``wrap_function`` and pruned from the input to all those
    tensors (TF's documented route for GraphDefs). An op's float inputs computed from
    constants alone (a weight, a batch norm's folded scale) are its parameters;
    Identity-like ops and integer arithmetic are not layers, but link a layer to its
    producers."""
    before_tensorflow()
    import tensorflow as tf

    path = Path(path)
    graph_def, input_name = _tf_graph(path, meta)
    wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    graph = wrapped.graph
    producers: dict[str, tuple[str, ...]] = {}
    live = {input_name.split(":")[0]}
    layers: list[Layer] = []
    fetches = []
    weights: list[tuple[int, str, Any]] = []  # (layer, key, tensor): computed from constants only
    seen: set[str] = set()
    for i, node in enumerate(_tf_topological(graph_def)):
        in_names = [s for s in node.input if not s.startswith("^")]
        in_ops = [s.split(":")[0] for s in in_names]
        if not any(o in live for o in in_ops):
            continue  # constants, variables and what is computed from them alone
        live.add(node.name)
        ins = dedupe(p for o in in_ops for p in producers.get(o, ()))
        op = graph.get_operation_by_name(node.name)
        if node.op in _TF_PASSTHROUGH or not op.outputs or not op.outputs[0].dtype.is_floating:
            producers[node.name] = ins
            continue
        name = unique(_tf_name(node.name), seen, i)
        producers[node.name] = (name,)
        for k, (s, o) in enumerate(zip(in_names, in_ops, strict=True)):
            t = graph.get_tensor_by_name(s if ":" in s else f"{s}:0")
            if o not in live and t.dtype.is_floating:
                weights.append((len(layers), f"input{k}", t))
        layers.append(Layer(name, node.op, EMPTY, (op.outputs[0].name,), inputs=ins))
        fetches.append(op.outputs[0])
    fn = wrapped.prune(graph.get_tensor_by_name(input_name), fetches + [t for _, _, t in weights])
    xin = to_layout(x, layout)
    per_image = []
    for i in range(len(xin)):
        values = [t.numpy() for t in fn(tf.constant(xin[i : i + 1]))]
        if i == 0:  # an op's constant inputs (a BN's folded scale too): its parameters
            for (k, key, _), v in zip(weights, values[len(fetches):], strict=True):
                layers[k].params[key] = np.asarray(v, np.float32)
        per_image.append(dict(enumerate(values[: len(fetches)])))
    stacked = stack(per_image)
    return Trace("tf", layout, [replace(layer, value=stacked[k]) for k, layer in enumerate(layers)])


def _tf_topological(graph_def: Any) -> list[Any]:
    """The GraphDef's nodes in a topological order that keeps the file's order wherever
    it already is one (freezing usually writes one; a hand-edited file may not)."""
    nodes = {n.name: n for n in graph_def.node}
    done: set[str] = set()
    out: list[Any] = []
    for start in graph_def.node:
        stack = [(start, False)]
        while stack:
            node, expanded = stack.pop()
            if node.name in done:
                continue
            if expanded:
                done.add(node.name)
                out.append(node)
                continue
            stack.append((node, True))
            for s in reversed(node.input):
                dep = nodes.get(s.lstrip("^").split(":")[0])
                if dep is not None and dep.name not in done:
                    stack.append((dep, False))
    return out


register(TfRunner)
