"""``deltann report DIR``: print the Markdown tables; write them as .md, .csv and .tex, the
figures as .png, and everything as one self-contained ``report.html``."""

from __future__ import annotations

import argparse
from pathlib import Path

from deltann.report import build_report


def print_report(results: Path | str, out: Path | str | None = None, *, pool: bool = False, hops: bool = True,
                 data_root: Path | str | None = None) -> None:
    report = build_report(results, out, pool=pool, hops=hops, data_root=data_root)
    print(report.markdown)
    print(f"\nreport written to {report.files[0].parent} ({len(report.files)} files; open {report.html})")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="tables and plots from a results folder (Markdown, HTML, CSV, LaTeX, PNG)")
    p.add_argument("results", help="results folder written by 'deltann run'")
    p.add_argument("--out", help="where to write the report (default: RESULTS/report)")
    p.add_argument("--pool", action="store_true",
                   help="mix the results of several labs and boards, latencies included (default: side by side)")
    p.add_argument("--no-hops", action="store_true",
                   help="do not run a conversion chain's missing prefixes to name the hop that flipped a label")
    p.add_argument("--data-root", help="folder the study's dataset path is relative to (default: current folder)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    print_report(args.results, args.out, pool=args.pool, hops=not args.no_hops, data_root=args.data_root)
    return 0
