"""GPT-2 byte-level BPE in pure Python: the runtime encoder, no TensorFlow or Rust needed.

Training lives in ``llm_tflite.tokenizers.bpe_training`` (HF ``tokenizers``).

The encoder follows OpenAI's reference ``encoder.py`` and matches
``keras_hub.models.GPT2Tokenizer`` token for token (``tests/test_tokenizers.py``).
"""

from __future__ import annotations

import functools

import regex

# The pre-tokenisation pattern of GPT-2 (and of KerasHub's BytePairTokenizer).
GPT2_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
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


class BPETokenizer:
    """Byte-level BPE tokenizer in the GPT-2 format (``vocab`` + ``merges``).

    Args:
        vocab: token string -> id, as in GPT-2's ``vocab.json``.
        merges: merge rules ``"a b"``, highest priority first.
        special_tokens: control tokens (``<|endoftext|>``), which decode to nothing.
        added_tokens: tokens ``encode`` finds in the text and keeps whole, before BPE (KerasHub's
            ``unsplittable_tokens``: a checkpoint's added tokens, ``<|im_end|>``, ``<tool_call>``).
            Files written before they were recorded have none: their text never held one.

    Example:
        >>> tok = BPETokenizer(json.load(open("vocab.json")), open("merges.txt").read().split("\n")[1:])  # doctest: +SKIP
        >>> tok.decode(tok.encode("To be")) == "To be"  # doctest: +SKIP
        True
    """

    def __init__(self, vocab: dict[str, int], merges: list[str], special_tokens=(END_OF_TEXT,), added_tokens=()):
        # The record's own vocab and merges, not copies, and merge ranks keyed by the merge strings
        # themselves: a 50,257-token vocabulary costs a runner about 15 MB less.
        self.vocab = vocab if isinstance(vocab, dict) else dict(vocab)
        self.merges = merges if isinstance(merges, list) else list(merges)
        self.id_to_token: list[str | None] = [None] * (max(self.vocab.values(), default=-1) + 1)
        for token, i in self.vocab.items():
            self.id_to_token[i] = token
        self.ranks = {m: i for i, m in enumerate(self.merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.special_tokens = {t: self.vocab[t] for t in special_tokens if t in self.vocab}
        self.added_tokens = {t: self.vocab[t] for t in added_tokens if t in self.vocab}
        # longest first, so "<tool_call>" is not cut short by a shorter token it starts with
        self._added = (regex.compile("(" + "|".join(map(regex.escape, sorted(self.added_tokens, key=len, reverse=True)))
                                     + ")") if self.added_tokens else None)
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)  # ids run 0..vocab_size-1

    def _bpe(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get(f"{a} {b}", 1 << 60), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == 1 << 60:
                break
            first, second = parts[i], parts[i + 1]
            merged, j = [], 0
            while j < len(parts):
                if j < len(parts) - 1 and parts[j] == first and parts[j + 1] == second:
                    merged.append(first + second)
                    j += 2
                else:
                    merged.append(parts[j])
                    j += 1
            parts = merged
        ids = [self.vocab[p] for p in parts if p in self.vocab]
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``: its added tokens whole, the rest byte-level BPE."""
        ids: list[int] = []
        for i, part in enumerate(self._added.split(text) if self._added is not None else [text]):
            if i % 2:  # the split's captured separators: added tokens
                ids.append(self.added_tokens[part])
                continue
            for piece in GPT2_PATTERN.findall(part):
                word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
                ids.extend(self._bpe(word))
        return ids

    def decode_bytes(self, ids) -> bytes:
        """Raw bytes of ``ids``; unknown ids and special tokens decode to nothing."""
        out = bytearray()
        for i in ids:
            i = int(i)
            token = self.id_to_token[i] if 0 <= i < len(self.id_to_token) else None
            if token is None or token in self.special_tokens:
                continue
            out.extend(self.byte_decoder[c] for c in token)
        return bytes(out)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"type": "gpt2_bpe", "vocab": self.vocab, "merges": self.merges}
