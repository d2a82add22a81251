"""``keras->tf`` with Keras export: an inference-only SavedModel whose
``serving_default`` signature calls the model (``Model.export``). A tf-keras model
(onnx2tf's output) is exported by tf-keras, and the hop records that tool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltann.convert import register
from deltann.convert._tools import export_saved_model, keras_tool
from deltann.convert.chain_spec import Hop, Produced


def keras_to_tf(parent: Produced, spec: Any, out_dir: Path, quantize: str) -> Produced:
    return Produced(export_saved_model(parent, out_dir / "saved_model"), parent.layout, tool=keras_tool(parent))


register(Hop("keras", "tf", tool="keras", fn=keras_to_tf))
