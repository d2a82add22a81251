"""The typed failure record (issue 17, item 3): each constructor gives the stage, outcome,
error type and message the fleet stored before there was a record (real exceptions, no
stand-ins), the one ``builds`` row function fills every column the same way whoever
calls it, and a scan of the package fails if a failed ``builds`` row is assembled
anywhere else or a stage is passed as a bare string."""

from __future__ import annotations

import ast
import errno
from pathlib import Path

import pytest

from deltann.fleet.failure import MESSAGE_LIMIT, Failure, Outcome, Stage, UnitFailure
from deltann.fleet.retry import transient

PACKAGE = Path(__file__).resolve().parents[2] / "deltann"


def _raised(make) -> BaseException:  # noqa: ANN001 - a callable that raises
    try:
        make()
    except BaseException as exc:  # noqa: BLE001 - the exception is the test's input
        return exc
    raise AssertionError("did not raise")


def _no_memory() -> None:
    bytearray(1 << 62)  # a real allocation failure: Python raises MemoryError


def _disk_full() -> None:
    with open("/dev/full", "w") as fh:  # a real ENOSPC from the kernel
        fh.write("x")


def _quota() -> None:
    raise OSError(errno.EDQUOT, "Disk quota exceeded")  # as os.write raises it over quota


def _bad_shape() -> None:
    raise UnitFailure(Stage.VERIFY, Outcome.MISMATCH, "output shape (1, 10), expected (1, 1000)")


def _nan_output() -> None:
    raise UnitFailure(Stage.VERIFY, Outcome.NAN, "output for image 'a.jpg' has 3 NaN and 0 infinite values of 1000")


def _tvm_error() -> None:
    raise RuntimeError("TVMError: operator not supported\n  File \"x.py\", line 1\n    relax.op")


def _bad_alloc() -> None:
    raise RuntimeError("std::bad_alloc")


def _silent() -> None:
    raise KeyError()


def _huge() -> None:
    raise ValueError("x" * 5000)


# (raise it, stage the unit was in) -> the (stage, outcome, error_type, message) the old
# run_unit except blocks stored for the same event.
CASES = [
    (_no_memory, Stage.BUILD, ("build", "oom", "MemoryError", "MemoryError")),
    (_disk_full, Stage.CONVERT, ("convert", "nospace", "OSError", "[Errno 28] No space left on device")),
    (_quota, Stage.CONVERT,
     ("convert", "nospace", "OSError", "[Errno 122] Disk quota exceeded")),
    (_bad_alloc, Stage.BUILD, ("build", "oom", "RuntimeError", "std::bad_alloc")),
    (_bad_shape, Stage.EXECUTE, ("verify", "mismatch", "OutputMismatch", "output shape (1, 10), expected (1, 1000)")),
    (_nan_output, Stage.EXECUTE,
     ("verify", "nan", "NonFiniteOutput", "output for image 'a.jpg' has 3 NaN and 0 infinite values of 1000")),
    # lines joined with one space each, the indentation kept (the old row's form)
    (_tvm_error, Stage.BUILD, ("build", "exception", "RuntimeError",
                               'TVMError: operator not supported   File "x.py", line 1     relax.op')),
    (_silent, Stage.LOAD, ("load", "exception", "KeyError", "KeyError")),  # no message: its type
    (_huge, Stage.EXECUTE, ("execute", "exception", "ValueError", "x" * MESSAGE_LIMIT)),
]


@pytest.mark.parametrize(("make", "stage", "stored"), CASES,
                         ids=["memory", "enospc", "edquot", "bad_alloc", "mismatch", "nan", "multiline", "empty",
                              "long"])
def test_from_exception_gives_what_the_old_rows_held(make, stage: Stage,  # noqa: ANN001
                                                     stored: tuple[str, ...]) -> None:
    failure = Failure.from_exception(stage, _raised(make))
    assert (failure.stage, failure.outcome, failure.error_type, failure.message) == stored
    assert type(failure.stage) is Stage and type(failure.outcome) is Outcome


