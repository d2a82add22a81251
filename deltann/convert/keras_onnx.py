"""``keras->onnx`` with tf2onnx, over the model's Keras-exported SavedModel (tf2onnx's
``from_keras`` predates Keras 3). The ONNX keeps the Keras model's (NHWC) layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltann.convert import register
from deltann.convert._tools import export_saved_model, tf2onnx_from_saved_model
from deltann.convert.chain_spec import Hop, Produced


def keras_to_onnx(parent: Produced, spec: Any, out_dir: Path, quantize: str) -> Produced:
    saved = export_saved_model(parent, out_dir / "exported")
    return Produced(tf2onnx_from_saved_model(saved, out_dir / "model.onnx"), parent.layout)


register(Hop("keras", "onnx", tool="tf2onnx", fn=keras_to_onnx))
