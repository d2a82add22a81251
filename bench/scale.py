"""Scale benchmark: one cheap configuration over synthetic JPEG folders of growing size;
images per second and the peak RSS of the driver and of each board at each size, and the
RSS slope per 1,000 images.

    .venv/bin/python bench/scale.py [--sizes 1000 5000 20000] [--model efficientnet_lite0]
                                    [--variant torch->onnx] [--shard 1000]

The images are random crops (160-480 px) of scikit-image's photos, saved as JPEG under a
temporary folder (deleted at the end); each size is its own folder (hard links into the
largest). Each study runs as ``python -m deltann run`` in its own process (the embedded
default: one board on this machine); the peak RSS of that driver and of its board actors
(``ray::Board`` processes below it) is their kernel high-water mark (``VmHWM``), read
every 0.2 s while the run goes. Goals (the ImageNet-scale issue): driver and board peak
<= 1.5 GB at 20,000 images, slope <= 20 MB per 1,000 images, images/s at the largest size
>= 90 % of images/s at the smallest."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle", "hubble", "immunohistochemistry", "retina")


def make_images(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` JPEGs: random crops of the sample photos, random sizes."""
    from PIL import Image as PILImage

    from deltann import dataset

    photos = [im.rgb for im in dataset.load_samples() if im.id in PHOTOS]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rgb = photos[i % len(photos)]
        h, w = rgb.shape[:2]
        size = int(rng.integers(160, min(480, h, w)))
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        aspect = rng.uniform(0.75, 1.33)
        crop = rgb[top : top + size, left : left + min(w - left, int(size * aspect))]
        PILImage.fromarray(crop).save(folder / f"img{i:06d}.jpg", quality=85)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Peaks(threading.Thread):
    """Samples the driver's and its board actors' high-water RSS until stopped."""

    def __init__(self, driver: int) -> None:
        super().__init__(daemon=True)
        self.driver = driver
        self.driver_kb = 0
        self.boards_kb: dict[int, int] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.driver_kb = max(self.driver_kb, _hwm_kb(self.driver))
            kids = _children()
            todo, seen = [self.driver], set()
            while todo:
                pid = todo.pop()
                if pid in seen:
                    continue
                seen.add(pid)
                todo.extend(kids.get(pid, []))
                if pid != self.driver and _cmdline(pid).startswith("ray::Board"):
                    self.boards_kb[pid] = max(self.boards_kb.get(pid, 0), _hwm_kb(pid))
            self.stopped.wait(0.2)


def run_size(folder: Path, n: int, out: Path, args: argparse.Namespace) -> dict[str, float]:
    import polars as pl

    from deltann.store import Store

    study = out.parent / f"scale-{n}.toml"
    study.write_text(
        f'name = "scale-{n}"\nmodels = ["{args.model}"]\nvariants = ["{args.variant}"]\nruntimes = ["native"]\n'
        f'devices = ["local"]\n[dataset]\nsource = "{folder}"\nshard = {args.shard}\n'
        "[timing]\nimages = 10\nblocks = 1\nwarmup = 0\nrepeat = 1\npause_ms = 0\n")
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "deltann", "run", str(study), "--out", str(out), "--quiet"],
                            cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peaks = Peaks(proc.pid)
    peaks.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - t
    peaks.stopped.set()
    peaks.join()
    if proc.returncode != 0:
        raise SystemExit(f"run of {n} images failed:\n{output[-3000:]}")
    builds = Store(out).scan("builds").collect()
    rows = int(builds.filter(pl.col("status") == "ok")["rows"].sum())
    execute_s = float((builds["total_s"] - builds["convert_s"] - builds["import_s"] - builds["compile_s"]
                       - builds["load_s"]).sum())
    return {"n": n, "rows": rows, "wall_s": wall, "units": builds.height,
            "end_to_end": rows / wall, "boards_ips": rows / execute_s,
            "driver_mb": peaks.driver_kb / 1024, "board_mb": max(peaks.boards_kb.values(), default=0) / 1024,
            "boards": len(peaks.boards_kb)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--variant", default="torch->onnx")
    parser.add_argument("--shard", type=int, default=1000)
    args = parser.parse_args()
    sizes = sorted(args.sizes)
    with tempfile.TemporaryDirectory(prefix="deltann-scale-") as tmp:
        base = Path(tmp)
        t = time.perf_counter()
        make_images(base / f"images-{sizes[-1]}", sizes[-1])
        print(f"made {sizes[-1]} JPEGs in {time.perf_counter() - t:.1f} s "
              f"({sum(f.stat().st_size for f in (base / f'images-{sizes[-1]}').iterdir()) / 1e6:.0f} MB)")
        for n in sizes[:-1]:
            (base / f"images-{n}").mkdir()
            for i in range(n):
                os.link(base / f"images-{sizes[-1]}" / f"img{i:06d}.jpg", base / f"images-{n}" / f"img{i:06d}.jpg")
        results = []
        for n in sizes:
            r = run_size(base / f"images-{n}", n, base / f"out-{n}", args)
            results.append(r)
            print(f"{n:>6} images: {r['units']} units, {r['wall_s']:6.1f} s, {r['end_to_end']:6.1f} images/s end to "
                  f"end, {r['boards_ips']:6.1f} images/s on the board; peak RSS driver {r['driver_mb']:6.0f} MB, "
                  f"board {r['board_mb']:6.0f} MB ({r['boards']} board processes)", flush=True)
        first, last = results[0], results[-1]
        per_k = (last["n"] - first["n"]) / 1000
        print(f"RSS slope per 1,000 images ({first['n']} -> {last['n']}): driver "
              f"{(last['driver_mb'] - first['driver_mb']) / per_k:+.1f} MB, board "
              f"{(last['board_mb'] - first['board_mb']) / per_k:+.1f} MB  (goal <= 20 MB)")
        print(f"images/s at {last['n']} / at {first['n']}: end to end {last['end_to_end'] / first['end_to_end']:.2f}, "
              f"on the board {last['boards_ips'] / first['boards_ips']:.2f}  (goal >= 0.90)")
        print(f"peak RSS at {last['n']}: driver {last['driver_mb']:.0f} MB, board {last['board_mb']:.0f} MB  "
              "(goal <= 1536 MB each)")
        print("(measured on a shared machine: other engineers' work runs beside it)")


if __name__ == "__main__":
    main()
