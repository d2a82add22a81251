"""Security (issue 8, item 5). A static scan of deltann's source (``ast``, not grep, so a
comment or a docstring never counts) for code execution and unsafe deserialisation of
anything a study, a model folder or a results folder holds; the Ray dashboard and ports;
and the container's privileges, read off the keyword arguments a mocked docker client
receives (no Docker engine runs on this machine)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.hardening

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "deltann").rglob("*.py")) + [ROOT / "run.py"]

#: Modules whose loaders run code from the bytes they read.
PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
#: Calls allowed although they can unpickle: (file, dotted call) -> why it is safe there.
ALLOWED = {
    ("deltann/zoo/user.py", "torch.export.load"): "reached only with trust_remote_code = true (checked below)",
    ("deltann/report/repro_script.py", "torch.export.load"): "a reproducer bundle's torch side, loaded only with "
                                                              "--trust-remote-code (checked below)",
}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def findings(path: Path, tree: ast.AST) -> list[str]:
    rel = path.relative_to(ROOT).as_posix()
    out = []

    def add(node: ast.AST, what: str) -> None:
        out.append(f"{rel}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLERS:
                    add(node, f"imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLERS:
            add(node, f"imports from {node.module}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        last = name.rsplit(".", 1)[-1]
        if (rel, name) in ALLOWED:
            continue
        if name in ("eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec"):
            add(node, f"calls {name}()")
        if _is_const(_kw(node, "shell"), True):
            add(node, f"{name}(shell=True)")
        if name in ("os.system", "os.popen", "os.execl", "os.execlp", "os.spawnl", "commands.getoutput"):
            add(node, f"calls {name}() (a shell)")
        if name.startswith("subprocess.") and node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr,
                                                                                       ast.BinOp)):
            add(node, f"{name} with a string command (use a list)")
        if name in ("torch.load", "torch.jit.load", "torch.export.load") and not _is_const(_kw(node, "weights_only"), True):
            add(node, f"{name} without weights_only=True")
        if name in ("yaml.load", "yaml.load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if not (loader is not None and _dotted(loader).endswith(("SafeLoader", "CSafeLoader"))):
                add(node, f"{name} without SafeLoader")
        if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.full_load_all"):
            add(node, f"calls {name}")
        if last == "load" and name.split(".")[0] in ("np", "numpy") and _is_const(_kw(node, "allow_pickle"), True):
            add(node, f"{name}(allow_pickle=True)")
        if last in ("read_pickle", "from_pickle") or name.startswith(tuple(f"{p}." for p in PICKLERS)):
            add(node, f"calls {name}")
        if last == "load_model" and _is_const(_kw(node, "safe_mode"), False):
            add(node, f"{name}(safe_mode=False)")
    return out


def test_scanner_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The scan itself can fail: every pattern below must be reported."""
    bad = ROOT / "deltann" / "_probe.py"  # a path under ROOT for relative naming; never written
    code = """
import pickle
from cloudpickle import loads
import subprocess, os, torch, yaml, numpy as np, keras
eval("1")
exec("x = 1")
subprocess.run("ls -l", shell=True)
subprocess.check_output(f"ls {x}")
os.system("ls")
torch.load("m.pt")
torch.load("m.pt", weights_only=False)
yaml.load(text)
np.load("x.npy", allow_pickle=True)
keras.saving.load_model("m.keras", safe_mode=False)
"""
    found = findings(bad, ast.parse(code))
    assert len(found) == 13, "\n".join(found)  # shell=True with a string: two findings
    ok = """
import subprocess, torch, yaml, numpy as np
subprocess.run(["ls", "-l"], check=True)
torch.load("m.pt", weights_only=True)
yaml.load(text, Loader=yaml.SafeLoader)
np.load("x.npz", allow_pickle=False)
"""
    assert findings(bad, ast.parse(ok)) == []


def test_no_code_execution_or_unsafe_deserialisation_in_deltann(tally) -> None:
    with tally.case("security", "source-scan") as case:
        every = [f for path in SOURCES for f in findings(path, ast.parse(path.read_text(), filename=str(path)))]
        assert len(SOURCES) > 50 and not every, "\n".join(every)
        case.accepted()


def test_allowed_unpickling_sits_behind_trust_remote_code() -> None:
    for (rel, call), _why in ALLOWED.items():
        path = ROOT / rel
        if not path.exists():
            continue
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef) and any(
                isinstance(n, ast.Call) and _dotted(n.func) == call for n in ast.walk(fn)
            ):
                guard = fn.body[0] if not isinstance(fn.body[0], ast.Expr) else fn.body[1]
                assert isinstance(guard, ast.If) and "trust_remote_code" in ast.unparse(guard.test), (
                    f"{rel}:{fn.name}: {call} must be guarded by trust_remote_code first")
                assert any(isinstance(n, ast.Raise) for n in guard.body)


