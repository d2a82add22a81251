"""Shared fixtures. The tiny model (deltann.zoo.tiny, 64x64 input) serves every layer;
EfficientNet-Lite0 (real offline weights) is used where answers must be meaningful."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def write_study(folder: Path, body: str, name: str = "study.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def study_file(tmp_path: Path):  # noqa: ANN201 - returns a writer function
    """Write a study body (dedented) into tmp_path and return its path."""
    return lambda body, name="study.toml": write_study(tmp_path, body, name)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """Ray in-process for the whole session (as `deltann run` starts it), shut down at
    the end so no worker outlives the tests."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_results(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Path:
    """A real run of the tiny model: torch and torch->onnx, native + TVM basic/extended,
    four sample photos. Shared by the fleet, store and analysis tests."""
    from deltann.fleet.driver import run_study

    folder = tmp_path_factory.mktemp("tiny")
    study = write_study(
        folder,
        """
        name = "tiny"
        models = ["tiny_cnn"]
        variants = ["torch", "torch->onnx"]
        runtimes = ["native", "tvm"]
        settings = ["basic", "extended"]
        [dataset]
        limit = 4
        [timing]
        warmup = 1
        number = 2
        repeat = 3
        blocks = 5
        """,
    )
    out = folder / "results"
    summary = run_study(study, out, progress=False)
    assert summary.ran == 6 and summary.failed == 0, summary
    return out


def outlier_keras(path: Path) -> Path:
    """A small Keras CNN whose dynamic-range TFLite conversion flips labels, saved to
    ``path`` (``.keras``). Its dense layer holds, for every class, one large weight on a
    feature that is always zero (a conv channel with zero weights and a negative bias,
    after ReLU): the float model never sees it, but int8 weight quantisation scales each
    class by its largest weight, so the others round coarsely and top-1 labels move — the
    outlier-weight failure of weight quantisation, seeded and deterministic (3 of the 10
    sample photos flip with tensorflow 2.21)."""
    import keras
    import numpy as np

    rng = np.random.RandomState(7)
    inp = keras.Input((64, 64, 3))
    y = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv")(inp)
    y = keras.layers.GlobalAveragePooling2D(name="pool")(y)
    model = keras.Model(inp, keras.layers.Dense(1000, name="head")(y))
    kernel = (rng.randn(3, 3, 3, 16) * 0.3).astype("float32")
    bias = (rng.randn(16) * 0.1).astype("float32")
    kernel[..., 0], bias[0] = 0.0, -1.0
    model.get_layer("conv").set_weights([kernel, bias])
    weights = rng.randn(16, 1000).astype("float32")
    weights[0, :] = 200.0
    model.get_layer("head").set_weights([weights, np.zeros(1000, "float32")])
    model.save(path)
    return path


