"""``deltann bisect MODEL GOOD BAD``: the smallest set of catalogue passes that makes
setting GOOD's outputs differ like setting BAD's (delta debugging), with every build it
tried. Exit 0 with the culprits; exit 1 when the two settings do not differ."""

from __future__ import annotations

import argparse

from deltann import zoo
from deltann.compile import settings as compile_settings
from deltann.compile.pass_bisect import NoDifference, bisect_zoo_model, format_result
from deltann.errors import StudyError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bisect", help="find the passes responsible for a difference between two settings")
    p.add_argument("model", help="zoo model, e.g. efficientnet_lite0")
    p.add_argument("good", help="reference setting, e.g. basic")
    p.add_argument("bad", help="setting whose outputs differ, e.g. extended")
    p.add_argument("--images", type=int, default=4, help="sample photos to compare on (default 4)")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute logit tolerance (default 1e-4)")
    p.add_argument("--rtol", type=float, default=0.0, help="relative logit tolerance (default 0)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.model not in zoo.names():
        raise StudyError(f"bisect: unknown model {args.model!r}; allowed: {', '.join(zoo.names())}")
    for name in (args.good, args.bad):
        if not compile_settings.is_known(name):
            raise StudyError(f"bisect: unknown setting {name!r}; allowed: {', '.join(compile_settings.names())} "
                             "or an ablation name such as basic+FastMath")
    try:
        result = bisect_zoo_model(args.model, args.good, args.bad, images=args.images, atol=args.atol, rtol=args.rtol)
    except NoDifference as exc:
        print(f"no difference: {exc}")
        return 1
    print(format_result(result))
    return 0
