"""Run a materialised variant on its own runtime and compare it with its source: the
check every conversion must pass (same top-1, small logit change). Used by the tests and
``bench/convert.py``; studies compare through the store instead."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deltann.convert.chain_spec import parse_chain
from deltann.convert.chain import Artifact
from deltann.core import runtime_registry as registry


def native_logits(artifact: Artifact, spec: Any, tensors: np.ndarray) -> np.ndarray:
    """Logits of every image (one at a time, batch 1 as studies run) in the common
    1000-class space, on the artifact's native runtime with its recorded layout."""
    labels = spec.labels_for(parse_chain(artifact.chain)[0].framework)
    out = []
    with registry.native_of(artifact.framework).from_artifact(artifact.payload, artifact.layout, artifact.meta) as r:
        for i in range(len(tensors)):
            logits = r.infer(tensors[i : i + 1]).astype(np.float32)
            if logits.shape != (1, labels.num_classes):
                raise ValueError(f"{artifact.chain}: output shape {logits.shape}, "
                                 f"expected (1, {labels.num_classes})")
            out.append(labels.to_imagenet(logits))
    return np.concatenate(out)


@dataclass(frozen=True)
class Agreement:
    """How a variant's logits compare with the reference's on the same inputs."""

    top1: float  # fraction of images with the same top-1 label
    max_abs_dlogit: float  # max over images and classes of |logit_test - logit_ref|

    def __str__(self) -> str:
        return f"top-1 agreement {self.top1 * 100:.1f} %, max |dlogit| {self.max_abs_dlogit:.3g}"


def agreement(reference: np.ndarray, test: np.ndarray) -> Agreement:
    if reference.shape != test.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, test {test.shape}")
    same = reference.argmax(axis=1) == test.argmax(axis=1)
    return Agreement(float(same.mean()), float(np.abs(test - reference).max()))
