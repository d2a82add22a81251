"""PyTorch eager runtime, and its per-layer capture: forward hooks on every module that
computes something itself, plus the functional ops of containers
(:class:`_TorchRecorder`, which TVM's capture of a ``torch.export`` build shares)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deltann.core.runner import Runner
from deltann.core.runtime_registry import register
from deltann.core.trace import Layer, Trace


class TorchRunner(Runner):
    name = "torch"
    framework = "torch"
    dist = framework_dist = "torch"
    suffixes = (".pt2",)  # an exported program (deltann.zoo.user)
    loads_code = "torch.export.load unpickles objects and evaluates expressions stored in a .pt2 (torch 2.14)"

    def __init__(self, module: Any, layout: str = "NCHW") -> None:
        super().__init__(layout)
        self.module = module

    def activate_impl(self) -> None:
        self.module.eval()

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(x)).numpy()

    @classmethod
    def save_payload(cls, payload: Any, layout: str, input_shape: tuple[int, ...], dst: Path) -> Path:
        """The module as an ExportedProgram (``.pt2``): the one it was loaded from, if any."""
        import torch

        program = getattr(payload, "exported_program", None)
        if program is None:
            example = torch.zeros(input_shape, dtype=torch.float32)
            program = torch.export.export(payload.eval(), (example,))
        path = dst.with_suffix(".pt2")
        torch.export.save(program, str(path))
        return path

    @classmethod
    def threads_used(cls) -> int:
        """torch reports its own pool's size."""
        import torch

        return torch.get_num_threads()

    @classmethod
    def capture(cls, payload: Any, x: np.ndarray, layout: str, *, meta: dict[str, Any] | None = None,
                **options: Any) -> Trace:
        return capture_torch(payload, x)



@dataclass
class _Frame:
    captured: bool  # does a hook capture this module's output as a whole?
    path: str
    inner: list[str] = field(default_factory=list)  # layers recorded while it ran


