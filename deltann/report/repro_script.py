#!/usr/bin/env python3
"""Reproduce one DeltaNN discrepancy with the two runtimes alone (no deltann needed).

This folder was written by ``deltann repro``: both models as they ran (a TVM build as its
compiled shared library), the exact input tensors (``inputs/*.npy``, with the SHA-256 the
study recorded), the outputs the study stored (``outputs/*.npy``) and ``bundle.json``,
which says what ran where (chain, tools and versions, build settings and target, the
machine). This script runs both sides on every input and prints, per image, both top-1
labels and the largest logit difference, beside what the study stored.

    python repro.py             # needs numpy and the two runtimes named in bundle.json
    python repro.py --time 50   # also time each side (50 calls on the first input)

A torch side is an ExportedProgram (``.pt2``), and ``torch.export.load`` unpickles parts
of it: it is loaded only with ``--trust-remote-code`` (as a study loads a ``.pt2`` user
model only with ``trust_remote_code = true``), given when you trust whoever made the
bundle. (A TVM side's ``module.so`` is native code compiled by TVM, loaded as TVM loads
any exported module; rebuild it from its frontend input if in doubt.)

Exit status 0 when both sides give the top-1 labels the study stored (the difference is
reproduced), 1 when they do not, 2 when a side cannot be loaded as asked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def tensor_hash(x: np.ndarray) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (C order), first 16 hex digits: the
    hash the study stored with every prediction."""
    x = np.ascontiguousarray(x)
    h = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode())
    h.update(x.tobytes())
    return h.hexdigest()[:16]


class Refused(Exception):
    """A side that is not loaded without the user's say-so (see the module docstring)."""


def _onnxruntime(path: Path, side: dict[str, Any], trust_remote_code: bool) -> Callable[[np.ndarray], Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _torch(path: Path, side: dict[str, Any], trust_remote_code: bool) -> Callable[[np.ndarray], Any]:
    if not trust_remote_code:
        raise Refused(f"{path}: {side['config']} is a torch ExportedProgram and torch.export.load unpickles parts of "
                      "it; rerun with --trust-remote-code if you trust whoever made this bundle")
    import torch

    module = torch.export.load(str(path)).module()

    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            out = module(torch.from_numpy(x))
        return (out[0] if isinstance(out, (tuple, list)) else out).numpy()

    return run


def _litert(path: Path, side: dict[str, Any], trust_remote_code: bool) -> Callable[[np.ndarray], Any]:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the same interpreter, as TensorFlow ships it
        from tensorflow.lite import Interpreter  # type: ignore[no-redef]
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()

    def run(x: np.ndarray) -> Any:
        inp = interpreter.get_input_details()[0]
        if tuple(inp["shape"]) != x.shape:
            interpreter.resize_tensor_input(inp["index"], list(x.shape))
            interpreter.allocate_tensors()
            inp = interpreter.get_input_details()[0]
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()

    return run


def _tf(path: Path, side: dict[str, Any], trust_remote_code: bool) -> Callable[[np.ndarray], Any]:
    import tensorflow as tf

    if path.suffix == ".pb":  # a frozen GraphDef, cut at the tensors bundle.json names
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(path.read_bytes())
        wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
        fn = wrapped.prune(wrapped.graph.get_tensor_by_name(side["meta"]["input"]),
                           wrapped.graph.get_tensor_by_name(side["meta"]["output"]))
        return lambda x: fn(tf.constant(x)).numpy()
    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures["serving_default"]
    name = next(iter(fn.structured_input_signature[1]))
    output = next(iter(fn.structured_outputs))
    return lambda x: fn(**{name: tf.constant(x)})[output].numpy()


def _keras(path: Path, side: dict[str, Any], trust_remote_code: bool) -> Callable[[np.ndarray], Any]:
    if side.get("meta", {}).get("keras_api") == "tf_keras":
        import tf_keras

        model = tf_keras.models.load_model(str(path), safe_mode=True, compile=False)
    else:
        import keras

        model = keras.saving.load_model(str(path), safe_mode=True, compile=False)
    return lambda x: np.asarray(model(x, training=False))


def _tvm(path: Path, side: dict[str, Any], trust_remote_code: bool) -> Callable[[np.ndarray], Any]:
    import tvm
    from tvm import relax

    kind = side.get("device_kind", "llvm")
    dev = tvm.device("cpu" if kind == "llvm" else kind, 0)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), dev)

    def run(x: np.ndarray) -> Any:
        out = vm["main"](tvm.runtime.tensor(x, device=dev))
        return (out if hasattr(out, "numpy") else out[0]).numpy()

    return run


LOADERS: dict[str, Callable[[Path, dict[str, Any], bool], Callable[[np.ndarray], Any]]] = {
    "onnxruntime": _onnxruntime, "torch": _torch, "litert": _litert, "tf": _tf, "keras": _keras, "tvm": _tvm,
}


