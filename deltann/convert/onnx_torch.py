"""``onnx->torch`` with onnx2torch: an ONNX graph becomes a ``torch.fx.GraphModule``
with the ONNX's layout.

``torch.onnx.export`` shares weights through ``Identity`` nodes on initializers, which
onnx2torch cannot read; they are turned into initializers of their own first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltann._native import before_torch_dynamo
from deltann.convert import register
from deltann.convert.chain_spec import Hop, Produced


def identity_to_initializers(model: Any) -> int:
    """Replace each ``Identity`` whose input is an initializer by a copy of that
    initializer under the Identity's output name. Returns how many were replaced."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    keep, replaced = [], 0
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            array = numpy_helper.to_array(inits[node.input[0]])
            graph.initializer.append(numpy_helper.from_array(array, name=node.output[0]))
            replaced += 1
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return replaced


def onnx_to_torch(parent: Produced, spec: Any, out_dir: Path, quantize: str) -> Produced:
    before_torch_dynamo()  # onnx2torch imports torchvision, which imports torch._dynamo
    import onnx
    from onnx2torch import convert

    model = onnx.load(str(parent.payload))
    identity_to_initializers(model)
    module = convert(model)
    return Produced(module.eval(), parent.layout)


register(Hop("onnx", "torch", tool="onnx2torch", fn=onnx_to_torch))
