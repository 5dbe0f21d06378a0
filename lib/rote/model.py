"""The model: a GPT-2 built from a `GPT2Config` (never downloaded) and a tokenizer built with
`tokenizers`, character-level for FDA and word-level for THR, saved beside the weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()

from .config import Config
from .data import RELATIONS, names
from .store import readable

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


def save(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """Weights (safetensors), model config and tokenizer into `path`."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    readable(path)  # safetensors writes 0600: a colleague's worker on a shared file system could not read it


def load(path: Path, device: str = "cpu") -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """A saved model and its tokenizer; a one-line error if the checkpoint is missing or corrupt."""
    path = Path(path)
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"no checkpoint at {path}: expected model.safetensors, config.json "
                                "and the tokenizer files written by rote.model.save")
    try:
        model = GPT2LMHeadModel.from_pretrained(path, local_files_only=True).to(device).eval()
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read means a corrupt checkpoint
        raise ValueError(f"corrupt checkpoint at {path}: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from None
    return model, tokenizer


def encode(tokenizer, prompts, answers) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of prompt + answer, right-padded, and a mask of the answer tokens' positions."""
    p = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    a = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    length = max(len(x) + len(y) for x, y in zip(p, a))
    ids = np.full((len(p), length), tokenizer.pad_token_id, dtype=np.int64)
    mask = np.zeros((len(p), length), dtype=bool)
    for i, (x, y) in enumerate(zip(p, a)):
        ids[i, : len(x) + len(y)] = x + y
        mask[i, len(x): len(x) + len(y)] = True
    return torch.from_numpy(ids), torch.from_numpy(mask)
