"""Helpers shared by the hop modules: ONNX constant folding, onnx2tf's calibration file,
Keras model loading/export, TF graph freezing and TFLiteConverter's quantize modes.

Each helper does one documented thing with the tool's public API; heavy frameworks are
imported inside the functions."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from deltann import dataset
from deltann._native import before_tensorflow
from deltann.convert.chain_spec import Layout, Produced
from deltann.zoo.base import Preprocess

log = logging.getLogger("deltann.convert")

ONNX_OPSET = 17


def input_shape(nchw: tuple[int, ...], layout: Layout) -> tuple[int, ...]:
    """The artifact's own input shape, from the model's canonical NCHW shape."""
    if layout == "NCHW":
        return tuple(nchw)
    n, c, h, w = nchw
    return (n, h, w, c)


def fold_onnx(src: Path, dst: Path) -> Path:
    """Constant-fold ``src`` into ``dst`` with onnxruntime's basic (semantics-preserving,
    ONNX-ops-only) graph optimisations. Exporters emit TF-style 'same' padding as
    shape-computed ``Pad`` inputs; onnx2tf mis-infers their shapes (EfficientNet-Lite0:
    "Dimensions must be equal, but are 7 and 5"), folding turns them into constants."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    tmp = dst.with_name(dst.name + ".tmp")
    opts.optimized_model_filepath = str(tmp)
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    tmp.replace(dst)
    return dst


#: onnx2tf (utils/common_functions.download_test_image_data) reads this file from the
#: current directory, and downloads it from GitHub when it is absent.
ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


