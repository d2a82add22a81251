"""Execute one unit on this board: materialise, build, load, run — producing Arrow tables
for the store. Every exception becomes the unit's ``builds`` row with the stage it
happened in (a :class:`~deltann.fleet.failure.Failure`); nothing raises out of
:func:`run_unit`. Timing is not done here: the configurations of a model are timed
together afterwards, interleaved, in one session per board (:mod:`deltann.fleet.session`),
which loads each unit through :func:`load_runner`."""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from deltann import zoo
from deltann.convert._tools import input_shape
from deltann.convert.chain import Artifact, ArtifactCache
from deltann.convert.chain_spec import parse_chain
from deltann.core import runtime_registry as registry
from deltann.core.runner import Runner
from deltann.dataset import InputSet, Inputs, TensorCache
from deltann.fleet.failure import Failure, Outcome, Stage, UnitFailure
from deltann.fleet.markers import builds_row, progress, unit_columns
from deltann.plan import Unit
from deltann.runtimes.tvm_rt import TvmBuild
from deltann.store import SCHEMAS, tag
from deltann.zoo import user

log = logging.getLogger("deltann.fleet")

#: Predictions stream in tables of at most this many images, so one object in flight
#: stays small (256 x 1000 float32 logits = 1 MiB) whatever the dataset size.
PREDICTION_CHUNK = 256


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def make_runner(unit: Unit, payload: Any, layout: str = "NCHW", meta: dict[str, Any] | None = None) -> Runner:
    """The runner of ``unit.runtime`` over ``payload``; ``layout`` and ``meta`` are the
    artifact's recorded metadata (input layout, which Keras wrote a ``.keras`` file)."""
    return registry.get(unit.runtime).from_artifact(payload, layout, meta, target=unit.target)


#: Folder of the board's artifact cache that keeps its compiled TVM modules.
COMPILED = "compiled"
#: Folder of the board's artifact cache that keeps its preprocessed images (TensorCache).
TENSORS = "tensors"


def compiled_dir(artifacts: ArtifactCache) -> Path:
    """The board's cache of compiled TVM modules, beside its converted artifacts."""
    return artifacts.root / COMPILED


@dataclass
class Loaded:
    """What loading a unit produced: the active runner and how it got there."""

    runner: Runner
    artifact: Artifact
    built_target: str = ""  # TVM target as the board resolved it, host included
    times: dict[str, float] = field(default_factory=dict)
    unscheduled: int | None = None  # TVM: kernels without a real schedule (builds column)


def load_stages(unit: Unit, artifacts: ArtifactCache, stage: list[str]) -> Generator[str, None, Loaded]:
    """Materialise ``unit``'s artifact, build it when the runtime is TVM (from the board's
    compiled-module cache when this board built it before), and activate its runner.
    Yields each stage's name as it begins (and keeps ``stage[0]`` at it, for failure
    rows); returns the :class:`Loaded` runner."""
    times = {"convert_s": 0.0, "import_s": 0.0, "compile_s": 0.0, "load_s": 0.0}
    stage[0] = Stage.CONVERT
    yield stage[0]
    start = time.perf_counter()
    artifact = artifacts.get(unit.model, unit.variant)
    times["convert_s"] = time.perf_counter() - start
    payload, built_target, unscheduled = artifact.payload, "", None
    if registry.get(unit.runtime).compiles:
        stage[0] = Stage.BUILD
        yield stage[0]

        # The artifact's own input shape: an NHWC TFLite or ONNX is imported as NHWC.
        builder = TvmBuild(unit.frontend, artifact.payload,
                           input_shape(zoo.get(unit.model).input_shape, artifact.layout), unit.passes,
                           unit.target, unit.host, tuning=unit.tuning, cache_dir=compiled_dir(artifacts),
                           cache_key=unit.build or unit.key)
        with build_memory_cap():
            payload = builder()
        times["import_s"], times["compile_s"] = builder.import_s, builder.compile_s
        built_target, unscheduled = builder.resolved_target, builder.unscheduled
    stage[0] = Stage.LOAD
    yield stage[0]
    runner = make_runner(unit, payload, artifact.layout, artifact.meta)
    runner.activate()
    times["load_s"] = runner.activate_s
    return Loaded(runner, artifact, built_target, times, unscheduled)


