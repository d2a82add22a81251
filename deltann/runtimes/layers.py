"""Per-layer capture: every runtime's intermediate tensors, by name, in execution order,
with each layer's own parameters and the layers it reads from (its producers) — what
fault localization (:mod:`deltann.analysis.layer_diff`) aligns and compares.

:func:`capture` dispatches by runtime name through the registry to the runner class's
own capture (:meth:`deltann.core.runner.Runner.capture`), which returns a
:class:`Trace` (an ordered list of :class:`Layer`, :mod:`deltann.core.trace`). How
each native runtime exposes its tensors lives in its module (see NOTES.md "Per-layer
outputs"): torch (``torch_rt``), onnxruntime (``onnxrt``), LiteRT (``litert_rt``), TF
(``tf_rt``), Keras (``keras_rt``). This module keeps TVM's captures, which reuse those
exposers so that both sides of a pair name their layers alike:

- TVM from ONNX: every float output of every node that depends on the input becomes a
  graph output, imported exactly as deltann's builds import it (folded by onnxruntime's
  basic optimisations first, which fuses Pad into Conv and renames nothing else), so its
  layers carry the folded graph's node and tensor names;
- TVM from torch (``torch.export`` frontend): the recorder runs inside ``torch.export``
  and its tensors become extra outputs of the exported program (names = module paths);
- TVM from TFLite: the flatbuffer's subgraph outputs are extended with every operator's
  output before import (names = TFLite tensor names, as LiteRT's capture has them).

Capturing is intrusive by nature: an exposed tensor cannot be fused away, so a TVM
capture runs the setting's passes over a graph in which every layer is an output. The
operators and their arithmetic are the setting's, but fusion stops at each exposed
tensor (measured on EfficientNet-Lite0 under ``default``: conv+bias+ReLU6 in one kernel
as built, conv+bias and ReLU6 in two when exposed). :func:`capture_tvm_kernels` is the
other way: the build exactly as made, one layer per kernel, where what a setting fused
is unobservable (and listed as unmatched by the alignment). Only ``numpy`` is imported at
module level: the analysis layer imports :class:`Trace` without any framework.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from deltann.compile import pipeline
from deltann.compile.frontends import _fold_onnx
from deltann.core import runtime_registry as registry
from deltann.core.trace import EMPTY, Layer, Trace, dedupe as _dedupe, stack as _stack, to_layout as _to_layout
from deltann.runtimes.keras_rt import capture_keras
from deltann.runtimes.litert_rt import _litert_interpreter, _litert_layers, capture_litert, expose_tflite_layers
from deltann.runtimes.onnxrt import _onnx_trace, capture_onnxruntime, expose_onnx_layers
from deltann.runtimes.tf_rt import capture_tf
from deltann.runtimes.torch_rt import capture_torch, expose_torch_layers

# (The native captures are re-exported: callers and tests name them here.)
__all__ = ["EMPTY", "Layer", "Trace", "capture", "capture_keras", "capture_litert", "capture_onnxruntime",
           "capture_tf", "capture_torch", "capture_tvm", "capture_tvm_kernels", "capture_tvm_tflite",
           "capture_tvm_torch", "expose_onnx_layers", "expose_tflite_layers", "expose_torch_layers"]

log = logging.getLogger("deltann.runtimes")


def capture_tvm_torch(module: Any, x: np.ndarray, passes: tuple[str, ...] = (),
                      target_json: str = "", host_json: str = "", tuning: str = "") -> Trace:
    """Every torch layer from a TVM Relax build imported through the exported-program
    frontend (as deltann's ``torch.export`` builds import it) under ``passes``; layers
    named by module path, as :func:`capture_torch` names them."""
    shape = (1, *x.shape[1:])
    program, recorded = expose_torch_layers(module, shape)
    outs = _run_tvm("torch.export", program, shape, passes, target_json, host_json, _to_layout(x, "NCHW"),
                    1 + len(recorded), tuning)
    return Trace("tvm", "NCHW", [replace(layer, value=outs[1 + k]) for k, layer in enumerate(recorded)])


def _tvm_vm(frontend: str, payload: Any, input_shape: tuple[int, ...], passes: tuple[str, ...], target_json: str,
            host_json: str, tuning: str) -> Any:
    """The build as deltann's builds make it, through the one TVM path
    (:func:`deltann.compile.pipeline.compile_payload`: the same import, the board's target,
    the setting's passes then the target's lowering), on the Relax VM; a one-line error
    where this machine has no device for the target (a board's build is captured on a
    machine that can run it)."""
    target = pipeline.make_target(target_json or pipeline.DEFAULT_TARGET, host_json)
    pipeline.device(target, check=True)  # before the minutes a build can take
    built = pipeline.compile_payload(frontend, payload, input_shape, passes, target, tuning)
    return pipeline.Vm(built.executable, target, check=True)


def _run_tvm(frontend: str, payload: Any, input_shape: tuple[int, ...], passes: tuple[str, ...], target_json: str,
             host_json: str, xin: np.ndarray, n_outputs: int, tuning: str = "") -> list[np.ndarray]:
    """Build ``payload`` (:func:`_tvm_vm`) and run it one image at a time (exporters fix
    the batch at 1); returns each output stacked over the batch. ``tuning``: the ``tuned``
    setting's MetaSchedule records (JSON, as units carry them)."""
    vm = _tvm_vm(frontend, payload, input_shape, passes, target_json, host_json, tuning)
    per_image = []
    for i in range(len(xin)):
        outs = vm.outputs(xin[i : i + 1])
        if len(outs) != n_outputs:
            raise RuntimeError(f"TVM returned {len(outs)} outputs where {n_outputs} were exposed")
        per_image.append({k: o.numpy() for k, o in enumerate(outs)})
    stacked = _stack(per_image)
    return [stacked[k] for k in range(n_outputs)]


# --- ONNX (onnxruntime, TVM) ---------------------------------------------------------

def capture_tvm(path: Path, x: np.ndarray, passes: tuple[str, ...] = (), target_json: str = "",
                host_json: str = "", layout: str = "NCHW", tuning: str = "") -> Trace:
    """Every node's output from a TVM Relax build of the ONNX at ``path`` under ``passes``,
    imported as deltann's builds import it (onnxruntime-folded first)."""
    xin = _to_layout(x, layout)
    # at one image's static shape, as deltann's builds import ONNX (frontends.fix_input_shape)
    shape = (1, *xin.shape[1:])
    exposed = expose_onnx_layers(_fold_onnx(Path(path), shape))
    names = [o.name for o in exposed.model.graph.output]
    outs = _run_tvm("onnx", exposed.model, shape, passes, target_json, host_json, xin, len(names), tuning)
    return _onnx_trace("tvm", layout, exposed, dict(zip(names, outs, strict=True)))


# --- TVM as built: one layer per kernel ------------------------------------------------
#: activations a fused kernel may end with (Relax legalises Clip/ReLU6 to maximum+minimum)
_KERNEL_ACTS = ("relu", "clip", "minimum", "sigmoid", "tanh", "swish", "silu", "gelu", "hardswish")
#: ops that join two data inputs (a residual add fused after a conv: the kernel's output
#: is the join's, not the conv's)
_KERNEL_JOINS = ("add", "subtract", "multiply", "concatenate", "divide")


def _kernel_ops(name: str) -> list[str]:
    """``fused_conv2d11_add9_maximum5_minimum5`` -> ``[conv2d, add, maximum, minimum]``."""
    import re

    return [re.sub(r"\d+$", "", part) for part in name.removeprefix("fused_").split("_") if part]


def capture_tvm_kernels(frontend: str, payload: Any, x: np.ndarray, passes: tuple[str, ...] = (),
                        target_json: str = "", host_json: str = "", layout: str = "NCHW",
                        tuning: str = "") -> Trace:
    """The build exactly as deltann's builds make it (same import, same passes, nothing
    exposed), one layer per kernel call, read by the Relax VM's instrument hook after
    each call (a kernel writes its output into its last argument). What a setting fused
    into one kernel is unobservable here: its inner layers have no counterpart and the
    alignment lists them as unmatched. Kernels are named by their function name (with a
    call count); their producers are the kernels that last wrote the buffers they read
    (memory planning reuses buffers, so "last writer" is the only sound link); kernels
    that read no data (weight layout transforms) are not layers; constant arguments are
    the layer's parameters."""
    import tvm

    xin = _to_layout(x, layout)
    built = _tvm_vm(frontend, payload, (1, *xin.shape[1:]), passes, target_json, host_json, tuning)
    vm = built.vm
    per_image: list[list[Layer]] = []

    def ptr(t: Any) -> int | None:
        return t.data_ptr() if isinstance(t, tvm.runtime.Tensor) else None

    for i in range(len(xin)):
        arg = built.tensor(xin[i : i + 1])
        writer: dict[int, str] = {ptr(arg): ""}  # buffer -> the layer that last wrote it ("" = the input)
        calls: dict[str, int] = {}
        found: list[Layer] = []

        def instrument(_func: Any, name: str, before: bool, _ret: Any, *args: Any) -> int:
            if before or name.startswith("vm.") or not args or not isinstance(args[-1], tvm.runtime.Tensor):
                return 0
            out = args[-1]
            reads = [writer.get(ptr(a)) for a in args[:-1]]
            live = [r for r in reads if r is not None]
            if not live:  # reads no data: a weight transform (its buffer holds no layer now)
                writer.pop(ptr(out), None)
                return 0
            k = calls.get(name, 0)
            calls[name] = k + 1
            label = name if k == 0 else f"{name}_{k}"
            ops = _kernel_ops(name)
            producers = _dedupe(r for r in live if r)
            joins = [o for o in ops[1:] if o in _KERNEL_JOINS]
            act = bool(ops) and ops[-1] in _KERNEL_ACTS
            if len(live) > 1 and joins and not act:
                op, params = joins[-1], {}  # conv+bias+residual add: the add's output
            else:
                op = name
                params = {f"input{j}": a.numpy() for j, (a, r) in enumerate(zip(args[:-1], reads, strict=True))
                          if r is None and isinstance(a, tvm.runtime.Tensor) and "float" in str(a.dtype)}
            if "float" in str(out.dtype):
                found.append(Layer(label, op, out.numpy().copy(), (), params, fused_act=act and len(ops) > 1,
                                   inputs=producers))
                writer[ptr(out)] = label
            else:
                writer[ptr(out)] = producers[0] if producers else ""
            return 0

        vm.set_instrument(instrument)
        vm["main"](arg)
        per_image.append(found)
    layers = [replace(layer, value=np.concatenate([img[k].value for img in per_image]))
              for k, layer in enumerate(per_image[0])]
    # ConvertLayout (the catalogue's AlterOpLayout) makes the kernels channel-last; its
    # 4-D outputs cannot be told from NCHW by shape when C == H == W
    return Trace("tvm", "NHWC" if "ConvertLayout" in passes else layout, layers)


# --- LiteRT, and TVM from TFLite -------------------------------------------------------

def capture_tvm_tflite(path: Path, x: np.ndarray, passes: tuple[str, ...] = (),
                       target_json: str = "", host_json: str = "", layout: str = "NHWC",
                       tuning: str = "") -> Trace:
    """Every TFLite operator's output from a TVM Relax build imported through the TFLite
    frontend (as deltann's ``tflite`` builds import it) under ``passes``; layers named and
    parametrised as :func:`capture_litert` names them."""
    it = _litert_interpreter(path)
    templates = _litert_layers(it, Path(path))
    own = [int(o["index"]) for o in it.get_output_details()]
    wanted = [out for _, out in templates]
    order = own + [t for t in dict.fromkeys(wanted) if t not in own]
    xin = _to_layout(x, layout)
    outs = _run_tvm("tflite", expose_tflite_layers(Path(path), wanted), (1, *xin.shape[1:]), passes, target_json,
                    host_json, xin, len(order), tuning)
    position = {t: k for k, t in enumerate(order)}
    return Trace("tvm", layout, [replace(layer, value=outs[position[out]]) for layer, out in templates])


def capture(runtime: str, payload: Any, x: np.ndarray, layout: str, *, passes: tuple[str, ...] = (),
            target_json: str = "", host_json: str = "", meta: dict[str, Any] | None = None,
            frontend: str = "", kernels: bool = False, tuning: str = "") -> Trace:
    """Capture by runtime name (the names of the ``builds`` table) through its registered
    runner. ``x`` is the canonical NCHW batch; ``payload`` the artifact's (a module, or a
    file path); ``frontend`` the TVM frontend the build imported through (told from the
    payload when empty); ``kernels``: a TVM build as built, one layer per kernel
    (:func:`capture_tvm_kernels`), instead of every layer exposed; ``tuning``: a ``tuned``
    build's MetaSchedule records (JSON, :mod:`deltann.compile.metaschedule`)."""
    try:
        runner = registry.get(runtime)
    except ValueError:
        raise ValueError(f"no per-layer capture for runtime {runtime!r}; have: "
                         f"{', '.join(registry.runners())}") from None
    return runner.capture(payload, x, layout, meta=meta, passes=passes, target_json=target_json,
                          host_json=host_json, frontend=frontend, kernels=kernels, tuning=tuning)
