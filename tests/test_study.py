from __future__ import annotations

from pathlib import Path

import pytest

from deltann.errors import StudyError
from deltann.study import load_study

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_is_valid() -> None:
    study = load_study(ROOT / "studies" / "quickstart.toml")
    assert study.models == ["efficientnet_lite0"]
    assert study.variants == ["torch", "torch->onnx"]
    assert study.settings == ["basic", "default", "extended"]


@pytest.mark.parametrize(
    ("body", "key", "hint"),
    [
        ('name = "x"\nmodels = ["nope"]\n', "models", "allowed: efficientnet_lite0"),
        ('name = "x"\nmodels = ["tiny_cnn"]\nmodles = 1\n', "modles", "allowed keys here: name"),
        ('name = "x"\nmodels = ["tiny_cnn"]\n[timing]\nrepat = 3\n', "timing.repat", "allowed keys here: warmup"),
        ('name = "x"\nmodels = ["tiny_cnn"]\n[timing]\nrepeat = 0\n', "timing.repeat", "greater than or equal to 1"),
        ('name = "x"\nmodels = ["tiny_cnn"]\nsettings = ["O3"]\n', "settings", "allowed: basic, default, extended"),
        ('name = "x"\nmodels = ["tiny_cnn"]\nvariants = ["torch->caffe"]\n', "variants", "allowed: torch, onnx"),
        ('name = "x"\nmodels = ["tiny_cnn"]\nvariants = ["onnx"]\n', "variants.0", "natively only in: torch"),
        ('name = "x"\nmodels = ["tiny_cnn"]\ndevices = ["tpu"]\n', "devices.0", "allowed: local"),
        ('name = "x"\nmodels = ["tiny_cnn"]\nruntimes = ["native"]\nsettings = ["basic"]\n', "settings", "runtime 'tvm'"),
        ('name = "x"\nmodels = ["tiny_cnn"]\nruntimes = ["jit"]\n', "runtimes.0", "'native' or 'tvm'"),
        ('name = "../../etc"\nmodels = ["tiny_cnn"]\n', "name", "should match pattern"),
        ('models = ["tiny_cnn"]\n', "name", "Field required"),
        ('name = "x"\nmodels = ["tiny_cnn", "tiny_cnn"]\n', "models", "twice"),
        ('name = "x"\nmodels = [\n', "", "not valid TOML"),
    ],
)
def test_spec_errors_name_the_key(study_file, body: str, key: str, hint: str) -> None:
    path = study_file(body)
    with pytest.raises(StudyError) as info:
        load_study(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}"), message
    assert hint in message, message


def test_missing_study_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="study file not found"):
        load_study(tmp_path / "absent.toml")


def test_every_error_is_reachable_with_v(study_file, capsys) -> None:
    """Two mistakes: the message names the first and says how to see the other, and
    ``-v`` (before or after the subcommand) lists both — no '(and 1 more)' dead end."""
    from deltann.cli import main

    path = study_file('name = "x"\nmodels = ["tiny_cnn"]\nvariants = ["torch->nope"]\nruntimes = ["jit"]\n')
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert str(info.value).endswith("(and 1 more; -v lists every one)")
    assert len(info.value.details) == 2 and all(line.startswith(f"{path}: ") for line in info.value.details)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "-v lists every one" in err
    for argv in (["-v", "run", str(path)], ["run", str(path), "-v"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "all 2 errors:" in err
        assert f"  {path}: variants: unknown framework" in err and f"  {path}: runtimes.0: " in err
