"""Fault localization on a real model: for each pair of runtimes, the alignment rate,
aligned and unmatched layer counts, the first layer beyond tolerance and the wall time of
capturing both sides and aligning them.

    .venv/bin/python bench/localize.py [--model efficientnet_lite0] [--images 1] [--cache DIR]

Pairs (A is the reference, eager torch unless named): onnxruntime; TVM through the ONNX,
torch exported-program and TFLite frontends with every layer exposed; TVM kernel by
kernel as built (``basic`` vs ``extended``: what ``extended`` fused is listed as
unmatched); the onnx2tf SavedModel (runtime ``tf``); LiteRT fp32 and dynamic-range (the
quantised variant must first diverge at a quantised layer); and the issue's fault: one
conv's weights perturbed in the ONNX copy. Conversions go to ``--cache`` (reused when
present; the conversion time is not in the pair's time).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from deltann import dataset, zoo
from deltann.analysis.layer_diff import localize
from deltann.compile.settings import passes_of
from deltann.convert.chain import ArtifactCache
from deltann.runtimes import layers

FAULTS = {"efficientnet_lite0": "/_blocks.3/_expand_conv/Conv", "tiny_cnn": "/convs.1/Conv"}


def perturb(src: Path, dst: Path, node_name: str) -> Path:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    node = next(n for n in model.graph.node if n.name == node_name)
    init = next(t for t in model.graph.initializer if t.name == node.input[1])
    w = numpy_helper.to_array(init)
    noisy = w + 0.05 * w.std() * np.random.RandomState(1).randn(*w.shape).astype(w.dtype)
    init.CopyFrom(numpy_helper.from_array(noisy.astype(w.dtype), init.name))
    onnx.save(model, str(dst))
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--cache", default="")
    args = ap.parse_args()
    cache_dir = Path(args.cache or tempfile.mkdtemp(prefix="deltann-localize-"))
    cache = ArtifactCache(cache_dir)
    model = args.model
    x = dataset.preprocess(dataset.load_samples(args.images), zoo.get(model).preprocess).tensors
    torch_model = cache.get(model, "torch").payload
    onnx_path = Path(cache.get(model, "torch->onnx").payload)
    tfl = cache.get(model, "torch->onnx->tf->tflite")
    saved = cache.get(model, "torch->onnx->tf")
    quant = cache.get(model, "torch->onnx->tf->tflite:dynamic-range")
    faulty = perturb(onnx_path, cache_dir / "faulty.onnx", FAULTS[model])
    basic, extended = passes_of("basic"), passes_of("extended")

    traces: dict[str, Any] = {}

    def cap(name: str, fn: Any) -> tuple[Any, float]:
        if name not in traces:
            start = time.perf_counter()
            traces[name] = (fn(), time.perf_counter() - start)
            return traces[name]
        return traces[name][0], 0.0  # captured for an earlier pair: no time again

    captures = {
        "torch": lambda: layers.capture_torch(torch_model, x),
        "onnxruntime": lambda: layers.capture_onnxruntime(onnx_path, x),
        "onnxruntime (faulty copy)": lambda: layers.capture_onnxruntime(faulty, x),
        "tvm onnx basic": lambda: layers.capture_tvm(onnx_path, x, basic),
        "tvm torch.export extended": lambda: layers.capture_tvm_torch(torch_model, x, extended),
        "tvm tflite default": lambda: layers.capture_tvm_tflite(tfl.payload, x, passes_of("default")),
        "tvm kernels basic": lambda: layers.capture_tvm_kernels("onnx", onnx_path, x, basic),
        "tvm kernels extended": lambda: layers.capture_tvm_kernels("onnx", onnx_path, x, extended),
        "tf (onnx2tf)": lambda: layers.capture_tf(saved.payload, x, saved.layout, saved.meta),
        "litert": lambda: layers.capture_litert(tfl.payload, x, tfl.layout),
        "litert dynamic-range": lambda: layers.capture_litert(quant.payload, x, quant.layout),
    }
    pairs = [("torch", "onnxruntime"), ("torch", "onnxruntime (faulty copy)"), ("torch", "tvm onnx basic"),
             ("torch", "tvm torch.export extended"), ("torch", "tf (onnx2tf)"), ("torch", "litert"),
             ("torch", "litert dynamic-range"), ("litert", "tvm tflite default"),
             ("tvm kernels basic", "tvm kernels extended"), ("torch", "tvm kernels extended")]
    print(f"{model}, {len(x)} image(s); tolerance atol=1e-3 rtol=1e-3 (reference A)")
    print(f"{'A':<18} {'B':<27} {'layers A/B':>10} {'aligned':>7} {'unmatched':>9} {'rate':>6} "
          f"{'time s':>7}  first beyond tolerance")
    for a, b in pairs:
        ta, sa = cap(a, captures[a])
        tb, sb = cap(b, captures[b])
        start = time.perf_counter()
        loc = localize(ta, tb)
        seconds = sa + sb + time.perf_counter() - start
        first = loc.first_divergent
        where = "none" if first is None else (f"{first['layer_a'] or '-'} ~ {first['layer_b'] or '-'} "
                                              f"(max {first['max_abs']:.2g}{', quantised' if first['quantized_b'] else ''})")
        print(f"{a:<18} {b:<27} {len(ta.layers):>4}/{len(tb.layers):<5} {len(loc.matched):>7} "
              f"{len(loc.unmatched):>9} {loc.alignment_rate:>6.1%} {seconds:>7.1f}  {where}")


if __name__ == "__main__":
    main()
