"""Logit lens: the readout of the last block is the model's logits, nnsight agrees with plain
hooks, and the table has the promised rows and columns."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch

from rote.config import make_config
from rote.interp.edits import plain_hooks
from rote.interp.lens import lens_states, logit_lens, read_out, readout_batch
from rote.runs.data import generate
from rote.runs.model import build_model, build_tokenizer

COLUMNS = ["id", "layer", "place", "top1", "top1_prob", "true_rank", "true_prob", "label_rank",
           "label_prob", "bridge_rank", "bridge_prob"]



def hooked(call, *args, **kwargs):
    """`call` run with plain torch hooks (`rote.interp.edits.plain_hooks`), the reference."""
    with plain_hooks():
        return call(*args, **kwargs)


@lru_cache
def setup(task):
    """A random-init tiny model, its tokenizer and a mix of clean and noisy training questions."""
    config = make_config(task, "tiny", noise=0.2, seed=1)
    tok = build_tokenizer(config)
    model = build_model(config, len(tok)).eval()
    with torch.no_grad():  # a non-trivial final layer norm, so that forgetting it shows
        model.transformer.ln_f.weight.uniform_(0.5, 2.0)
        model.transformer.ln_f.bias.normal_(0, 0.5)
    frame = generate(config)
    frame = frame[(frame["kind"] != "fact") & (frame["split"] == "train")]
    rows = frame.groupby("noisy").head(12).reset_index(drop=True)
    return config, model, tok, rows


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_readout_of_last_block_is_the_models_logits(task):
    config, model, tok, rows = setup(task)
    ids, where, place, row, targets = readout_batch(tok, rows, "label")
    states = lens_states(model, ids, where)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    assert states.shape == (config.n_layer + 1, where.sum(), config.n_embd)
    # embedding and block outputs are hidden_states 0..n-1; the last hidden state has ln_f applied
    for layer in range(config.n_layer):
        assert torch.allclose(states[layer], out.hidden_states[layer][where], atol=1e-6)
    assert torch.allclose(model.transformer.ln_f(states[-1]), out.hidden_states[-1][where], atol=1e-5)
    assert not torch.allclose(states[-1], out.hidden_states[-1][where], atol=1e-2)
    logits = out.logits[where]
    assert torch.allclose(read_out(model, states)[-1], logits, atol=1e-5)

    # the table's last layer: ranks and probabilities recomputed from the model's own logits
    table = logit_lens(model, tok, rows)
    last = table[table["layer"] == config.n_layer - 1]
    order = np.lexsort((place.numpy(), rows["id"].to_numpy()[row.numpy()]))  # table order
    probs = logits.softmax(-1)[order]
    assert (last["top1"].to_numpy() == tok.convert_ids_to_tokens(logits.argmax(-1)[order].tolist())).all()
    for name, column in (("true", "true"), ("label", "label")):  # target tokens from the table
        t = torch.tensor(sum(tok(list(rows[column]), add_special_tokens=False)["input_ids"], []))[order]
        np.testing.assert_allclose(last[f"{name}_prob"], probs[torch.arange(len(t)), t], atol=1e-6)
        expected = (probs > probs[torch.arange(len(t)), t][:, None]).sum(1)
        np.testing.assert_array_equal(last[f"{name}_rank"].to_numpy(dtype=float), expected.numpy())


@pytest.mark.parametrize("task", ["fda", "thr"])
@pytest.mark.parametrize("teacher_forcing", ["label", "true"])
def test_nnsight_agrees_with_hooks(task, teacher_forcing):
    _, model, tok, rows = setup(task)
    ids, where, *_ = readout_batch(tok, rows, teacher_forcing)
    assert torch.allclose(lens_states(model, ids, where), hooked(lens_states, model, ids, where), atol=1e-6)
    a = logit_lens(model, tok, rows, teacher_forcing, batch_size=7)  # several batches
    b = hooked(logit_lens, model, tok, rows, teacher_forcing, batch_size=64)
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    assert (a["top1"] == b["top1"]).all()
    for column in a.columns.drop("top1"):
        np.testing.assert_allclose(a[column].to_numpy(dtype=float), b[column].to_numpy(dtype=float),
                                   atol=1e-5, err_msg=column)


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_table_shape_and_columns(task):
    config, model, tok, rows = setup(task)
    table = logit_lens(model, tok, rows)
    n_answer = 4 if task == "fda" else 1
    assert list(table.columns) == COLUMNS
    assert len(table) == len(rows) * (config.n_layer + 1) * n_answer
    assert sorted(table["layer"].unique()) == list(range(-1, config.n_layer))
    assert sorted(table["place"].unique()) == list(range(n_answer))
    assert table.groupby(["id", "layer", "place"]).size().eq(1).all()
    assert set(table["id"]) == set(rows["id"])
    for name in ("true", "label", "bridge"):
        ranks = table[f"{name}_rank"].dropna()
        assert ((ranks >= 0) & (ranks < len(tok))).all()
        assert table[f"{name}_prob"].dropna().between(0, 1).all()
    assert table["bridge_rank"].isna().all() == (task == "fda")
    assert table["bridge_prob"].notna().all() == (task == "thr")
    clean = table["id"].isin(rows.loc[~rows["noisy"], "id"])
    assert (table.loc[clean, "label_rank"] == table.loc[clean, "true_rank"]).all()
    noisy = table[~clean]
    assert (noisy["label_prob"] != noisy["true_prob"]).any()


def test_fda_teacher_forcing_changes_only_later_places():
    """Readout k sees label tokens 0..k-1: place 0 is the same under both teacher forcings, later
    places of noisy instances are not."""
    _, model, tok, rows = setup("fda")
    noisy = rows[rows["noisy"]]
    a, b = logit_lens(model, tok, noisy, "label"), logit_lens(model, tok, noisy, "true")
    first = a["place"] == 0
    np.testing.assert_allclose(a.loc[first, "true_prob"], b.loc[first, "true_prob"], atol=1e-6)
    assert not np.allclose(a.loc[~first, "true_prob"], b.loc[~first, "true_prob"], atol=1e-4)
    with pytest.raises(ValueError, match="teacher_forcing"):
        logit_lens(model, tok, noisy, "noisy")


def test_hooks_reference_uses_no_nnsight(monkeypatch):
    _, model, tok, rows = setup("thr")
    expected = hooked(logit_lens, model, tok, rows)

    def refuse(model):
        raise AssertionError("nnsight used")
    monkeypatch.setattr("rote.interp.edits.traced", refuse)
    assert hooked(logit_lens, model, tok, rows).equals(expected)
    with pytest.raises(AssertionError, match="nnsight used"):
        logit_lens(model, tok, rows)
