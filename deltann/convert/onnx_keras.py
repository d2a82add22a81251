"""``onnx->keras`` with onnx2tf's Keras output (``output_keras_v3``): a ``.keras`` file
written by tf-keras (Keras 2 API), NHWC. Its metadata says ``keras_api = tf_keras`` so
runners and later hops load it with tf-keras, not Keras 3 (which cannot read it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltann.convert import register
from deltann.convert._tools import run_onnx2tf
from deltann.convert.chain_spec import Hop, Produced


def onnx_to_keras(parent: Produced, spec: Any, out_dir: Path, quantize: str) -> Produced:
    folder = run_onnx2tf(Path(parent.payload), out_dir, parent.layout, keras=True)
    files = sorted(folder.glob("*_float32_v3.keras"))
    if len(files) != 1:
        raise RuntimeError(f"onnx2tf wrote {len(files)} Keras files into {folder}, expected one")
    return Produced(files[0], "NHWC", {"keras_api": "tf_keras"})


register(Hop("onnx", "keras", tool="onnx2tf", fn=onnx_to_keras))