def test_the_fleets_constructors_give_what_the_old_rows_held() -> None:
    assert Failure.crash(Stage.of("build"), "ActorDiedError", "The actor died") == Failure(
        Stage.BUILD, Outcome.CRASH, "ActorDiedError", "The actor died")
    assert Failure.crash(Stage.of(""), "ContainerExited", "").stage == "convert"  # before any progress marker
    timeout = Failure.timeout(Stage.LOAD, "still in stage 'load' after 2.0 s")
    assert (timeout.outcome, timeout.error_type) == ("timeout", "Timeout")
    refused = Failure.refused(Stage.CONTAINER, "ImageNotFound", "no usable image")
    assert (refused.stage, refused.outcome) == ("container", "exception")
    # and the retry policy reads them as it read the old strings
    row = {"outcome": timeout.outcome, "stage": timeout.stage, "message": timeout.message}
    assert transient(row) == "timeout"
    assert transient({"outcome": refused.outcome, "stage": refused.stage}) == "container did not start"
    oom = Failure.from_exception(Stage.BUILD, _raised(_no_memory))
    assert transient({"outcome": oom.outcome, "stage": oom.stage}) == "oom"
    assert transient({"outcome": "exception", "stage": "build", "message": "TVMError: unsupported op"}) == ""


def test_a_record_refuses_what_no_row_can_hold() -> None:
    with pytest.raises(ValueError):
        Failure("compile", Outcome.EXCEPTION, "X", "no such stage")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Failure(Stage.BUILD, "weird", "X", "no such outcome")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Failure(Stage.BUILD, Outcome.OK, "", "")
    assert Stage.of("no-such-stage") is Stage.CONVERT  # a newer board's marker: the row is kept


def _unit():  # noqa: ANN202
    from deltann.plan import Unit

    return Unit(key="k1", model="tiny_cnn", variant="torch->onnx", runtime="tvm", setting="basic",
                passes=("FoldConstant",), frontend="onnx", device="local", target='{"kind": "llvm"}', host="",
                recipe="r", lab="lab-a", cpu="cpu0", platform="p0")


def test_builds_row_is_the_same_row_for_a_failure_and_for_success() -> None:
    from deltann.store import SCHEMAS

    unit = _unit()
    failure = Failure.crash(Stage.BUILD, "ContainerExited", "container exited with 137: " + "y" * 3000)
    failed = _builds_row(unit, failure, seconds=3.5)
    assert failed.schema.metadata[b"deltann.table"] == b"builds"
    row = failed.to_pylist()[0]
    assert set(row) == set(SCHEMAS["builds"].names)
    # the values the driver's and container's failure rows always held
    assert {k: row[k] for k in ("status", "stage", "outcome", "error_type", "hops", "layout", "convert_s", "import_s",
                                "compile_s", "load_s", "unscheduled", "total_s", "rows", "target", "frontend",
                                "passes", "config", "lab", "unit_key")} == {
        "status": "failed", "stage": "build", "outcome": "crash", "error_type": "ContainerExited", "hops": "[]",
        "layout": None, "convert_s": 0.0, "import_s": 0.0, "compile_s": 0.0, "load_s": 0.0, "unscheduled": None,
        "total_s": 3.5, "rows": 0, "target": '{"kind": "llvm"}', "frontend": "onnx", "passes": ["FoldConstant"],
        "config": unit.config, "lab": "lab-a", "unit_key": "k1"}
    assert len(row["message"]) == MESSAGE_LIMIT
    ok = _builds_row(unit, None, seconds=1.0, times={"convert_s": 0.5, "load_s": 0.1}, target="llvm -mcpu=x",
                       hops=[{"src": "torch", "dst": "onnx"}], layout="NCHW", unscheduled=2, rows=4).to_pylist()[0]
    assert {k: ok[k] for k in ("status", "stage", "outcome", "error_type", "message", "target", "hops", "layout",
                               "convert_s", "import_s", "load_s", "unscheduled", "rows")} == {
        "status": "ok", "stage": "", "outcome": "ok", "error_type": "", "message": "", "target": "llvm -mcpu=x",
        "hops": '[{"src": "torch", "dst": "onnx"}]', "layout": "NCHW", "convert_s": 0.5, "import_s": 0.0,
        "load_s": 0.1, "unscheduled": 2, "rows": 4}


def _builds_row(unit, failure, **kw):  # noqa: ANN001, ANN201
    from deltann.fleet.markers import builds_row

    return builds_row(unit, failure, study="s", board="b", hostname="h", **kw)


