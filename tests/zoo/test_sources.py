"""Native loaders of the other frameworks: Keras applications (weights="imagenet") and
TF / TFLite files by path. Offline with empty caches each says, in one line, which file
to put where; class space and recipe per source are declared metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from deltann import zoo
from deltann.errors import WeightsNotFound
from deltann.zoo import keras_apps, tf_files


def test_families_exist_in_four_frameworks() -> None:
    assert zoo.get("mobilenet_v2").frameworks == ["keras", "tf", "tflite", "torch"]
    assert zoo.get("inception_v3").frameworks == ["keras", "tf", "tflite", "torch"]
    assert zoo.get("resnet101").frameworks == ["keras", "torch"]
    assert "ResNet101V2" in zoo.get("resnet101").source_architecture["keras"]


def test_tf_slim_files_are_1001_classes_by_metadata() -> None:
    spec = zoo.get("mobilenet_v2")
    assert (spec.labels_for("tflite").num_classes, spec.labels_for("tflite").offset) == (1001, 1)
    assert (spec.labels_for("tf").num_classes, spec.labels_for("tf").offset) == (1001, 1)
    assert spec.labels_for("keras").num_classes == 1000 and spec.labels_for("torch").offset == 0
    # Keras/TF-slim scale to [-1, 1]; torchvision normalises by mean/std: different recipes.
    assert spec.preprocess_for("keras").mean == (0.5, 0.5, 0.5)
    assert spec.preprocess_for("torch") == spec.preprocess != spec.preprocess_for("keras")


@pytest.mark.parametrize("app", sorted(keras_apps.APPS))
def test_keras_application_offline_names_file_and_place(app: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    filename = keras_apps.APPS[app][0]
    with pytest.raises(WeightsNotFound) as info:
        keras_apps.loader(app)()
    message = str(info.value)
    assert "\n" not in message
    assert f"put {filename}" in message and str(tmp_path / "models" / filename) in message


def test_tf_files_offline_name_file_and_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELTANN_MODELS", str(tmp_path))
    for source in ("tf", "tflite"):
        with pytest.raises(WeightsNotFound, match=str(tmp_path)):
            zoo.get("mobilenet_v2").loaders[source]()
    (tmp_path / "mobilenet_v2_1.0_224.tflite").write_bytes(b"x")
    produced = zoo.get("mobilenet_v2").loaders["tflite"]()
    assert produced.payload == tmp_path / "mobilenet_v2_1.0_224.tflite" and produced.layout == "NHWC"
    assert tf_files.file_id("mobilenet_v2_1.0_224.tflite") == "mobilenet_v2_1.0_224.tflite:1"
