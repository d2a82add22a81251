"""Execute one unit on this board: materialise, build, load, run, measure — producing
Arrow tables for the store. Every exception becomes the unit's ``builds`` row with the
stage it happened in; nothing raises out of :func:`run_unit`."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
import traceback
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from deltann import zoo
from deltann.convert.chain import ArtifactCache
from deltann.dataset import Inputs
from deltann.plan import Unit
from deltann.runtimes.base import Runner
from deltann.store import SCHEMAS, tag

log = logging.getLogger("deltann.fleet")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def make_runner(unit: Unit, payload: Any) -> Runner:
    if unit.runtime == "torch":
        from deltann.runtimes.torch_rt import TorchRunner

        return TorchRunner(payload)
    if unit.runtime == "onnxruntime":
        from deltann.runtimes.onnxrt import OnnxrtRunner

        return OnnxrtRunner(payload)
    if unit.runtime == "tvm":
        from deltann.runtimes.tvm_rt import TvmRunner

        return TvmRunner(payload, device=json.loads(unit.target)["kind"])
    raise ValueError(f"no runner for runtime {unit.runtime!r}")


class UnitFailure(Exception):
    def __init__(self, stage: str, outcome: str, message: str) -> None:
        super().__init__(message)
        self.stage, self.outcome = stage, outcome


def run_unit(
    unit: Unit, batch: Inputs, artifacts: ArtifactCache, *, study: str, board: str, hostname: str
) -> Iterator[pa.Table]:
    """Yield the unit's ``predictions`` and ``timings`` tables, then its ``builds`` row
    (always last: it marks the unit complete)."""
    spec = zoo.get(unit.model)
    ident = {
        "unit_key": unit.key, "study": study, "model": unit.model, "variant": unit.variant,
        "runtime": unit.runtime, "setting": unit.setting, "config": unit.config,
        "device": unit.device, "board": board, "hostname": hostname,
    }
    times = {"convert_s": 0.0, "import_s": 0.0, "compile_s": 0.0, "load_s": 0.0}
    failure: dict[str, str] = {}
    stage = "convert"
    hops: list[dict[str, Any]] = []
    runner: Runner | None = None
    start_all = time.perf_counter()
    try:
        start = time.perf_counter()
        artifact = artifacts.get(unit.model, unit.variant)
        hops = artifact.hops
        times["convert_s"] = time.perf_counter() - start
        payload = artifact.payload
        if unit.runtime == "tvm":
            stage = "build"
            from deltann.runtimes.tvm_rt import TvmBuild

            builder = TvmBuild(unit.frontend, artifact.payload, spec.input_shape, unit.passes, unit.target, unit.host)
            payload = builder()
            times["import_s"], times["compile_s"] = builder.import_s, builder.compile_s
        stage = "load"
        runner = make_runner(unit, payload)
        runner.activate()
        times["load_s"] = runner.activate_s

        stage = "execute"
        rows: dict[str, list[Any]] = {k: [] for k in ("image_index", "image_id", "input_hash", "label", "top1",
                                                       "top5", "top5_prob", "logits", "latency_ns")}
        for i, image_id in enumerate(batch.ids):
            x = batch.tensors[i : i + 1]
            t0 = time.perf_counter_ns()
            out = runner.infer(x)
            latency = time.perf_counter_ns() - t0
            stage = "verify"
            if out.ndim != 2 or out.shape != (1, spec.labels.num_classes):
                raise UnitFailure("verify", "mismatch",
                                  f"output shape {tuple(out.shape)}, expected (1, {spec.labels.num_classes})")
            logits = spec.labels.to_imagenet(out.astype(np.float32))[0]
            probs = softmax(logits.astype(np.float64))
            top5 = np.argsort(-logits, kind="stable")[:5]
            rows["image_index"].append(i)
            rows["image_id"].append(image_id)
            rows["input_hash"].append(batch.hashes[i])
            rows["label"].append(batch.labels[i])
            rows["top1"].append(int(top5[0]))
            rows["top5"].append(top5.astype(np.int32).tolist())
            rows["top5_prob"].append(probs[top5].astype(np.float32).tolist())
            rows["logits"].append(logits)
            rows["latency_ns"].append(latency)
            stage = "execute"
        n = len(batch.ids)
        columns = {k: [v] * n for k, v in ident.items()} | rows
        columns["logits"] = pa.FixedSizeListArray.from_arrays(
            pa.array(np.concatenate(rows["logits"]) if n else np.zeros(0, np.float32)), 1000
        ).cast(pa.list_(pa.float32()))
        yield tag(pa.table(columns, schema=SCHEMAS["predictions"]), "predictions", unit.key, 0)

        samples = runner.measure(batch.tensors[:1], warmup=unit.warmup, number=unit.number,
                                 repeat=unit.repeat, min_repeat_ms=unit.min_repeat_ms)
        timing = ident | {
            "image_id": batch.ids[0], "warmup": unit.warmup, "number": unit.number, "repeat": unit.repeat,
            "min_repeat_ms": unit.min_repeat_ms, "threads": _threads(unit.runtime),
            "samples_ns": samples, "median_ns": int(np.median(samples)),
        }
        yield tag(pa.Table.from_pylist([timing], schema=SCHEMAS["timings"]), "timings", unit.key, 0)
    except UnitFailure as exc:
        failure = {"stage": exc.stage, "outcome": exc.outcome, "error_type": "OutputMismatch", "message": str(exc)}
    except Exception as exc:  # errors are data: the study goes on
        log.debug("unit %s failed in %s:\n%s", unit.config, stage, traceback.format_exc())
        message = str(exc).strip().splitlines()
        failure = {"stage": stage, "outcome": "exception", "error_type": type(exc).__name__,
                   "message": " ".join(message)[:2000] or type(exc).__name__}
    finally:
        if runner is not None:
            runner.deactivate()
    row = ident | {
        "status": "failed" if failure else "ok",
        "stage": failure.get("stage", ""),
        "outcome": failure.get("outcome", "ok"),
        "error_type": failure.get("error_type", ""),
        "message": failure.get("message", ""),
        "frontend": unit.frontend,
        "passes": list(unit.passes),
        "target": unit.target,
        "hops": json.dumps(hops),
        **times,
        "total_s": time.perf_counter() - start_all,
        "finished_at": dt.datetime.now(dt.UTC),
    }
    yield tag(pa.Table.from_pylist([row], schema=SCHEMAS["builds"]), "builds", unit.key, 0)


def _threads(runtime: str) -> int:
    if runtime == "torch":
        import torch

        return torch.get_num_threads()
    if runtime == "tvm" and os.environ.get("TVM_NUM_THREADS"):
        return int(os.environ["TVM_NUM_THREADS"])
    return os.cpu_count() or 1
