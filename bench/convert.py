"""Conversion benchmark: the wall time of each hop of each chain, and how the variant
agrees with its source on the sample photos (top-1 agreement, max |dlogit|).

    .venv/bin/python bench/convert.py [--model efficientnet_lite0] [--cache DIR] [CHAIN ...]

With no CHAIN, every fp32 chain from torch through each framework, and the
dynamic-range and float16 TFLite twins. A pair without a direct tool is routed as the
study would route it (``torch->tf`` is ``torch->onnx->tf``). Hops already in ``--cache``
are reused, and printed with the time of their original conversion marked "cached"
(give an empty folder, the default, to time every hop now).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from deltann import convert, dataset, zoo
from deltann.convert.chain import ArtifactCache
from deltann.convert.conversion_check import agreement, native_logits
from deltann.errors import ConversionError

DEFAULT_CHAINS = [
    "torch->onnx",
    "torch->onnx->torch",
    "torch->tf",
    "torch->keras",
    "torch->tf->tflite",
    "torch->tf->tflite:dynamic-range",
    "torch->tf->tflite:float16",
    "torch->tf->onnx",
    "torch->keras->onnx",
    "torch->keras->tf",
    "torch->keras->tflite",
    "torch->tf->tflite->onnx",
    "torch->tf->torch",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chains", nargs="*", default=DEFAULT_CHAINS)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--cache", default=None, help="artifact folder (default: a fresh temporary one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    spec = zoo.get(args.model)
    inputs = dataset.preprocess(dataset.load_samples(), spec.preprocess)
    with tempfile.TemporaryDirectory() as tmp:
        cache = ArtifactCache(Path(args.cache or tmp))
        source = convert.resolve(args.chains[0]).split("->")[0]
        reference = native_logits(cache.get(args.model, source), spec, inputs.tensors)
        timed: set[str] = set()
        print(f"{args.model}: {len(inputs.ids)} sample photos; reference = {source} on its own runtime")
        for entry in args.chains:
            chain = convert.resolve(entry)
            start = time.perf_counter()
            try:
                artifact = cache.get(args.model, chain)
            except ConversionError as exc:
                print(f"{chain:45s} FAILED: {exc}")
                continue
            steps = chain.split("->")
            for i, hop in enumerate(artifact.hops):
                prefix = "->".join(steps[: i + 2])
                if prefix in timed:
                    continue
                timed.add(prefix)
                print(f"  hop {hop['src']}->{hop['dst']:7s} {hop['tool']} {hop['version']:10s} "
                      f"quantize={hop['quantize']:13s} {hop['seconds']:7.2f} s   ({prefix})"
                      + ("  [cached: time of the original conversion]" if hop.get("cached") else ""))
            try:
                result = agreement(reference, native_logits(artifact, spec, inputs.tensors))
            except Exception as exc:  # a runtime failure is a result here too
                print(f"{chain:45s} RUN FAILED: {type(exc).__name__}: {exc}")
                continue
            print(f"{chain:45s} [{artifact.framework}/{artifact.layout}, quantize={artifact.quantize}] "
                  f"{result}  (materialised in {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
