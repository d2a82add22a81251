"""onnxruntime (CPU execution provider, default graph optimisations)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deltann.runtimes.base import Runner


class OnnxrtRunner(Runner):
    name = "onnxruntime"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.session: Any = None

    def activate_impl(self) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def deactivate_impl(self) -> None:
        self.session = None
