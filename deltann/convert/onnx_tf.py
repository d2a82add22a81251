"""``onnx->tf`` with onnx2tf: an ONNX model becomes a TF SavedModel in NHWC layout
(onnx2tf transposes NCHW models; an NHWC ONNX is declared and kept). The ONNX is
constant-folded first (see :func:`deltann.convert._tools.fold_onnx`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltann.convert import register
from deltann.convert._tools import run_onnx2tf
from deltann.convert.chain_spec import Hop, Produced


def onnx_to_tf(parent: Produced, spec: Any, out_dir: Path, quantize: str) -> Produced:
    folder = run_onnx2tf(Path(parent.payload), out_dir, parent.layout, keras=False)
    return Produced(folder, "NHWC")


register(Hop("onnx", "tf", tool="onnx2tf", fn=onnx_to_tf))
