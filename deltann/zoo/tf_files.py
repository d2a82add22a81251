"""TensorFlow and TFLite models by path: a SavedModel folder, a frozen GraphDef (.pb) or
a .tflite file, e.g. the TF-slim files (1001 classes, background at 0) that the TFLite
model page publishes. Their class space, recipe and tensor names are declared by the zoo
entry, never read off a file name.

Files live in ``$DELTANN_MODELS`` (default ``~/.deltann/models``); a missing one raises
:class:`WeightsNotFound` naming the file, where it comes from and where to put it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deltann.convert.chain_spec import Produced
from deltann.errors import WeightsNotFound


def models_dir() -> Path:
    return Path(os.environ.get("DELTANN_MODELS", Path.home() / ".deltann" / "models")).expanduser()


def _find(filename: str, source: str) -> Path:
    path = Path(filename) if Path(filename).is_absolute() else models_dir() / filename
    if not path.exists():
        raise WeightsNotFound(f"{path.name} is missing: put it (from {source}) at {path}")
    return path


def saved_model_loader(folder: str, source: str) -> Callable[[], Produced]:
    """A SavedModel folder with a ``serving_default`` signature (NHWC, as TF models are)."""
    return lambda: Produced(_find(folder, source), "NHWC")


def frozen_graph_loader(filename: str, source: str, input_tensor: str, output_tensor: str) -> Callable[[], Produced]:
    """A frozen GraphDef; its input and output tensor names are metadata (a GraphDef has
    no signature), e.g. TF-slim MobileNetV2's ``input:0`` and its pre-softmax logits."""
    return lambda: Produced(_find(filename, source), "NHWC", {"input": input_tensor, "output": output_tensor})


def tflite_loader(filename: str, source: str) -> Callable[[], Produced]:
    return lambda: Produced(_find(filename, source), "NHWC")


def file_id(filename: str) -> str:
    """Weights identity of a file by path: its name and size (cheap; existence not
    required, so planning works before the file is placed)."""
    path = Path(filename) if Path(filename).is_absolute() else models_dir() / filename
    try:
        return f"{path.name}:{path.stat().st_size}"
    except OSError:
        return f"{path.name}:absent"


def frozen_function(path: Path, input_tensor: str, output_tensor: str) -> Any:
    """A callable over a frozen GraphDef, pruned from ``input_tensor`` to ``output_tensor``
    (TF's documented ``wrap_function`` + ``prune`` route for GraphDefs)."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(Path(path).read_bytes())
    wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    graph = wrapped.graph
    return wrapped.prune(graph.get_tensor_by_name(input_tensor), graph.get_tensor_by_name(output_tensor))
