"""LiteRT (TFLite) runtime: ``ai_edge_litert.interpreter.Interpreter`` with its default
delegate (XNNPACK on CPU). A float-input model only: a fully integer model needs the
input quantisation the study does not ask for, and is refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deltann.runtimes.base import Runner


class LiteRTRunner(Runner):
    name = "litert"

    def __init__(self, path: Path, layout: str = "NHWC", threads: int | None = None) -> None:
        super().__init__(layout)
        self.path = Path(path)
        self.threads = threads
        self.interpreter: Any = None

    def activate_impl(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
        self.interpreter.allocate_tensors()
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{self.path}: {len(inputs)} inputs and {len(outputs)} outputs; expected one of each")
        if inputs[0]["dtype"] != np.float32:
            raise ValueError(f"{self.path}: input dtype {np.dtype(inputs[0]['dtype']).name}; only float32 inputs run")
        self.input, self.output = inputs[0], outputs[0]

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        it = self.interpreter
        if tuple(self.input["shape"]) != x.shape:
            it.resize_tensor_input(self.input["index"], list(x.shape))
            it.allocate_tensors()
            self.input, self.output = it.get_input_details()[0], it.get_output_details()[0]
        it.set_tensor(self.input["index"], x)
        it.invoke()
        return it.get_tensor(self.output["index"]).copy()

    def deactivate_impl(self) -> None:
        self.interpreter = None
