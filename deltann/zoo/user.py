"""User models by path: a study's ``[user_models.<name>]`` table names a model file —
``.keras`` / ``.h5`` (Keras), a SavedModel folder or a frozen ``.pb`` (TF), ``.tflite``,
``.onnx`` or an exported-program ``.pt2`` (torch) — with its input shape, layout,
preprocessing and label space. Everything is declared: the framework follows from the
path's suffix (or the SavedModel folder), the class space and recipe from the table,
never from the file's name.

Security: a model file is data unless ``trust_remote_code = true`` for that model.
``.keras`` and ``.h5`` load with Keras' ``safe_mode=True`` (a ``Lambda`` layer's Python
code is refused; Keras 3.15 applies it to legacy ``.h5`` too). ``.pt2`` is refused
without trust: ``torch.export.load`` (torch 2.14) unpickles pickled weights and
constants with ``weights_only=False``, ``pickle.loads`` opaque constants and
``sympify``-evaluates symbolic shapes read from the file. ``.onnx`` is parsed by
``onnx.load`` (protobuf), ``.tflite`` by LiteRT (flatbuffer); a TF graph (or a TFLite
file's Flex ops, which run TF kernels) is refused without trust when it holds file-system
or Python ops (:data:`TF_UNSAFE_OPS`): its outputs could carry a file's content into the
results store.

A user model becomes a :class:`~deltann.zoo.base.ModelSpec` registered under its name for
the process (:func:`register`); its ``weights_id`` is the SHA-256 of the file's (or the
folder's) content, cached by path, size and mtime so that planning stays cheap. Units
carry the definition (``Unit.user_model``) so a board process registers it too.

One file because validation, the loaders per file type and registration are one trust
boundary: what a user's file may do is decided here and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from deltann import zoo
from deltann._native import before_tensorflow
from deltann.convert.chain_spec import Produced
from deltann.core import runtime_registry as registry
from deltann.errors import DeltannError
from deltann.zoo.base import LabelSpace, ModelSpec, Preprocess
from deltann.zoo.tf_files import frozen_function

log = logging.getLogger("deltann.zoo")

#: (A file's framework follows from its suffix, and a framework's default layout, as the
#: runtime that runs the framework declares them: deltann.core.runtime_registry. A folder with
#: ``saved_model.pb`` is ``tf``.)
SAVED_MODEL_FRAMEWORK = "tf"

#: Named recipes: scale, mean and std (the crop size is the model's input size, the
#: shorter side is resized to size * 256 / 224 first, as ImageNet evaluation does).
RECIPES: dict[str, dict[str, Any]] = {
    # torchvision / ImageNet mean-std normalisation of [0, 1] pixels
    "imagenet": {"scale": 1 / 255, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
    "torchvision": {"scale": 1 / 255, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
    # Inception / TF-slim / Keras "tf" mode / EfficientNet-Lite: pixels to [-1, 1]
    "inception": {"scale": 1 / 255, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
    # pixels to [0, 1]
    "unit": {"scale": 1 / 255, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)},
    # pixels as they are, 0-255 (models that normalise inside, e.g. Keras EfficientNet)
    "raw": {"scale": 1.0, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)},
}

#: TF ops that reach the file system or Python: a graph holding one runs only when trusted.
TF_UNSAFE_OPS = frozenset({
    "ReadFile", "WriteFile", "MatchingFiles", "DeleteFile", "CopyFile", "RenameFile", "CreateDir", "DeleteDir",
    "PyFunc", "PyFuncStateless", "EagerPyFunc", "ImmutableConst", "LoadAndRemapMatrix", "ReaderReadV2",
    "TFRecordReaderV2", "WholeFileReaderV2", "FixedLengthRecordReaderV2", "TextLineReaderV2", "LMDBReader",
    "PrintV2", "Print", "InitializeTableFromTextFile", "InitializeTableFromTextFileV2", "TFRecordDataset",
    "TFRecordDatasetV2", "TextLineDataset", "FixedLengthRecordDataset", "FixedLengthRecordDatasetV2",
    "MatchingFilesDataset", "CreateSummaryFileWriter", "WriteSummary", "DebugIdentityV2", "DebugIdentityV3",
    "SaveDataset", "SaveDatasetV2", "LoadDataset", "SnapshotDatasetV2",
})


class UserModelError(DeltannError):
    """A user model file cannot be used as declared; the message names the file."""


class Recipe(BaseModel):
    """An inline preprocessing table (any key left out takes the ImageNet mean-std default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int | None = Field(None, ge=8, le=4096)
    resize_shorter: int | None = Field(None, ge=8, le=8192)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    scale: float = Field(1 / 255, gt=0, le=1)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @field_validator("std")
    @classmethod
    def _positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(not s > 0 for s in v):
            raise ValueError("every std must be > 0")
        return v


class UserModel(BaseModel):
    """One ``[user_models.<name>]`` table of a study."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1, max_length=4096,
                      description=".keras .h5 .tflite .onnx .pt2 file, a SavedModel folder or a frozen .pb; "
                                  "relative to the study file")
    input_shape: tuple[int, int, int, int] = Field(description="the model's input, batch 1, in its own layout")
    layout: Literal["NCHW", "NHWC"] | None = Field(None, description="default: NHWC for keras/tf/tflite, "
                                                                     "NCHW for onnx/torch")
    preprocess: Literal["imagenet", "torchvision", "inception", "unit", "raw"] | Recipe
    labels: Literal[1000, 1001] = Field(description="classes the model outputs (1001: background at 0)")
    offset: int | None = Field(None, ge=0, le=1, description="index of ImageNet class 0 in the output "
                                                              "(default 0 for 1000 classes, 1 for 1001)")
    input_tensor: str | None = Field(None, min_length=1, max_length=256, description="frozen .pb only")
    output_tensor: str | None = Field(None, min_length=1, max_length=256, description="frozen .pb only")
    trust_remote_code: bool = Field(False, description="let the file run code when loaded (Keras Lambda layers, "
                                                       "torch.export.load's pickles)")

    @field_validator("preprocess", mode="before")
    @classmethod
    def _named(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in RECIPES:
            raise ValueError(f"unknown recipe {v!r}; allowed: {', '.join(RECIPES)} or an inline table "
                             "{size, resize_shorter, interpolation, scale, mean, std}")
        return v

    @field_validator("path")
    @classmethod
    def _resolve(cls, v: str, info: ValidationInfo) -> str:
        """Relative to the study file's folder (``context["root"]``); the file must exist
        and have a known suffix when a study is validated (a board checks again on load)."""
        root = (info.context or {}).get("root")
        path = Path(v).expanduser()
        if not path.is_absolute() and root is not None:
            path = Path(root) / path
        path = path.resolve() if root is not None else path
        if root is not None:
            if not path.exists():
                raise ValueError(f"{path} not found; give the model file (or SavedModel folder) "
                                 "relative to the study file")
            if path.is_dir() and not (path / "saved_model.pb").is_file():
                raise ValueError(f"{path} is a folder without saved_model.pb; give a SavedModel folder or a model file")
        if not path.is_dir() and registry.framework_of_suffix(path.suffix) is None:
            raise ValueError(f"{path.name}: unknown model file type {path.suffix!r}; allowed: "
                             f"{', '.join(registry.suffixes())} or a SavedModel folder")
        return str(path)

    @model_validator(mode="after")
    def _consistent(self) -> UserModel:
        name = Path(self.path).name
        fw = self.framework
        n, *rest = self.input_shape
        if n != 1:
            raise ValueError(f"input_shape: batch {n}; give batch 1 (studies run one image at a time)")
        if any(d <= 0 for d in rest):
            raise ValueError(f"input_shape: {list(self.input_shape)} has a dimension <= 0")
        c, h, w = (rest[0], rest[1], rest[2]) if self.model_layout == "NCHW" else (rest[2], rest[0], rest[1])
        if c != 3:
            raise ValueError(f"input_shape: {list(self.input_shape)} has {c} channels in layout "
                             f"{self.model_layout}; images are RGB (3); check 'layout'")
        if h != w:
            raise ValueError(f"input_shape: {h}x{w} is not square; the preprocessing centre-crops squares")
        if isinstance(self.preprocess, Recipe) and self.preprocess.size not in (None, h):
            raise ValueError(f"preprocess: size {self.preprocess.size} but input_shape is {h}x{w}; "
                             "make them equal or leave size out")
        if self.labels == 1000 and self.offset not in (None, 0):
            raise ValueError("offset: 1000 classes have offset 0; offset 1 is for 1001 classes (background at 0)")
        frozen = Path(self.path).suffix.lower() == ".pb" and not Path(self.path).is_dir()
        if frozen and not (self.input_tensor and self.output_tensor):
            raise ValueError(f"input_tensor: {name} is a frozen graph; name its input_tensor and output_tensor "
                             "(e.g. 'input:0', 'MobilenetV2/Logits/output:0')")
        if not frozen and (self.input_tensor or self.output_tensor):
            raise ValueError(f"input_tensor: only a frozen .pb takes tensor names; {name} is a {fw} model")
        loads_code = registry.native_of(fw).loads_code
        if loads_code and not self.trust_remote_code:
            raise ValueError(f"trust_remote_code: {name}: {loads_code}; set trust_remote_code = true only if you "
                             "trust its author, or export the model to .onnx")
        return self

    @property
    def framework(self) -> str:
        path = Path(self.path)
        found = None if path.is_dir() else registry.framework_of_suffix(path.suffix)
        return found or SAVED_MODEL_FRAMEWORK

    @property
    def model_layout(self) -> str:
        return self.layout or registry.native_of(self.framework).default_layout

    @property
    def size(self) -> int:
        return self.input_shape[2] if self.model_layout == "NCHW" else self.input_shape[1]

    def recipe(self) -> Preprocess:
        size = self.size
        shorter = round(size * 256 / 224)
        if isinstance(self.preprocess, Recipe):
            p = self.preprocess
            return Preprocess(size=size, resize_shorter=p.resize_shorter or shorter, interpolation=p.interpolation,
                              scale=p.scale, mean=tuple(p.mean), std=tuple(p.std))  # type: ignore[arg-type]
        r = RECIPES[self.preprocess]
        return Preprocess(size=size, resize_shorter=shorter, scale=r["scale"], mean=r["mean"], std=r["std"])

    def label_space(self) -> LabelSpace:
        offset = self.offset if self.offset is not None else (1 if self.labels == 1001 else 0)
        return LabelSpace(self.labels, offset)

    def canonical_shape(self) -> tuple[int, int, int, int]:
        """The input shape in canonical NCHW (what ModelSpec.input_shape holds)."""
        if self.model_layout == "NCHW":
            return self.input_shape
        n, h, w, c = self.input_shape
        return (n, c, h, w)

    def declared(self) -> dict[str, Any]:
        """What the table declares beyond the file and recipe: part of every content key."""
        return {"framework": self.framework, "layout": self.model_layout, "input_shape": list(self.input_shape),
                "labels": [self.labels, self.label_space().offset], "tensors": [self.input_tensor, self.output_tensor]}


# --- content identity --------------------------------------------------------------------
_DIGESTS: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def _stamp(path: Path) -> tuple[tuple[str, int, int], ...]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    out = []
    for f in files:
        st = f.stat()
        out.append((f.relative_to(path).as_posix() if path.is_dir() else f.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def content_id(path: Path | str) -> str:
    """``sha256:<hex>`` of a file's bytes, or of a folder's files (relative names and
    bytes, sorted); recomputed only when a file's path, size or mtime changes. A missing
    path gives ``<name>:absent`` (planning works; loading fails with a row)."""
    path = Path(path)
    try:
        stamp = _stamp(path)
    except OSError:
        return f"{path.name}:absent"
    key = (str(path), stamp)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        for rel, _size, _mtime in stamp:
            f = path / rel if path.is_dir() else path
            if path.is_dir():
                h.update(rel.encode() + b"\0")
            with f.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        _DIGESTS[key] = "sha256:" + h.hexdigest()
    return _DIGESTS[key]


# --- loading and checks -------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).strip().split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _check_input(path: Path, found: Any, um: UserModel) -> None:
    """The model's declared input against ``input_shape`` (unknown dims match anything)."""
    dims = [d if isinstance(d, int) and d > 0 else None for d in found]
    if len(dims) != 4 or any(d is not None and d != e for d, e in zip(dims, um.input_shape, strict=False)):
        shown = ["?" if d is None else d for d in dims]
        raise UserModelError(f"{path}: the model's input is {shown} but the study declares input_shape = "
                             f"{list(um.input_shape)} (layout {um.model_layout}); fix input_shape or layout")


def _check_classes(path: Path, found: Any, um: UserModel, run: Callable[[], Any] | None = None) -> None:
    """The model's output width against ``labels``. Where the file leaves the width open
    (a symbolic dimension), ``run`` runs the model once on a zero input of the declared
    ``input_shape`` and its output says: a wrong ``labels`` then fails here, when the file
    is loaded, not after a TVM build as a mismatch that names neither the file nor the key."""
    shape = list(found) if found is not None else []
    last = shape[-1] if shape else None
    how = ""
    if not (isinstance(last, int) and last > 0) and run is not None:
        try:
            out = np.asarray(run())
        except Exception as exc:  # noqa: BLE001 - any framework error: name the file and why
            raise UserModelError(f"{path}: its output width is not in the file, and running it once on a zero input "
                                 f"of input_shape = {list(um.input_shape)} failed ({_first_line(exc)}); check "
                                 "input_shape and layout") from None
        last = int(out.shape[-1]) if out.ndim else None
        how = " (the file leaves the width open; measured by running it once on a zero input)"
    if isinstance(last, int) and last > 0 and last != um.labels:
        raise UserModelError(f"{path}: the model outputs {last} classes{how} but the study declares labels = "
                             f"{um.labels}; fix labels (1000, or 1001 with background at 0)")


def _zeros(um: UserModel) -> np.ndarray:
    """A zero input of the declared shape, in the model's own layout."""
    return np.zeros(um.input_shape, np.float32)


def _load_keras(path: Path, um: UserModel) -> Produced:
    before_tensorflow()
    import keras

    try:
        model = keras.saving.load_model(str(path), safe_mode=not um.trust_remote_code, compile=False)
    except Exception as exc:
        if "safe_mode" in str(exc):
            raise UserModelError(f"{path}: refused: it holds Python code (e.g. a Lambda layer) that Keras' safe mode "
                                 "will not run; set trust_remote_code = true only if you trust its author") from None
        raise UserModelError(f"{path}: not a readable Keras model ({_first_line(exc)})") from None
    if isinstance(model.input_shape, list) or isinstance(model.output_shape, list):
        raise UserModelError(f"{path}: the model has several inputs or outputs; an image classifier has one of each")
    _check_input(path, model.input_shape, um)
    _check_classes(path, model.output_shape, um, lambda: model(_zeros(um), training=False))
    return Produced(model, um.model_layout, {"keras_api": "keras"})  # type: ignore[arg-type]


def _graph_ops(graph_defs: list[Any]) -> set[str]:
    ops: set[str] = set()
    for g in graph_defs:
        ops.update(n.op for n in g.node)
        for fn in g.library.function:
            ops.update(n.op for n in fn.node_def)
    return ops


def _refuse_unsafe_ops(path: Path, ops: set[str], um: UserModel) -> None:
    bad = sorted(ops & TF_UNSAFE_OPS)
    if bad and not um.trust_remote_code:
        raise UserModelError(f"{path}: refused: the graph holds file-system or Python ops ({', '.join(bad)}); "
                             "set trust_remote_code = true only if you trust its author")


def _load_saved_model(path: Path, um: UserModel) -> Produced:
    before_tensorflow()
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    try:
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
    except Exception as exc:
        raise UserModelError(f"{path}: not a readable SavedModel ({_first_line(exc)})") from None
    # (A SavedModel's own saver ops, SaveV2/RestoreV2 on its variables folder, are not listed.)
    _refuse_unsafe_ops(path, _graph_ops([mg.graph_def for mg in proto.meta_graphs]), um)
    try:
        loaded = tf.saved_model.load(str(path))
        fn = loaded.signatures["serving_default"]
    except KeyError:
        raise UserModelError(f"{path}: no 'serving_default' signature; export the model with one") from None
    except Exception as exc:
        raise UserModelError(f"{path}: not a loadable SavedModel ({_first_line(exc)})") from None
    inputs = list(fn.structured_input_signature[1].values())
    outputs = list(fn.structured_outputs.values())
    if len(inputs) != 1 or len(outputs) != 1:
        raise UserModelError(f"{path}: serving_default has {len(inputs)} inputs and {len(outputs)} outputs; "
                             "an image classifier has one of each")
    _check_input(path, inputs[0].shape.as_list(), um)
    name = next(iter(fn.structured_input_signature[1]))
    _check_classes(path, outputs[0].shape.as_list(), um,
                   lambda: next(iter(fn(**{name: tf.constant(_zeros(um))}).values())).numpy())
    return Produced(path, um.model_layout)  # type: ignore[arg-type]


def _load_frozen(path: Path, um: UserModel) -> Produced:
    before_tensorflow()
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as exc:
        raise UserModelError(f"{path}: not a readable frozen GraphDef ({_first_line(exc)})") from None
    _refuse_unsafe_ops(path, _graph_ops([graph_def]), um)
    try:
        fn = frozen_function(path, um.input_tensor, um.output_tensor)  # type: ignore[arg-type]
    except Exception as exc:
        raise UserModelError(f"{path}: cannot cut the graph from input_tensor {um.input_tensor!r} to "
                             f"output_tensor {um.output_tensor!r} ({_first_line(exc)})") from None
    _check_input(path, fn.inputs[0].shape.as_list() if fn.inputs[0].shape.rank else [None] * 4, um)
    _check_classes(path, fn.outputs[0].shape.as_list() if fn.outputs[0].shape.rank else [], um,
                   lambda: fn(tf.constant(_zeros(um))).numpy())
    return Produced(path, um.model_layout, {"input": um.input_tensor, "output": um.output_tensor})  # type: ignore[arg-type]


def _load_tflite(path: Path, um: UserModel) -> Produced:
    from ai_edge_litert.interpreter import Interpreter

    # Flex ops are TF kernels named by their custom code ("FlexReadFile"), stored as plain
    # bytes in the flatbuffer: a byte search finds them without parsing.
    data = path.read_bytes()
    _refuse_unsafe_ops(path, {op for op in TF_UNSAFE_OPS if b"Flex" + op.encode() in data}, um)
    try:
        interpreter = Interpreter(model_path=str(path))
    except Exception as exc:
        raise UserModelError(f"{path}: not a readable TFLite model ({_first_line(exc)})") from None
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise UserModelError(f"{path}: {len(inputs)} inputs and {len(outputs)} outputs; "
                             "an image classifier has one of each")
    _check_input(path, [int(d) for d in inputs[0].get("shape_signature", inputs[0]["shape"])], um)

    def run() -> Any:
        interpreter.resize_tensor_input(inputs[0]["index"], list(um.input_shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(inputs[0]["index"], _zeros(um))
        interpreter.invoke()
        return interpreter.get_tensor(outputs[0]["index"])

    _check_classes(path, [int(d) for d in outputs[0].get("shape_signature", outputs[0]["shape"])], um, run)
    return Produced(path, um.model_layout)  # type: ignore[arg-type]


def _load_onnx(path: Path, um: UserModel) -> Produced:
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise UserModelError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from None
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) < 1:
        raise UserModelError(f"{path}: {len(inputs)} inputs and {len(graph.output)} outputs; "
                             "an image classifier has one input and its logits first")

    def dims(value: Any) -> list[Any]:
        return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]

    _check_input(path, dims(inputs[0]), um)

    def run() -> Any:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run([graph.output[0].name], {inputs[0].name: _zeros(um)})[0]

    _check_classes(path, dims(graph.output[0]), um, run)
    return Produced(path, um.model_layout)  # type: ignore[arg-type]


def exported_module(program: Any) -> Any:
    """An ``nn.Module`` over a loaded ``ExportedProgram``: callable like the original,
    ``eval()`` a no-op (the program is already frozen in the mode it was exported in; its
    own module refuses ``train``/``eval``), and ``exported_program`` kept so TVM imports
    the program itself (the most direct route) instead of exporting it again."""
    import torch

    class ExportedModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.exported = program.module()
            self.exported_program = program

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.exported(x)
            return out[0] if isinstance(out, (tuple, list)) else out

        def train(self, mode: bool = True) -> ExportedModule:
            return self

    return ExportedModule()


def _load_pt2(path: Path, um: UserModel) -> Produced:
    if not um.trust_remote_code:  # checked by the study too; never reach torch.export.load untrusted
        raise UserModelError(f"{path}: refused: torch.export.load unpickles objects from a .pt2; "
                             "set trust_remote_code = true only if you trust its author")
    import torch

    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise UserModelError(f"{path}: not a readable exported program ({_first_line(exc)})") from None
    user_inputs = set(program.graph_signature.user_inputs)
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    outputs = [n for n in program.graph.nodes if n.op == "output"][0].args[0]
    if len(placeholders) != 1:
        raise UserModelError(f"{path}: {len(placeholders)} inputs; an image classifier has one")

    def shape(node: Any) -> list[Any]:
        val = getattr(node, "meta", {}).get("val")
        return [d if isinstance(d, int) else None for d in val.shape] if val is not None else []

    _check_input(path, shape(placeholders[0]) or [None] * 4, um)
    module = exported_module(program)

    def run() -> Any:
        with torch.inference_mode():
            return module(torch.from_numpy(_zeros(um))).numpy()

    _check_classes(path, shape(outputs[0]), um, run)
    return Produced(module, um.model_layout)  # type: ignore[arg-type]


def _load_tf(path: Path, um: UserModel) -> Produced:
    return _load_saved_model(path, um) if path.is_dir() else _load_frozen(path, um)


_LOADERS = {"tf": _load_tf, "keras": _load_keras, "tflite": _load_tflite, "onnx": _load_onnx, "torch": _load_pt2}


def _load_by_runner(path: Path, um: UserModel) -> Produced:
    """A file of a framework without a loader here (a runtime registered from outside
    deltann): the file as the payload, checked by running it once on its runtime."""
    runner = registry.native_of(um.framework)
    produced = Produced(path, um.model_layout)  # type: ignore[arg-type]

    def run() -> Any:
        with runner.from_artifact(path, um.model_layout, produced.meta) as r:
            return r.infer(np.zeros(um.canonical_shape(), np.float32))

    _check_classes(path, None, um, run)
    return produced


def load(um: UserModel) -> Produced:
    """Load and check the model file: it exists, parses, its input matches
    ``input_shape`` and its output ``labels``. Raises :class:`UserModelError` (one line,
    naming the file)."""
    path = Path(um.path)
    if not path.exists():
        raise UserModelError(f"{path}: model file not found (user model); put it there or fix 'path'")
    return _LOADERS.get(um.framework, _load_by_runner)(path, um)


# --- registry ----------------------------------------------------------------------------
def spec_for(name: str, um: UserModel) -> ModelSpec:
    return ModelSpec(
        name=name,
        description=f"user model {um.path}",
        architecture=f"user model ({Path(um.path).name})",
        preprocess=um.recipe(),
        labels=um.label_space(),
        layout=um.model_layout,  # type: ignore[arg-type]
        loaders={um.framework: lambda: load(um)},
        weights_id=lambda: content_id(um.path),
        input_shape=um.canonical_shape(),
    )


_DEFINITIONS: dict[str, str] = {}


def definition(name: str, um: UserModel) -> str:
    """The JSON a unit carries so any process can :func:`register_json` the model."""
    return json.dumps({"name": name, "model": um.model_dump(mode="json")}, sort_keys=True)


def register(name: str, um: UserModel) -> ModelSpec:
    """Register (or replace) user model ``name`` for this process; a zoo name is refused."""
    spec = spec_for(name, um)
    zoo.register_user(spec)
    _DEFINITIONS[name] = definition(name, um)
    return spec


def register_json(text: str) -> str:
    """Register the model a unit carries (see :func:`definition`), once per definition."""
    data = json.loads(text)
    name = data["name"]
    if _DEFINITIONS.get(name) != text:
        register(name, UserModel.model_validate(data["model"]))
        _DEFINITIONS[name] = text
    return name


def register_from_study(study: dict[str, Any]) -> list[str]:
    """Register the ``user_models`` of a stored study (a results manifest's ``study``), so
    commands that re-run a variant from a results folder (``localize``) find them."""
    names = []
    for name, table in (study.get("user_models") or {}).items():
        register(name, UserModel.model_validate(table))
        names.append(name)
    return names
