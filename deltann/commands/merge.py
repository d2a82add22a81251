"""``deltann merge SRC... --into DIR``: bring results folders (one per lab, say) together
without replacing anything; see :mod:`deltann.store_merge`. Prints each conflict and each unit
left out for a bad part in one line, then a summary; exit 1 if there was any."""

from __future__ import annotations

import argparse

from deltann.store_merge import merge


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="bring results folders together (every row kept with its lab; conflicts "
                       "reported, never replaced)")
    p.add_argument("sources", nargs="+", metavar="SRC", help="results folders to merge")
    p.add_argument("--into", required=True, metavar="DIR",
                   help="the merged folder (new, empty, or a results folder whose rows are kept)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    result = merge(args.sources, args.into)
    for line in result.conflicts + result.bad + result.notes:
        print(line)
    print(result.summary())
    return 1 if result.conflicts or result.bad else 0
