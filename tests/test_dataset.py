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


def _photo_jpeg(path: Path, seed: int, size: int = 96) -> None:
    """A real photo (chelsea), a seeded random crop of it, as a JPEG."""
    rgb = dataset.load_samples(1)[0].rgb
    rng = np.random.default_rng(seed)
    top, left = rng.integers(0, rgb.shape[0] - size), rng.integers(0, rgb.shape[1] - size)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(rgb[top : top + size, left : left + size]).save(path, quality=90)


def test_synsets_map_to_the_1000_class_index() -> None:
    index = dataset.synset_index()
    assert len(index) == 1000 and index["n01440764"] == 0 and index["n15075141"] == 999  # tench, toilet tissue
    assert index["n01751748"] == 65  # sea snake


def test_imagenet_class_folders_are_labelled_by_their_synset(tmp_path: Path) -> None:
    _photo_jpeg(tmp_path / "n01440764" / "ILSVRC2012_val_00000293.JPEG", 1)
    _photo_jpeg(tmp_path / "n01443537" / "ILSVRC2012_val_00000236.JPEG", 2)
    _photo_jpeg(tmp_path / "n01443537" / "ILSVRC2012_val_00002338.JPEG", 3)
    (tmp_path / "n01443537" / "readme.txt").write_text("not an image")
    (tmp_path / "notes").mkdir()  # a folder that is no synset: not a class
    _photo_jpeg(tmp_path / "notes" / "x.jpg", 4)
    ids, labels = dataset.list_folder(tmp_path)
    assert ids == ["n01440764/ILSVRC2012_val_00000293.JPEG", "n01443537/ILSVRC2012_val_00000236.JPEG",
                   "n01443537/ILSVRC2012_val_00002338.JPEG"]
    assert [labels[i] for i in ids] == [0, 1, 1]
    assert [(im.id, im.label) for im in dataset.load_folder(tmp_path, 2)] == [(ids[0], 0), (ids[1], 1)]


def test_kaggle_loc_val_solution_labels_a_flat_folder(tmp_path: Path) -> None:
    for i in (1, 2, 3):
        _photo_jpeg(tmp_path / f"ILSVRC2012_val_{i:08d}.JPEG", i)
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000001,n01751748 111 0 360 243 n01751748 10 20 30 40 \n"
        "ILSVRC2012_val_00000003,n01440764 1 2 3 4\n")
    ids, labels = dataset.list_folder(tmp_path)
    assert labels == {"ILSVRC2012_val_00000001.JPEG": 65, "ILSVRC2012_val_00000003.JPEG": 0}
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,kitten 1 2\n")
    with pytest.raises(DatasetError, match=r"LOC_val_solution.csv:2: expected columns 'ImageId,PredictionString'"):
        dataset.list_folder(tmp_path)


def test_labels_csv_takes_indices_or_synsets(tmp_path: Path) -> None:
    _photo_jpeg(tmp_path / "a.jpg", 1)
    _photo_jpeg(tmp_path / "b.jpg", 2)
    (tmp_path / "labels.csv").write_text("file,label\na.jpg,n01443537\nb.jpg,999\n")
    assert dataset.list_folder(tmp_path)[1] == {"a.jpg": 1, "b.jpg": 999}


def test_input_sets_hash_the_exact_tensors_and_boards_remake_them(tmp_path: Path) -> None:
    """The manifest's hashes are those of the tensors ``preprocess`` makes; a board's
    chunks are the same tensors; a cached rerun does not decode; a changed file is named."""
    from deltann import zoo

    folder = tmp_path / "images"
    for i in range(7):
        _photo_jpeg(folder / f"{i:02d}.jpg", i)
    recipe = zoo.get("tiny_cnn").preprocess
    whole = dataset.preprocess(dataset.load_folder(folder), recipe)
    sets = dataset.input_sets("images", tmp_path, [recipe], cache=tmp_path / "cache")
    s = sets[recipe.key()]
    assert s.ids == whole.ids and s.hashes == whole.hashes and len(s) == 7
    chunks = list(s.chunks(2, 7, size=2))
    assert [c.ids for c in chunks] == [whole.ids[2:4], whole.ids[4:6], whole.ids[6:7]]
    assert [c.indices for c in chunks] == [[2, 3], [4, 5], [6]]
    assert np.array_equal(np.concatenate([c.tensors for c in chunks]), whole.tensors[2:])
    assert np.array_equal(s.take([5, 1]).tensors, whole.tensors[[5, 1]])

    def no_decode(*_: object) -> None:
        raise AssertionError("decoded although every hash was cached")

    import unittest.mock

    with unittest.mock.patch.object(dataset, "decode_rgb", no_decode):
        again = dataset.input_sets("images", tmp_path, [recipe], cache=tmp_path / "cache")[recipe.key()]
    assert again == s
    _photo_jpeg(folder / "03.jpg", 99)  # replaced after the plan
    with pytest.raises(DatasetError, match=r"03.jpg: the file changed since the run was planned"):
        s.take([3])


