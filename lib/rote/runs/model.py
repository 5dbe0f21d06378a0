"""The model: a GPT-2 built from a `GPT2Config` (never downloaded) and a tokenizer built with
`tokenizers`, character-level for FDA and word-level for THR, saved beside the weights."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from rote.config import RELATIONS, Config, OneLineError, names
from rote.store import atomic_dir, write_text

hf_logging.disable_progress_bar()

PAD, UNK = "<pad>", "<unk>"
THR_WORDS = ("The", "of", "is", "Who", "the", "?", "Answer:")
N_POSITIONS = 16  # longest sequence: FDA 14 tokens, THR 12


def vocabulary(config: Config) -> list[str]:
    if config.task == "fda":
        return [PAD, UNK, *"0123456789+="]
    return [PAD, UNK, *THR_WORDS, *RELATIONS[: config.n_relations], *names()[: config.n_entities]]


def build_tokenizer(config: Config) -> PreTrainedTokenizerFast:
    """Character-level (FDA) or word-level (THR) tokenizer: every digit, sign, relation and person
    is one token."""
    vocab = {token: i for i, token in enumerate(vocabulary(config))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    if config.task == "fda":
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\S"), behavior="isolated")
        tok.decoder = decoders.Fuse()
    else:
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK)


def build_model(config: Config, vocab_size: int) -> GPT2LMHeadModel:
    """A freshly initialized GPT-2 of `config`'s shape, seeded, without dropout."""
    gpt2 = GPT2Config(vocab_size=vocab_size, n_positions=N_POSITIONS, n_embd=config.n_embd,
                      n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_pytorch_tanh",
                      bos_token_id=None, eos_token_id=None,
                      pad_token_id=None)  # padding is only ever on the right: no mask needed
    torch.manual_seed(config.seed)
    return GPT2LMHeadModel(gpt2)


class CheckpointError(OneLineError, ValueError):
    """A saved model folder that is corrupt or not what was saved."""


class NoCheckpoint(OneLineError, FileNotFoundError):
    """No saved model where one was expected."""


CHECKSUMS = "sha256.json"  # in every saved model folder: the sha256 of each of its other files


def checksums(path: Path) -> dict:
    """The sha256 of every file of a model folder but the checksum file itself."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(path).iterdir()) if p.is_file() and p.name != CHECKSUMS}


def write_checksums(folder: Path) -> None:
    """Record the sha256 of every file of the model folder `folder` in its `CHECKSUMS` file."""
    write_text(folder / CHECKSUMS, json.dumps(checksums(folder), indent=1, sort_keys=True) + "\n")


def save(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """Weights (safetensors), model config, tokenizer and their checksums (`CHECKSUMS`) into a fresh
    folder that then replaces `path` whole: nothing is written into a folder that exists (a link
    planted there by a colleague on a shared file system is never written through)."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_checksums(tmp)


def fix_for(path: Path) -> str:
    """What to do about a bad model folder at `path`, in a few words."""
    path = Path(path)
    if path.name == "final" and (path.parent / "state.pt").exists():
        return f"delete {path} and rerun: it is rebuilt from {path.parent / 'state.pt'} without training"
    if path.name == "final":
        return (f"delete the run {path.parent} and rerun (it trains again), or reinstall a reference run "
                "(python -m rote.runs.reference)")
    if path.parent.name == "checkpoints":
        return f"delete {path} and rerun (the run's other checkpoints are kept; deleting the run trains them all again)"
    return f"delete {path} and rerun"


def verify(path: Path) -> None:
    """A one-line error unless every file of the model folder `path` has the sha256 its checksum
    file records (a flipped byte in the weights or an edited config.json is never loaded)."""
    path = Path(path)
    if not (path / CHECKSUMS).is_file():
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        raise CheckpointError(f"no {CHECKSUMS} in {path} (saved by an older version, or removed); {fix_for(path)}; "
                              f"or, for a run you trust, record its checksums: python -m rote.runs.model --checksum {run}")
    try:
        expected = json.loads((path / CHECKSUMS).read_text())
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path / CHECKSUMS} is not valid JSON; {fix_for(path)}") from None
    found = checksums(path)
    for name in sorted(set(expected) | set(found)):
        if expected.get(name) != found.get(name):
            said = "is missing" if name not in found else "is not in the checksums" if name not in expected \
                else "does not match its sha256"
            raise CheckpointError(f"{path / name} {said} ({CHECKSUMS}): changed or corrupt; {fix_for(path)}")


def record_checksums(run: Path) -> list[Path]:
    """Write the checksum file into every model folder under `run` that has none: a run saved by an
    older version, which its owner trusts. Linked folders are skipped."""
    written = []
    for folder, _, files in os.walk(run):  # os.walk does not descend into linked folders
        if "model.safetensors" in files and CHECKSUMS not in files:
            write_checksums(Path(folder))
            written.append(Path(folder))
    return written


def load(path: Path, device: str = "cpu") -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """A saved model and its tokenizer, after `verify`; a one-line error if the checkpoint is
    missing, corrupt or changed since it was saved."""
    path = Path(path)
    if not (path / "model.safetensors").exists():
        raise NoCheckpoint(f"no checkpoint at {path}: expected model.safetensors, config.json "
                           "and the tokenizer files written by rote.runs.model.save (rote.runs.train writes final/)")
    verify(path)
    try:
        model = GPT2LMHeadModel.from_pretrained(path, local_files_only=True).to(device).eval()
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read means a corrupt checkpoint
        raise CheckpointError(f"corrupt checkpoint at {path}: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}; {fix_for(path)}") from None
    return model, tokenizer


def encode(tokenizer, prompts, answers) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of prompt + answer, right-padded, and a mask [N, T] set at the answer tokens' pos."""
    p = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    a = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    length = max(len(x) + len(y) for x, y in zip(p, a))
    ids = np.full((len(p), length), tokenizer.pad_token_id, dtype=np.int64)
    mask = np.zeros((len(p), length), dtype=bool)
    for i, (x, y) in enumerate(zip(p, a)):
        ids[i, : len(x) + len(y)] = x + y
        mask[i, len(x): len(x) + len(y)] = True
    return torch.from_numpy(ids), torch.from_numpy(mask)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Record the checksums of a trusted run saved by an older version.")
    parser.add_argument("--checksum", nargs="+", required=True, metavar="RUN", help="run directories")
    for run in parser.parse_args().checksum:
        for folder in record_checksums(Path(run)):
            print(f"checksums recorded: {folder / CHECKSUMS}")
