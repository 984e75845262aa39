"""Byte-level BPE at run time, on Hugging Face ``tokenizers`` (Rust; no TensorFlow).

Two ways a file carries one:

- ``{"type": "gpt2_bpe", "vocab", "merges", "special_tokens"?, "added_tokens"?}``: GPT-2's format
  (what KerasHub's byte-pair tokenizers hold), split with GPT-2's pattern as KerasHub splits it;
  ``BPETokenizer``.
- ``{"type": "hf_tokenizer", "json": <tokenizer.json>}``: a Hugging Face checkpoint's own
  ``tokenizer.json`` (its normalizer and pre-tokenizer: Qwen's and Llama 3's split digits and
  punctuation their own way); ``HFTokenizer.from_json``. Byte-level ones only (``ByteLevel``
  decoder), so every id has bytes and streams can wait for whole characters.

Training lives in ``llm_tflite.tokenizers.bpe_training``.
"""

from __future__ import annotations

import functools
import json

from llm_tflite.errors import ModelFileError

END_OF_TEXT = "<|endoftext|>"


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """Map each byte to a printable unicode character, as GPT-2 does."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


@functools.lru_cache(maxsize=None)
def _byte_decoder() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


class HFTokenizer:
    """A byte-level BPE ``tokenizers.Tokenizer``: ``encode(str) -> ids`` as the library encodes
    (no special tokens added: the runner adds the start token), ``decode_bytes(ids)`` the bytes
    of the ids, control tokens (``silent``) giving none.

    Example:
        >>> tok = HFTokenizer.from_json(open("tokenizer.json").read())  # doctest: +SKIP
        >>> tok.decode(tok.encode("1234 你好")) == "1234 你好"  # doctest: +SKIP
        True
    """

    def __init__(self, tokenizer, silent: set[int]):
        self.tokenizer = tokenizer
        self.silent = set(silent)
        self._added = {i: t.content.encode("utf-8") for i, t in tokenizer.get_added_tokens_decoder().items()}
        self._bytes: dict[int, bytes] = {}
        # ids run 0..vocab_size-1 (the highest id + 1, should the vocabulary have gaps)
        self.vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1

    @classmethod
    def from_json(cls, text: str) -> "HFTokenizer":
        """From a ``tokenizer.json``'s text; ``ModelFileError`` unless it is a byte-level BPE."""
        from tokenizers import Tokenizer

        try:
            spec = json.loads(text)
            decoder = spec.get("decoder") or {}
            kinds = {d.get("type") for d in decoder.get("decoders", [decoder])}
            if spec.get("model", {}).get("type") != "BPE" or "ByteLevel" not in kinds:
                raise ValueError("not a byte-level BPE (BPE model, ByteLevel decoder)")
            tokenizer = Tokenizer.from_str(text)
        except Exception as e:  # json, the library's own parse errors
            raise ModelFileError(f"this file's tokenizer.json is not usable ({str(e)[:200]}); convert the model "
                                 "again") from e
        return cls(tokenizer, {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special})

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _token_bytes(self, i: int) -> bytes:
        if i in self.silent:
            return b""
        if i in self._added:
            return self._added[i]
        token = self.tokenizer.id_to_token(i)
        if token is None:
            return b""
        decoder = _byte_decoder()
        return bytes(decoder[c] for c in token if c in decoder)

    def decode_bytes(self, ids) -> bytes:
        """Raw bytes of ``ids``; unknown ids and control tokens decode to nothing."""
        out = bytearray()
        for i in ids:
            i = int(i)
            piece = self._bytes.get(i)
            if piece is None:
                piece = self._bytes[i] = self._token_bytes(i)
            out += piece
        return bytes(out)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


class BPETokenizer(HFTokenizer):
    """GPT-2's format (``vocab`` + ``merges``), split with GPT-2's pattern, as KerasHub's byte-pair
    tokenizers split it (``tests/test_tokenizers.py``: token for token).

    Args:
        vocab: token string -> id, as in GPT-2's ``vocab.json``.
        merges: merge rules ``"a b"``, highest priority first.
        special_tokens: control tokens (``<|endoftext|>``), which decode to nothing.
        added_tokens: tokens ``encode`` finds in the text and keeps whole (KerasHub's
            ``unsplittable_tokens``: a checkpoint's added tokens, ``<|im_end|>``, ``<tool_call>``).
            Files written before they were recorded have none: their text never held one.

    Example:
        >>> tok = BPETokenizer(json.load(open("vocab.json")), open("merges.txt").read().split("\\n")[1:])  # doctest: +SKIP
        >>> tok.decode(tok.encode("To be")) == "To be"  # doctest: +SKIP
        True
    """

    def __init__(self, vocab: dict[str, int], merges: list[str], special_tokens=(END_OF_TEXT,), added_tokens=()):
        from llm_tflite.tokenizers.bpe_training import hf_tokenizer

        added = [t for t in added_tokens if t in vocab]
        special = [t for t in special_tokens if t in vocab]
        tokenizer = hf_tokenizer(vocab, merges, [t for t in special if t in added], added)
        super().__init__(tokenizer, {vocab[t] for t in special})
