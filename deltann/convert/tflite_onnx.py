"""``tflite->onnx`` with tf2onnx's TFLite reader (``tf2onnx.convert.from_tflite``).
The ONNX keeps the TFLite model's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltann._native import before_tensorflow
from deltann.convert import register
from deltann.convert._tools import ONNX_OPSET
from deltann.convert.chain_spec import Hop, Produced


def tflite_to_onnx(parent: Produced, spec: Any, out_dir: Path, quantize: str) -> Produced:
    before_tensorflow()
    import tf2onnx

    out = out_dir / "model.onnx"
    tf2onnx.convert.from_tflite(str(parent.payload), opset=ONNX_OPSET, output_path=str(out))
    return Produced(out, parent.layout)


register(Hop("tflite", "onnx", tool="tf2onnx", fn=tflite_to_onnx))
