"""Hostile dataset folders (issue 8, item 2): truncated and zero-byte images, text with an
image extension, decompression bombs, folders and device links named like images — each
is skipped with one line naming the file and why (and listed in the manifest), while the
convertible ones (CMYK, grey, 16-bit, alpha, palette, bilevel, float) are converted to RGB
correctly and predicted, and the rest of the study completes. The images are made here
with Pillow and numpy; the good ones are scikit-image's real photos."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from deltann import dataset

pytestmark = pytest.mark.hardening


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA) written by hand: Pillow cannot write
    16-bit colour PNGs, and such files come out of scanners and raw converters."""
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _save(im: PILImage.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(name: str = "chelsea") -> np.ndarray:
    import skimage.data

    return np.asarray(getattr(skimage.data, name)())


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height grey pixels, with a tiny IDAT (the file
    is a few hundred bytes; decoding it would need width * height bytes)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def broken_files() -> dict[str, bytes]:
    """Files that are not usable images, by name."""
    jpeg = _save(PILImage.fromarray(photo()), "JPEG", quality=90)
    png = _save(PILImage.fromarray(photo("coffee")), "PNG")
    return {
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "truncated.png": png[: len(png) // 2],
        "header-only.png": png[:33],
        "zero.jpg": b"",
        "text.jpg": b"this is a text file with an image extension\n" * 10,
        "html.png": b"<html><body>404 Not Found</body></html>",
        "elf.jpeg": b"\x7fELF\x02\x01\x01" + bytes(200),
        "bomb.png": bomb_png(100_000, 100_000),  # Pillow's own guard refuses it at open
        "bomb-medium.png": bomb_png(10_000, 10_000),  # 100 M pixels: under Pillow's error, over ours
        "corrupt-crc.png": png[:40] + bytes(b ^ 0xFF for b in png[40:80]) + png[80:],
        "jpeg-garbage.jpg": jpeg[:200] + np.random.default_rng(0).bytes(5000),
    }


def convertible_files() -> dict[str, tuple[bytes, np.ndarray]]:
    """Files in modes other than 8-bit RGB, with the RGB image they must decode to."""
    rgb = photo()[:96, :128]
    grey = (np.arange(64 * 96, dtype=np.uint32).reshape(64, 96) % 256).astype(np.uint8)
    grey16 = grey.astype(np.uint16) * 257  # exactly the 8-bit values, scaled
    rgb16 = rgb.astype(np.uint16) * 257
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 77, np.uint8)])
    cmyk = PILImage.fromarray(rgb).convert("CMYK")
    out = {
        "grey.png": (_save(PILImage.fromarray(grey), "PNG"), np.dstack([grey] * 3)),
        "grey16.png": (png16(grey16), np.dstack([grey] * 3)),
        "rgb16.png": (png16(rgb16), rgb),
        "rgba16.png": (png16(np.dstack([rgb16, np.full(rgb.shape[:2], 1000, np.uint16)])), rgb),
        "la16.png": (png16(np.dstack([grey16, np.full(grey.shape, 65535, np.uint16)])), np.dstack([grey] * 3)),
        "rgba.png": (_save(PILImage.fromarray(rgba), "PNG"), rgb),  # alpha dropped, as torchvision does
        "la.png": (_save(PILImage.fromarray(grey).convert("LA"), "PNG"), np.dstack([grey] * 3)),
        "cmyk.tif": (_save(cmyk, "TIFF"), np.asarray(cmyk.convert("RGB"))),
        "palette.png": (_save(PILImage.fromarray(rgb).quantize(64), "PNG"),
                        np.asarray(PILImage.fromarray(rgb).quantize(64).convert("RGB"))),
        "bilevel.png": (_save(PILImage.fromarray(grey > 127), "PNG"), np.dstack([np.where(grey > 127, 255, 0).astype(np.uint8)] * 3)),
        "float.tif": (_save(PILImage.fromarray(grey.astype(np.float32) / 255), "TIFF"), np.dstack([grey] * 3)),
    }
    # CMYK JPEG: lossy, so its reference is Pillow's own decode of the same bytes.
    cmyk_jpeg = _save(cmyk, "JPEG", quality=95)
    out["cmyk.jpg"] = (cmyk_jpeg, np.asarray(PILImage.open(io.BytesIO(cmyk_jpeg)).convert("RGB")))
    return out


