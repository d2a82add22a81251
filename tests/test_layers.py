"""The package's layering, checked on its own imports (issue 17, item 5).

Every ``import`` of ``deltann`` — at module level, inside functions and under
``TYPE_CHECKING`` alike — is an arrow from the importing module to the imported one. An
arrow may point to the same layer or to one below it, never up (:data:`LAYERS`, lowest
first, is the layering the package docstring describes); the arrows form no loop; and an
import inside a function says why it waits (``# lazy: <reason>``). The checker is run on
a tiny package written to ``tmp_path`` too, so a planted back-arrow, loop or silent lazy
import shows it still sees them."""

from __future__ import annotations

import ast
import graphlib
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "deltann"

#: The layers, lowest first: a module may import its own layer and the ones before it.
#: A module belongs to the entry that names it or its longest named parent package.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # shared declarations and persistence: version, errors, device catalogue and target
    # facts, who ran a result, the runtime registry and runner interface, the store
    ("foundation", ("deltann", "deltann.errors", "deltann._native", "deltann.core", "deltann.store",
                    "deltann.store_integrity", "deltann.store_merge")),
    ("artifacts", ("deltann.zoo", "deltann.convert", "deltann.dataset")),
    ("builds", ("deltann.compile",)),
    ("runtimes", ("deltann.runtimes",)),
    ("study", ("deltann.study",)),
    ("plan", ("deltann.plan",)),
    ("runs", ("deltann.fleet",)),
    ("analysis", ("deltann.analysis",)),
    ("report", ("deltann.report",)),
    ("interface", ("deltann.commands", "deltann.cli", "deltann.__main__")),
]


@dataclass(frozen=True)
class Arrow:
    """``src`` imports ``dst`` at ``src``'s ``line``; ``inner``: inside a function."""

    src: str
    dst: str
    line: int
    inner: bool
    lazy_reason: bool  # the import's lines say ``# lazy: <reason>``

    def __str__(self) -> str:
        return f"{self.src}:{self.line} -> {self.dst}{' (in a function)' if self.inner else ''}"


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package at ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def arrows(root: Path) -> list[Arrow]:
    """Every import of the package at ``root`` from one of its modules, resolved to the
    module it loads (``from pkg import mod`` is an arrow to ``pkg.mod``)."""
    mods = modules(root)
    top = root.name

    def known(name: str) -> str:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in mods else ""

    out: list[Arrow] = []
    for name, path in mods.items():
        source = path.read_text()
        lines = source.splitlines()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(source)
        inner_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            text = "\n".join(lines[node.lineno - 1:(node.end_lineno or node.lineno)])
            for target in targets:
                dst = known(target) if target.split(".")[0] == top else ""
                if dst and dst != name:
                    out.append(Arrow(name, dst, node.lineno, id(node) in inner_nodes, "# lazy:" in text))
    return out


def layer_of(module: str, layers: list[tuple[str, tuple[str, ...]]]) -> int | None:
    """Index in ``layers`` of the entry naming ``module`` or its longest named parent."""
    best: tuple[int, int] | None = None
    for index, (_, names) in enumerate(layers):
        for prefix in names:
            if module == prefix or (module.startswith(prefix + ".") and "." in prefix):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    return None if best is None else best[0]


def back_arrows(found: list[Arrow], layers: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    """Arrows from a layer to a later one, worded with both layers' names."""
    out = []
    for a in found:
        src, dst = layer_of(a.src, layers), layer_of(a.dst, layers)
        if src is not None and dst is not None and dst > src:
            out.append(f"{a}: {layers[src][0]} imports the later layer {layers[dst][0]}")
    return out


def loops(found: list[Arrow]) -> list[list[str]]:
    """Import loops between modules, one per loop found (each is cut and the search goes on)."""
    deps: dict[str, set[str]] = {}
    for a in found:
        deps.setdefault(a.src, set()).add(a.dst)
    out = []
    while True:
        try:
            graphlib.TopologicalSorter(deps).prepare()
            return out
        except graphlib.CycleError as exc:
            cycle = list(reversed(exc.args[1]))[:-1]  # graphlib lists it against the arrows, closed
            out.append(cycle)
            deps[cycle[0]].discard(cycle[1])


def test_every_module_has_a_layer() -> None:
    assert [m for m in modules(PACKAGE) if layer_of(m, LAYERS) is None] == []


def test_no_arrow_runs_back_up_the_flow() -> None:
    found = back_arrows(arrows(PACKAGE), LAYERS)
    assert found == [], "imports from a layer to a later one:\n" + "\n".join(found)


def test_no_import_loop() -> None:
    found = loops(arrows(PACKAGE))
    assert found == [], "import loops:\n" + "\n".join(" -> ".join([*c, c[0]]) for c in found)


def test_an_import_inside_a_function_says_why() -> None:
    found = [str(a) for a in arrows(PACKAGE) if a.inner and not a.lazy_reason]
    assert found == [], "imports inside functions without '# lazy: <reason>':\n" + "\n".join(found)


def test_the_checker_sees_a_planted_back_arrow_loop_and_silent_lazy_import(tmp_path: Path) -> None:
    pkg = tmp_path / "toy"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("def f():\n    from toy.high import b\n    return b\n")
    (pkg / "high.py").write_text("from toy.low import a  # a forward arrow\nfrom . import c\n")
    (pkg / "c.py").write_text("def g():\n    from toy import high  # lazy: planted loop\n    return high\n")
    layers = [("low", ("toy", "toy.low")), ("high", ("toy.high", "toy.c"))]
    found = arrows(pkg)
    assert {str(a) for a in found} == {"toy.low.a:2 -> toy.high (in a function)", "toy.high:1 -> toy.low.a",
                                       "toy.high:2 -> toy.c", "toy.c:2 -> toy.high (in a function)"}
    assert back_arrows(found, layers) == ["toy.low.a:2 -> toy.high (in a function): low imports the later layer high"]
    assert sorted(sorted(c) for c in loops(found)) == [["toy.c", "toy.high"], ["toy.high", "toy.low.a"]]
    assert [str(a) for a in found if a.inner and not a.lazy_reason] == ["toy.low.a:2 -> toy.high (in a function)"]


@pytest.mark.parametrize("module, layer", [("deltann", "foundation"), ("deltann.zoo.tiny", "artifacts"),
                                           ("deltann.commands.run", "interface"), ("deltann.core.targets", "foundation")])
def test_layer_of_takes_the_longest_named_parent(module: str, layer: str) -> None:
    index = layer_of(module, LAYERS)
    assert index is not None and LAYERS[index][0] == layer
