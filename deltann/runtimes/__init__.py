"""Runtimes: one module per runtime (``torch_rt.py``, ``onnxrt.py``, ``tvm_rt.py``), each a
:class:`~deltann.runtimes.base.Runner`. This module holds only the light tables the
planner needs: which runtime is a framework's own, and which PyPI distribution's version
identifies it."""

from __future__ import annotations

#: framework -> its own ("native") runtime
NATIVE_RUNTIME: dict[str, str] = {
    "torch": "torch",
    "onnx": "onnxruntime",
    "keras": "keras",
    "tf": "tf",
    "tflite": "litert",
}

#: runtime -> PyPI distribution whose version goes into content keys
RUNTIME_DIST: dict[str, str] = {
    "torch": "torch",
    "onnxruntime": "onnxruntime",
    "tvm": "apache-tvm",
    "keras": "keras",
    "tf": "tensorflow-cpu",
    "litert": "ai-edge-litert",
}

#: framework -> TVM Relax frontend that imports it (the most direct one)
#: (Keras and TF models reach TVM through their TFLite or ONNX variants: Relax has no
#: Keras or TF frontend.)
TVM_FRONTEND: dict[str, str] = {"torch": "torch.export", "onnx": "onnx", "tflite": "tflite"}
