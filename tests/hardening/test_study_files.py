"""Hostile study files the fuzzer does not make (device files, huge or deeply nested files,
binary garbage, path traversal), and the command line: ``deltann run bad.toml`` prints one
line on stderr, exits non-zero, never shows a traceback and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deltann.errors import DeltannError
from deltann.study import load_study

pytestmark = pytest.mark.hardening

GOOD = 'name = "x"\nmodels = ["tiny_cnn"]\nruntimes = ["native"]\n'

CASES: dict[str, bytes | None] = {
    "missing": None,
    "binary": bytes(range(256)) * 8,
    "not-utf8": b'name = "\xff\xfe"\n',
    "huge": b"# padding\n" * 200_000,
    "nested-arrays": b"name = " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "nested-tables": b"name = " + b"{a = " * 50_000 + b"1" + b"}" * 50_000 + b"\n",
    "name-traversal": GOOD.replace('"x"', '"../../etc/cron.d/x"').encode(),
    "name-absolute": GOOD.replace('"x"', '"/tmp/owned"').encode(),
    "name-nul": GOOD.replace('"x"', '"a\\u0000b"').encode(),
    "model-traversal": b'name = "x"\nmodels = ["../../../etc/passwd"]\n',
    "absurd-limit": (GOOD + "[dataset]\nlimit = 99999999999999\n").encode(),
    "absurd-timing": (GOOD + "[timing]\nrepeat = 100000000\nmin_repeat_ms = -1\n").encode(),
    "absurd-timeout": (GOOD + "unit_timeout_s = 1e308\n").encode(),
    "nan-timeout": (GOOD + "unit_timeout_s = nan\n").encode(),
    "wrong-type": b'name = "x"\nmodels = "tiny_cnn"\n',
    "unknown-table": (GOOD + "[evil]\ncommand = \"rm -rf /\"\n").encode(),
    "code-in-string": b'name = "x"\nmodels = ["__import__(\'os\').system(\'touch /tmp/pwned\')"]\n',
    "huge-matrix": (
        'name = "x"\nmodels = ["tiny_cnn"]\nvariants = [' + ", ".join(f'"torch{"->onnx->torch" * k}"' for k in range(80))
        + "]\n"
    ).encode(),
}


def _write(tmp_path: Path, name: str, body: bytes | None) -> Path:
    path = tmp_path / f"{name}.toml"
    if body is not None:
        path.write_bytes(body)
    return path


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_study_files_are_refused_in_one_line(tmp_path: Path, tally, name: str) -> None:
    path = _write(tmp_path, name, CASES[name])
    before = sorted(tmp_path.iterdir())
    with tally.case("study", name) as case:
        with pytest.raises(DeltannError) as info:
            load_study(path)
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{path}: ") and len(message) < 2000, message
        case.refused(message)
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("target", ["/dev/zero", "/proc/self/mem", "."])
def test_device_files_and_folders_are_not_read_as_studies(tally, target: str) -> None:
    with tally.case("study", target) as case:
        with pytest.raises(DeltannError, match="not a study file|cannot read") as info:
            load_study(target)
        case.refused(str(info.value))


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return subprocess.run([sys.executable, "-m", "deltann", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("name", ["binary", "nested-arrays", "name-traversal", "wrong-type", "missing"])
def test_cli_run_of_a_bad_study_prints_one_line_and_exits_non_zero(tmp_path: Path, tally, name: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    path = _write(work, name, CASES[name])
    before = sorted(p.name for p in work.iterdir())
    with tally.case("cli", name) as case:
        proc = _cli(["run", path.name, "--quiet"], work)
        case.tracebacks = (proc.stdout + proc.stderr).count("Traceback")
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr + proc.stdout
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"deltann: error: {path.name}: "), proc.stderr
        case.refused(proc.stderr)
    assert sorted(p.name for p in work.iterdir()) == before  # no results folder, nothing else


def test_cli_run_with_a_missing_dataset_folder_names_it(tmp_path: Path, tally) -> None:
    (tmp_path / "s.toml").write_text(GOOD + '[dataset]\nsource = "../../nowhere"\n')
    with tally.case("cli", "missing-dataset") as case:
        proc = _cli(["run", "s.toml", "--quiet", "--out", "out"], tmp_path)
        case.tracebacks = (proc.stdout + proc.stderr).count("Traceback")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "nowhere" in lines[0] and "dataset folder not found" in lines[0], proc.stderr
        case.refused(proc.stderr)
    assert not (tmp_path / "out").exists()
