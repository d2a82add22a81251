"""``tiny_cnn``: a four-layer CNN with fixed, seeded weights (numpy's MT19937, stable
across versions). It runs in milliseconds everywhere, so it is the model for checking a
deployment (does the fleet place, build, run and store?) and for the test suite. Its
labels mean nothing; its answers are deterministic and differ from image to image."""

from __future__ import annotations

from typing import Any

import numpy as np

from deltann.zoo import register
from deltann.zoo.base import LabelSpace, ModelSpec, Preprocess

SEED = 20261126
CHANNELS = (3, 8, 16, 32)


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.RandomState(SEED)
    w: dict[str, np.ndarray] = {}
    for i, (cin, cout) in enumerate(zip(CHANNELS[:-1], CHANNELS[1:], strict=True)):
        fan_in = cin * 9
        w[f"convs.{i}.weight"] = (rng.randn(cout, cin, 3, 3) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        w[f"convs.{i}.bias"] = (rng.randn(cout) * 0.1).astype(np.float32)
    w["fc.weight"] = (rng.randn(1000, CHANNELS[-1]) * np.sqrt(1.0 / CHANNELS[-1])).astype(np.float32)
    w["fc.bias"] = np.zeros(1000, np.float32)
    return w


def load_torch() -> Any:
    import torch
    from torch import nn

    class TinyCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleList(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1)
                for cin, cout in zip(CHANNELS[:-1], CHANNELS[1:], strict=True)
            )
            self.fc = nn.Linear(CHANNELS[-1], 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for conv in self.convs:
                x = torch.relu(conv(x))
            return self.fc(x.mean(dim=(2, 3)))

    model = TinyCNN()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in _weights().items()})
    return model.eval()


register(
    ModelSpec(
        name="tiny_cnn",
        description="4-layer CNN, seeded weights: a smoke-test model (labels mean nothing)",
        architecture="3x conv3x3/2 + ReLU, global mean, linear 1000",
        preprocess=Preprocess(size=64, resize_shorter=72),
        labels=LabelSpace(1000, 0),
        layout="NCHW",
        loaders={"torch": load_torch},
        weights_id=lambda: f"numpy-mt19937:{SEED}",
        input_shape=(1, 3, 64, 64),
    )
)
