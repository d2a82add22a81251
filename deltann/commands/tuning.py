"""``deltann tuning export RESULTS OUT`` and ``deltann tuning import FILE RESULTS``: keep
the tuning records a results folder holds (``table=tuning``) and bring them into another,
so a lab does not tune the same models for the same target twice
(:func:`deltann.fleet.tuning_driver.export_records` / :func:`~deltann.fleet.tuning_driver.import_records`).
The records keep the identity they were tuned for (model variant, TVM version, passes, the
target as the board resolved it): a study elsewhere uses them only where that matches."""

from __future__ import annotations

import argparse

from deltann.store import Store


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tuning", help="export a results folder's tuning records, or import them into another")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    e = verbs.add_parser("export", help="write the tuning records of a results folder to one Parquet file")
    e.add_argument("results", metavar="RESULTS", help="results folder holding table=tuning")
    e.add_argument("out", metavar="OUT", help="the file to write (Parquet)")
    e.add_argument("--device", action="append", default=None, metavar="KIND",
                   help="only this device kind's records (repeatable; default: every kind)")
    e.add_argument("--model", action="append", default=None, metavar="MODEL",
                   help="only this model's records (repeatable; default: every model)")
    e.add_argument("--all", action="store_true",
                   help="every stored record, not only the fastest of each kernel (a resumed search starts from them)")
    e.set_defaults(func=export_main)
    i = verbs.add_parser("import", help="add the records of an export to a results folder's tuning table")
    i.add_argument("file", metavar="FILE", help="a file `deltann tuning export` wrote")
    i.add_argument("results", metavar="RESULTS", help="results folder to add them to (made if absent)")
    i.set_defaults(func=import_main)


def export_main(args: argparse.Namespace) -> int:
    from deltann.fleet.tuning_driver import export_records  # lazy: loads ray

    n = export_records(Store(args.results), args.out, devices=args.device, models=args.model, best_only=not args.all)
    print(f"{n} tuning record(s) written to {args.out}")
    return 0


def import_main(args: argparse.Namespace) -> int:
    from deltann.fleet.tuning_driver import import_records  # lazy: loads ray

    store = Store(args.results)
    store.ensure_manifest({"name": "tuning-import"})
    added, skipped = import_records(args.file, store)
    print(f"{added} tuning record(s) added to {args.results}, {skipped} already there")
    return 0
