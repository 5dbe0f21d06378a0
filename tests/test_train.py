"""Training runs on the `tiny` profile: the loss falls, an interrupted run resumes to the same
weights and tables, finished runs are reused, Mem-Noisy stopping, evaluation shortcuts and the
per-instance prediction record."""
from __future__ import annotations

import dataclasses
import importlib
import math
import warnings

import pandas as pd
import pytest
import torch
from transformers import GPT2LMHeadModel

import rote
from rote.config import make_config
from rote.runs.data import load_dataset
from rote.runs.evaluate import evaluate as real_evaluate
from rote.runs.evaluate import greedy_answers, matches
from rote.runs.model import build_model, build_tokenizer, encode, load

train_module = importlib.import_module("rote.runs.train")  # `rote.train` is the function

FDA_COLUMNS = ["step", "epoch", "seconds", "loss", "lr", "tokens_per_s", "test_acc",
               "train_clean_acc", "mem_noisy", "mem_corrected"]
THR_COLUMNS = FDA_COLUMNS[:8] + ["facts_acc"] + FDA_COLUMNS[8:]
VOLATILE = ["seconds", "tokens_per_s"]  # wall-clock columns: differ between any two runs

FDA_CONFIG = make_config("fda", "tiny", max_steps=80)
THR_CONFIG = make_config("thr", "tiny", noise=0.5)  # 60 steps; noise high enough for Mem-Noisy > 0


def _train(config, **kwargs):
    return rote.train(config, device="cpu", progress=False, **kwargs)


def _trained_home(tmp_path_factory, name, config):
    home = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROTE_HOME", str(home))
        _train(config)
    return home


@pytest.fixture(scope="module")
def fda_run(tmp_path_factory):
    """(ROTE_HOME, config) of a finished, uninterrupted tiny FDA run."""
    return _trained_home(tmp_path_factory, "fda_run", FDA_CONFIG), FDA_CONFIG


@pytest.fixture(scope="module")
def thr_run(tmp_path_factory):
    """(ROTE_HOME, config) of a finished, uninterrupted tiny THR run."""
    return _trained_home(tmp_path_factory, "thr_run", THR_CONFIG), THR_CONFIG


@pytest.fixture
def use_home(monkeypatch):
    def use(home):
        monkeypatch.setenv("ROTE_HOME", str(home))
    return use


def _state(path):
    model, _ = load(path)
    return model.state_dict()


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------- (a) the loss falls

def test_fda_loss_falls_and_metrics_table(fda_run, use_home):
    home, config = fda_run
    use_home(home)
    m = rote.metrics(config)
    assert list(m.columns) == FDA_COLUMNS
    assert list(m["step"]) == list(range(0, config.max_steps + 1, config.eval_every))
    steps_per_epoch = config.n_train // config.batch_size  # full batches only
    assert m["epoch"].tolist() == pytest.approx([s / steps_per_epoch for s in m["step"]])
    assert math.isnan(m["loss"].iloc[0])  # nothing trained before the first evaluation
    losses = m["loss"].dropna()
    assert len(losses) == len(m) - 1
    assert losses.iloc[-1] < losses.iloc[0]
    assert m["lr"].iloc[-1] == pytest.approx(config.lr)
    assert (m["tokens_per_s"].iloc[1:] > 0).all()
    for column in ("test_acc", "train_clean_acc", "mem_noisy", "mem_corrected"):
        assert m[column].between(0, 1).all(), column
    run = rote.run_dir(config)
    assert run.is_relative_to(home)
    assert (run / "final" / "model.safetensors").exists()
    assert (run / "checkpoints" / "step-000040" / "model.safetensors").exists()
    assert (run / "checkpoints" / "step-000080" / "model.safetensors").exists()


def test_thr_metrics_have_facts_acc(thr_run, use_home):
    home, config = thr_run
    use_home(home)
    m = rote.metrics(config)
    assert list(m.columns) == THR_COLUMNS
    assert list(m["step"]) == list(range(0, config.max_steps + 1, config.eval_every))
    assert m["facts_acc"].between(0, 1).all()
    losses = m["loss"].dropna()
    assert losses.iloc[-1] < losses.iloc[0]


