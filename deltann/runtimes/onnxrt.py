"""onnxruntime (CPU execution provider, default graph optimisations)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deltann.runtimes.base import Runner, thread_count


class OnnxrtRunner(Runner):
    name = "onnxruntime"

    def __init__(self, path: Path, layout: str = "NCHW") -> None:
        super().__init__(layout)
        self.path = Path(path)
        self.session: Any = None

    def activate_impl(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = thread_count()
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def deactivate_impl(self) -> None:
        self.session = None
