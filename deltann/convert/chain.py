"""Materialise a model variant: load the model natively in its source framework, then
apply each hop of its conversion chain. Each intermediate artifact is made once per
process and, when it is a file, once per cache folder (keyed by the chain's identity:
weights, each hop's tool and version and its quantize mode).

A failed hop is remembered: every chain that goes through it fails at once with a
:class:`~deltann.errors.ConversionError` that names the failed hop, its tool and its
message, so the study records "skipped because of X" instead of converting again."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltann import convert, zoo
from deltann.convert.chain_spec import Layout, Produced, chain_quantize, format_chain, parse_chain
from deltann.errors import ConversionError
from deltann.core.versions import dist_version

log = logging.getLogger("deltann.convert")

_RECORD = "artifact.json"


@dataclass
class Artifact:
    """A model in one framework with the record of how it was made."""

    model: str
    chain: str
    payload: Any  # native object, or Path to a file or folder
    hops: list[dict[str, Any]] = field(default_factory=list)  # {src, dst, tool, version, quantize, seconds}
    layout: Layout = "NCHW"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def framework(self) -> str:
        return parse_chain(self.chain)[-1].framework

    @property
    def quantize(self) -> str:
        return chain_quantize(self.chain)

    def produced(self) -> Produced:
        return Produced(self.payload, self.layout, dict(self.meta))


def hop_record(src: str, dst: str, quantize: str, seconds: float, tool: str = "") -> dict[str, Any]:
    tool = tool or convert.get(src, dst).tool
    return {"src": src, "dst": dst, "tool": tool, "version": dist_version(tool), "quantize": quantize,
            "seconds": seconds}


class ArtifactCache:
    """Per-process memo plus an on-disk folder for file artifacts."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._memo: dict[tuple[str, str], Artifact] = {}
        self._failed: dict[tuple[str, str], Exception] = {}

    def _folder(self, model: str, chain: str) -> Path:
        spec = zoo.get(model)
        steps = parse_chain(chain)
        ident = {
            "model": model,
            "weights": spec.weights_id(),
            "chain": [
                [a.framework, b.framework, convert.get(a.framework, b.framework).tool,
                 dist_version(convert.get(a.framework, b.framework).tool), b.quantize]
                for a, b in zip(steps, steps[1:], strict=False)
            ],
        }
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        name = "-".join(s.framework + ("" if s.quantize == "none" else "_" + s.quantize) for s in steps)
        return self.root / f"{model}--{name}--{digest}"

    def get(self, model: str, chain: str) -> Artifact:
        chain = format_chain(parse_chain(chain))
        memo_key = (model, chain)
        if memo_key in self._memo:
            return self._memo[memo_key]
        if memo_key in self._failed:
            raise self._failed[memo_key]
        spec = zoo.get(model)
        steps = parse_chain(chain)
        if len(steps) == 1:
            source = steps[0].framework
            try:
                loaded = spec.loaders[source]()
            except Exception as exc:  # e.g. WeightsNotFound: kept as is, once
                self._failed[memo_key] = exc
                raise
            if not isinstance(loaded, Produced):  # a loader may declare its own layout and metadata
                loaded = Produced(loaded, spec.layout)
            artifact = Artifact(model, chain, loaded.payload, [], loaded.layout, loaded.meta)
            self._memo[memo_key] = artifact
            return artifact
        parent_chain = format_chain(steps[:-1])
        try:
            parent = self.get(model, parent_chain)
        except Exception as exc:
            message = str(exc) if str(exc).startswith("skipped: ") else \
                f"skipped: {parent_chain} failed: {type(exc).__name__}: {exc}"
            self._failed[memo_key] = ConversionError(message)
            raise self._failed[memo_key] from None
        src, dst, quantize = steps[-2].framework, steps[-1].framework, steps[-1].quantize
        hop = convert.get(src, dst)
        out_dir = self._folder(model, chain)
        cached = self._load_record(out_dir)
        if cached is not None:
            produced, seconds = cached
            log.info("reusing %s %s from %s", model, chain, out_dir)
        else:
            if quantize not in hop.quantize:
                message = (f"hop {src}->{dst} ({hop.tool}) cannot apply quantize {quantize!r}; "
                           f"it supports: {', '.join(hop.quantize)}")
                self._failed[memo_key] = ConversionError(message)
                raise self._failed[memo_key]
            # Converted in a private folder, renamed into place when complete: a crashed
            # run leaves no half artifact, and two boards sharing the cache never clobber
            # each other (the second rename loses, and its copy is dropped).
            work = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
            if work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True)
            start = time.perf_counter()
            try:
                produced = hop.fn(parent.produced(), spec, work, quantize)
            except Exception as exc:
                shutil.rmtree(work, ignore_errors=True)
                lines = " ".join(str(exc).strip().splitlines())[:1500] or type(exc).__name__
                message = (f"hop {src}->{dst} of {chain} failed in {hop.tool} {dist_version(hop.tool)}: "
                           f"{type(exc).__name__}: {lines}")
                log.warning("%s", message)
                self._failed[memo_key] = ConversionError(message)
                raise self._failed[memo_key] from exc
            seconds = time.perf_counter() - start
            log.info("converted %s %s in %.2fs", model, chain, seconds)
            produced = self._publish(work, out_dir, produced, seconds)
        # ``seconds`` is the conversion's own time, also when reused from the cache folder.
        record = hop_record(src, dst, quantize, seconds, produced.tool) | {"cached": cached is not None}
        artifact = Artifact(model, chain, produced.payload, [*parent.hops, record], produced.layout, produced.meta)
        self._memo[memo_key] = artifact
        return artifact

    @classmethod
    def _publish(cls, work: Path, out_dir: Path, produced: Produced, seconds: float) -> Produced:
        """Move a finished file artifact from ``work`` to ``out_dir`` with its record, so
        a later process reuses it; an in-memory one (a torch module) is made again."""
        if not isinstance(produced.payload, Path):
            shutil.rmtree(work, ignore_errors=True)
            return produced
        relative = produced.payload.relative_to(work)
        record = {"payload": str(relative), "layout": produced.layout, "meta": produced.meta, "seconds": seconds,
                  "tool": produced.tool}
        (work / _RECORD).write_text(json.dumps(record, sort_keys=True))
        if out_dir.exists() and cls._load_record(out_dir) is None:  # left by a crash
            shutil.rmtree(out_dir)
        try:
            os.rename(work, out_dir)
        except OSError:  # another process published first: use its copy
            shutil.rmtree(work, ignore_errors=True)
        return Produced(out_dir / relative, produced.layout, produced.meta, produced.tool)

    @staticmethod
    def _load_record(out_dir: Path) -> tuple[Produced, float] | None:
        try:
            record = json.loads((out_dir / _RECORD).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        payload = out_dir / record["payload"]
        if not payload.exists():
            return None
        produced = Produced(payload, record["layout"], record.get("meta", {}), record.get("tool", ""))
        return produced, float(record["seconds"])
