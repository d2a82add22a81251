"""User models by path (``[user_models.<name>]``): study validation, the loaders' checks
and security refusals, and ``deltann run`` end to end on real model files.

The files are made once per session from ``tiny_cnn`` (seeded weights): its torch module
exported to ``.onnx`` and ``.pt2``, and the same network written in Keras (weights
copied, NHWC) saved as ``.keras``, ``.h5``, a SavedModel, a frozen ``.pb`` and a
``.tflite``. Every one must give the torch source's top-1 on the sample photos."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from deltann import dataset, plan, zoo
from deltann.errors import StudyError
from deltann.core.device_catalogue import load_catalogue
from deltann.study import load_study
from deltann.zoo import tiny, user
from deltann.zoo.user import UserModel, UserModelError

TINY_RECIPE = "{ size = 64, resize_shorter = 72 }"  # tiny_cnn's own recipe, inline


# --- model files, made once -----------------------------------------------------------------
def _keras_tiny() -> Any:
    """tiny_cnn in Keras: ZeroPadding(1) + valid stride-2 conv is torch's padding=1 conv."""
    from deltann._native import before_tensorflow

    before_tensorflow()
    import keras

    w = tiny._weights()
    inp = keras.Input((64, 64, 3))
    x = inp
    for i, cout in enumerate(tiny.CHANNELS[1:]):
        x = keras.layers.ZeroPadding2D(1)(x)
        conv = keras.layers.Conv2D(cout, 3, strides=2, activation="relu")
        x = conv(x)
        conv.set_weights([w[f"convs.{i}.weight"].transpose(2, 3, 1, 0), w[f"convs.{i}.bias"]])
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(1000)
    out = dense(x)
    dense.set_weights([w["fc.weight"].T, w["fc.bias"]])
    return keras.Model(inp, out)


