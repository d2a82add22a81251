"""``deltann`` command line. Parses arguments and calls one function per subcommand
(``deltann/commands/<name>.py``); typed errors become a one-line message and exit 2."""

from __future__ import annotations

import argparse
import logging
import sys

from deltann import __version__
from deltann.errors import DeltannError, storage_error

SUBCOMMANDS = ("run", "report", "compare", "localize", "repro", "passes", "bisect", "devices", "images", "merge",
               "verify", "tuning")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="deltann",
        description="Does my model still give the same answers, at the same speed, after a framework "
        "change, a conversion, a compiler setting or a new board?",
    )
    parser.add_argument("--version", action="version", version=f"deltann {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log debug messages; list every error, not only the first")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"deltann.commands.{name}").add_parser(sub)
    for command in sub.choices.values():  # `deltann run study.toml -v` works as well as `deltann -v run ...`
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log debug messages; list every error, not only the first")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except DeltannError as exc:
        print(f"deltann: error: {exc}", file=sys.stderr)
        if args.verbose and len(exc.details) > 1:
            print(f"deltann: all {len(exc.details)} errors:", file=sys.stderr)
            for line in exc.details:
                print(f"  {line}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A full disk, a read-only folder, a folder one may not write, wherever it surfaced:
        # the environment's fault, said in one line naming the path (a bug raises on).
        refusal = storage_error(exc, exc.filename or "the output folder", "writing")
        if refusal is None:
            raise
        print(f"deltann: error: {refusal}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deltann: interrupted; rerun the same command to finish the missing units", file=sys.stderr)
        return 130