def test_input_sets_memory_does_not_grow_with_the_images(tmp_path: Path) -> None:
    """Peak traced memory of the manifest pass over 3x the images stays about the same:
    nothing is kept but a few strings per image."""
    import tracemalloc

    from deltann import zoo

    recipe = zoo.get("efficientnet_lite0").preprocess  # 224 x 224: 600 kB a tensor
    for i in range(3 * dataset.CHUNK):
        _photo_jpeg(tmp_path / "images" / f"{i:04d}.jpg", i, size=64)
    peaks = []
    for limit in (dataset.CHUNK, 3 * dataset.CHUNK):
        tracemalloc.start()
        sets = dataset.input_sets("images", tmp_path, [recipe], limit=limit)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert len(sets[recipe.key()]) == limit
    # all tensors of 768 images would be 462 MB; a chunk's worth 154 MB
    assert peaks[1] < 1.25 * peaks[0] + (2 << 20), peaks
    assert peaks[1] < 60 << 20, peaks


def test_a_boards_tensor_cache_makes_each_image_once_and_stays_bounded(tmp_path: Path) -> None:
    """The second configuration of a shard reads its crops instead of decoding; the tensors
    are those of preprocess_one, bit for bit; the cache stays under its limit."""
    import unittest.mock

    from deltann import zoo

    folder = tmp_path / "images"
    for i in range(6):
        _photo_jpeg(folder / f"{i:02d}.jpg", i)
    recipe = zoo.get("efficientnet_lite0").preprocess
    s = dataset.input_sets("images", tmp_path, [recipe])[recipe.key()]
    cache = dataset.TensorCache(tmp_path / "tensors")
    first = s.take(range(6), cache)
    with unittest.mock.patch.object(dataset, "decode_rgb", side_effect=AssertionError("decoded again")):
        again = s.take(range(6), cache)
    assert np.array_equal(first.tensors, again.tensors) and again.hashes == s.hashes
    big = Preprocess(size=300, resize_shorter=320)  # 270 kB crops: 6 of them are 1.6 MB
    s = dataset.input_sets("images", tmp_path, [big])[big.key()]
    small = dataset.TensorCache(tmp_path / "small", limit_mb=1)
    s.take(range(6), small)
    on_disk = sum(f.stat().st_size for f in (tmp_path / "small").rglob("*.npy"))
    assert 300 * 300 * 3 <= on_disk <= 0.8 * (1 << 20), on_disk  # the oldest went, down to 80 %


def test_a_board_without_the_decoder_can_still_open_its_crop_cache(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """Board images receive tensors and carry no pillow (issue 14's x86-cpu image): the
    crop cache's code tag must not need it."""
    from importlib import metadata

    real = metadata.version

    def version(dist: str) -> str:
        if dist == "pillow":
            raise metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(metadata, "version", version)
    assert dataset.code_versions()["pillow"] == "absent"
    assert dataset.TensorCache(tmp_path).root.parent == tmp_path


def test_take_to_file_writes_what_take_makes_and_maps_it(tmp_path: Path) -> None:
    """The container's job folder and a large timing session write their images through
    ``take_to_file``: the same tensors, ids and hashes as ``take``, in the order asked."""
    recipe = Preprocess(size=32, resize_shorter=40, mean=(0, 0, 0), std=(1, 1, 1))
    batch = dataset.input_sets("samples", tmp_path, [recipe], limit=3)[recipe.key()]
    want = batch.take([2, 0])
    made = dataset.take_to_file(batch, [2, 0], tmp_path / "x.npy")
    assert isinstance(made.tensors, np.memmap)
    assert (made.ids, made.hashes, made.indices) == (want.ids, want.hashes, [2, 0])
    np.testing.assert_array_equal(made.tensors, want.tensors)
    again = dataset.take_to_file(made, [0], tmp_path / "y.npy")  # from a mapped batch, by data set index
    assert again.ids == [want.ids[1]] and again.tensors.shape == (1, 3, 32, 32)
