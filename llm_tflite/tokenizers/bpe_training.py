"""Training GPT-2-format byte-level BPE tokenizers with HF ``tokenizers``.

``tokenizers``' ``BpeTrainer`` (Rust) with GPT-2's byte-level pre-tokenizer learns the
merges; we lay out the vocabulary as GPT-2 does (the 256 byte symbols in byte order, then
one token per merge in merge order, special tokens last), so KerasHub's ``GPT2Tokenizer``,
our runtime ``BPETokenizer`` (HF ``tokenizers`` too, without TensorFlow) and an HF
``tokenizer.json`` all read the same ``vocab`` and ``merges``.
"""

from __future__ import annotations

import json
from typing import Iterable

from llm_tflite.tokenizers.bpe import END_OF_TEXT, bytes_to_unicode, hf_tokenizer  # noqa: F401 (re-exported)


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


def write_tokenizer_json(vocab: dict[str, int], merges: list[str], path) -> None:
    """Write ``vocab``/``merges`` as an HF ``tokenizer.json`` (read by ``tokenizers``, LiteRT-LM, transformers)."""
    hf_tokenizer(vocab, merges).save(str(path))


def extend_bpe(vocab: dict[str, int], merges: list[str], vocab_size: int,
               special_tokens=(END_OF_TEXT,)) -> tuple[dict[str, int], list[str]]:
    """Grow a GPT-2-format BPE to ``vocab_size`` tokens with merges of its own word tokens.

    For random-weight models of the standard sizes (GPT-2's 50,257 ids) that borrow a small
    trained tokenizer: every id the model can emit then decodes to visible text (a word and a
    word piece, "Ġking" + "dom"), not to nothing. Text the small tokenizer encoded keeps mostly
    the same ids; the special tokens move to the end, where GPT-2 has ``<|endoftext|>`` (50256).
    Deterministic: the same input always gives the same tokenizer.

    Example:
        >>> vocab, merges = extend_bpe(vocab, merges, 50257)  # doctest: +SKIP
        >>> len(vocab), vocab["<|endoftext|>"]  # doctest: +SKIP
        (50257, 50256)
    """
    if vocab_size <= len(vocab):
        return dict(vocab), list(merges)
    specials = [t for t in special_tokens if t in vocab]
    ordered = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1]) if t not in specials]

    def letters(text: str) -> bool:  # ASCII letters only: byte-level symbols of control bytes are "alphabetic"
        return text.isascii() and text.isalpha()

    words = [t for t in ordered if t.startswith("\u0120") and letters(t[1:])]  # "Ġword"
    pieces = [t for t in ordered if letters(t)]  # "dom", "ing"
    if not words or not pieces:
        raise ValueError("the tokenizer has no word tokens to grow from; train it on more text")
    new_vocab = {t: i for i, t in enumerate(ordered)}
    new_merges = list(merges)
    wanted = vocab_size - len(specials)
    for piece in pieces:
        for word in words:
            if len(new_vocab) >= wanted:
                break
            token = word + piece
            if token not in new_vocab:
                new_vocab[token] = len(new_vocab)
                new_merges.append(f"{word} {piece}")
        if len(new_vocab) >= wanted:
            break
    if len(new_vocab) < wanted:
        raise ValueError(f"cannot grow the tokenizer to {vocab_size} tokens from {len(vocab)}")
    for token in specials:
        new_vocab[token] = len(new_vocab)
    return new_vocab, new_merges
