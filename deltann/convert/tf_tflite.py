"""``tf->tflite`` with ``tf.lite.TFLiteConverter`` (``from_saved_model``, or
``from_frozen_graph`` for a frozen GraphDef); quantize is explicit (``none``,
``dynamic-range``, ``float16``; never a hidden int8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltann.convert import register
from deltann.convert._tools import tflite_bytes, tflite_converter_for_tf, write_atomic
from deltann.convert.chain_spec import QUANTIZE, Hop, Produced


def tf_to_tflite(parent: Produced, spec: Any, out_dir: Path, quantize: str) -> Produced:
    out = write_atomic(out_dir / "model.tflite", tflite_bytes(tflite_converter_for_tf(parent), quantize))
    return Produced(out, parent.layout)


register(Hop("tf", "tflite", tool="tensorflow-cpu", fn=tf_to_tflite, quantize=QUANTIZE))
