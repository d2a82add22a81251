from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from deltann import dataset
from deltann.errors import DatasetError
from deltann.zoo.base import Preprocess


def test_samples_are_real_photos() -> None:
    images = dataset.load_samples()
    assert [im.id for im in images][:4] == ["chelsea", "coffee", "astronaut", "rocket"]
    assert all(im.rgb.ndim == 3 and im.rgb.shape[2] == 3 and im.rgb.dtype == np.uint8 for im in images)
    assert len({im.source_sha256 for im in images}) == len(images)


def test_resize_keeps_aspect_then_centre_crops() -> None:
    # A 100x300 image, left third red, middle green, right third blue: after resizing the
    # shorter side to 40 and centre-cropping 32, only green may remain (no squashing).
    rgb = np.zeros((100, 300, 3), np.uint8)
    rgb[:, :100, 0] = 255
    rgb[:, 100:200, 1] = 255
    rgb[:, 200:, 2] = 255
    recipe = Preprocess(size=32, resize_shorter=40, mean=(0, 0, 0), std=(1, 1, 1))
    x = dataset.preprocess_one(rgb, recipe)
    assert x.shape == (3, 32, 32)
    assert np.allclose(x[1], 1.0) and np.allclose(x[0], 0.0) and np.allclose(x[2], 0.0)


def test_normalisation_follows_the_recipe() -> None:
    rgb = np.full((50, 50, 3), 255, np.uint8)
    x = dataset.preprocess_one(rgb, Preprocess(size=32, resize_shorter=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    assert np.allclose(x, 1.0)


def test_folder_with_labels(tmp_path: Path) -> None:
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        PILImage.new("RGB", (40, 30), colour).save(tmp_path / f"img{i}.png")
    PILImage.new("L", (40, 30), 128).save(tmp_path / "grey.jpg")
    (tmp_path / "labels.csv").write_text("file,label\nimg0.png,3\nimg1.png,7\n")
    images = dataset.load_folder(tmp_path)
    assert [(im.id, im.label) for im in images] == [("grey.jpg", None), ("img0.png", 3), ("img1.png", 7)]
    assert images[0].rgb.shape == (30, 40, 3)


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg"):
        dataset.load_folder(tmp_path)


def test_bad_labels_csv_names_the_line(tmp_path: Path) -> None:
    PILImage.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("file,label\na.png,cat\n")
    with pytest.raises(DatasetError, match=r"labels.csv:2"):
        dataset.load_folder(tmp_path)