# ---------------------------------------------------------------- (b) resume == uninterrupted

@pytest.mark.parametrize("task,stops", [("fda", (40,)), ("fda", (30,)), ("fda", (5,)),
                                        ("fda", (30, 50)), ("thr", (30,))],
                         ids=["fda-at-eval", "fda-between-evals", "fda-before-first-eval",
                              "fda-twice", "thr-between-evals"])
def test_resume_equals_uninterrupted(task, stops, request, tmp_path, use_home):
    home, config = request.getfixturevalue(f"{task}_run")
    use_home(home)
    full_run = rote.run_dir(config)
    full_metrics = rote.metrics(config)
    full_predictions = rote.noisy_predictions(config)

    use_home(tmp_path / "interrupted")
    run = rote.run_dir(config)
    assert run != full_run
    for stop in stops:
        assert _train(config, stop_after=stop) == run
        assert not (run / "final").exists()
        assert not train_module.is_finished(config)
        last_eval = stop - stop % config.eval_every
        assert rote.metrics(config)["step"].iloc[-1] == last_eval
        assert torch.load(run / "state.pt", weights_only=True)["step"] == last_eval
        with pytest.raises(FileNotFoundError):
            load(run / "final")
    _train(config)
    assert train_module.is_finished(config)

    _assert_same_weights(_state(full_run / "final"), _state(run / "final"))
    for checkpoint in sorted(p.name for p in (full_run / "checkpoints").iterdir()):
        _assert_same_weights(_state(full_run / "checkpoints" / checkpoint),
                             _state(run / "checkpoints" / checkpoint))
    pd.testing.assert_frame_equal(full_metrics.drop(columns=VOLATILE),
                                  rote.metrics(config).drop(columns=VOLATILE), check_exact=True)
    pd.testing.assert_frame_equal(full_predictions, rote.noisy_predictions(config), check_exact=True)


class SimulatedCrash(Exception):
    pass


@pytest.mark.parametrize("target", ["noisy_predictions.csv", "state.pt"])
def test_resume_after_crash_inside_an_evaluation(target, fda_run, use_home, tmp_path):
    """A run killed while an evaluation writes its files (metrics.csv already has the new row,
    state.pt is still the previous one) resumes to the uninterrupted result, with no row twice."""
    home, config = fda_run
    use_home(home)
    full_run = rote.run_dir(config)
    full_metrics, full_predictions = rote.metrics(config), rote.noisy_predictions(config)

    use_home(tmp_path / "crashed")
    calls = []

    def crash_on_third(real):
        def wrapper(path, *args, **kwargs):
            if path.name == target:
                calls.append(path)
                if len(calls) == 3:  # the evaluation at step 40
                    raise SimulatedCrash(path)
            return real(path, *args, **kwargs)
        return wrapper

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "write_csv", crash_on_third(train_module.write_csv))
        mp.setattr(train_module, "atomic_path", crash_on_third(train_module.atomic_path))
        with pytest.raises(SimulatedCrash):
            _train(config)
    assert rote.metrics(config)["step"].iloc[-1] == 40  # the row written before the crash
    assert torch.load(rote.run_dir(config) / "state.pt", weights_only=True)["step"] == 20

    run = _train(config)
    _assert_same_weights(_state(full_run / "final"), _state(run / "final"))
    pd.testing.assert_frame_equal(full_metrics.drop(columns=VOLATILE),
                                  rote.metrics(config).drop(columns=VOLATILE), check_exact=True)
    pd.testing.assert_frame_equal(full_predictions, rote.noisy_predictions(config), check_exact=True)


# ---------------------------------------------------------------- (c) finished runs are reused