def load_runner(unit: Unit, artifacts: ArtifactCache) -> Loaded:
    """:func:`load_stages` run to its end (a timing session's loader)."""
    stages = load_stages(unit, artifacts, [""])
    while True:
        try:
            next(stages)
        except StopIteration as done:
            return done.value


def _with_progress(unit_key: str, stages: Generator[str, None, Loaded]) -> Generator[pa.Table, None, Loaded]:
    """A progress marker for each stage :func:`load_stages` enters; returns its result."""
    while True:
        try:
            name = next(stages)
        except StopIteration as done:
            return done.value
        yield progress(unit_key, name)


def run_unit(
    unit: Unit, batch: Inputs | InputSet, artifacts: ArtifactCache, *, study: str, board: str, hostname: str
) -> Iterator[pa.Table]:
    """Yield the unit's ``predictions`` (in chunks of :data:`PREDICTION_CHUNK` images), then
    its ``builds`` row (always last: it marks the unit complete), with a
    :func:`~deltann.fleet.markers.progress` marker as each stage begins."""
    if unit.user_model:  # a study's [user_models] entry: register it in this (board) process

        user.register_json(unit.user_model)
    spec = zoo.get(unit.model)
    # The class space of the model as its source framework ships it (TF-slim: 1001,
    # offset 1); every conversion keeps it. Declared metadata, never read off a file name.
    labels = spec.labels_for(parse_chain(unit.variant)[0].framework)
    ident = unit_columns(unit, study=study, board=board, hostname=hostname)
    times = {"convert_s": 0.0, "import_s": 0.0, "compile_s": 0.0, "load_s": 0.0}
    failure: Failure | None = None
    built_target = ""  # TVM target as the board resolved it (mcpu "native" -> its CPU), host included
    stage: list[str] = [Stage.CONVERT]
    hops: list[dict[str, Any]] = []
    layout = ""
    unscheduled: int | None = None
    runner: Runner | None = None
    written = 0  # prediction rows yielded
    start_all = time.perf_counter()
    try:
        loaded = yield from _with_progress(unit.key, load_stages(unit, artifacts, stage))
        runner, times, built_target = loaded.runner, loaded.times, loaded.built_target
        hops, layout, unscheduled = loaded.artifact.hops, loaded.artifact.layout, loaded.unscheduled

        stage[0] = Stage.EXECUTE
        yield progress(unit.key, stage[0])
        # The shard's images are made a chunk at a time (the next while this one runs) and
        # each chunk's predictions go out at once: a board holds two chunks, whatever the
        # number of images.
        cache = TensorCache(artifacts.root / TENSORS)
        for seq, chunk in enumerate(batch.chunks(unit.lo, unit.hi, PREDICTION_CHUNK, cache)):
            yield _predict_chunk(unit, runner, chunk, labels, spec, ident, seq, stage)
            written += len(chunk)
    except Exception as exc:  # errors are data: the study goes on
        log.debug("unit %s failed in %s:\n%s", unit.config, stage[0], traceback.format_exc())
        failure = Failure.from_exception(Stage.of(stage[0]), exc)
    finally:
        if runner is not None:
            runner.deactivate()
    yield builds_row(unit, failure, study=study, board=board, hostname=hostname,
                     seconds=time.perf_counter() - start_all, times=times, target=built_target, hops=hops,
                     layout=layout, unscheduled=unscheduled, rows=written)


