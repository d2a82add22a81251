"""The progress lines of a long study: images per second over a recent window, the time
left per board, failed units so far."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress, TextColumn

from deltann.fleet.progress import WINDOW_S, Display, Rate, clock


def test_rate_is_over_the_recent_window() -> None:
    rate = Rate()
    rate.add(0, now=0.0)
    rate.add(1000, now=10.0)  # 100 images/s for 10 s
    assert rate.per_s(now=10.0) == 100.0
    rate.add(100, now=10.0 + WINDOW_S)  # then much slower: the old fast rows are forgotten
    rate.add(100, now=20.0 + WINDOW_S)
    assert rate.per_s(now=20.0 + WINDOW_S) < 20 and rate.total == 1200


def test_clock() -> None:
    assert (clock(None), clock(float("inf")), clock(65), clock(3725)) == ("?", "?", "1:05", "1:02:05")


def test_display_shows_rate_eta_per_board_and_failures() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    left = {"x86|p": 1000}
    with Progress(TextColumn("{task.description}"), TextColumn("{task.fields[info]}"), console=console) as bar:
        display = Display(bar, "study: 4 units", 4, lambda pool: left[pool])
        display.rows("node-aaaaaaaaaa", "x86|p", "x86", 256)
        display.rows("node-bbbbbbbbbb", "x86|p", "x86", 256)
        display.unit({"status": "ok", "config": "torch [torch]"}, "node-aaaaaaaaaa", "x86|p", "x86")
        display.unit({"status": "failed", "config": "torch [tvm:basic]"}, "node-bbbbbbbbbb", "x86|p", "x86")
        tasks = {t.description: t.fields["info"] for t in bar.tasks}
    boards = [info for name, info in tasks.items() if name.strip().startswith("board")]
    assert len(boards) == 2 and all("img/s" in b and "ETA" in b and "(256 images)" in b for b in boards), tasks
    study = next(info for name, info in tasks.items() if name.startswith("study"))
    assert "1 failed" in study and "img/s" in study and "ETA" in study, study
    assert "board node-aaa (x86)" in out.getvalue()
