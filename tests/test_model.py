"""Tokenizers, answer masks and checkpoints."""
from __future__ import annotations

import pytest
import torch

from rote.config import make_config
from rote.runs.data import generate
from rote.runs.model import build_model, build_tokenizer, encode, load, save


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_fda_tokenizer_round_trip():
    config = make_config("fda", "tiny", n_train=200, n_test=50, noise=0.1)
    tok = build_tokenizer(config)
    ids = {c: _ids(tok, c) for c in "0123456789+="}
    assert all(len(v) == 1 for v in ids.values()), ids
    assert len({v[0] for v in ids.values()}) == 12
    assert tok.unk_token_id not in {v[0] for v in ids.values()}
    assert tok.pad_token_id not in {v[0] for v in ids.values()}
    frame = generate(config)
    for text in list(frame["prompt"] + frame["label"])[:300]:
        x = _ids(tok, text)
        assert len(x) == len(text)  # one token per character
        assert x == [ids[c][0] for c in text]
        assert tok.decode(x) == text


def test_thr_tokenizer_round_trip():
    config = make_config("thr", "tiny", noise=0.1)
    tok = build_tokenizer(config)
    frame = generate(config)
    words = set(frame["subject"].dropna()) | set(frame["r1"].dropna()) | set(frame["r2"].dropna())
    assert len(words) == config.n_entities + config.n_relations
    word_ids = {}
    for word in words:
        x = _ids(tok, word)
        assert len(x) == 1, word
        assert x[0] not in (tok.unk_token_id, tok.pad_token_id), word
        word_ids[word] = x[0]
    assert len(set(word_ids.values())) == len(words)  # distinct words, distinct tokens
    for text in list(frame["prompt"] + " " + frame["label"])[::7]:
        x = _ids(tok, text)
        assert len(x) == len(text.split())
        assert tok.unk_token_id not in x, text
        assert tok.decode(x) == text


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_encode_mask_marks_exactly_the_answer(task):
    config = make_config(task, "tiny", noise=0.2)
    tok = build_tokenizer(config)
    frame = generate(config)
    # a mix of prompt lengths (THR: facts and two-hop questions) and noisy/clean answers
    rows = frame.sample(64, random_state=0)
    ids, mask = encode(tok, rows["prompt"], rows["label"])
    assert ids.shape == mask.shape and ids.dtype == torch.long and mask.dtype == torch.bool
    split = (lambda s: list(s)) if task == "fda" else (lambda s: s.split())
    lengths = [len(split(p)) + len(split(a)) for p, a in zip(rows["prompt"], rows["label"])]
    assert ids.shape[1] == max(lengths)
    for i, (prompt, answer) in enumerate(zip(rows["prompt"], rows["label"])):
        n_p, n_a = len(split(prompt)), len(split(answer))
        expected = torch.zeros(ids.shape[1], dtype=torch.bool)
        expected[n_p: n_p + n_a] = True
        assert torch.equal(mask[i], expected), i
        assert ids[i, :n_p].tolist() == _ids(tok, prompt)
        assert tok.decode(ids[i][mask[i]].tolist()) == answer
        assert (ids[i, n_p + n_a:] == tok.pad_token_id).all()
    if task == "thr":
        assert len(set(lengths)) > 1  # the padding case was exercised


def _trained_looking_model(config, tok):
    model = build_model(config, len(tok))
    with torch.no_grad():  # move away from the seeded initialization, so load cannot just rebuild it
        g = torch.Generator().manual_seed(123)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_save_load_round_trip(task, tmp_path):
    config = make_config(task, "tiny")
    tok = build_tokenizer(config)
    model = _trained_looking_model(config, tok)
    frame = generate(config)
    ids, _ = encode(tok, frame["prompt"][:32], frame["label"][:32])
    with torch.no_grad():
        before = model(ids).logits
        fresh = build_model(config, len(tok)).eval()(ids).logits
    assert not torch.equal(before, fresh)

    save(model, tok, tmp_path / "ckpt")
    loaded, loaded_tok = load(tmp_path / "ckpt")
    with torch.no_grad():
        after = loaded(ids).logits
    assert torch.equal(before, after)
    assert not loaded.training
    for text in frame["prompt"][:50]:
        assert _ids(loaded_tok, text) == _ids(tok, text)
    assert loaded_tok.pad_token_id == tok.pad_token_id
    assert len(loaded_tok) == len(tok)
    sd_a, sd_b = model.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


@pytest.mark.parametrize("make_dir", [False, True], ids=["absent", "empty"])
def test_load_missing_checkpoint(tmp_path, make_dir):
    path = tmp_path / "nothing"
    if make_dir:
        path.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load(path)
    message = str(info.value)
    assert message and "\n" not in message
    assert str(path) in message


@pytest.fixture
def saved_checkpoint(tmp_path):
    config = make_config("fda", "tiny")
    tok = build_tokenizer(config)
    save(_trained_looking_model(config, tok), tok, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path):
    path.write_bytes(b"this is not a safetensors file\n" * 50)


def _empty(path):
    path.write_bytes(b"")


@pytest.mark.parametrize("damage", [_truncate, _garbage, _empty])
def test_load_corrupt_weights(saved_checkpoint, damage):
    damage(saved_checkpoint / "model.safetensors")
    with pytest.raises(ValueError) as info:
        load(saved_checkpoint)
    message = str(info.value)
    assert "\n" not in message, message
    assert "corrupt" in message.lower()
    assert str(saved_checkpoint) in message
