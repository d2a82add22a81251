"""``torch->onnx`` with ``torch.onnx.export``.

The TorchScript-based exporter (``dynamo=False``) is used on purpose: it keeps module
paths in node names (``/_blocks.0/_depthwise_conv/Conv``), which per-layer fault
localization aligns on, and it folds constants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltann.convert import register
from deltann.convert.base import Hop

OPSET = 17


def torch_to_onnx(model: Any, spec: Any, out_dir: Path, quantize: str) -> Path:
    import torch

    out = out_dir / "model.onnx"
    tmp = out.with_suffix(".onnx.tmp")
    example = torch.zeros(spec.input_shape, dtype=torch.float32)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            do_constant_folding=True,
        )
    tmp.replace(out)
    return out


register(Hop("torch", "onnx", tool="torch", fn=torch_to_onnx))