def test_get_or_train_does_not_retrain(fda_run, use_home):
    home, config = fda_run
    use_home(home)
    run = rote.run_dir(config)
    watched = [run / "final", run / "final" / "model.safetensors", run / "metrics.csv",
               run / "noisy_predictions.csv", run / "state.pt"]
    before = [p.stat().st_mtime_ns for p in watched]
    listing = sorted(str(p.relative_to(home)) for p in home.rglob("*"))

    model, tokenizer = rote.get_or_train(config, device="cpu", progress=False)
    assert isinstance(model, GPT2LMHeadModel)
    assert tokenizer("1234+4321=", add_special_tokens=False)["input_ids"]
    _assert_same_weights(model.state_dict(), _state(run / "final"))
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == listing
    assert _train(config) == run
    assert [p.stat().st_mtime_ns for p in watched] == before


def test_get_or_train_finishes_an_interrupted_run(fda_run, use_home, tmp_path):
    home, config = fda_run
    use_home(home)
    full = _state(rote.run_dir(config) / "final")
    use_home(tmp_path / "other")
    _train(config, stop_after=20)
    model, _ = rote.get_or_train(config, device="cpu", progress=False)
    _assert_same_weights(full, model.state_dict())


def test_a_resumed_run_records_each_stretch_and_its_threads(fda_run, use_home, tmp_path):
    home, config = fda_run
    use_home(tmp_path / "segments")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        run = _train(config, stop_after=30)  # stops at the evaluation of step 20
        torch.set_num_threads(2)
        _train(config)
    finally:
        torch.set_num_threads(threads)
    segments = train_module.training_segments(run)
    assert [(s["from_step"], s["to_step"], s["threads"]) for s in segments] == [(0, 20, 1), (20, config.max_steps, 2)]
    assert all(s["device"] == "cpu" and s["torch"] == torch.__version__ for s in segments)
    (run / "segments.json").write_text("{not json")  # unreadable: nothing recorded, not an error
    assert train_module.training_segments(run) == []


# ---------------------------------------------------------------- (d) stop_mem_noisy

def test_stop_mem_noisy_without_noise_runs_to_max_steps():
    config = make_config("fda", "tiny", noise=0.0, stop_mem_noisy=0.5, max_steps=40)
    run = _train(config, stop_after=20)  # also resumes with an empty predictions file
    assert not (run / "final").exists()
    _train(config)
    assert (run / "final" / "model.safetensors").exists()
    m = rote.metrics(config)
    assert list(m["step"]) == [0, 20, 40]
    assert m["mem_noisy"].isna().all() and m["mem_corrected"].isna().all()
    assert m["test_acc"].notna().all()
    predictions = rote.noisy_predictions(config)
    assert len(predictions) == 0
    assert list(predictions.columns) == ["step", "id", "prediction"]


def _fake_mem_noisy(monkeypatch, value, from_call=2):
    """Make every evaluation from the `from_call`-th on report Mem-Noisy = `value`."""
    calls = []

    def evaluate(*args, **kwargs):
        scores, predictions = real_evaluate(*args, **kwargs)
        calls.append(1)
        if len(calls) >= from_call:
            scores = {**scores, "mem_noisy": value}
        return scores, predictions

    monkeypatch.setattr(train_module, "evaluate", evaluate)


def test_stop_mem_noisy_stops_when_reached(monkeypatch):
    config = make_config("fda", "tiny", stop_mem_noisy=0.5, max_steps=60)
    _fake_mem_noisy(monkeypatch, 0.5)  # reaches the threshold exactly at step 20
    run = _train(config)
    m = rote.metrics(config)
    assert list(m["step"]) == [0, 20]
    assert (run / "final" / "model.safetensors").exists()
    _assert_same_weights(_state(run / "final"), _state(run / "checkpoints" / "step-000020"))
    _train(config)  # finished: nothing more is trained
    assert list(rote.metrics(config)["step"]) == [0, 20]