def _predict_chunk(unit: Unit, runner: Runner, chunk: Inputs, labels: Any, spec: Any, ident: dict[str, Any],
                   seq: int, stage: list[str]) -> pa.Table:
    """The ``predictions`` table of one chunk of images (one inference each)."""
    rows: dict[str, list[Any]] = {k: [] for k in ("image_index", "image_id", "input_hash", "label", "top1",
                                                   "top5", "top5_prob", "logits", "latency_ns")}
    for i, image_id in enumerate(chunk.ids):
        x = chunk.tensors[i : i + 1]
        t0 = time.perf_counter_ns()
        out = runner.infer(x)
        latency = time.perf_counter_ns() - t0  # one call, untimed warm-up: not a timing (see session)
        stage[0] = Stage.VERIFY
        if out.ndim > 2 and out.shape[-1] == out.size == labels.num_classes:
            # TVM's TFLite frontend keeps FULLY_CONNECTED's keep_num_dims shape
            # (1, 1, 1, n) where LiteRT gives (1, n), with the same values (measured on
            # EfficientNet-Lite0, max |dlogit| 1e-5): only singleton axes are dropped.
            out = out.reshape(1, labels.num_classes)
        if out.ndim != 2 or out.shape != (1, labels.num_classes):
            declared = (f" ({spec.description} declares labels = {labels.num_classes}; fix labels)"
                        if zoo.is_user(unit.model) else "")
            raise UnitFailure(Stage.VERIFY, Outcome.MISMATCH,
                              f"output shape {tuple(out.shape)}, expected (1, {labels.num_classes}){declared}")
        if not np.isfinite(out).all():  # a NaN logit makes top-1 meaningless (argsort puts NaN first)
            raise UnitFailure(Stage.VERIFY, Outcome.NAN, f"output for image {image_id!r} has "
                              f"{int(np.isnan(out).sum())} NaN and {int(np.isinf(out).sum())} infinite values "
                              f"of {out.size}")
        logits = labels.to_imagenet(out.astype(np.float32))[0]
        probs = softmax(logits.astype(np.float64))
        top5 = np.argsort(-logits, kind="stable")[:5]
        rows["image_index"].append(chunk.index(i))
        rows["image_id"].append(image_id)
        rows["input_hash"].append(chunk.hashes[i])
        rows["label"].append(chunk.labels[i])
        rows["top1"].append(int(top5[0]))
        rows["top5"].append(top5.astype(np.int32).tolist())
        rows["top5_prob"].append(probs[top5].astype(np.float32).tolist())
        rows["logits"].append(logits)
        rows["latency_ns"].append(latency)
        stage[0] = Stage.EXECUTE
    n = len(chunk.ids)
    columns = {k: [v] * n for k, v in ident.items()} | {k: v for k, v in rows.items()}
    columns["logits"] = pa.FixedSizeListArray.from_arrays(
        pa.array(np.concatenate(rows["logits"])), 1000).cast(pa.list_(pa.float32()))
    return tag(pa.table(columns, schema=SCHEMAS["predictions"]), "predictions", unit.key, seq)


#: Board setting (environment): MiB a TVM build may allocate on top of what the board
#: process already holds. A runaway build then fails as an ``oom`` row of stage ``build``
#: instead of waking the kernel's OOM killer, which may take the board's Ray node with it.
BUILD_MEMORY_ENV = "DELTANN_BUILD_MEMORY_MB"


@contextmanager
def build_memory_cap() -> Iterator[None]:
    """Cap the process's data segment (RLIMIT_DATA: heap and anonymous mappings, not the
    shared libraries) for the duration of a build when :data:`BUILD_MEMORY_ENV` is set."""
    value = os.environ.get(BUILD_MEMORY_ENV)
    if not value:
        yield
        return
    import resource

    try:
        headroom = int(value) << 20
    except ValueError:
        raise ValueError(f"{BUILD_MEMORY_ENV}={value!r}: expected a whole number of MiB") from None
    with open("/proc/self/status") as fh:
        used = next(int(line.split()[1]) << 10 for line in fh if line.startswith("VmData:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = used + headroom if hard == resource.RLIM_INFINITY else min(used + headroom, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def runtime_threads(runtime: str) -> int:
    """Threads the runtime actually ran with (its runner's thread policy: torch reports its
    own; onnxruntime and TVM were configured from :func:`~deltann.core.runner.thread_count`)."""
    return registry.get(runtime).threads_used()
