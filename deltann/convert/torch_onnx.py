"""``torch->onnx`` with ``torch.onnx.export``.

The TorchScript-based exporter (``dynamo=False``) is used on purpose: it keeps module
paths in node names (``/_blocks.0/_depthwise_conv/Conv``), which per-layer fault
localization aligns on, and it folds constants. The ONNX keeps the module's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltann.convert import register
from deltann.convert._tools import ONNX_OPSET, input_shape
from deltann.convert.chain_spec import Hop, Produced

OPSET = ONNX_OPSET


def torch_to_onnx(parent: Produced, spec: Any, out_dir: Path, quantize: str) -> Produced:
    import torch

    out = out_dir / "model.onnx"
    tmp = out.with_suffix(".onnx.tmp")
    example = torch.zeros(input_shape(spec.input_shape, parent.layout), dtype=torch.float32)
    with torch.no_grad():
        torch.onnx.export(
            parent.payload,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            do_constant_folding=True,
        )
    tmp.replace(out)
    return Produced(out, parent.layout)


register(Hop("torch", "onnx", tool="torch", fn=torch_to_onnx))
