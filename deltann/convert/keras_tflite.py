"""``keras->tflite`` with TFLiteConverter. The model is first exported by Keras to an
inference SavedModel, which ``from_saved_model`` reads: the route TF documents for
Keras 3 (``from_keras_model`` traces Keras 3 models unreliably), used for tf-keras too so
that both behave alike. Quantize is explicit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltann._native import before_tensorflow
from deltann.convert import register
from deltann.convert._tools import export_saved_model, tflite_bytes, write_atomic
from deltann.convert.chain_spec import QUANTIZE, Hop, Produced


def keras_to_tflite(parent: Produced, spec: Any, out_dir: Path, quantize: str) -> Produced:
    before_tensorflow()
    import tensorflow as tf

    saved = export_saved_model(parent, out_dir / "exported")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=["serving_default"])
    out = write_atomic(out_dir / "model.tflite", tflite_bytes(converter, quantize))
    return Produced(out, parent.layout)


register(Hop("keras", "tflite", tool="tensorflow-cpu", fn=keras_to_tflite, quantize=QUANTIZE))
