"""Names that explain themselves (issue 17, item 6): no two modules of ``deltann/`` share
a file name (an import never needs ``as`` to tell ``compile/tuning`` from
``fleet/tuning``), and a module over 500 lines says at its top why it is one file."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deltann"
#: file names every package may have
SHARED = {"__init__.py", "__main__.py"}
LONG = 500


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_two_modules_share_a_file_name() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in _sources():
        if path.name not in SHARED:
            where[path.name].append(path.relative_to(PACKAGE).as_posix())
    assert {name: paths for name, paths in where.items() if len(paths) > 1} == {}


def test_a_long_module_says_why_it_is_one_file() -> None:
    silent = []
    for path in _sources():
        text = path.read_text()
        if len(text.splitlines()) > LONG:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "One file because" not in doc:
                silent.append(f"{path.relative_to(PACKAGE)} ({len(text.splitlines())} lines)")
    assert silent == [], "over 500 lines without 'One file because ...' in the module docstring: " + ", ".join(silent)