# --- the one place -----------------------------------------------------------------------

def _modules() -> list[tuple[str, ast.Module]]:
    return [(str(p.relative_to(PACKAGE.parent)), ast.parse(p.read_text(), str(p)))
            for p in sorted(PACKAGE.rglob("*.py"))]


def _functions(tree: ast.Module) -> dict[ast.AST, str]:
    """Every node of ``tree`` -> the name of the function it sits in ("" at module level)."""
    owner: dict[ast.AST, str] = {}

    def walk(node: ast.AST, name: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else name
            owner[child] = inner
            walk(child, inner)

    walk(tree, "")
    return owner


def _mentions_failed(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and n.value == "failed" for n in ast.walk(node))


STAGES = {s.value for s in Stage}


def _violations(modules: list[tuple[str, ast.Module]]) -> list[str]:
    """Outside :func:`deltann.fleet.markers.builds_row`: a ``SCHEMAS["builds"]`` row or a
    ``{"status": "failed", ...}`` dict (a ``sessions`` row's own function aside). Outside
    deltann/fleet/failure.py: a ``stage=`` keyword, a Failure/UnitFailure argument or a
    progress marker given a bare string. Anywhere: ``stage[0] = "x"`` where x is no Stage."""
    allowed_status = {("deltann/fleet/markers.py", "builds_row"), ("deltann/fleet/session.py", "session_row")}
    found: list[str] = []
    for path, tree in modules:
        owner = _functions(tree)
        for node in ast.walk(tree):
            where = f"{path}:{getattr(node, 'lineno', '?')}"
            if (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
                    and node.slice.value == "builds" and isinstance(node.value, ast.Name)
                    and node.value.id == "SCHEMAS" and (path, owner[node]) != ("deltann/fleet/markers.py",
                                                                                "builds_row")):
                found.append(f"{where}: a builds row assembled outside markers.builds_row")
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (isinstance(key, ast.Constant) and key.value == "status" and _mentions_failed(value)
                            and (path, owner[node]) not in allowed_status):
                        found.append(f"{where}: a failed row assembled in {owner[node] or 'module level'}")
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Subscript)
                    and isinstance(node.targets[0].value, ast.Name) and node.targets[0].value.id == "stage"
                    and isinstance(node.value, ast.Constant) and node.value.value not in STAGES):
                found.append(f"{where}: stage[0] = {node.value.value!r} is no Stage")
            if path == "deltann/fleet/failure.py" or not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:
                if kw.arg == "stage" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                    found.append(f"{where}: stage={kw.value.value!r} (use deltann.fleet.failure.Stage)")
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            first = node.args[0] if node.args else None
            if (name in ("Failure", "UnitFailure", "crash", "timeout", "refused", "from_exception")
                    and isinstance(first, ast.Constant) and isinstance(first.value, str)):
                found.append(f"{where}: {name}({first.value!r}, ...) (use Stage and Outcome)")
            if name == "progress" and len(node.args) == 2 and isinstance(node.args[1], ast.Constant):
                found.append(f"{where}: progress(..., {node.args[1].value!r}) (use Stage)")
    return found


def test_a_failed_builds_row_is_made_in_one_function_and_stages_are_named_constants() -> None:
    found = _violations(_modules())
    assert found == [], "\n".join(found)


def test_the_scan_finds_each_form_it_forbids() -> None:
    """The scan is not vacuous: each forbidden form, written in a module of its own, is found."""
    source = '''
def elsewhere(unit, table):
    row = {"status": "failed" if table else "ok"}
    pa.Table.from_pylist([row], schema=SCHEMAS["builds"])
    failure_row(unit, stage="build")
    raise UnitFailure("verify", Outcome.NAN, "nan")
    Failure.crash("load", "X", "y")
    progress(unit.key, "convert")
    stage[0] = "compile"
    stage[0] = "build"
'''
    found = _violations([("deltann/fleet/elsewhere.py", ast.parse(source))])
    assert sorted(int(f.split(": ", 1)[0].rsplit(":", 1)[1]) for f in found) == [3, 4, 5, 6, 7, 8, 9], found
    assert _violations([("deltann/fleet/markers.py", ast.parse(
        "def builds_row(failure):\n    return {\"status\": \"failed\"}, SCHEMAS[\"builds\"]\n"))]) == []
