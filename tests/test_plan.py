"""Content keys change when, and only when, something that determines a result changes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from deltann import dataset, zoo
from deltann.core.device_catalogue import load_catalogue
from deltann.plan import expand, renewed, timing_groups, timing_job, timing_protocol
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
        "dataset size": _keys(_study(), _inputs(4)),
        "one pixel": _keys(_study(), _inputs(3, bump=True)),
    }
    for what, other in changed.items():
        assert all(other[c] != keys[c] for c in keys), what


def test_the_timing_protocol_is_the_sessions_not_the_units() -> None:
    # Predictions do not depend on how the board times: a new protocol keeps every unit key
    # (nothing is predicted again); the driver times the group again (see timing_protocol).
    keys = _keys(_study())
    for timing in ({"repeat": 7}, {"min_repeat_ms": 10}, {"blocks": 3, "pause_ms": 0}, {"images": 2}):
        assert _keys(_study(timing=timing)) == keys, timing
        assert timing_protocol(_study(timing=timing)) != timing_protocol(_study()) or "images" in timing


def test_timing_groups_and_jobs() -> None:
    study = _study(timing={"images": 2, "blocks": 3})
    units = expand(study, _inputs(), KINDS)
    groups = timing_groups(units)
    assert list(groups) == [("tiny_cnn", "local")] and groups[("tiny_cnn", "local")] == units
    job = timing_job(study, units, n_images=3)
    again = timing_job(study, units, n_images=3)
    assert job.key != again.key  # every attempt is its own session
    assert job.units == tuple(units) and job.images == (0, 2)  # evenly spaced, first and last
    assert dict(job.protocol) == {"warmup": 1, "number": 1, "repeat": 1, "min_repeat_ms": 0, "blocks": 3,
                                  "pause_ms": 100}
    assert renewed(job).key != job.key and renewed(job).units == job.units
    assert timing_job(_study(), units, n_images=3).images == (0, 1, 2)  # default: every image


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


def test_shards_split_the_images_and_each_key_follows_its_own_images() -> None:
    """10 images in shards of 4: a configuration is 2 units over [0, 5) and [5, 10); an
    image that changes moves the key of its own shard only (the rest resume)."""
    from deltann.plan import shard_spans

    assert shard_spans(10, 4) == [(0, 5), (5, 10)] and shard_spans(3, 1000) == [(0, 3)]
    assert shard_spans(50_000, 1000)[-1] == (49_000, 50_000) and len(shard_spans(50_000, 1000)) == 50
    recipe = zoo.get("tiny_cnn").preprocess
    images = dataset.load_samples(10)
    study = _study(dataset={"shard": 4})
    units = expand(study, {"tiny_cnn": dataset.preprocess(images, recipe)}, KINDS)
    assert len(units) == 6 * 2 and len({u.key for u in units}) == 12
    spans = {(u.config, u.lo, u.hi, u.shard, u.shards) for u in units}
    assert {(lo, hi, s, n) for _, lo, hi, s, n in spans} == {(0, 5, 0, 2), (5, 10, 1, 2)}
    rgb = images[7].rgb.copy()
    rgb[rgb.shape[0] // 2, rgb.shape[1] // 2, 0] ^= 0xFF  # the centre: inside the crop
    bumped = expand(study, {"tiny_cnn": dataset.preprocess(images[:7] + [replace(images[7], rgb=rgb)] + images[8:],
                                                             recipe)}, KINDS)
    before = {(u.config, u.shard): u.key for u in units}
    after = {(u.config, u.shard): u.key for u in bumped}
    assert all(after[k] == before[k] for k in before if k[1] == 0)
    assert all(after[k] != before[k] for k in before if k[1] == 1)
    # one shard (the images fit in one): the key a study without shards always had
    whole = expand(_study(), _inputs(), KINDS)
    assert {u.key for u in whole} == {u.key for u in expand(_study(dataset={"shard": 3}), _inputs(), KINDS)}
    assert all(u.lo == 0 and u.hi == 3 and u.shards == 1 for u in whole)


def test_a_configuration_is_timed_once_for_all_its_shards() -> None:
    from deltann.plan import timed_units

    units = expand(_study(dataset={"shard": 4}), {"tiny_cnn": dataset.preprocess(
        dataset.load_samples(10), zoo.get("tiny_cnn").preprocess)}, KINDS)
    ok = {u.key for u in units if u.config != "torch [torch]" or u.shard == 0}  # one shard of one config failed
    chosen = timed_units(units, ok)
    assert len(chosen) == 5 and all(u.shard == 0 for u in chosen)
    assert "torch [torch]" not in {u.config for u in chosen}
