"""The HTML report in a real browser: Debian's headless Chromium (installed by .ci/run)
renders it offline, every embedded image decodes, the console stays silent, and a
screenshot is kept under test-artifacts/ for a person to look at.

How: a copy of the page gets a script that, on ``load``, writes the number of images and
of decoded images (``complete && naturalWidth > 0``) onto ``<body>``; ``--dump-dom``
after a virtual-time budget prints the DOM with those attributes. Console messages reach
stderr with ``--enable-logging=stderr --v=0`` as ``INFO:CONSOLE`` lines; the report has
no script of its own, so any such line is a failure. A control page with a broken image
and a console.error shows the checks do catch both.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deltann.report import build_report

CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]
PROBE = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
         "document.body.dataset.images=i.length;"
         "document.body.dataset.decoded=i.filter(x=>x.complete&&x.naturalWidth>0).length;});</script>")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; "
                                                            ".ci/run installs it)")


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="deltann-chromium-") as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120, check=False)


def _probe(page: Path, tmp: Path) -> tuple[int, int, list[str]]:
    """(images, decoded images, console lines) of ``page`` loaded in Chromium."""
    probed = tmp / f"probe-{page.name}"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    done = _chromium("--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r"<body[^>]*>", done.stdout)
    assert body, done.stdout[:500]
    images = re.search(r'data-images="(\d+)"', body.group(0))
    decoded = re.search(r'data-decoded="(\d+)"', body.group(0))
    assert images and decoded, f"the load handler did not run: {body.group(0)}"
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return int(images.group(1)), int(decoded.group(1)), console


def test_checks_catch_a_broken_page(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><img src='data:image/png;base64,AAAA'>"
                   "<script>console.error('control')</script></body></html>")
    images, decoded, console = _probe(bad, tmp_path)
    assert (images, decoded) == (1, 0)
    assert any("control" in line for line in console)


def test_report_renders_in_headless_chromium(tiny_results: Path, tmp_path: Path) -> None:
    report = build_report(tiny_results, tmp_path / "report")
    assert report.html is not None
    pngs = [p for p in report.files if p.suffix == ".png"]
    images, decoded, console = _probe(report.html, tmp_path)
    assert images == len(pngs) > 0
    assert decoded == images
    assert console == []

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-chromium.png"
    shot.unlink(missing_ok=True)
    done = _chromium("--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}", report.html.as_uri())
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1280)
    assert pixels.std() > 10  # text, tables and a heatmap, not a blank page


LINKS = ("<script>window.addEventListener('load',()=>{const l=[...document.querySelectorAll(\"a[href^='#']\")];"
         "document.body.dataset.links=l.length;"
         "document.body.dataset.broken=l.filter(a=>!document.getElementById(a.getAttribute('href').slice(1))).length;"
         "const f=document.querySelector('.findings');"
         "document.body.dataset.bottom=f?Math.ceil(f.getBoundingClientRect().bottom+window.scrollY):-1;});</script>")


def test_findings_section_in_headless_chromium(flip_results: Path, tmp_path: Path) -> None:
    """The findings of a study where dynamic-range TFLite flips labels, as a person sees
    them: at the top of the page, every in-page link landing on a table, and a screenshot
    of the section kept as test-artifacts/findings-chromium.png."""
    report = build_report(flip_results, tmp_path / "report")
    assert report.html is not None
    probed = tmp_path / "links.html"
    probed.write_text(report.html.read_text().replace("</body>", LINKS + "</body>"))
    done = _chromium("--window-size=1280,1400", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r"<body[^>]*>", done.stdout)
    assert body, done.stdout[:500]
    links, broken, bottom = (int(re.search(rf'data-{k}="(-?\d+)"', body.group(0)).group(1))
                             for k in ("links", "broken", "bottom"))
    assert links >= 5 and broken == 0  # each finding's "table" link lands on its table
    assert 0 < bottom < 1400  # the whole section is on the first screen

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "findings-chromium.png"
    full = tmp_path / "page.png"
    done = _chromium("--hide-scrollbars", "--window-size=1280,1400", f"--screenshot={full}", report.html.as_uri())
    assert done.returncode == 0 and full.exists(), done.stderr[-2000:]
    with Image.open(full) as im:
        im.crop((0, 0, 1280, min(1400, bottom + 16))).save(shot)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    box = np.all(pixels == (0xF6, 0xF8, 0xFA), axis=-1)  # the findings box's background
    assert box.mean() > 0.2 and pixels.std() > 10  # the section, with text on it
