"""``tf->onnx`` with tf2onnx: the SavedModel's ``serving_default`` signature, variables
frozen to constants, converted at opset 17. The ONNX keeps TF's (NHWC) layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltann.convert import register
from deltann.convert._tools import tf2onnx_from_saved_model
from deltann.convert.chain_spec import Hop, Produced


def tf_to_onnx(parent: Produced, spec: Any, out_dir: Path, quantize: str) -> Produced:
    return Produced(tf2onnx_from_saved_model(Path(parent.payload), out_dir / "model.onnx", parent.meta), parent.layout)


register(Hop("tf", "onnx", tool="tf2onnx", fn=tf_to_onnx))