def onnx2tf_sample_data(folder: Path) -> Path:
    """Write onnx2tf's check images (20 x 128 x 128 x 3, float32 in [0, 1], NHWC) from our
    own offline sample photos, so onnx2tf never reaches for the network. onnx2tf uses them
    only to compare ONNX and TF outputs during conversion (and for int8 calibration, which
    we never ask for)."""
    images = dataset.load_samples()
    recipe = Preprocess(size=128, resize_shorter=128, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x = dataset.preprocess(images, recipe).tensors.transpose(0, 2, 3, 1)
    x = np.concatenate([x] * (20 // len(x) + 1))[:20].astype(np.float32)
    path = folder / ONNX2TF_SAMPLE
    np.save(path, x)
    return path


def nchw_front(src: Path, dst: Path) -> Path:
    """Give an NHWC ONNX an NCHW input: a new input ``(N, C, H, W)`` feeding a
    ``Transpose(perm=[0, 2, 3, 1])`` whose output takes the old input's name. Same
    function, canonical layout; the cancelling transposes fold away in onnx2tf."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"{src}: {len(inputs)} inputs; an image classifier has one")
    old = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "N") for d in old.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ValueError(f"{src}: input {old.name!r} has rank {len(dims)}, expected 4 (NHWC)")
    n, h, w, c = dims
    new = helper.make_tensor_value_info(old.name + "_nchw", old.type.tensor_type.elem_type, [n, c, h, w])
    transpose = helper.make_node("Transpose", [new.name], [old.name], name="deltann_nchw_to_nhwc", perm=[0, 2, 3, 1])
    graph.input.remove(old)
    graph.input.insert(0, new)
    graph.node.insert(0, transpose)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


def run_onnx2tf(onnx_path: Path, out_dir: Path, layout: Layout, *, keras: bool) -> Path:
    """Convert ONNX to a TF SavedModel (and, with ``keras``, the tf-keras ``.keras`` file)
    with onnx2tf. Returns onnx2tf's output folder. onnx2tf assumes 4-D inputs are NCHW and
    makes them NHWC; an NHWC ONNX (tf2onnx's output) first gets an NCHW input with a
    Transpose in front (:func:`nchw_front`), so the result is NHWC either way.
    (``keep_nwc_or_nhwc_or_ndhwc_input_names`` was measured to mis-transpose EfficientNet:
    input (1, 224, 3, 224).)"""
    before_tensorflow()
    import onnx2tf

    if layout == "NHWC":
        onnx_path = nchw_front(onnx_path, out_dir / "nchw_front.onnx")
    folded = fold_onnx(onnx_path, out_dir / "folded.onnx")
    onnx2tf_sample_data(out_dir)
    target = out_dir / "onnx2tf"
    with contextlib.chdir(out_dir):
        onnx2tf.convert(
            input_onnx_file_path=str(folded),
            output_folder_path=str(target),
            output_signaturedefs=True,
            output_keras_v3=keras,
            not_use_onnxsim=True,  # not installed; we constant-fold with onnxruntime instead
            non_verbose=True,
        )
    if not (target / "saved_model.pb").exists():
        raise RuntimeError(f"onnx2tf wrote no SavedModel into {target}")
    return target


def keras_tool(parent: Produced) -> str:
    """The distribution that handles a ``keras`` artifact: ``tf-keras`` for onnx2tf's
    files, else ``keras`` (recorded as the hop's tool)."""
    return "tf-keras" if parent.meta.get("keras_api") == "tf_keras" else "keras"


def keras_model(parent: Produced) -> Any:
    """The Keras model of a ``keras`` artifact: an in-memory Keras 3 model (a zoo loader),
    or a file written by Keras 3 or by tf-keras (onnx2tf's output), as its metadata says.
    Files are loaded with ``safe_mode=True`` (no arbitrary Python lambdas)."""
    api = parent.meta.get("keras_api", "keras")
    if not isinstance(parent.payload, (str, Path)):
        return parent.payload
    before_tensorflow()
    if api == "tf_keras":
        import tf_keras

        return tf_keras.models.load_model(str(parent.payload), safe_mode=True, compile=False)
    import keras

    return keras.saving.load_model(str(parent.payload), safe_mode=True, compile=False)


def export_saved_model(parent: Produced, folder: Path) -> Path:
    """Keras export of an inference SavedModel (``serving_default`` signature)."""
    model = keras_model(parent)
    if parent.meta.get("keras_api", "keras") == "tf_keras":
        model.export(str(folder))
    else:
        model.export(str(folder), format="tf_saved_model", verbose=False)
    return folder


def frozen_serving_graph(saved_model: Path, meta: dict[str, Any] | None = None) -> tuple[Any, list[str], list[str]]:
    """The ``serving_default`` signature of a SavedModel with variables folded into
    constants: (GraphDef, input tensor names, output tensor names) — what tf2onnx reads.
    (Converting the signature function itself would turn every variable into an input.)
    A frozen GraphDef (``.pb``) is read as is, with the tensor names of its metadata."""
    before_tensorflow()
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    if Path(saved_model).suffix == ".pb":
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(Path(saved_model).read_bytes())
        return graph_def, [meta["input"]], [meta["output"]]  # type: ignore[index]
    loaded = tf.saved_model.load(str(saved_model))
    fn = loaded.signatures["serving_default"]
    frozen = convert_variables_to_constants_v2(fn)
    inputs = [t.name for t in frozen.inputs if t.dtype != tf.resource]
    outputs = [t.name for t in frozen.outputs]
    return frozen.graph.as_graph_def(), inputs, outputs


def tf2onnx_from_saved_model(saved_model: Path, out: Path, meta: dict[str, Any] | None = None) -> Path:
    before_tensorflow()
    import tf2onnx

    graph_def, inputs, outputs = frozen_serving_graph(saved_model, meta)
    tf2onnx.convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs,
                                   opset=ONNX_OPSET, output_path=str(out))
    return out


def tflite_bytes(converter: Any, quantize: str) -> bytes:
    """Run a ``tf.lite.TFLiteConverter`` with exactly the requested quantisation — no
    hidden int8 (the seed's mistake): ``none`` leaves ``optimizations`` empty;
    ``dynamic-range`` is ``Optimize.DEFAULT`` without a representative dataset (int8
    weights, float activations); ``float16`` adds ``supported_types=[float16]``."""
    before_tensorflow()
    import tensorflow as tf

    if quantize == "dynamic-range":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize != "none":
        raise ValueError(f"unknown quantize {quantize!r}")
    return converter.convert()


def write_atomic(path: Path, data: bytes) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def tflite_converter_for_tf(parent: Produced) -> Any:
    """TFLiteConverter over a SavedModel's ``serving_default``, or over a frozen GraphDef
    with the tensor names of its metadata (TF's v1 ``from_frozen_graph``)."""
    before_tensorflow()
    import tensorflow as tf

    path = Path(parent.payload)
    if path.suffix == ".pb":
        return tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
            str(path), [parent.meta["input"].split(":")[0]], [parent.meta["output"].split(":")[0]]
        )
    return tf.lite.TFLiteConverter.from_saved_model(str(path), signature_keys=["serving_default"])