def test_stop_mem_noisy_below_threshold_or_unset_runs_on(monkeypatch):
    _fake_mem_noisy(monkeypatch, 0.49)
    below = make_config("fda", "tiny", stop_mem_noisy=0.5, max_steps=40)
    _train(below)
    assert list(rote.metrics(below)["step"]) == [0, 20, 40]
    _fake_mem_noisy(monkeypatch, 1.0)
    unset = make_config("fda", "tiny", max_steps=40)
    _train(unset)
    assert list(rote.metrics(unset)["step"]) == [0, 20, 40]


# ---------------------------------------------------------------- (e) evaluation shortcuts

def _perturb(answer: str, k: int) -> str:
    c = answer[k]
    new = str((int(c) + 1) % 10) if c.isdigit() else "0"
    return answer[:k] + new + answer[k + 1:]


def _manual_greedy(model, tok, prompt, n_tokens):
    x = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        for _ in range(n_tokens):
            x = torch.cat([x, model(x).logits[:, -1:].argmax(-1)], dim=1)
    return tok.decode(x[0, -n_tokens:].tolist())


def test_matches_equals_greedy_decoding_fda(fda_run, use_home):
    home, config = fda_run
    use_home(home)
    model, tok = load(rote.run_dir(config) / "final")
    frame = load_dataset(config)
    rows = frame.sample(300, random_state=1)
    prompts, true = list(rows["prompt"]), list(rows["true"])

    greedy = greedy_answers(model, tok, prompts, 4)
    assert len(greedy) == len(prompts)
    assert all(len(g) == 4 and "<" not in g for g in greedy), greedy[:10]
    for i in range(0, 300, 15):  # batched decoding == one prompt at a time
        assert greedy[i] == _manual_greedy(model, tok, prompts[i], 4)

    assert matches(model, tok, prompts, true).tolist() == [g == t for g, t in zip(greedy, true)]
    assert matches(model, tok, prompts, rows["label"]).tolist() == [
        g == a for g, a in zip(greedy, rows["label"])]
    own = matches(model, tok, prompts, greedy)
    assert own.dtype == torch.bool and own.shape == (300,) and own.all()
    for k in range(4):  # one wrong digit anywhere in the answer is a miss
        assert not matches(model, tok, prompts, [_perturb(g, k) for g in greedy]).any(), k
    mixed = [g if i % 2 else _perturb(g, i % 4) for i, g in enumerate(greedy)]
    assert matches(model, tok, prompts, mixed).tolist() == [bool(i % 2) for i in range(300)]


def test_matches_equals_greedy_decoding_thr(thr_run, use_home):
    """Mixed prompt lengths (facts and two-hop questions): right padding must not change answers."""
    home, config = thr_run
    use_home(home)
    model, tok = load(rote.run_dir(config) / "final")
    rows = load_dataset(config).sample(300, random_state=2)
    prompts, true = list(rows["prompt"]), list(rows["true"])
    assert rows["kind"].nunique() == 2

    greedy = greedy_answers(model, tok, prompts, 1)
    for i in range(0, 300, 15):
        assert greedy[i] == _manual_greedy(model, tok, prompts[i], 1)
    expected = [g == t for g, t in zip(greedy, true)]
    assert any(expected) and not all(expected)  # a real mix of hits and misses
    assert matches(model, tok, prompts, true).tolist() == expected
    assert matches(model, tok, prompts, greedy).all()


def test_answers_do_not_depend_on_how_the_questions_are_chunked(fda_run, use_home, monkeypatch):
    """The evaluation runs its questions in chunks of `BATCH`: every chunk, the last short one
    included, answers as one question at a time does."""
    home, config = fda_run
    use_home(home)
    model, tok = load(rote.run_dir(config) / "final")
    rows = load_dataset(config).sample(60, random_state=3)
    prompts, true = list(rows["prompt"]), list(rows["true"])
    one_by_one = [_manual_greedy(model, tok, p, 4) for p in prompts]
    assert len(set(one_by_one)) >= 10  # answers that differ, so a misplaced chunk shows
    monkeypatch.setattr(rote.runs.evaluate, "BATCH", 7)
    assert greedy_answers(model, tok, prompts, 4) == one_by_one
    targets = [a if i % 2 else t for i, (a, t) in enumerate(zip(one_by_one, true))]
    assert matches(model, tok, prompts, targets).tolist() == [a == t for a, t in zip(one_by_one, targets)]


