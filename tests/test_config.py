"""Config hashing and validation."""
from __future__ import annotations

import dataclasses

import pytest

import rote
from rote.config import Config, config_hash, make_config, validate

WSD_ONLY = ("decay_weight_decay", "decay_when_train_acc")  # fields that need schedule wsd


def _other_value(config: Config, field: dataclasses.Field):
    """Another value of the same type for `field` that still makes a valid config (a wsd config's
    for the fields only wsd reads)."""
    value = getattr(config, field.name)
    if field.name == "task":
        candidates = ["thr" if value == "fda" else "fda"]
    elif field.name == "schedule":
        candidates = ["cosine" if value == "constant" else "constant"]
    elif field.name == "precision":
        candidates = ["bf16" if value == "fp32" else "fp32"]
    elif field.name == "kernels":
        candidates = ["fast" if value == "deterministic" else "deterministic"]
    elif field.name == "facts_first_steps" and config.task == "fda":
        return None  # THR-only: checked on the THR base
    elif field.name in WSD_ONLY:
        candidates = [0.5] if value is None else [None, value / 2]
    elif field.name == "stop_mem_noisy":
        candidates = [0.5] if value is None else [None, value / 2]
    elif isinstance(value, bool):
        candidates = [not value]
    elif isinstance(value, int):
        candidates = [value + 1, value + 2, value * 2, value - 1]
    elif isinstance(value, float):
        candidates = [value / 2, value * 1.5, value + 0.1, 0.25]
    else:
        raise AssertionError(f"no rule to change field {field.name} of type {type(value)}")
    for candidate in candidates:
        changed = dataclasses.replace(config, **{field.name: candidate})
        try:
            validate(changed)
        except ValueError:
            continue
        if candidate != value:
            return changed
    raise AssertionError(f"no valid other value for {field.name}")


@pytest.mark.parametrize("base", [Config(), make_config("fda", "tiny"), make_config("thr", "tiny")],
                         ids=["default", "fda-tiny", "thr-tiny"])
