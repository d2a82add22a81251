"""Content keys change when, and only when, something that determines a result changes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from deltann import dataset, zoo
from deltann.fleet.devices import load_catalogue
from deltann.plan import expand
from deltann.study import Study

KINDS = load_catalogue()


def _inputs(n: int = 3, bump: bool = False) -> dict[str, dataset.Inputs]:
    recipe = zoo.get("tiny_cnn").preprocess
    images = dataset.load_samples(n)
    if bump:  # one pixel of one photo changes
        rgb = images[0].rgb.copy()
        rgb[100, 100, 0] ^= 0xFF
        images[0] = replace(images[0], rgb=rgb)
    return {"tiny_cnn": dataset.preprocess(images, recipe)}


def _study(**changes: object) -> Study:
    base = {"name": "p", "models": ["tiny_cnn"], "variants": ["torch", "torch->onnx"],
            "settings": ["basic", "default"]}
    return Study.model_validate(base | changes)


def _keys(study: Study, inputs: dict[str, dataset.Inputs] | None = None) -> dict[str, str]:
    return {u.config: u.key for u in expand(study, inputs or _inputs(), KINDS)}


def test_expansion_covers_the_matrix() -> None:
    units = expand(_study(), _inputs(), KINDS)
    assert sorted(u.config for u in units) == sorted([
        "torch [torch]", "torch [tvm:basic]", "torch [tvm:default]",
        "torch->onnx [onnxruntime]", "torch->onnx [tvm:basic]", "torch->onnx [tvm:default]",
    ])
    assert len({u.key for u in units}) == len(units)


def test_keys_are_stable_and_ignore_names_and_order() -> None:
    keys = _keys(_study())
    assert _keys(_study()) == keys
    assert _keys(_study(name="renamed", description="other words")) == keys
    assert _keys(_study(settings=["default", "basic"], variants=["torch->onnx", "torch"])) == keys


def test_adding_a_setting_keeps_existing_keys() -> None:
    keys = _keys(_study())
    more = _keys(_study(settings=["basic", "default", "extended"]))
    assert {k: v for k, v in more.items() if k in keys} == keys
    assert len(more) == len(keys) + 2


def test_keys_change_with_every_input() -> None:
    keys = _keys(_study())
    changed = {
        "timing": _keys(_study(timing={"repeat": 7})),
        "min_repeat_ms": _keys(_study(timing={"min_repeat_ms": 10})),
        "dataset size": _keys(_study(), _inputs(4)),
        "one pixel": _keys(_study(), _inputs(3, bump=True)),
    }
    for what, other in changed.items():
        assert all(other[c] != keys[c] for c in keys), what


def test_input_hash_is_of_the_exact_tensor() -> None:
    a = _inputs()["tiny_cnn"]
    b = _inputs()["tiny_cnn"]
    assert a.hashes == b.hashes
    x = a.tensors[0].copy()
    x[0, 0, 0] = np.nextafter(x[0, 0, 0], np.float32(np.inf))
    assert dataset.tensor_hash(x) != a.hashes[0]


def test_keys_change_with_a_settings_pass_list(monkeypatch) -> None:  # noqa: ANN001 - pytest's fixture
    """A store made when ``basic`` had other passes (before the schedule was part of every
    setting) is not mixed with today's: its TVM units have other keys; native ones keep theirs."""
    from deltann.compile import settings as compile_settings

    keys = _keys(_study())
    monkeypatch.setitem(compile_settings.SETTINGS, "basic", compile_settings.passes_of("unscheduled"))
    before = _keys(_study())
    changed = {c for c in keys if before[c] != keys[c]}
    assert changed == {c for c in keys if c.endswith("[tvm:basic]")} and changed