def _torch_1001() -> Any:
    """tiny_cnn with a background column in front: 1001 classes, ImageNet class k at k+1."""
    import torch

    base = tiny.load_torch()

    class With1001(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = base

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = self.base(x)
            return torch.cat([torch.full_like(logits[:, :1], 1e6), logits], dim=1)  # background wins max

    return With1001().eval()


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    from deltann._native import before_tensorflow

    folder = tmp_path_factory.mktemp("user-models")
    out: dict[str, Path] = {}
    example = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        for name, module in (("tiny.onnx", tiny.load_torch()), ("tiny1001.onnx", _torch_1001())):
            torch.onnx.export(module, (example,), str(folder / name), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"])
            out[name] = folder / name
        program = torch.export.export(tiny.load_torch(), (example,))
    torch.export.save(program, str(folder / "tiny.pt2"))
    out["tiny.pt2"] = folder / "tiny.pt2"

    before_tensorflow()
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    model = _keras_tiny()
    model.save(folder / "tiny.keras")
    model.save(folder / "tiny.h5")
    model.export(str(folder / "tiny_saved"), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(folder / "tiny_saved"))
    (folder / "tiny.tflite").write_bytes(converter.convert())
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(tf.TensorSpec((1, 64, 64, 3)))
    frozen = convert_variables_to_constants_v2(fn)
    (folder / "tiny.pb").write_bytes(frozen.graph.as_graph_def().SerializeToString())
    out["tiny.pb:tensors"] = Path(f"{frozen.inputs[0].name}|{frozen.outputs[0].name}")
    for name in ("tiny.keras", "tiny.h5", "tiny_saved", "tiny.tflite", "tiny.pb"):
        out[name] = folder / name
    return out


@pytest.fixture(scope="session")
def reference() -> dict[str, int]:
    """tiny_cnn's own top-1 per sample photo (the zoo model, torch)."""
    import torch

    batch = dataset.preprocess(dataset.load_samples(), zoo.get("tiny_cnn").preprocess)
    with torch.no_grad():
        logits = tiny.load_torch()(torch.from_numpy(batch.tensors)).numpy()
    top1 = dict(zip(batch.ids, logits.argmax(axis=1).tolist(), strict=True))
    assert len(set(top1.values())) > 1  # the photos get different answers: agreement means something
    return top1


def _study(folder: Path, body: str, name: str = "study.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def _error(folder: Path, body: str) -> str:
    with pytest.raises(StudyError) as info:
        load_study(_study(folder, body))
    message = str(info.value)
    assert "\n" not in message and str(folder / "study.toml") in message
    return message


# --- study validation (cheap: existence, suffix, declared values) ---------------------------------
def test_study_declares_user_models_beside_zoo_models(tmp_path: Path) -> None:
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "mynet.tflite").write_bytes(b"not read at validation")
    study = load_study(_study(tmp_path, """
        name = "mine"
        models = ["mynet"]
        variants = ["tflite", "tflite->onnx"]
        [user_models.mynet]
        path = "nets/mynet.tflite"
        input_shape = [1, 299, 299, 3]
        layout = "NHWC"
        preprocess = "inception"
        labels = 1001
        """))
    um = study.user_models["mynet"]
    assert um.path == str(tmp_path / "nets" / "mynet.tflite") and um.framework == "tflite"
    spec = zoo.get("mynet")  # registered for this process by the study
    assert spec.loaders.keys() == {"tflite"} and spec.layout == "NHWC" and spec.input_shape == (1, 3, 299, 299)
    assert (spec.labels.num_classes, spec.labels.offset) == (1001, 1)
    assert spec.preprocess.size == 299 and spec.preprocess.resize_shorter == 342  # 299 * 256 / 224
    assert spec.preprocess.mean == (0.5, 0.5, 0.5) and spec.preprocess.std == (0.5, 0.5, 0.5)
    assert "mynet" not in zoo.names()  # a later study must define it again to use it


def test_recipes_and_label_space_are_declared() -> None:
    def um(**kw: Any) -> UserModel:
        return UserModel.model_validate({"path": "/x/m.onnx", "input_shape": [1, 3, 224, 224], "labels": 1000,
                                         "preprocess": "imagenet"} | kw)

    assert um().recipe() == zoo.Preprocess(size=224, resize_shorter=256)  # torchvision's recipe
    assert um(preprocess="raw").recipe().scale == 1.0 and um(preprocess="raw").recipe().std == (1, 1, 1)
    inline = um(preprocess={"resize_shorter": 240, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                            "interpolation": "bicubic"}).recipe()
    assert (inline.size, inline.resize_shorter, inline.interpolation, inline.std) == (224, 240, "bicubic",
                                                                                    (0.25, 0.25, 0.25))
    assert um().label_space() == zoo.LabelSpace(1000, 0)
    assert um(labels=1001).label_space() == zoo.LabelSpace(1001, 1)
    assert um(labels=1001, offset=0).label_space() == zoo.LabelSpace(1001, 0)  # background last
    assert um(layout="NHWC", input_shape=[1, 224, 224, 3]).canonical_shape() == (1, 3, 224, 224)
    assert um().model_layout == "NCHW" and um(path="/x/m.tflite", input_shape=[1, 224, 224, 3]).model_layout == "NHWC"


@pytest.mark.parametrize(("table", "expected"), [
    ('path = "nets/absent.onnx"', r"user_models\.m\.path: .*nets/absent\.onnx not found"),
    ('path = "nets/m.txt"', r"user_models\.m\.path: .*unknown model file type '\.txt'"),
    ('path = "nets"', r"user_models\.m\.path: .*folder without saved_model\.pb"),
    ('path = "nets/m.pt2"', r"user_models\.m: trust_remote_code: m\.pt2: torch\.export\.load unpickles"),
    ('path = "nets/m.pb"', r"user_models\.m: input_tensor: m\.pb is a frozen graph"),
    ('path = "nets/m.onnx"\ninput_tensor = "x:0"', r"only a frozen \.pb takes tensor names"),
    ('path = "nets/m.onnx"\nbogus = 1', r"user_models\.m\.bogus: unknown key; allowed keys here: path, input_shape"),
])
def test_bad_user_model_tables_are_one_line(tmp_path: Path, table: str, expected: str) -> None:
    (tmp_path / "nets").mkdir()
    for name in ("m.txt", "m.pt2", "m.pb", "m.onnx"):
        (tmp_path / "nets" / name).write_bytes(b"x")
    fw = {"m.pt2": "torch", "m.pb": "tf"}.get(next((n for n in ("m.pt2", "m.pb") if n in table), ""), "onnx")
    message = _error(tmp_path, f"""
        name = "bad"
        models = ["m"]
        variants = ["{fw}"]
        [user_models.m]
        input_shape = [1, 3, 64, 64]
        layout = "NCHW"
        preprocess = "imagenet"
        labels = 1000
        """ + table + "\n")
    assert re.search(expected, message), message


@pytest.mark.parametrize(("change", "expected"), [
    ({"variants": '["torch"]'}, r"variants\.0: 'torch' starts from 'torch' but user model 'm' \(m\.onnx\) is "
                                r"a 'onnx' model"),
    ({"input_shape": "[1, 64, 64, 3]"}, r"input_shape: .* has 64 channels in layout NCHW"),
    ({"input_shape": "[2, 3, 64, 64]"}, r"input_shape: batch 2"),
    ({"labels": "10"}, r"user_models\.m\.labels: Input should be 1000 or 1001"),
    ({"labels": "1000\noffset = 1"}, r"offset: 1000 classes have offset 0"),
    ({"preprocess": '"caffe"'}, r"unknown recipe 'caffe'; allowed: imagenet, torchvision, inception"),
    ({"preprocess": "{ size = 32 }"}, r"preprocess: size 32 but input_shape is 64x64"),
    ({"name": "tiny_cnn"}, r"user_models: 'tiny_cnn' is the name of a zoo model"),
    ({"name": "../up"}, r"user_models: '\.\./up': a user model name is letters"),
    ({"models": '["tiny_cnn"]'}, r"user_models\.m: defined but not in 'models'"),
])
def test_impossible_user_models_are_refused(tmp_path: Path, change: dict[str, str], expected: str) -> None:
    (tmp_path / "m.onnx").write_bytes(b"x")
    v = {"variants": '["onnx"]', "input_shape": "[1, 3, 64, 64]", "labels": "1000", "preprocess": '"imagenet"',
         "name": "m", "models": None} | change
    models = v["models"] or f'["{v["name"]}"]'
    message = _error(tmp_path, f"""
        name = "bad"
        models = {models}
        variants = {v["variants"]}
        [user_models."{v["name"]}"]
        path = "m.onnx"
        input_shape = {v["input_shape"]}
        preprocess = {v["preprocess"]}
        labels = {v["labels"]}
        """)
    assert re.search(expected, message), message


def test_content_id_follows_the_bytes_not_the_name(tmp_path: Path) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(b"one")
    b.write_bytes(b"one")
    assert user.content_id(a) == user.content_id(b) != user.content_id(tmp_path / "gone.onnx")
    before = user.content_id(a)
    a.write_bytes(b"two")  # new size: recomputed
    assert user.content_id(a) != before
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"g")
    folder = user.content_id(tmp_path / "sm")
    (tmp_path / "sm" / "variables").mkdir()
    (tmp_path / "sm" / "variables" / "v.data").write_bytes(b"w")
    assert user.content_id(tmp_path / "sm") != folder


def test_plan_keys_hash_content_and_declarations(tmp_path: Path, files: dict[str, Path]) -> None:
    import shutil

    kinds = load_catalogue()
    shutil.copy(files["tiny1001.onnx"], tmp_path / "net.onnx")
    body = """
        name = "keys"
        models = ["net"]
        variants = ["onnx"]
        runtimes = ["native"]
        [dataset]
        limit = 1
        [user_models.net]
        path = "net.onnx"
        input_shape = [1, 3, 64, 64]
        preprocess = {recipe}
        labels = 1001
        {extra}
        """
    from deltann.fleet.driver import prepare_inputs

    def key(extra: str = "") -> plan.Unit:
        study = load_study(_study(tmp_path, body.format(recipe=TINY_RECIPE, extra=extra)))
        units = plan.expand(study, prepare_inputs(study, tmp_path), kinds)
        assert len(units) == 1 and units[0].user_model
        return units[0]

    first = key()
    assert key().key == first.key  # stable
    assert key("offset = 0").key != first.key  # the declared label space is in the key
    shutil.copy(files["tiny.onnx"], tmp_path / "net.onnx")  # same name, other bytes
    assert key().key != first.key


# --- loaders: checks and refusals -------------------------------------------------------------------
def _um(path: Path, **kw: Any) -> UserModel:
    return UserModel.model_validate({"path": str(path), "input_shape": [1, 3, 64, 64], "labels": 1000,
                                     "preprocess": "imagenet"} | kw)


def _refused(um: UserModel, pattern: str) -> str:
    with pytest.raises(UserModelError) as info:
        user.load(um)
    message = str(info.value)
    assert "\n" not in message and message.startswith(um.path), message
    assert re.search(pattern, message), message
    return message


def test_onnx_checks_shape_and_classes(files: dict[str, Path]) -> None:
    assert user.load(_um(files["tiny.onnx"])).payload == files["tiny.onnx"]
    _refused(_um(files["tiny.onnx"], input_shape=[1, 3, 96, 96]), r"input is \[1, 3, 64, 64\] but the study "
                                                                   r"declares input_shape = \[1, 3, 96, 96\]")
    _refused(_um(files["tiny1001.onnx"]), r"outputs 1001 classes but the study declares labels = 1000")


def test_symbolic_output_width_is_measured_before_any_build(tmp_path: Path, files: dict[str, Path]) -> None:
    """An ONNX file whose exporter left the class count symbolic, declared ``labels = 1000``
    while it outputs 1001: the model runs once on a zero input when it is loaded, so the
    unit fails at stage ``convert`` naming the file and ``labels`` — no TVM build first."""
    import socket

    import onnx

    from deltann.convert.chain import ArtifactCache
    from deltann.fleet.driver import prepare_inputs
    from deltann.fleet.execute import run_unit
    from deltann.fleet.markers import is_progress

    model = onnx.load(str(files["tiny1001.onnx"]))
    width = model.graph.output[0].type.tensor_type.shape.dim[1]
    width.ClearField("dim_value")
    width.dim_param = "classes"
    onnx.save(model, str(tmp_path / "open.onnx"))
    pattern = r"outputs 1001 classes \(the file leaves the width open; measured by running it once on a zero " \
              r"input\) but the study declares labels = 1000; fix labels"
    _refused(_um(tmp_path / "open.onnx"), pattern)
    assert user.load(_um(tmp_path / "open.onnx", labels=1001)).payload == tmp_path / "open.onnx"

    study = load_study(_study(tmp_path, f"""
        name = "open"
        models = ["open"]
        variants = ["onnx"]
        runtimes = ["tvm"]
        settings = ["basic"]
        [dataset]
        limit = 1
        [user_models.open]
        path = "open.onnx"
        input_shape = [1, 3, 64, 64]
        preprocess = {TINY_RECIPE}
        labels = 1000
        """))
    inputs = prepare_inputs(study, tmp_path)
    (unit,) = plan.expand(study, inputs, load_catalogue())
    tables = [t for t in run_unit(unit, inputs[unit.inputs or unit.model], ArtifactCache(tmp_path / "artifacts"),
                                  study="open", board="b", hostname=socket.gethostname()) if not is_progress(t)]
    row = tables[-1].to_pylist()[0]
    assert (row["status"], row["stage"], row["error_type"]) == ("failed", "convert", "UserModelError")
    assert str(tmp_path / "open.onnx") in row["message"] and "labels = 1000" in row["message"]
    assert row["compile_s"] == 0.0 and row["import_s"] == 0.0  # nothing was built


def test_corrupt_and_missing_files_name_the_file(tmp_path: Path) -> None:
    for name, pattern in (("bad.onnx", "not a readable ONNX model"), ("bad.tflite", "not a readable TFLite model"),
                          ("bad.keras", "not a readable Keras model"), ("bad.pb", "not a readable frozen GraphDef|"
                                                                                  "cannot cut the graph")):
        (tmp_path / name).write_bytes(b"\x00garbage" * 10)
        layout = "NHWC" if name.endswith((".tflite", ".keras", ".pb")) else "NCHW"
        shape = [1, 64, 64, 3] if layout == "NHWC" else [1, 3, 64, 64]
        extra = {"input_tensor": "x:0", "output_tensor": "y:0"} if name.endswith(".pb") else {}
        _refused(_um(tmp_path / name, input_shape=shape, **extra), pattern)
    _refused(_um(tmp_path / "gone.onnx"), "model file not found")


def test_keras_lambda_is_refused_unless_trusted(tmp_path: Path) -> None:
    """Keras' safe mode refuses a Lambda layer's Python code in .keras and in legacy .h5."""
    from deltann._native import before_tensorflow

    before_tensorflow()
    import keras

    inp = keras.Input((64, 64, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    out = keras.layers.Dense(1000)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    for suffix in (".keras", ".h5"):
        path = tmp_path / f"lambda{suffix}"
        model.save(path)
        _refused(_um(path, input_shape=[1, 64, 64, 3]), "refused: it holds Python code .* trust_remote_code")
        loaded = user.load(_um(path, input_shape=[1, 64, 64, 3], trust_remote_code=True))
        assert loaded.payload.output_shape == (None, 1000)


def test_pt2_is_never_loaded_untrusted(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("torch.export.load called on an untrusted file")

    um = UserModel.model_construct(path=str(files["tiny.pt2"]), input_shape=(1, 3, 64, 64), layout=None,
                                   preprocess="imagenet", labels=1000, offset=None, input_tensor=None,
                                   output_tensor=None, trust_remote_code=False)  # as if validation were skipped
    monkeypatch.setattr(torch.export, "load", boom)
    _refused(um, "refused: torch.export.load unpickles")


def test_tf_graph_with_file_ops_is_refused_unless_trusted(tmp_path: Path) -> None:
    from deltann._native import before_tensorflow

    before_tensorflow()
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((1, 64, 64, 3))])
    def leaky(x: Any) -> Any:
        tf.io.write_file(str(tmp_path / "leak.txt"), "x")
        return tf.zeros((1, 1000)) + tf.reduce_mean(x)

    graph = leaky.get_concrete_function().graph.as_graph_def()
    (tmp_path / "leaky.pb").write_bytes(graph.SerializeToString())
    um = _um(tmp_path / "leaky.pb", input_shape=[1, 64, 64, 3], input_tensor="x:0", output_tensor="add:0")
    _refused(um, r"refused: the graph holds file-system or Python ops \(WriteFile\)")
    assert not (tmp_path / "leak.txt").exists()

    module = tf.Module()
    module.leaky = leaky
    tf.saved_model.save(module, str(tmp_path / "leaky_saved"), signatures={"serving_default": leaky})
    _refused(_um(tmp_path / "leaky_saved", input_shape=[1, 64, 64, 3]), r"file-system or Python ops \(WriteFile\)")
    assert not (tmp_path / "leak.txt").exists()

    # The same in a .tflite: a Flex op runs the TF kernel where LiteRT links the Flex delegate.
    class Reader(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((1, 64, 64, 3))])
        def __call__(self, x: Any) -> Any:
            n = tf.strings.length(tf.io.read_file("/etc/hostname"))
            return tf.zeros((1, 1000)) + tf.reduce_mean(x) + tf.cast(n, tf.float32)

    reader = Reader()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([reader.__call__.get_concrete_function()], reader)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    (tmp_path / "reader.tflite").write_bytes(converter.convert())
    _refused(_um(tmp_path / "reader.tflite", input_shape=[1, 64, 64, 3]), r"file-system or Python ops \(ReadFile\)")


# --- deltann run, end to end ------------------------------------------------------------------------
def _run(folder: Path, body: str) -> tuple[Any, pl.DataFrame, pl.DataFrame]:
    from deltann.fleet.driver import run_study
    from deltann.store import Store

    study = _study(folder, body)
    summary = run_study(study, folder / "results", progress=False)
    store = Store(folder / "results")
    return summary, store.scan("builds").collect(), store.scan("predictions").collect()


def _agrees(predictions: pl.DataFrame, config: str, reference: dict[str, int], model: str) -> None:
    rows = predictions.filter((pl.col("config") == config) & (pl.col("model") == model))
    assert rows.height == len(reference), (config, rows.height)
    got = dict(zip(rows["image_id"].to_list(), rows["top1"].to_list(), strict=True))
    assert got == reference, (model, config)


def test_run_tflite_and_onnx_user_models(tmp_path: Path, files: dict[str, Path], reference: dict[str, int],
                                        ray_session: None) -> None:
    """A .tflite on LiteRT and on TVM's TFLite frontend, beside a .tflite declared with the
    wrong class count (a convert row; the study goes on); then .onnx files on onnxruntime
    and TVM, one of them 1001 classes whose mapped top-1 must equal the 1000-class model's."""
    (tmp_path / "tfl").mkdir()
    summary, builds, predictions = _run(tmp_path / "tfl", f"""
        name = "user-tflite"
        models = ["tiny_tfl", "wrong_labels"]
        variants = ["tflite"]
        runtimes = ["native", "tvm"]
        settings = ["basic"]
        [timing]
        repeat = 1
        [user_models.tiny_tfl]
        path = "{files['tiny.tflite']}"
        input_shape = [1, 64, 64, 3]
        preprocess = {TINY_RECIPE}
        labels = 1000
        [user_models.wrong_labels]
        path = "{files['tiny.tflite']}"
        input_shape = [1, 64, 64, 3]
        preprocess = {TINY_RECIPE}
        labels = 1001
        """)
    assert summary.ran == 4 and summary.failed == 2, summary
    ok = builds.filter(pl.col("status") == "ok")
    assert sorted(ok["config"].to_list()) == ["tflite [litert]", "tflite [tvm:basic]"]
    assert set(ok["frontend"].to_list()) == {"", "tflite"}
    for config in ("tflite [litert]", "tflite [tvm:basic]"):
        _agrees(predictions, config, reference, "tiny_tfl")
    failed = builds.filter(pl.col("status") == "failed")
    assert failed["stage"].to_list() == ["convert", "convert"]
    assert all(str(files["tiny.tflite"]) in m and "outputs 1000 classes" in m for m in failed["message"].to_list())

    (tmp_path / "onnx").mkdir()
    summary, builds, predictions = _run(tmp_path / "onnx", f"""
        name = "user-onnx"
        models = ["tiny_onnx", "tiny_1001"]
        variants = ["onnx"]
        runtimes = ["native", "tvm"]
        settings = ["basic"]
        [timing]
        repeat = 1
        [user_models.tiny_onnx]
        path = "{files['tiny.onnx']}"
        input_shape = [1, 3, 64, 64]
        preprocess = {TINY_RECIPE}
        labels = 1000
        [user_models.tiny_1001]
        path = "{files['tiny1001.onnx']}"
        input_shape = [1, 3, 64, 64]
        preprocess = {TINY_RECIPE}
        labels = 1001
        """)
    assert summary.ran == 4 and summary.failed == 0, builds.select("config", "message")
    for model in ("tiny_onnx", "tiny_1001"):
        for config in ("onnx [onnxruntime]", "onnx [tvm:basic]"):
            _agrees(predictions, config, reference, model)
    # The background column (logit 1e6) is sliced away by the declared offset, not guessed.
    assert predictions.filter(pl.col("model") == "tiny_1001")["logits"].list.max().max() < 1e5
    assert not list(files["tiny.onnx"].parent.glob("*folded*"))  # nothing written beside the user's file
    # The manifest keeps the tables, so `deltann localize` on this folder finds the models again.
    from deltann.store import Store

    manifest = Store(tmp_path / "onnx" / "results").read_manifest()
    assert user.register_from_study(manifest["study"]) == ["tiny_onnx", "tiny_1001"]
    assert zoo.get("tiny_1001").labels == zoo.LabelSpace(1001, 1)


@pytest.mark.slow
def test_run_pt2_keras_and_tf_user_models(tmp_path: Path, files: dict[str, Path], reference: dict[str, int],
                                         ray_session: None) -> None:
    """A trusted .pt2 on torch, TVM's exported-program frontend and through torch->onnx;
    the Keras network as .keras and .h5 (Keras, and keras->tflite on LiteRT and TVM); and
    as a SavedModel and a frozen .pb (TF)."""
    (tmp_path / "pt2").mkdir()
    summary, builds, predictions = _run(tmp_path / "pt2", f"""
        name = "user-pt2"
        models = ["tiny_pt2"]
        variants = ["torch", "torch->onnx"]
        runtimes = ["native", "tvm"]
        settings = ["basic"]
        [timing]
        repeat = 1
        [user_models.tiny_pt2]
        path = "{files['tiny.pt2']}"
        input_shape = [1, 3, 64, 64]
        preprocess = {TINY_RECIPE}
        labels = 1000
        trust_remote_code = true
        """)
    assert summary.ran == 4 and summary.failed == 0, builds.select("config", "message")
    for config in ("torch [torch]", "torch [tvm:basic]", "torch->onnx [onnxruntime]", "torch->onnx [tvm:basic]"):
        _agrees(predictions, config, reference, "tiny_pt2")

    (tmp_path / "keras").mkdir()
    summary, builds, predictions = _run(tmp_path / "keras", f"""
        name = "user-keras"
        models = ["tiny_keras", "tiny_h5"]
        variants = ["keras", "keras->tflite"]
        runtimes = ["native", "tvm"]
        settings = ["basic"]
        [timing]
        repeat = 1
        [user_models.tiny_keras]
        path = "{files['tiny.keras']}"
        input_shape = [1, 64, 64, 3]
        preprocess = {TINY_RECIPE}
        labels = 1000
        [user_models.tiny_h5]
        path = "{files['tiny.h5']}"
        input_shape = [1, 64, 64, 3]
        preprocess = {TINY_RECIPE}
        labels = 1000
        """)
    assert summary.ran == 6 and summary.failed == 0, builds.select("config", "message")
    for model in ("tiny_keras", "tiny_h5"):
        for config in ("keras [keras]", "keras->tflite [litert]", "keras->tflite [tvm:basic]"):
            _agrees(predictions, config, reference, model)

    (tmp_path / "tf").mkdir()
    in_name, out_name = str(files["tiny.pb:tensors"]).split("|")
    summary, builds, predictions = _run(tmp_path / "tf", f"""
        name = "user-tf"
        models = ["tiny_saved", "tiny_frozen"]
        variants = ["tf"]
        runtimes = ["native"]
        [timing]
        repeat = 1
        [user_models.tiny_saved]
        path = "{files['tiny_saved']}"
        input_shape = [1, 64, 64, 3]
        preprocess = {TINY_RECIPE}
        labels = 1000
        [user_models.tiny_frozen]
        path = "{files['tiny.pb']}"
        input_shape = [1, 64, 64, 3]
        preprocess = {TINY_RECIPE}
        labels = 1000
        input_tensor = "{in_name}"
        output_tensor = "{out_name}"
        """)
    assert summary.ran == 2 and summary.failed == 0, builds.select("config", "message")
    for model in ("tiny_saved", "tiny_frozen"):
        _agrees(predictions, "tf [tf]", reference, model)
    assert np.isfinite(predictions["logits"].list.max().to_numpy()).all()


@pytest.mark.slow
def test_real_weights_1001_onnx_maps_back_to_imagenet(tmp_path: Path, ray_session: None) -> None:
    """EfficientNet-Lite0 (real ImageNet weights) exported to ONNX, given a background
    column at 0 by an ONNX Concat (1001 classes), declared with the named ``inception``
    recipe: the mapped top-1 equals the zoo model's on every photo (coffee: espresso)."""
    import onnx
    from onnx import TensorProto, helper

    from deltann.convert.chain import ArtifactCache

    source = ArtifactCache(tmp_path / "cache").get("efficientnet_lite0", "torch->onnx").payload
    model = onnx.load(str(source))
    graph = model.graph
    logits = graph.output[0].name
    graph.initializer.append(helper.make_tensor("background", TensorProto.FLOAT, [1, 1], [-50.0]))
    graph.node.append(helper.make_node("Concat", ["background", logits], ["logits1001"], axis=1))
    graph.output.pop()
    graph.output.append(helper.make_tensor_value_info("logits1001", TensorProto.FLOAT, [1, 1001]))
    onnx.save(model, str(tmp_path / "effnet1001.onnx"))

    import torch

    spec = zoo.get("efficientnet_lite0")
    batch = dataset.preprocess(dataset.load_samples(), spec.preprocess)
    with torch.no_grad():
        expected = spec.loaders["torch"]()(torch.from_numpy(batch.tensors)).numpy().argmax(axis=1)
    reference = dict(zip(batch.ids, expected.tolist(), strict=True))
    assert reference["coffee"] == 967

    summary, builds, predictions = _run(tmp_path, """
        name = "user-effnet"
        models = ["effnet1001"]
        variants = ["onnx"]
        runtimes = ["native"]
        [timing]
        repeat = 1
        [user_models.effnet1001]
        path = "effnet1001.onnx"
        input_shape = [1, 3, 224, 224]
        preprocess = "inception"
        labels = 1001
        """)
    assert summary.ran == 1 and summary.failed == 0, builds.select("config", "message")
    _agrees(predictions, "onnx [onnxruntime]", reference, "effnet1001")
    # same tensors as the zoo model's: the named recipe is EfficientNet-Lite's own
    assert predictions.sort("image_index")["input_hash"].to_list() == batch.hashes
