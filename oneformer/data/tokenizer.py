"""Offline CLIP BPE tokenization of task and class text, with the ids official OneFormer weights use."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import torch
from transformers import CLIPTokenizer

VOCAB = Path(__file__).parents[1] / "assets" / "bpe_simple_vocab_16e6.txt.gz"
TASK_TEXT = {t: f"the task is {t}" for t in ("semantic", "instance", "panoptic")}
# OneFormer fills the class-text list of each image with these after its real classes.
FILLER_TEXT = {"semantic": "a semantic photo", "instance": "an instance photo", "panoptic": "a panoptic photo"}


def _byte_symbols() -> list[str]:
    """CLIP's byte -> printable-unicode symbols in vocabulary order: printable bytes first, then the rest."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(rest))]


@functools.lru_cache(maxsize=1)
def clip_tokenizer() -> CLIPTokenizer:
    """transformers' CLIPTokenizer built from the packaged merges; no hub access."""
    lines = gzip.open(VOCAB, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    # Pad with "!" (id 0) as the original OneFormer and the official processor configs do.
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, pad_token="!")


def tokenize(texts: list[str], length: int) -> torch.Tensor:
    """Token ids [len(texts), length], padded and truncated as OneFormer's processor does."""
    enc = clip_tokenizer()(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    return enc["input_ids"].long()


class TextTable:
    """Pre-tokenized task and class text, so building targets costs an index, not a tokenizer call."""

    def __init__(self, class_names: list[str], task_len: int, text_len: int) -> None:
        tasks = list(TASK_TEXT)
        self.task_ids = {t: row for t, row in zip(tasks, tokenize([TASK_TEXT[t] for t in tasks], task_len))}
        self.class_ids = tokenize([f"a photo with a {n}" for n in class_names], text_len)
        self.filler_ids = {t: row for t, row in zip(tasks, tokenize([FILLER_TEXT[t] for t in tasks], text_len))}

    def text_inputs(self, task: str, classes: torch.Tensor, num_text: int) -> torch.Tensor:
        """[num_text, text_len]: the image's target classes first, then the task's filler text."""
        out = self.filler_ids[task].expand(num_text, -1).clone()
        n = min(len(classes), num_text)
        if n:
            out[:n] = self.class_ids[classes[:n]]
        return out