def make_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in broken_files().items():
        (folder / name).write_bytes(data)
    for name, (data, _) in convertible_files().items():
        (folder / name).write_bytes(data)
    for name in ("chelsea", "coffee"):
        PILImage.fromarray(photo(name)).save(folder / f"photo-{name}.jpg", quality=92)
    (folder / "folder.jpg").mkdir()  # a folder named like an image
    (folder / "zero-link.jpg").symlink_to("/dev/zero")  # would never end if read
    (folder / "notes.txt").write_text("not an image suffix: ignored, not reported")


BROKEN = {*broken_files(), "folder.jpg", "zero-link.jpg"}


def test_each_hostile_image_is_skipped_with_its_name_and_the_rest_decode(tmp_path: Path, tally) -> None:
    make_folder(tmp_path)
    skipped: list[dataset.Skipped] = []
    images = {im.id: im for im in dataset.load_folder(tmp_path, skipped=skipped)}
    reasons = {s.file: s.reason for s in skipped}
    assert set(reasons) == BROKEN, set(reasons) ^ BROKEN
    for name in sorted(BROKEN):
        with tally.case("images", name) as case:
            assert reasons[name] and "\n" not in reasons[name] and len(reasons[name]) < 400
            case.refused(reasons[name])
    assert "DecompressionBomb" in reasons["bomb.png"] and "DecompressionBomb" in reasons["bomb-medium.png"]
    assert "regular file" in reasons["zero-link.jpg"] and "regular file" in reasons["folder.jpg"]
    for name, (_, want) in convertible_files().items():
        with tally.case("images", name) as case:
            got = images[name].rgb
            assert got.dtype == np.uint8 and got.shape == want.shape, (name, got.shape, want.shape)
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, name
            case.accepted()
    assert {"photo-chelsea.jpg", "photo-coffee.jpg"} <= set(images)


def test_limit_counts_readable_images_and_an_all_broken_folder_is_refused(tmp_path: Path, tally) -> None:
    from deltann.errors import DatasetError

    (tmp_path / "a.jpg").write_bytes(b"")
    PILImage.fromarray(photo()).save(tmp_path / "b.jpg")
    PILImage.fromarray(photo("coffee")).save(tmp_path / "c.jpg")
    skipped: list[dataset.Skipped] = []
    assert [im.id for im in dataset.load_folder(tmp_path, 2, skipped)] == ["b.jpg", "c.jpg"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"nope")
    with tally.case("images", "all-broken-folder") as case:
        with pytest.raises(DatasetError, match=r"none of its 1 image files is readable \(x.png: ") as info:
            dataset.load_folder(bad, skipped=[])
        case.refused(str(info.value))


def test_a_study_over_a_hostile_folder_skips_what_is_broken_and_completes(study_file, tmp_path: Path, tally,
                                                                         ray_session: None) -> None:
    """A real run: tiny_cnn in torch, native and TVM ``basic``, over the folder above."""
    import polars as pl

    from deltann.fleet.driver import run_study
    from deltann.store import Store

    make_folder(tmp_path / "images")
    study = study_file(
        'name = "hostile-images"\nmodels = ["tiny_cnn"]\nvariants = ["torch"]\nruntimes = ["native", "tvm"]\n'
        'settings = ["basic"]\n[dataset]\nsource = "images"\n[timing]\nrepeat = 1\n'
    )
    out = tmp_path / "out"
    with tally.case("images", "study-over-hostile-folder") as case:
        summary = run_study(study, out, progress=False)
        assert (summary.ran, summary.failed, summary.pending) == (2, 0, []), summary
        assert {s.file for s in summary.skipped_images} == BROKEN
        run = Store(out).read_manifest()["runs"][-1]
        assert {s["file"] for s in run["skipped_images"]} == BROKEN  # a user sees which and why
        assert all(s["reason"] for s in run["skipped_images"])
        preds = Store(out).scan("predictions").collect()
        good = set(convertible_files()) | {"photo-chelsea.jpg", "photo-coffee.jpg"}
        for runtime in ("torch", "tvm"):
            ids = set(preds.filter(pl.col("runtime") == runtime)["image_id"])
            assert ids == good, (runtime, ids ^ good)
        # The convertible images went in as the RGB they decode to (same tensor hash).
        recipe = __import__("deltann.zoo", fromlist=["get"]).get("tiny_cnn").preprocess
        want = {name: dataset.tensor_hash(dataset.preprocess_one(rgb, recipe))
                for name, (_, rgb) in convertible_files().items() if not name.startswith("cmyk.jpg")}
        got = dict(zip(preds["image_id"], preds["input_hash"], strict=True))
        assert {n: got[n] for n in want} == want
        case.refused(json.dumps(run["skipped_images"]))
