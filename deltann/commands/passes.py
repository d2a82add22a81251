"""``deltann passes``: the pass catalogue (seed Relay pass -> Relax counterpart, or none
and why) and the explicit pass list of every named setting."""

from __future__ import annotations

import argparse

from deltann.compile import catalogue
from deltann.compile import settings as compile_settings


def passes_table() -> list[dict[str, str]]:
    """One row per catalogue entry: the seed's eleven Relay passes plus deltann's extra
    entries, with the settings that enable each."""
    rows = []
    for entry in catalogue.CATALOGUE:
        rows.append({
            "pass": entry.name,
            "seed": "yes" if entry.seed else "no",
            "relax": " / ".join(" + ".join(g) for g in (entry.pre, entry.post) if g) or "none",
            "phase": "pre+post" if entry.pre and entry.post else "pre" if entry.pre else "post" if entry.post else "-",
            "in": ",".join(s for s, on in compile_settings.ENABLED.items() if entry.name in on) or "-",
            "note": entry.note,
        })
    return rows


def format_passes() -> str:
    """The table and the settings' pass lists as plain text."""
    rows = passes_table()
    cols = ("pass", "seed", "relax", "phase", "in")
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols) + "  note"]
    lines += ["  ".join(r[c].ljust(width[c]) for c in cols) + "  " + r["note"] for r in rows]
    lines += ["", "pre: before LegalizeOps (Relax operators); post: after it (TIR kernels)",
              f"Scheduling is part of lowering: every setting but '{compile_settings.UNSCHEDULED}' ends with "
              f"{compile_settings.SCHEDULE}, as every Relay build lowered each operator through a TOPI schedule "
              "whatever its opt_level; the settings differ in graph-level passes only.", ""]
    for name, passes in compile_settings.SETTINGS.items():
        lines.append(f"{name}: {', '.join(passes)}")
    lines.append("then always: " + ", ".join(compile_settings.LOWERING))
    lines.append("ablation (study option 'ablation = true'): " + ", ".join(compile_settings.ablation_names()))
    return "\n".join(lines)


def print_passes() -> None:
    print(format_passes())


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("passes", help="the pass catalogue and each setting's Relax passes")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    print_passes()
    return 0