def test_matches_empty():
    config = make_config("fda", "tiny")
    tok = build_tokenizer(config)
    model = build_model(config, len(tok))
    assert len(matches(model, tok, [], [])) == 0


# ---------------------------------------------------------------- (f) per-instance predictions

@pytest.mark.parametrize("task", ["fda", "thr"])
def test_noisy_predictions_agree_with_metrics(task, request, use_home):
    home, config = request.getfixturevalue(f"{task}_run")
    use_home(home)
    m = rote.metrics(config)
    predictions = rote.noisy_predictions(config)
    frame = load_dataset(config)
    noisy = frame[frame["noisy"]].set_index("id")
    assert len(noisy) == round(config.noise * ((frame["split"] == "train") & (frame["kind"] != "fact")).sum())

    assert list(predictions.columns) == ["step", "id", "prediction"]
    assert len(predictions) == len(m) * len(noisy)
    assert set(zip(predictions["step"], predictions["id"])) == {
        (s, i) for s in m["step"] for i in noisy.index}
    for row in m.itertuples(index=False):
        at = predictions[predictions["step"] == row.step]
        said = at["prediction"].tolist()
        labels = noisy.loc[at["id"], "label"].tolist()
        true = noisy.loc[at["id"], "true"].tolist()
        assert row.mem_noisy == pytest.approx(sum(map(str.__eq__, said, labels)) / len(at), abs=1e-12)
        assert row.mem_corrected == pytest.approx(sum(map(str.__eq__, said, true)) / len(at), abs=1e-12)

    # The last recorded answers are what the final model says.
    model, tok = load(rote.run_dir(config) / "final")
    last = predictions[predictions["step"] == m["step"].iloc[-1]]
    n_tokens = 4 if task == "fda" else 1
    assert last["prediction"].tolist() == greedy_answers(model, tok, noisy.loc[last["id"], "prompt"], n_tokens)
    if task == "thr":  # non-vacuous: some answers are the noisy labels, some the corrected ones
        assert (m["mem_noisy"].iloc[1:] > 0).any() and (m["mem_corrected"].iloc[1:] > 0).any()


# ---------------------------------------------------------------- the training loss

@pytest.mark.parametrize("task", ["fda", "thr"])
def test_answer_loss_equals_hf_loss_on_answer_tokens(task):
    """rote's answer-only loss is HF's causal-LM loss with every non-answer token masked out."""
    from rote.runs.train import answer_loss, readout_pos_of

    config = make_config(task, "tiny")
    frame = rote.load_dataset(config)
    rows = frame[frame["split"] == "train"].head(64)
    tok = build_tokenizer(config)
    model = build_model(config, len(tok))
    ids, mask = encode(tok, rows["prompt"], rows["label"])
    expected = model(ids, labels=ids.masked_fill(~mask, -100)).loss
    assert torch.allclose(answer_loss(model, ids, readout_pos_of(mask)), expected, atol=1e-6)


def test_bf16_precision_autocasts_the_loss_and_stays_close_to_fp32():
    """precision=bf16 computes the step's matrix products in bf16 (plain attention) and the same
    loss as fp32 up to bf16 rounding; fp32 leaves the model's attention and dtypes alone."""
    from rote.runs.train import answer_loss, precision_context, readout_pos_of

    config = make_config("fda", "tiny")
    frame = rote.load_dataset(config)
    rows = frame[frame["split"] == "train"].head(64)
    tok = build_tokenizer(config)
    model = build_model(config, len(tok))
    ids, mask = encode(tok, rows["prompt"], rows["label"])
    pos = readout_pos_of(mask)
    with precision_context(config, model, "cpu"):
        fp32 = answer_loss(model, ids, pos)
        assert model.lm_head(torch.zeros(1, config.n_embd)).dtype == torch.float32
    assert model.config._attn_implementation != "eager"
    with precision_context(dataclasses.replace(config, precision="bf16"), model, "cpu"):
        bf16 = answer_loss(model, ids, pos)
        assert model.lm_head(torch.zeros(1, config.n_embd)).dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    assert bf16.dtype == torch.float32 and bf16 != fp32 and torch.isclose(bf16, fp32, rtol=2e-2)


