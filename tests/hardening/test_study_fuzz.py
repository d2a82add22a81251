"""Hostile and malformed study files: every one is refused with a single line naming the
file and the key, or accepted as valid — never a traceback, never a file written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from deltann.errors import StudyError
from deltann.study import Study, load_study

pytestmark = pytest.mark.hardening

VALID: dict[str, Any] = {
    "name": "fuzz",
    "models": ["tiny_cnn"],
    "variants": ["torch", "torch->onnx"],
    "runtimes": ["native", "tvm"],
    "settings": ["basic"],
    "devices": ["local"],
    "dataset": {"source": "samples", "limit": 2},
    "timing": {"warmup": 1, "number": 1, "repeat": 2, "min_repeat_ms": 0},
}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True), st.text(max_size=40),
    st.sampled_from(["../../etc/passwd", "/etc/shadow", "a" * 5000, "torch->onnx->torch->onnx", "\x00", "__import__('os')"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
keys = st.sampled_from([*VALID, "dataset.source", "dataset.limit", "timing.repeat", "timing.number", "bogus", "dataset.bogus"])


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    head, _, tail = dotted.partition(".")
    if tail:
        if not isinstance(doc.get(head), dict):
            doc[head] = {}
        doc[head][tail] = value
    else:
        doc[head] = value


def _toml(value: Any) -> str:
    """A small TOML writer (no dependency): inline values only."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(value), repr(value))
    if isinstance(value, str):
        return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml(str(k))} = {_toml(v)}" for k, v in value.items() if v is not None) + "}"
    return '""'


def _dump(doc: dict[str, Any]) -> str:
    return "\n".join(f"{_toml(str(k))} = {_toml(v)}" for k, v in doc.items() if v is not None) + "\n"


#: Examples the fuzzer found that once failed (issue 15: a ``[dataset]`` key "\\n" made a
#: message of two lines), kept as fixed cases so that they are tried on every run.
FOUND = [
    ([("dataset", {"\n": 0})], set()),
    ([("dataset", {"\n": ""}), ("timing", {"a.b": 1})], {"variants"}),
    ([("bogus", {"\r\n\t": [1]})], set()),
    ([("timing", {'"': None, "\u2028": 1})], set()),
]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(edits=FOUND[0][0], drop=FOUND[0][1])
@example(edits=FOUND[1][0], drop=FOUND[1][1])
@example(edits=FOUND[2][0], drop=FOUND[2][1])
@example(edits=FOUND[3][0], drop=FOUND[3][1])
@given(edits=st.lists(st.tuples(keys, values), min_size=1, max_size=4), drop=st.sets(st.sampled_from(list(VALID)), max_size=2))
def test_malformed_studies_are_refused_in_one_line(tmp_path: Path, tally, edits: list[tuple[str, Any]],
                                                   drop: set[str]) -> None:
    doc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in VALID.items() if k not in drop}
    for key, value in edits:
        _set(doc, key, value)
    path = tmp_path / "study.toml"
    path.write_text(_dump(doc))
    before = sorted(p.name for p in tmp_path.iterdir())
    with tally.case("study", str(edits)[:200]) as case:
        try:
            study = load_study(path)
        except StudyError as exc:
            message = str(exc)
            assert "\n" not in message and message.startswith(f"{path}: "), message
            assert len(message) < 2000
            case.refused(message)
        else:
            assert isinstance(study, Study)
            case.accepted()
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize("key", ["\n", "a\nb", "\r", "x.y", '"', "\u2028"])
def test_an_unknown_key_with_any_characters_is_named_on_one_line(tmp_path: Path, tally, key: str) -> None:
    """The fuzzer's find as an ordinary case: the key is quoted (as TOML would), never
    written raw into the message."""
    path = tmp_path / "study.toml"
    path.write_text(_dump({**VALID, "dataset": {"source": "samples", key: 1}}))
    with tally.case("study", f"unknown-key-{key!r}") as case:
        with pytest.raises(StudyError) as info:
            load_study(path)
        message = str(info.value)
        assert len(message.splitlines()) == 1 and "\n" not in message and "\r" not in message, message
        assert message.startswith(f"{path}: dataset.") and "unknown key" in message
        case.refused(message)


def test_a_very_long_unknown_name_is_cut_in_the_message(tmp_path: Path, tally) -> None:
    """The fuzzer's find: a 5,000-character model name was repeated whole (5,177 characters)."""
    path = tmp_path / "study.toml"
    path.write_text(_dump({**VALID, "models": ["m" * 5000]}))
    with tally.case("study", "unknown-model-5000-chars") as case:
        with pytest.raises(StudyError) as info:
            load_study(path)
        message = str(info.value)
        assert len(message) < 600 and "(5,003 characters)" in message and "allowed: " in message, message  # quotes and ";" included
        case.refused(message)
