"""Runtimes: one module per runtime (``torch_rt.py``, ``onnxrt.py``, ``tvm_rt.py``, ...),
each registering one :class:`~deltann.core.runner.Runner` subclass that declares its
name, framework, distributions, file types, threads and per-layer capture. What other
code asks about a runtime or a framework goes through :mod:`deltann.core.runtime_registry`."""