def test_bf16_on_a_cpu_without_bf16_units_warns(monkeypatch):
    train_module = importlib.import_module("rote.runs.train")  # `rote.train` the attribute is the function
    config = make_config("fda", "tiny", precision="bf16")
    model = build_model(config, 14)
    monkeypatch.setattr(train_module, "native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="precision='fp32'"):
        train_module.precision_context(config, model, "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_module.precision_context(dataclasses.replace(config, precision="fp32"), model, "cpu")
        monkeypatch.setattr(train_module, "native_bf16", lambda: True)
        train_module.precision_context(config, model, "cpu")


def test_a_bf16_run_learns_like_fp32_and_saves_the_default_attention(tmp_path, use_home):
    use_home(tmp_path)
    losses = {}
    for precision in ("fp32", "bf16"):
        config = make_config("fda", "tiny", precision=precision, max_steps=200, eval_every=100, checkpoint_every=100)
        model, _ = rote.get_or_train(config, progress=False)
        losses[precision] = rote.metrics(config)["loss"].to_numpy()[1:]
        assert model.config._attn_implementation != "eager"  # the analyses see the model as an fp32 run's
    assert losses["bf16"][-1] < losses["bf16"][0] and losses["bf16"][-1] == pytest.approx(losses["fp32"][-1], rel=0.05)
    assert (losses["bf16"] != losses["fp32"]).all()  # another computation, not the fp32 one


# ---------------------------------------------------------------- schedules and the facts-first curriculum

def test_wsd_schedule_holds_then_decays_to_zero():
    config = make_config("thr", "tiny", schedule="wsd", max_steps=100, decay_steps=40, warmup_steps=10)
    rate = [train_module.learning_rate(config, s) for s in range(101)]
    assert rate[9] == config.lr and all(r == config.lr for r in rate[10:61])
    assert all(a > b for a, b in zip(rate[60:100], rate[61:101]))
    assert rate[80] == pytest.approx(config.lr / 2) and rate[100] == 0
    cosine = make_config("thr", "tiny", schedule="cosine", max_steps=100, warmup_steps=10)
    assert train_module.learning_rate(cosine, 55) == pytest.approx(cosine.lr / 2)


def test_decay_weight_decay_applies_from_the_decay_phase():
    config = make_config("thr", "tiny", schedule="wsd", max_steps=100, decay_steps=40, weight_decay=1.0,
                         decay_weight_decay=0.0)
    assert [train_module.weight_decay(config, s) for s in (0, 59, 60, 99)] == [1.0, 1.0, 0.0, 0.0]
    same = dataclasses.replace(config, decay_weight_decay=None)
    assert train_module.weight_decay(same, 99) == 1.0
    assert rote.config_hash(config) != rote.config_hash(same)
    with pytest.raises(ValueError, match="needs schedule wsd"):
        make_config("thr", "tiny", decay_weight_decay=0.0)


def test_decay_starts_at_the_first_evaluation_reaching_the_train_accuracy():
    config = make_config("thr", "tiny", schedule="wsd", max_steps=100, decay_steps=40, weight_decay=1.0,
                         decay_weight_decay=0.0, decay_when_train_acc=0.8)
    rows = [{"step": 0, "train_clean_acc": 0.0}, {"step": 20, "train_clean_acc": 0.79},
            {"step": 40, "train_clean_acc": 0.8}, {"step": 60, "train_clean_acc": 0.95}]
    assert train_module.decay_start(config, rows) == 40 and train_module.last_step(config, rows) == 80
    assert train_module.decay_start(config, rows[:2]) == 60  # not reached: the last decay_steps of the run
    assert train_module.decay_start(config, [rows[0], {"step": 60, "train_clean_acc": 0.9}]) == 60  # at the latest
    rate = [train_module.learning_rate(config, s, 40) for s in range(101)]
    assert all(r == config.lr for r in rate[10:41]) and rate[60] == pytest.approx(config.lr / 2) and rate[80] == 0
    assert [train_module.weight_decay(config, s, 40) for s in (39, 40)] == [1.0, 0.0]
    for bad in (dict(decay_when_train_acc=0.8), dict(schedule="wsd", decay_steps=20, decay_when_train_acc=1.5)):
        with pytest.raises(ValueError, match="decay_when_train_acc must be in"):
            make_config("thr", "tiny", **bad)


def test_a_run_decays_once_trained_and_resumes_across_the_start(tmp_path, use_home):
    config = make_config("thr", "tiny", schedule="wsd", max_steps=100, decay_steps=20, weight_decay=0.5,
                         decay_weight_decay=0.0, decay_when_train_acc=0.05)
    use_home(tmp_path / "full")
    full = _train(config)
    table = rote.metrics(config)
    start = int(table.loc[table["train_clean_acc"] >= 0.05, "step"].iloc[0])
    assert 0 < start < 80  # the decay began at the evaluation that reached 5%, before the latest start
    assert table["step"].iloc[-1] == start + 20 and table["lr"].iloc[-1] < config.lr / 100
    assert (table.loc[table["step"] <= start, "lr"].iloc[1:] == config.lr).all()
    use_home(tmp_path / "interrupted")
    _train(config, stop_after=start + 10)
    assert not train_module.is_finished(config)
    _assert_same_weights(_state(full / "final"), _state(_train(config) / "final"))


@pytest.mark.parametrize("bad", [dict(schedule="wsd"), dict(schedule="wsd", decay_steps=61), dict(decay_steps=-1)])
def test_wsd_needs_decay_steps_within_the_run(bad):
    with pytest.raises(ValueError, match="decay_steps") as err:
        make_config("thr", "tiny", **bad)
    assert "\n" not in str(err.value)


def test_facts_first_is_thr_only():
    with pytest.raises(ValueError, match="allowed for fda: 0"):
        make_config("fda", "tiny", facts_first_steps=10)


def test_facts_first_batches_are_facts_then_epochs_over_everything():
    config = make_config("thr", "tiny", facts_first_steps=5, fact_repeats=3)
    rows = train_module.training_rows(load_dataset(config), config)
    n_facts = int((rows["kind"] == "fact").sum()) // 3
    facts = torch.arange(n_facts)  # training_rows puts each fact's first copy first
    orders = {}
    early = [train_module.batch_at(s, config, len(rows), facts, orders) for s in range(5)]
    assert all(len(b) == config.batch_size for b in early)
    assert set(torch.cat(early).tolist()) <= set(range(n_facts))
    assert (rows["kind"].iloc[torch.cat(early).numpy()] == "fact").all()
    per_epoch = len(rows) // config.batch_size
    later = torch.cat([train_module.batch_at(5 + s, config, len(rows), facts, orders) for s in range(per_epoch)])
    assert len(set(later.tolist())) == len(later)  # one epoch: no row twice
    plain = dataclasses.replace(config, facts_first_steps=0)
    assert torch.equal(train_module.batch_at(0, plain, len(rows), facts, {}),
                       train_module.batch_order(len(rows), plain, 0)[: config.batch_size])


def test_curriculum_and_wsd_resume_to_the_same_weights(tmp_path, use_home):
    config = make_config("thr", "tiny", facts_first_steps=25, schedule="wsd", decay_steps=20, weight_decay=0.5,
                         decay_weight_decay=0.0)
    use_home(tmp_path / "full")
    full = _train(config)
    use_home(tmp_path / "interrupted")
    _train(config, stop_after=30)
    assert not train_module.is_finished(config)
    _assert_same_weights(_state(full / "final"), _state(_train(config) / "final"))
