"""Training GPT-2-format byte-level BPE tokenizers with HF ``tokenizers``.

``tokenizers``' ``BpeTrainer`` (Rust) with GPT-2's byte-level pre-tokenizer learns the
merges; we lay out the vocabulary as GPT-2 does (the 256 byte symbols in byte order, then
one token per merge in merge order, special tokens last), so KerasHub's ``GPT2Tokenizer``,
our pure-Python ``BPETokenizer`` (the TensorFlow-free runtime encoder) and an HF
``tokenizer.json`` all read the same ``vocab`` and ``merges``.
"""

from __future__ import annotations

import json
from typing import Iterable

from llm_tflite.runtime.tokenizers.bpe import END_OF_TEXT, bytes_to_unicode


def _merges_of(tokenizer) -> list[str]:
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return [m if isinstance(m, str) else " ".join(m) for m in merges]  # "a b" or ["a", "b"] by version


def train_bpe(text: str | Iterable[str], vocab_size: int,
              special_tokens=(END_OF_TEXT,)) -> tuple[dict[str, int], list[str]]:
    """Learn a byte-level BPE (``vocab``, ``merges``) in GPT-2's format.

    Args:
        text: the training text, or an iterable of texts.
        vocab_size: tokens in all: 256 byte symbols + merges + ``special_tokens``.
        special_tokens: appended at the end of the vocabulary (GPT-2's ``<|endoftext|>``).

    Returns:
        ``(vocab, merges)``: token -> id and ``"a b"`` merge rules, highest priority first.

    Example:
        >>> vocab, merges = train_bpe(open("input.txt").read(), 2048)  # doctest: +SKIP
        >>> vocab["<|endoftext|>"]  # doctest: +SKIP
        2047
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    byte_symbols = [bytes_to_unicode()[b] for b in range(256)]
    if vocab_size < len(byte_symbols) + len(special_tokens):
        raise ValueError(f"vocab_size must be at least {len(byte_symbols) + len(special_tokens)}, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(special_tokens),
        initial_alphabet=byte_symbols,
        special_tokens=[],
        show_progress=False,
    )
    texts = [text] if isinstance(text, str) else text
    tokenizer.train_from_iterator(texts, trainer=trainer)
    merges = _merges_of(tokenizer)
    vocab = {symbol: i for i, symbol in enumerate(byte_symbols)}
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    for token in special_tokens:
        vocab[token] = len(vocab)
    return vocab, merges


def hf_tokenizer(vocab: dict[str, int], merges: list[str], special_tokens=(END_OF_TEXT,)):
    """A ``tokenizers.Tokenizer`` for a GPT-2-format ``vocab``/``merges`` (what ``tokenizer.json`` holds)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE(vocab=dict(vocab), merges=[tuple(m.split(" ")) for m in merges]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in special_tokens if t in vocab])
    return tokenizer


def write_tokenizer_json(vocab: dict[str, int], merges: list[str], path) -> None:
    """Write ``vocab``/``merges`` as an HF ``tokenizer.json`` (read by ``tokenizers``, LiteRT-LM, transformers)."""
    hf_tokenizer(vocab, merges).save(str(path))
