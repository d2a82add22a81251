"""Materialise a model variant: load the model natively in its source framework, then
apply each hop of its conversion chain. Each intermediate artifact is made once per
process and, when it is a file, once per cache folder (keyed by the chain's identity)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltann import convert, zoo
from deltann.plan import dist_version

log = logging.getLogger("deltann.convert")


@dataclass
class Artifact:
    """A model in one framework with the record of how it was made."""

    model: str
    chain: str
    payload: Any  # native object, or Path to a file
    hops: list[dict[str, Any]] = field(default_factory=list)  # {src, dst, tool, version, seconds}

    @property
    def framework(self) -> str:
        return self.chain.split("->")[-1]


class ArtifactCache:
    """Per-process memo plus an on-disk folder for file artifacts."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._memo: dict[tuple[str, str], Artifact] = {}

    def _folder(self, model: str, chain: str) -> Path:
        spec = zoo.get(model)
        steps = chain.split("->")
        ident = {
            "model": model,
            "weights": spec.weights_id(),
            "chain": [[a, b, convert.get(a, b).tool, dist_version(convert.get(a, b).tool)] for a, b in zip(steps, steps[1:], strict=False)],
        }
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        return self.root / f"{model}--{chain.replace('->', '-')}--{digest}"

    def get(self, model: str, chain: str) -> Artifact:
        memo_key = (model, chain)
        if memo_key in self._memo:
            return self._memo[memo_key]
        spec = zoo.get(model)
        steps = chain.split("->")
        if len(steps) == 1:
            artifact = Artifact(model, chain, spec.loaders[steps[0]]())
        else:
            parent = self.get(model, "->".join(steps[:-1]))
            hop = convert.get(steps[-2], steps[-1])
            out_dir = self._folder(model, chain)
            out_dir.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            payload = hop.fn(parent.payload, spec, out_dir, "none")
            seconds = time.perf_counter() - start
            log.info("converted %s %s in %.2fs", model, chain, seconds)
            record = {"src": hop.src, "dst": hop.dst, "tool": hop.tool, "version": dist_version(hop.tool), "seconds": seconds}
            artifact = Artifact(model, chain, payload, [*parent.hops, record])
        self._memo[memo_key] = artifact
        return artifact
