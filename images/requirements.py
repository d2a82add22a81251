"""Print the requirements a board image installs, one a line, from pyproject.toml: the
project's dependencies named in ``[tool.deltann.images] board`` (what builds and runs TVM
modules and the small native runtimes a board measures), leaving out any named on the
command line (kinds that build TVM from source drop the apache-tvm wheels). Used by
images/<kind>/Dockerfile; reads TOML, evaluates nothing.

    python requirements.py pyproject.toml [DROP ...]
"""

import re
import sys
import tomllib


def name_of(requirement: str) -> str:
    """The distribution name of a requirement line, normalised (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\s;\[<>=!~]", requirement, maxsplit=1)[0]).lower()


def board_requirements(pyproject: dict, drop: set[str]) -> list[str]:
    deps = {name_of(d): d for d in pyproject["project"]["dependencies"]}
    wanted = [name_of(n) for n in pyproject["tool"]["deltann"]["images"]["board"]]
    missing = [n for n in wanted if n not in deps]
    if missing:
        raise SystemExit(f"[tool.deltann.images] board names {missing}, which are not in project.dependencies")
    return [deps[n] for n in wanted if n not in drop]


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as fh:
        data = tomllib.load(fh)
    print("\n".join(board_requirements(data, {name_of(n) for n in sys.argv[2:]})))
