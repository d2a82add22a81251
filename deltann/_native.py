"""Native-library order between TensorFlow and PyTorch in one process.

Measured here (tensorflow-cpu 2.21, torch 2.14.1 with its triton): ``import tensorflow``
followed by ``import triton`` kills the process with a segmentation fault, and torch
imports triton lazily (``torch._dynamo``: ``torch.export``, torchvision, onnx2torch).
The other order works. A board converts and runs TF-side and torch-side variants in one
process, so every deltann path that imports TensorFlow calls :func:`before_tensorflow`
first, and every path that reaches ``torch._dynamo`` calls :func:`before_torch_dynamo`,
which turns the crash into an error that says why."""

from __future__ import annotations

import sys


def before_tensorflow() -> None:
    """Load triton (if installed) before TensorFlow is first imported."""
    if "tensorflow" in sys.modules or "triton" in sys.modules:
        return
    try:
        import triton  # noqa: F401
    except ImportError:
        pass


def before_torch_dynamo() -> None:
    """Refuse, with the reason, what would otherwise segfault: triton after TensorFlow."""
    if "tensorflow" not in sys.modules or "triton" in sys.modules:
        return
    from importlib.util import find_spec

    if find_spec("triton") is not None:
        raise RuntimeError(
            "TensorFlow was imported before triton in this process; importing triton now (torch._dynamo) "
            "segfaults. Import deltann's TF paths (they load triton first) or import triton before tensorflow."
        )