@pytest.fixture(scope="session")
def flip_results(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Path:
    """A real run where a dynamic-range TFLite variant flips labels: the outlier Keras
    model (:func:`outlier_keras`) as a user model, on Keras, as fp32 TFLite and as
    dynamic-range TFLite (LiteRT), the ten sample photos."""
    from deltann.fleet.driver import run_study

    folder = tmp_path_factory.mktemp("flip")
    outlier_keras(folder / "outlier.keras")
    study = write_study(
        folder,
        """
        name = "flip"
        models = ["outlier"]
        variants = ["keras", "keras->tflite", "keras->tflite:dynamic-range"]
        runtimes = ["native"]
        [user_models.outlier]
        path = "outlier.keras"
        input_shape = [1, 64, 64, 3]
        preprocess = "unit"
        labels = 1000
        [timing]
        blocks = 2
        pause_ms = 0
        """,
    )
    out = folder / "results"
    summary = run_study(study, out, progress=False)
    assert summary.ran == 3 and summary.failed == 0, summary
    return out


def _record_results(folder: Path, study_toml: str, kinds: Any, keep: Callable[[Any], bool],
                   board: Callable[[Any], str]) -> Path:
    """A real results folder (``folder/results``) for ``study_toml``: the units ``keep``
    accepts, run by the fleet's own unit executor in this process (no Ray), each on the
    board ``board`` names."""
    import socket

    from deltann import plan
    from deltann.convert.chain import ArtifactCache
    from deltann.fleet.driver import prepare_inputs
    from deltann.fleet.execute import run_unit
    from deltann.fleet.markers import is_progress
    from deltann.store import Store
    from deltann.study import load_study

    study_path = folder / "study.toml"
    study_path.write_text(study_toml)
    study = load_study(study_path, kinds)
    inputs = prepare_inputs(study, folder)
    out = folder / "results"
    store = Store(out)
    store.write_manifest(study.model_dump(), {"started": "test"})
    artifacts = ArtifactCache(out / "artifacts")
    for unit in plan.expand(study, inputs, kinds):
        if not keep(unit):
            continue
        for table in run_unit(unit, inputs[unit.model], artifacts, study=study.name, board=board(unit),
                              hostname=socket.gethostname()):
            if not is_progress(table):
                store.write(table)
    return out


@pytest.fixture(scope="session")
def record_results() -> Any:
    """A real results folder: ``record_results(folder, study_toml, kinds, keep, board)``."""
    return _record_results


def pytest_configure(config: pytest.Config) -> None:
    """Load triton before any test imports TensorFlow: the other order segfaults once torch
    reaches torch._dynamo (see deltann/_native.py)."""
    from deltann._native import before_tensorflow

    before_tensorflow()



class StoreRows:
    """Rows of a results folder as boards write them (tests/test_store_integrity.py,
    tests/test_merge.py): a unit's predictions then its builds row, a timing session."""

    @staticmethod
    def row(table: str, **values: Any) -> dict[str, Any]:
        from deltann.store import SCHEMAS

        return {name: None for name in SCHEMAS[table].names} | {"model": "m", "device": "local"} | values

    @staticmethod
    def write(store: Any, table: str, key: str, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        from deltann.store import SCHEMAS, tag

        store.write(tag(pa.Table.from_pylist(rows, schema=SCHEMAS[table]), table, key, 0))

    @staticmethod
    def write_unit(store: Any, key: str, *, images: int = 2, lab: str | None = "a", status: str = "ok",
                   config: str = "c") -> None:
        """A unit as a board writes it: its predictions, then its builds row (counting them)."""
        preds = [StoreRows.row("predictions", unit_key=key, lab=lab, config=config, image_id=f"i{i}", image_index=i,
                               top1=i, top5=[i, 1, 2, 3, 4], top5_prob=[0.5] * 5, logits=[float(i)] * 1000)
                 for i in range(images)]
        StoreRows.write(store, "predictions", key, preds)
        StoreRows.write(store, "builds", key, [StoreRows.row("builds", unit_key=key, lab=lab, config=config,
                                                             status=status, passes=[], rows=images)])

    @staticmethod
    def write_session(store: Any, key: str, units: list[str], lab: str = "a") -> None:
        """A timing session of ``units``: a timings row each, then its sessions row."""
        rows = [StoreRows.row("timings", unit_key=u, session=key, lab=lab, config="c", image_id="i0",
                              samples_ns=[1, 2, 3], sample_block=[0, 0, 0]) for u in units]
        StoreRows.write(store, "timings", key, rows)
        StoreRows.write(store, "sessions", key, [StoreRows.row("sessions", session=key, lab=lab, status="ok",
                                                               unit_keys=units, configs=["c"] * len(units),
                                                               rows=len(rows))])

    @staticmethod
    def flip_in_data_page(path: Path, column: str, rng: Any = None) -> int:
        """Flip one bit inside a data page of ``column``'s chunk (past the chunk's first
        half, so not in the footer nor the page header at its start); returns the offset.
        ``rng`` (a ``random.Random``) picks the byte and bit, else the chunk's 3/4 mark."""
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path).metadata
        names = [meta.schema.column(i).path for i in range(meta.num_columns)]
        index = next(i for i, n in enumerate(names) if n == column or n.startswith(column + "."))
        chunk = meta.row_group(0).column(index)
        start = chunk.data_page_offset
        end = (chunk.dictionary_page_offset or start) + chunk.total_compressed_size
        lo = start + (end - start) // 2
        offset = rng.randrange(lo, end) if rng is not None else lo + (end - lo) // 2
        data = bytearray(path.read_bytes())
        data[offset] ^= 1 << (rng.randrange(8) if rng is not None else 3)
        path.write_bytes(bytes(data))
        return offset

    @staticmethod
    def new_store(root: Path) -> Any:
        """An empty results folder (its manifest written, as a run's start writes it)."""
        from deltann.store import Store

        store = Store(root)
        store.ensure_manifest({"name": "s"})
        return store


@pytest.fixture
def store_rows() -> type[StoreRows]:
    """:class:`StoreRows`: write units and sessions into a results folder by hand."""
    return StoreRows