def load(side: dict[str, Any], folder: Path = HERE,
         trust_remote_code: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """The side's model as a function: canonical NCHW float32 batch -> logits in the common
    1000-class ImageNet space (the side's layout and label offset as bundle.json says)."""
    run = LOADERS[side["runtime"]](folder / side["file"], side, trust_remote_code)
    classes, offset = int(side["labels"]["classes"]), int(side["labels"]["offset"])

    def logits(x: np.ndarray) -> np.ndarray:
        if side["layout"] == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        out = np.asarray(run(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)
        if out.ndim > 2 and out.size == classes:  # e.g. TVM's TFLite import keeps (1, 1, 1, n)
            out = out.reshape(1, classes)
        return out[:, offset : offset + 1000]

    return logits


def _versions(runtimes: set[str]) -> str:
    from importlib import metadata

    dists = {"onnxruntime": "onnxruntime", "torch": "torch", "litert": "ai-edge-litert", "tf": "tensorflow",
             "keras": "keras", "tvm": "apache-tvm"}
    out = []
    for r in sorted(runtimes):
        try:
            out.append(f"{r} {metadata.version(dists[r])}")
        except metadata.PackageNotFoundError:
            out.append(f"{r} ?")
    return ", ".join(out)


def main(argv: list[str] | None = None, folder: Path = HERE) -> int:
    parser = argparse.ArgumentParser(description="Reproduce a DeltaNN discrepancy (see README.md)")
    parser.add_argument("--time", type=int, default=0, metavar="N", help="also time each side, N calls")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="load a torch side (.pt2: torch.export.load unpickles parts of it)")
    args = parser.parse_args(argv)
    bundle = json.loads((folder / "bundle.json").read_text())
    a, b = bundle["a"], bundle["b"]
    print(f"A = {a['config']} on {a['device']}  ({a['runtime']}, {a['file']})")
    print(f"B = {b['config']} on {b['device']}  ({b['runtime']}, {b['file']})")
    print(f"runtimes here: {_versions({a['runtime'], b['runtime']})}; the study ran with: "
          f"{a['runtime_version']} / {b['runtime_version']}")
    try:
        run_a, run_b = load(a, folder, args.trust_remote_code), load(b, folder, args.trust_remote_code)
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    reproduced = True
    worst = 0.0
    for image in bundle["images"]:
        xs = {}
        for side in ("a", "b"):
            x = np.load(folder / image[f"input_{side}"])
            seen = tensor_hash(x[0])  # the study hashed each image's tensor, without the batch axis
            if seen != image[f"hash_{side}"] and (side == "a" or image["input_b"] != image["input_a"]):
                print(f"warning: {image[f'input_{side}']} hashes to {seen}, the study saw {image[f'hash_{side}']}")
            xs[side] = x
        la, lb = run_a(xs["a"]), run_b(xs["b"])
        sa, sb = np.load(folder / image["stored_a"]), np.load(folder / image["stored_b"])
        ta, tb = int(la.argmax()), int(lb.argmax())
        d_now, d_stored = float(np.abs(la - lb).max()), float(np.abs(sa - sb).max())
        worst = max(worst, d_now)
        same = ta == int(sa.argmax()) and tb == int(sb.argmax())
        reproduced &= same
        verdict = "DIFFER" if ta != tb else "same"
        print(f"top1 {image['id']}: A={ta} B={tb} {verdict} | stored A={int(sa.argmax())} B={int(sb.argmax())} | "
              f"max|dlogit| {d_now:.4g} (stored {d_stored:.4g}) | A vs stored {float(np.abs(la - sa).max()):.2g}, "
              f"B vs stored {float(np.abs(lb - sb).max()):.2g}")
    print(f"max |logit_A - logit_B| over the images: {worst:.4g}")
    if args.time > 0:
        first = bundle["images"][0]
        medians = {}
        for name, run, side in (("A", run_a, "a"), ("B", run_b, "b")):
            x = np.load(folder / first[f"input_{side}"])
            for _ in range(2):
                run(x)
            samples = []
            for _ in range(args.time):
                t0 = time.perf_counter_ns()
                run(x)
                samples.append(time.perf_counter_ns() - t0)
            medians[name] = statistics.median(samples) / 1e6
            print(f"time {name}: median {medians[name]:.3f} ms over {args.time} calls")
        print(f"time B / A: {medians['B'] / medians['A']:.2f}x (this machine, this process; the study's session "
              f"measured {bundle.get('time_ratio_b_over_a') or 'n/a'})")
    print("REPRODUCED: both sides give the stored top-1 labels" if reproduced else
          "NOT REPRODUCED: a side's top-1 differs from what the study stored")
    return 0 if reproduced else 1


if __name__ == "__main__":
    sys.exit(main())
