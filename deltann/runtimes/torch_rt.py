"""PyTorch eager runtime."""

from __future__ import annotations

from typing import Any

import numpy as np

from deltann.runtimes.base import Runner


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, module: Any, layout: str = "NCHW") -> None:
        super().__init__(layout)
        self.module = module

    def activate_impl(self) -> None:
        self.module.eval()

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(x)).numpy()