class _TorchRecorder:
    """What :func:`capture_torch` and :func:`capture_tvm_torch` share: forward hooks on
    the modules that compute (leaves, and modules owning parameters), plus the tensor
    functions a container's ``forward`` calls itself (``torch.relu``, ``x + y``,
    ``torch.cat``), seen through a ``TorchFunctionMode`` (without them a model written
    with functional activations, residual adds or branch concatenations has no tensor to
    compare there). A functional op is named like the legacy ONNX exporter names it,
    ``/<module path>/<op>[_k]``; a module called twice is ``path``, then ``path_1``. Each
    record's producers are found by tensor identity (a captured module's own captured
    children count as its producers: a conv that owns its padding child consumes it).

    Eager (``keep_tensors=False``) copies each value to numpy at once (a later in-place
    op must not change it); under ``torch.export`` it keeps a clone of each tensor, which
    the exposing wrapper returns as an extra output."""

    def __init__(self, module: Any, keep_tensors: bool) -> None:
        self.module = module
        self.keep = keep_tensors
        self.reset()

    def reset(self) -> None:
        self.layers: list[Layer] = []
        self.paths: list[str | None] = []
        self.tensors: list[Any] = []
        self.calls: dict[str, int] = {}
        self.produced: dict[int, tuple[str, ...]] = {}
        self.alive: list[Any] = []  # keeps recorded tensors alive: their ids stay unique
        self.stack: list[_Frame] = []
        self.busy = False

    def _count(self, key: str) -> str:
        k = self.calls.get(key, 0)
        self.calls[key] = k + 1
        return key if k == 0 else f"{key}_{k}"

    def _producers(self, *args: Any) -> tuple[str, ...]:
        import torch

        out: list[str] = []

        def walk(a: Any) -> None:
            if isinstance(a, torch.Tensor):
                out.extend(n for n in self.produced.get(id(a), ()) if n not in out)
            elif isinstance(a, (list, tuple)):
                for b in a:
                    walk(b)
            elif isinstance(a, dict):
                for b in a.values():
                    walk(b)

        walk(args)
        return tuple(out)

    def _record(self, key: str, op: str, tensor: Any, inputs: tuple[str, ...], path: str | None) -> None:
        self.busy = True  # our own clone/detach calls are not layers
        try:
            name = self._count(key)
            if self.keep:
                value, kept = np.empty(0, np.float32), tensor.clone()
            else:
                value, kept = tensor.detach().cpu().numpy().copy(), None
            self.layers.append(Layer(name, op, value, inputs=inputs))
            self.paths.append(path)
            self.tensors.append(kept)
            self.produced[id(tensor)] = (name,)
            self.alive.append(tensor)
            if self.stack:
                self.stack[-1].inner.append(name)
        finally:
            self.busy = False

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        import torch

        def pre_for(path: str, captured: bool) -> Any:
            def pre(_mod: Any, _inputs: Any) -> None:
                self.stack.append(_Frame(captured, path))
            return pre

        def hook_for(path: str, mod: Any) -> Any:
            def hook(_mod: Any, inputs: Any, output: Any) -> None:
                frame = self.stack.pop()
                if frame.captured and isinstance(output, torch.Tensor) and output.is_floating_point():
                    producers = self._producers(inputs)
                    inner = tuple(n for n in frame.inner if n not in producers)
                    self._record(path, type(mod).__name__, output, producers + inner, path)
            return hook

        handles = []
        for path, mod in self.module.named_modules():
            own = any(True for _ in mod.parameters(recurse=False))
            # nn.Identity computes nothing (a no-op padding slot): not a layer
            captured = (bool(path) and type(mod).__name__ != "Identity"
                        and (own or not any(True for _ in mod.children())))
            handles.append(mod.register_forward_pre_hook(pre_for(path, captured)))
            handles.append(mod.register_forward_hook(hook_for(path, mod)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def functional(self) -> Any:
        import torch
        from torch.overrides import TorchFunctionMode

        rec = self

        class Functional(TorchFunctionMode):
            def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                out = func(*args, **(kwargs or {}))
                if rec.busy or (rec.stack and rec.stack[-1].captured) or not isinstance(out, torch.Tensor):
                    return out  # inside a captured module: its hook records the result
                producers = rec._producers(args, kwargs)
                if not out.is_floating_point() or out.ndim == 0 or not producers and not any(
                        isinstance(a, torch.Tensor) for a in args):
                    if producers:  # not a layer, but data flows through it
                        rec.produced[id(out)] = producers
                        rec.alive.append(out)
                    return out
                op = getattr(func, "__name__", str(func)).strip("_")
                scope = rec.stack[-1].path if rec.stack else ""
                rec._record(f"/{scope}/{op}" if scope else f"/{op}", op, out, producers, None)
                return out

        return Functional()

    def finish(self) -> list[Layer]:
        """The records with each module layer's own parameters (read from the real module,
        not the tensors a trace saw)."""
        for layer, path in zip(self.layers, self.paths, strict=True):
            if path is None:
                continue
            mod = self.module.get_submodule(path)
            layer.params = {n: p.detach().cpu().numpy().copy() for n, p in mod.named_parameters(recurse=False)}
            layer.params |= {n: b.detach().cpu().numpy().copy() for n, b in mod.named_buffers(recurse=False)
                             if b.dtype.is_floating_point}
        return self.layers


def capture_torch(module: Any, x: np.ndarray) -> Trace:
    """Eager torch: every module that computes and every functional op of a container
    (see :class:`_TorchRecorder`)."""
    import torch

    rec = _TorchRecorder(module, keep_tensors=False)
    module.eval()
    with rec.hooks(), torch.inference_mode(), rec.functional():
        module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return Trace("torch", "NCHW", rec.finish())


def expose_torch_layers(module: Any, input_shape: tuple[int, ...]) -> tuple[Any, list[Layer]]:
    """An exported program of ``module`` whose outputs are ``(logits, *every layer)``: a
    wrapper runs the module under the recorder while ``torch.export`` traces it, so the
    layers are the very ones (names, producers) :func:`capture_torch` records. Export
    keeps the recorded clones as outputs; nothing else of the graph changes."""
    import torch

    rec = _TorchRecorder(module, keep_tensors=True)
    module.eval()

    class Exposed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, x: Any) -> Any:
            rec.reset()
            with rec.functional():
                out = self.inner(x)
            return (out, *rec.tensors)

    with rec.hooks(), torch.no_grad():
        program = torch.export.export(Exposed(), (torch.zeros(input_shape, dtype=torch.float32),))
    return program, rec.finish()


register(TorchRunner)
