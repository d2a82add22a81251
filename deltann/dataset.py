"""Datasets: a folder of images with an optional ``labels.csv``, or the built-in
``samples`` (scikit-image's photos, offline). Each image is decoded once, then every
model family's :class:`~deltann.zoo.Preprocess` recipe turns it into a tensor whose
SHA-256 travels with every prediction row, so the report can prove that two variants
saw the same input."""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deltann.errors import DatasetError
from deltann.zoo.base import Preprocess

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")

# scikit-image photos that ship inside the package (no download): name -> loader name.
SAMPLES: dict[str, str] = {
    "chelsea": "chelsea",
    "coffee": "coffee",
    "astronaut": "astronaut",
    "rocket": "rocket",
    "motorcycle": "stereo_motorcycle",
    "camera": "camera",
    "hubble": "hubble_deep_field",
    "immunohistochemistry": "immunohistochemistry",
    "retina": "retina",
    "colorwheel": "colorwheel",
}


@dataclass(frozen=True)
class Image:
    """One decoded RGB image (uint8 HWC) with its identity and optional label."""

    id: str
    rgb: np.ndarray
    source_sha256: str
    label: int | None = None


@dataclass(frozen=True)
class Skipped:
    """A file of a dataset folder that is not used, and why (shown to the user and kept in
    the results manifest)."""

    file: str
    reason: str


@dataclass(frozen=True)
class Inputs:
    """A batch of preprocessed inputs for one recipe, in canonical NCHW float32."""

    ids: list[str]
    tensors: np.ndarray  # (N, 3, S, S) float32
    hashes: list[str]
    labels: list[int | None]
    recipe: str


def tensor_hash(x: np.ndarray) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (C order), first 16 hex digits."""
    x = np.ascontiguousarray(x)
    h = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode())
    h.update(x.tobytes())
    return h.hexdigest()[:16]


#: Largest image decoded (Pillow's own decompression-bomb threshold): a header that claims
#: 100 000 x 100 000 pixels is refused before a byte of it is decoded.
MAX_PIXELS = 89_478_485
#: Largest image file read (a photo is a few MB; a multi-GB file is a wrong folder).
MAX_FILE_BYTES = 512 << 20


def _to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr.astype(np.uint8))


def load_samples(limit: int | None = None) -> list[Image]:
    import skimage.data

    images = []
    for name, loader in list(SAMPLES.items())[:limit]:
        arr = getattr(skimage.data, loader)()
        if isinstance(arr, tuple):  # stereo pairs: take the left view
            arr = arr[0]
        rgb = _to_rgb(arr)
        images.append(Image(name, rgb, hashlib.sha256(rgb.tobytes()).hexdigest()))
    return images


def _read_labels(folder: Path) -> dict[str, int]:
    path = folder / "labels.csv"
    if not path.exists():
        return {}
    labels: dict[str, int] = {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            for lineno, row in enumerate(csv.DictReader(fh), start=2):
                try:
                    labels[row["file"]] = int(row["label"])
                    if not 0 <= labels[row["file"]] <= 999:
                        raise ValueError(row["label"])
                except (KeyError, TypeError, ValueError):
                    raise DatasetError(
                        f"{path}:{lineno}: expected columns 'file,label' with an integer ImageNet "
                        "label (0-999)"
                    ) from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                           "save it as UTF-8") from None
    return labels


def utf8_name(path: Path) -> str:
    """``path.name`` when it is valid UTF-8; else :class:`DatasetError` naming the file by
    its bytes (``caf\\xe9.jpg``). Why refuse: the name is the image's id in every row,
    and neither Arrow nor JSON can hold a name that is not text."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(str(path)).decode("utf-8", "backslashreplace")
        raise DatasetError(f"{shown}: the file name is not valid UTF-8; rename it (e.g. convmv -f latin1 -t utf8 "
                           "--notest FILE) or move it out of the dataset folder") from None
    return path.name


def decode_rgb(source: Path | bytes) -> np.ndarray:
    """Decode one image file to RGB uint8 (HWC). Grey, palette, CMYK, alpha (dropped, as
    torchvision's loader does) and 16-bit images are converted; raises ``ValueError`` or
    an exception of Pillow's for a file that is not a usable image."""
    import warnings

    from PIL import Image as PILImage

    with warnings.catch_warnings():
        warnings.simplefilter("error", PILImage.DecompressionBombWarning)
        with PILImage.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ValueError(f"{im.width} x {im.height} pixels is over the {MAX_PIXELS:,}-pixel limit; "
                                 "resize it")
            if im.width < 1 or im.height < 1:
                raise ValueError("an image without pixels")
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                # Pillow's convert("RGB") clips 16-bit and float values at 255: scale instead.
                arr = np.asarray(im).astype(np.float64)
                peak = 1.0 if im.mode == "F" and arr.max(initial=0) <= 1.0 else 255.0 if arr.max(initial=0) <= 255 else 65535.0
                grey = np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
                return _to_rgb(grey)
            return _to_rgb(np.asarray(im.convert("RGB")))


