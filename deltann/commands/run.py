"""``deltann run STUDY [--out DIR]``: run every unit not yet in the store."""

from __future__ import annotations

import argparse

from deltann.fleet.driver import RunSummary, run_study


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a study file; results go to a Parquet store")
    p.add_argument("study", help="study file (TOML), e.g. studies/quickstart.toml")
    p.add_argument("--out", help="results folder (default: results/<study name>)")
    p.add_argument("--address", help="Ray cluster to join (default: start Ray in-process)")
    p.add_argument("--quiet", action="store_true", help="no progress bar; only the one-line summary")
    p.add_argument("--report", action="store_true", help="write and print the report afterwards")
    p.add_argument("--lab", help="the lab's name, recorded in every row and part of every unit key (default: "
                   "$DELTANN_LAB, else this machine's hostname)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run every failed unit again (by default only failures that pass with time are: a full "
                   "disk, out of memory, a crash, a timeout, a container that did not start)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    summary: RunSummary = run_study(args.study, args.out, address=args.address, progress=not args.quiet,
                                    lab=args.lab, retry_failed=args.retry_failed)
    print(summary.line() if args.quiet else f"results: {summary.out}")
    if args.report:
        from deltann.commands.report import print_report  # lazy: loads matplotlib, polars, scipy

        print_report(summary.out)
    return 0
