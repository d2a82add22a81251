"""Print deltann's dependencies from pyproject.toml, one a line, leaving out the ones
named on the command line (the images build TVM from source, so they drop the
apache-tvm wheel). Used by images/<kind>/Dockerfile; reads TOML, evaluates nothing."""

import sys
import tomllib

with open(sys.argv[1], "rb") as fh:
    deps = tomllib.load(fh)["project"]["dependencies"]
drop = {name.lower() for name in sys.argv[2:]}
for dep in deps:
    name = dep.split(";")[0].split("[")[0]
    for sep in ("==", ">=", "<=", "~=", "!=", ">", "<"):
        name = name.split(sep)[0]
    if name.strip().lower() not in drop:
        print(dep)