# --- ports -------------------------------------------------------------------------------
def test_embedded_ray_opens_no_dashboard(ray_session: None, tally) -> None:
    """Ray started in-process the way ``deltann run`` starts it: no dashboard web page
    (Ray still runs its minimal dashboard head, frontend off, on 127.0.0.1) and nothing
    listening on the dashboard port. (Ray 2.60's own gRPC ports bind every interface
    whatever ``ray.init`` is given — it replaces a 127.0.0.1 node address by the node's
    IP; Ray's token authentication, on by default, guards them, and deltann does not
    turn it off.)"""
    import os

    import psutil

    from deltann.fleet import driver
    from deltann.core.device_catalogue import load_catalogue

    with tally.case("security", "ray-dashboard") as case:
        driver._ensure_ray(None, load_catalogue(), ["local"])
        procs = psutil.Process(os.getpid()).children(recursive=True)
        cmdlines = []
        for p in procs:
            try:
                cmdlines.append(" ".join(p.cmdline()))
                listening = [c.laddr for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
            except psutil.Error:
                continue
            assert all(addr.port != 8265 for addr in listening), (p.name(), listening)
            if "dashboard/dashboard.py" in cmdlines[-1]:
                assert "--host=127.0.0.1" in cmdlines[-1] and "--disable-frontend" in cmdlines[-1], cmdlines[-1]
                assert all(addr.ip in ("127.0.0.1", "::1") for addr in listening), listening
        assert any("raylet" in c for c in cmdlines)  # the processes looked at are Ray's
        assert os.environ.get("RAY_AUTH_MODE", "") != "disabled"
        case.accepted()


def test_cluster_config_keeps_the_dashboard_on_localhost() -> None:
    import yaml

    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in (ROOT / "ray_cluster.yaml").read_text()
    for path in SOURCES:
        assert "RAY_AUTH_MODE" not in path.read_text(), path


# --- containers (mocked docker client: no Docker engine runs here) -----------------------------
class FakeContainers:
    """Stands in for ``docker.DockerClient.containers`` (MOCK: no Docker engine here)."""

    def __init__(self, error: Exception | None = None, stale: list | None = None) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.error = error
        self.stale = list(stale or [])
        self.listed: list[dict] = []

    def list(self, all: bool = False, filters: dict | None = None) -> list:  # noqa: A002 - the SDK's name
        self.listed.append(filters or {})
        return self.stale

    def run(self, image: str, **kwargs: object) -> object:
        self.calls.append((image, kwargs))
        if self.error is not None:
            raise self.error
        return FakeExited()


class FakeImages:
    """Stands in for ``docker.DockerClient.images``: the kind's image exists (MOCK)."""

    def get(self, name: str) -> object:
        import types

        from deltann.fleet.container import SOURCE_LABEL, source_digest

        return types.SimpleNamespace(id="sha256:" + "0" * 64, labels={SOURCE_LABEL: source_digest()})


class FakeExited:
    """A container that exits at once (a broken image's entry point)."""

    status = "exited"
    labels = {"deltann.board": "b", "deltann.study": "boxed"}

    def reload(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> dict:
        return {"StatusCode": 127}

    def logs(self, tail: int = 20) -> bytes:
        return b"/bin/sh: python3: not found\n"

    removed = False

    def remove(self, force: bool = False) -> None:
        self.removed = True


@pytest.fixture
def boxed(tmp_path: Path):  # noqa: ANN201
    from deltann import plan
    from deltann.core.device_catalogue import DeviceKind
    from deltann.fleet.driver import prepare_inputs
    from deltann.study import parse_study

    kind = DeviceKind(name="arm-hikey", resource="arm-hikey", target={"kind": "opencl"}, image="deltann/arm-hikey:0.1.0",
                      container=True)
    study = parse_study({"name": "boxed", "models": ["tiny_cnn"], "runtimes": ["native", "tvm"],
                         "settings": ["basic"], "devices": ["arm-hikey"], "dataset": {"limit": 1}},
                        tmp_path / "s.toml", {"arm-hikey": kind})
    inputs = prepare_inputs(study, tmp_path)
    return kind, plan.expand(study, inputs, {"arm-hikey": kind}), inputs


def _run_boxed(monkeypatch: pytest.MonkeyPatch, boxed, tmp_path: Path, containers: FakeContainers) -> list:
    import types

    import docker

    from deltann.fleet.container import run_in_container

    monkeypatch.setattr(docker, "from_env", lambda: types.SimpleNamespace(containers=containers,
                                                                             images=FakeImages()))
    from deltann.fleet.markers import is_progress

    kind, units, inputs = boxed
    return [t for t in run_in_container(kind, units, inputs, tmp_path / "cache", study="boxed", board="b",
                                        hostname="h") if not is_progress(t)]  # the rows, not the stage markers


def test_containers_run_without_privileges(monkeypatch: pytest.MonkeyPatch, boxed, tmp_path: Path, tally) -> None:
    import docker

    containers = FakeContainers(docker.errors.ImageNotFound("no such image: deltann/arm-hikey:0.1.0"))
    _run_boxed(monkeypatch, boxed, tmp_path, containers)
    (image, kw), = containers.calls
    with tally.case("security", "container-privileges") as case:
        assert kw["privileged"] is False and kw["cap_drop"] == ["ALL"] and kw["security_opt"] == ["no-new-privileges"]
        assert kw["network_mode"] == "none" and kw["pids_limit"] > 0
        assert not str(kw["user"]).startswith("0:") and kw["user"] != "0"  # never root inside
        modes = {v["bind"]: v["mode"] for v in kw["volumes"].values()}
        assert modes == {"/deltann/work": "ro", "/deltann/work/out": "rw", "/deltann/cache": "rw"}
        assert "devices" not in kw  # no Mali node on this machine: nothing passed through
        case.accepted()


def test_a_container_that_fails_to_start_ends_as_failure_rows(monkeypatch: pytest.MonkeyPatch, boxed,
                                                              tmp_path: Path, tally) -> None:
    """MOCK: the docker client raises as the SDK does for a missing image."""
    import docker

    from deltann.store import Store

    kind, units, _ = boxed
    containers = FakeContainers(docker.errors.ImageNotFound("404 Client Error: No such image: deltann/arm-hikey:0.1.0"))
    with tally.case("faults", "container-fails-to-start") as case:
        tables = _run_boxed(monkeypatch, boxed, tmp_path, containers)
        rows = [t.to_pylist()[0] for t in tables]
        assert len(containers.calls) == 1 and len(rows) == len(units) == 2
        assert {(r["status"], r["stage"], r["error_type"]) for r in rows} == {("failed", "container", "ImageNotFound")}
        assert all("deltann/arm-hikey:0.1.0" in r["message"] for r in rows)
        store = Store(tmp_path / "out")
        for t in tables:
            store.write(t)
        assert store.completed_keys() == {u.key for u in units}  # the study ends: nothing pending
        case.refused(rows[0]["message"])


def test_a_container_that_exits_at_once_makes_crash_rows(monkeypatch: pytest.MonkeyPatch, boxed, tmp_path: Path,
                                                        tally) -> None:
    """MOCK: a container that starts and exits with 127 before writing anything."""
    kind, units, _ = boxed
    containers = FakeContainers()
    with tally.case("faults", "container-exits-at-once") as case:
        rows = [t.to_pylist()[0] for t in _run_boxed(monkeypatch, boxed, tmp_path, containers)]
        assert len(rows) == len(units) and len(containers.calls) == len(units)  # one fresh container per unit
        assert {(r["stage"], r["outcome"]) for r in rows} == {("container", "crash")}  # died before its unit began
        assert all("exited with 127" in r["message"] and "python3: not found" in r["message"] for r in rows)
        case.refused(rows[0]["message"])


def test_no_container_engine_ends_as_failure_rows(boxed, tmp_path: Path, tally,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Real: DOCKER_HOST names a socket no engine listens on, so the SDK really fails
    (whether or not an engine runs elsewhere on this machine)."""
    from deltann.fleet.container import run_in_container

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    kind, units, inputs = boxed
    with tally.case("faults", "no-container-engine") as case:
        rows = [t.to_pylist()[0] for t in run_in_container(kind, units, inputs, tmp_path / "cache", study="boxed",
                                                          board="b", hostname="h") if t.num_rows]
        assert len(rows) == len(units) and {r["stage"] for r in rows} == {"container"}
        assert all("no Docker-compatible engine" in r["message"] for r in rows)
        case.refused(rows[0]["message"])


def test_a_killed_actors_container_is_removed_by_the_next_actor(monkeypatch: pytest.MonkeyPatch, boxed,
                                                                 tmp_path: Path, tally) -> None:
    """MOCK: a container a timed-out unit's actor left running (killing the actor cannot
    stop it) is found by its board and study labels and removed before the next one starts."""
    import docker

    left_running = FakeExited()
    containers = FakeContainers(docker.errors.ImageNotFound("gone"), stale=[left_running])
    with tally.case("faults", "container-left-by-killed-actor") as case:
        _run_boxed(monkeypatch, boxed, tmp_path, containers)
        assert left_running.removed
        assert containers.listed == [{"label": ["deltann.board=b"]}]  # its own study's, and any exited
        (_, kw), = containers.calls
        assert kw["labels"] == {"deltann.board": "b", "deltann.study": "boxed"}
        case.refused()
