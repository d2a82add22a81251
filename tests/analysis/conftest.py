"""A writer for hand-made stores: one call per unit, rows given as plain lists, so each test
states the numbers it then checks by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from deltann.store import SCHEMAS, Store, tag

MS = 1_000_000


def unit_ident(variant: str, runtime: str, setting: str, *, device: str = "local", board: str = "b",
               model: str = "m", key: str | None = None) -> dict[str, Any]:
    """The identity columns of one unit; ``config`` as deltann.plan names it. Columns the
    store's schema has beyond these (added by other layers) are filled with None."""
    how = runtime if setting == "native" else f"tvm:{setting}"
    config = f"{variant} [{how}]"
    ident = {"unit_key": key or f"{config}@{device}@{board}", "study": "s", "model": model, "variant": variant,
             "runtime": runtime, "setting": setting, "config": config, "device": device, "board": board,
             "hostname": "h"}
    return ident


def write_unit(store: Store, ident: dict[str, Any], *, top1: list[int], top5: list[list[int]] | None = None,
               top5_prob: list[list[float]] | None = None, labels: list[int | None] | None = None,
               latency_ms: list[float] | None = None, samples_ms: list[float] | None = None,
               cells_ms: list[list[float]] | None = None, session: str = "s1",
               logits: list[list[float]] | None = None) -> None:
    """Predictions for images ``img0..imgN-1`` (N = len(top1)), its timings and the
    ``builds`` row that marks the unit complete. Timings: ``cells_ms[i][b]`` is image i's
    sample in block b of timing session ``session`` (one row per image, as a board writes
    them); ``samples_ms`` instead writes one row of image ``img0`` with those samples and
    no session or blocks, as deltann wrote before timing sessions existed."""
    n = len(top1)
    base = {name: None for name in SCHEMAS["predictions"].names} | ident
    rows = [base | {
        "image_index": i, "image_id": f"img{i}", "input_hash": f"h{i}",
        "label": labels[i] if labels else None, "top1": top1[i],
        "top5": top5[i] if top5 else [top1[i], 990, 991, 992, 993],
        "top5_prob": top5_prob[i] if top5_prob else [0.6, 0.1, 0.1, 0.1, 0.1],
        "logits": logits[i] if logits else [0.0, 1.0],
        "latency_ns": int((latency_ms[i] if latency_ms else 1.0) * MS),
    } for i in range(n)]
    key = ident["unit_key"]
    store.write(tag(pa.Table.from_pylist(rows, schema=SCHEMAS["predictions"]), "predictions", key, 0))
    blank = {name: None for name in SCHEMAS["timings"].names} | ident
    if samples_ms is not None:
        timing = blank | {"image_id": "img0", "warmup": 1, "number": 1, "repeat": len(samples_ms),
                          "min_repeat_ms": 0, "threads": 1, "samples_ns": [int(s * MS) for s in samples_ms],
                          "median_ns": 0}
        store.write(tag(pa.Table.from_pylist([timing], schema=SCHEMAS["timings"]), "timings", key, 0))
    if cells_ms is not None:
        timing_rows = [blank | {"session": session, "image_id": f"img{i}", "image_index": i, "warmup": 1, "number": 1,
                                "repeat": 1, "min_repeat_ms": 0, "blocks": len(c), "pause_ms": 0, "threads": 1,
                                "samples_ns": [int(s * MS) for s in c], "sample_block": list(range(len(c))),
                                "median_ns": int(np.median(c) * MS)} for i, c in enumerate(cells_ms)]
        store.write(tag(pa.Table.from_pylist(timing_rows, schema=SCHEMAS["timings"]), "timings",
                        f"{session}-{key}", 0))
    build = {name: None for name in SCHEMAS["builds"].names} | ident | {"status": "ok", "passes": []}
    store.write(tag(pa.Table.from_pylist([build], schema=SCHEMAS["builds"]), "builds", key, 0))


class Hand:
    """A hand-made store in a temporary folder and the two helpers that fill it."""

    MS = MS

    def __init__(self, root: Path) -> None:
        self.store = Store(root)

    def unit(self, variant: str, runtime: str, setting: str, **kw: Any) -> dict[str, Any]:
        return unit_ident(variant, runtime, setting, **kw)

    def write(self, ident: dict[str, Any], **kw: Any) -> None:
        write_unit(self.store, ident, **kw)


@pytest.fixture
def hand(tmp_path: Path) -> Hand:
    return Hand(tmp_path / "store")


def _perturb_onnx(src: Path, dst: Path, node_name: str, scale: float = 0.05) -> Path:
    """A copy of ``src`` whose node ``node_name`` has its weight initializer perturbed by
    ``scale`` times its standard deviation (seeded noise): the single-layer fault."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    node = next(n for n in model.graph.node if n.name == node_name)
    init = next(t for t in model.graph.initializer if t.name == node.input[1])
    w = numpy_helper.to_array(init)
    noisy = w + scale * w.std() * np.random.RandomState(1).randn(*w.shape).astype(w.dtype)
    init.CopyFrom(numpy_helper.from_array(noisy.astype(w.dtype), init.name))
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="session")
def perturb_onnx() -> Any:
    """The single-layer fault: ``perturb_onnx(src, dst, node_name, scale=0.05)``."""
    return _perturb_onnx