def test_config_hash_changes_with_every_field(base):
    h = config_hash(base)
    assert isinstance(h, str) and len(h) >= 8
    assert config_hash(dataclasses.replace(base)) == h  # stable for an equal config
    wsd = dataclasses.replace(base, schedule="wsd", decay_steps=base.max_steps // 2)
    seen, checked = {h, config_hash(wsd)}, 0
    for field in dataclasses.fields(Config):
        reference = wsd if field.name in WSD_ONLY else base
        changed = _other_value(reference, field)
        if changed is None:
            continue
        checked += 1
        assert getattr(changed, field.name) != getattr(reference, field.name)
        assert config_hash(changed) != config_hash(reference), field.name
        seen.add(config_hash(changed))
    assert checked >= len(dataclasses.fields(Config)) - 1 and len(seen) == checked + 2


def test_hash_defaults_keep_the_recorded_names():
    """The regime map's run a04051fb5145 (the THR cpu set-up with weight decay 1.0 and none in the
    decay, in fp32) was recorded before `precision` and `kernels` existed: at their `HASH_DEFAULTS`
    values they leave its hash alone; set away from them, they count."""
    thr = make_config("thr", "cpu", precision="fp32", weight_decay=1.0, decay_weight_decay=0.0)
    assert config_hash(thr) == "a04051fb5145"
    from rote.grid.regimes import MAP_DIR

    assert (MAP_DIR / config_hash(thr) / "config.json").exists()
    assert config_hash(dataclasses.replace(thr, precision="bf16")) != config_hash(thr)
    assert config_hash(dataclasses.replace(thr, kernels="fast")) != config_hash(thr)


def test_config_hash_is_stable_across_calls():
    assert config_hash(make_config("fda", "tiny", seed=3)) == config_hash(make_config("fda", "tiny", seed=3))
    assert rote.config_hash is config_hash


def test_make_config_applies_profile_and_overrides():
    tiny = make_config("fda", "tiny")
    assert tiny.n_train < Config().n_train and tiny.max_steps < Config().max_steps
    assert make_config("fda", "tiny", max_steps=7).max_steps == 7
    assert make_config("thr", "tiny").task == "thr"
    assert make_config("fda", "cpu") == Config(n_embd=256, n_head=8, lr=2e-3, weight_decay=0.6, max_steps=10_000,
                                               precision="bf16", stop_mem_noisy=None)


def _one_line_value_error(call, *needles):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def test_unknown_task():
    _one_line_value_error(lambda: make_config("add", "tiny"), "add", "fda", "thr")


def test_unknown_profile():
    _one_line_value_error(lambda: make_config("fda", "huge"), "huge", "tiny", "cpu", "paper")


@pytest.mark.parametrize("noise", [-0.1, 1.0, 1.5])
def test_noise_out_of_range(noise):
    _one_line_value_error(lambda: make_config("fda", "tiny", noise=noise), "noise", "[0, 1)")


@pytest.mark.parametrize("name,value", [("n_train", 0), ("batch_size", -1), ("n_layer", 0),
                                        ("n_test", 0), ("max_steps", 0), ("eval_every", 0)])
def test_size_not_positive(name, value):
    _one_line_value_error(lambda: make_config("fda", "tiny", **{name: value}), name, "> 0")


def test_unknown_field():
    message = _one_line_value_error(lambda: make_config("fda", "tiny", n_trian=5), "n_trian")
    for name in ("n_train", "noise", "seed", "max_steps"):
        assert name in message


def test_unknown_schedule():
    _one_line_value_error(lambda: make_config("fda", "tiny", schedule="linear"), "linear",
                          "constant", "cosine")


def test_unknown_precision():
    _one_line_value_error(lambda: make_config("fda", "tiny", precision="fp16"), "fp16", "fp32", "bf16")


def test_unknown_kernels():
    _one_line_value_error(lambda: make_config("fda", "tiny", kernels="exact"), "exact", "deterministic", "fast")


def test_valid_edge_values_accepted():
    make_config("fda", "tiny", noise=0.0)
    make_config("fda", "tiny", noise=0.999)
    make_config("thr", "tiny", n_entities=3)
    make_config("fda", "tiny", stop_mem_noisy=1.0)


def test_bad_config_raises_before_writing(rote_home):
    with pytest.raises(ValueError) as info:
        rote.train(Config(task="fda", noise=2.0), progress=False)
    assert "\n" not in str(info.value) and "noise" in str(info.value)
    assert not rote_home.exists() or not any(rote_home.rglob("*"))


def test_bad_config_get_or_train_raises_before_writing(rote_home):
    with pytest.raises(ValueError):
        rote.get_or_train(Config(task="xyz"), progress=False)
    with pytest.raises(ValueError):
        rote.get_or_train(dataclasses.replace(make_config("fda", "tiny"), n_embd=33), progress=False)
    assert not rote_home.exists() or not any(rote_home.rglob("*"))


@pytest.mark.parametrize("name,as_int,as_float", [("noise", 0, 0.0), ("lr", 1, 1.0),
                                                  ("stop_mem_noisy", 1, 1.0)])
def test_equal_configs_have_equal_hashes(name, as_int, as_float):
    a = make_config("fda", "tiny", **{name: as_int})
    b = make_config("fda", "tiny", **{name: as_float})
    assert a == b
    assert config_hash(a) == config_hash(b)


def test_none_from_the_command_line_is_none():
    """`-o stop_mem_noisy=None` (a sweep's or a bench's override) arrives as the string "None"."""
    for name in ("stop_mem_noisy", "decay_when_train_acc"):
        config = make_config("fda", "cpu", **{name: "None"})
        assert getattr(config, name) is None
        assert config == make_config("fda", "cpu", **{name: None})
    assert make_config("fda", "cpu", stop_mem_noisy="0.9").stop_mem_noisy == 0.9


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_out_of_range(seed):
    _one_line_value_error(lambda: make_config("fda", "tiny", seed=seed), "seed")


def test_atomic_writes_are_readable_like_any_new_file(tmp_path):
    from rote.store import write_text
    write_text(tmp_path / "a.txt", "x")
    (tmp_path / "b.txt").write_text("x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777
    from rote.store import atomic_dir
    with atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("x")
    (tmp_path / "e").mkdir()
    assert (tmp_path / "d").stat().st_mode & 0o777 == (tmp_path / "e").stat().st_mode & 0o777