def load_folder(folder: Path, limit: int | None = None, skipped: list[Skipped] | None = None) -> list[Image]:
    """The images of ``folder`` (sorted by name), at most ``limit``. A file that cannot be
    used raises :class:`DatasetError` naming it, or, when ``skipped`` is given, is appended
    there with the reason and the next file is taken instead (a study over a folder
    someone else made goes on; the run shows and records what it skipped)."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: dataset folder not found; give an existing folder of images or 'samples'")
    labels = _read_labels(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for path in files:  # every name is checked before a byte is read: nothing is half-done
        utf8_name(path)
    if not files:
        raise DatasetError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the dataset folder")
    images = []
    for path in files:
        if limit is not None and len(images) >= limit:
            break
        try:
            if not path.is_file():  # a folder named x.jpg, a link to /dev/zero
                raise ValueError("not a regular file")
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError(f"{path.stat().st_size:,} bytes is over the {MAX_FILE_BYTES:,}-byte limit")
            data = path.read_bytes()
            rgb = decode_rgb(data)  # the bytes hashed are the bytes decoded
        except Exception as exc:  # noqa: BLE001 - a hostile file can make a decoder raise anything
            from PIL import UnidentifiedImageError

            if isinstance(exc, UnidentifiedImageError):  # its message shows a BytesIO, not the file
                reason = "not an image (no format Pillow reads recognises its bytes)"
            else:
                reason = f"not a readable image ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
            if skipped is None:
                raise DatasetError(f"{path}: {reason}; remove it or replace it") from None
            skipped.append(Skipped(path.name, reason))
            continue
        images.append(Image(path.name, rgb, hashlib.sha256(data).hexdigest(), labels.get(path.name)))
    if not images:
        why = "; ".join(f"{s.file}: {s.reason}" for s in (skipped or [])[:3])
        raise DatasetError(f"{folder}: none of its {len(files)} image files is readable ({why}); replace them")
    return images


def preprocess_one(rgb: np.ndarray, recipe: Preprocess) -> np.ndarray:
    """Resize the shorter side to ``resize_shorter`` keeping the aspect ratio, centre-crop
    ``size``, scale and normalise; returns (3, S, S) float32 (CHW)."""
    from PIL import Image as PILImage

    h, w = rgb.shape[:2]
    ratio = recipe.resize_shorter / min(h, w)
    new_w, new_h = max(recipe.size, round(w * ratio)), max(recipe.size, round(h * ratio))
    resample = {"bilinear": PILImage.BILINEAR, "bicubic": PILImage.BICUBIC}[recipe.interpolation]
    im = PILImage.fromarray(rgb).resize((new_w, new_h), resample=resample)
    left, top = (new_w - recipe.size) // 2, (new_h - recipe.size) // 2
    crop = np.asarray(im.crop((left, top, left + recipe.size, top + recipe.size)), dtype=np.float32)
    x = (crop * np.float32(recipe.scale) - np.asarray(recipe.mean, np.float32)) / np.asarray(recipe.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def preprocess(images: list[Image], recipe: Preprocess) -> Inputs:
    tensors = np.stack([preprocess_one(im.rgb, recipe) for im in images])
    return Inputs(
        ids=[im.id for im in images],
        tensors=tensors,
        hashes=[tensor_hash(t) for t in tensors],
        labels=[im.label for im in images],
        recipe=recipe.key(),
    )


def loader_for(source: str, root: Path,
               skipped: list[Skipped] | None = None) -> Callable[[int | None], list[Image]]:
    """``samples`` or a folder path (relative to the study file's folder). With ``skipped``,
    unreadable files are listed there instead of refused (see :func:`load_folder`)."""
    if source == "samples":
        return load_samples
    return lambda limit: load_folder((root / source).resolve(), limit, skipped)


def replay(study: dict[str, Any], model: str, variant: str, ids: list[str], hashes: dict[str, str],
           root: Path) -> np.ndarray:
    """The exact input tensors a run classified, made again: images ``ids`` of the stored
    ``study``'s dataset (a folder path is relative to ``root``), preprocessed with the
    recipe of ``model`` as ``variant``'s source framework ships it, each checked against
    the input hash the run stored (``hashes``). Used by the commands that run a
    configuration again from a results folder (``localize``, ``repro``, hop attribution)."""
    from deltann import zoo

    source = study.get("dataset", {}).get("source", "samples")
    limit = study.get("dataset", {}).get("limit")
    images = {im.id: im for im in loader_for(source, root)(limit)}
    missing = [i for i in ids if i not in images]
    if missing:
        raise DatasetError(f"images {missing[:3]} of the run are not in dataset {source!r} (root {root}); "
                           "pass --data-root, the folder the study file was in")
    recipe = zoo.get(model).preprocess_for(variant.split("->")[0].split(":")[0].strip())
    batch = preprocess([images[i] for i in ids], recipe)
    for image_id, h in zip(batch.ids, batch.hashes, strict=True):
        if hashes.get(image_id) and hashes[image_id] != h:
            raise DatasetError(f"image {image_id!r} preprocesses to {h}, but the run saw {hashes[image_id]}: "
                               "the dataset or the preprocessing changed since the run")
    return batch.tensors
