"""``deltann repro DIR --pair A B [--image ID]``: pack one discrepancy into a folder that
its maintainers can run without deltann or the study (see :mod:`deltann.report.repro_bundle`)."""

from __future__ import annotations

import argparse

from deltann.commands.localize import add_pair_arguments
from deltann.report.repro_bundle import write_bundle


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("repro", help="a self-contained reproducer folder for a pair of configurations")
    add_pair_arguments(p)
    p.add_argument("--image", help="this image only (default: every image whose top-1 differs, else the one with "
                                   "the largest logit difference)")
    p.add_argument("--out", help="folder to write (default: RESULTS/repro/<model>__<A>__vs__<B>)")
    p.add_argument("--no-hops", action="store_true",
                   help="do not run a chain's missing prefixes to find the hop that flipped a label")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    bundle = write_bundle(args.results, args.pair[0], args.pair[1], image=args.image, model=args.model,
                          out=args.out, data_root=args.data_root, hops=not args.no_hops)
    print(bundle.summary())
    return 0
