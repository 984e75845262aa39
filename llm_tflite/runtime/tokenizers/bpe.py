"""GPT-2 byte-level BPE in pure Python (no TensorFlow), plus a small trainer.

The encoder follows OpenAI's reference ``encoder.py`` and matches
``keras_hub.models.GPT2Tokenizer`` token for token (``tests/test_tokenizers.py``).
"""

from __future__ import annotations

import collections
import functools
import json

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
        special_tokens: tokens matched verbatim before BPE (e.g. ``<|endoftext|>``).

    Example:
        >>> tok = BPETokenizer.from_files("vocab.json", "merges.txt")  # doctest: +SKIP
        >>> tok.decode(tok.encode("To be")) == "To be"  # doctest: +SKIP
        True
    """

    def __init__(self, vocab: dict[str, int], merges: list[str], special_tokens=(END_OF_TEXT,)):
        self.vocab = dict(vocab)
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.ranks = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
        self.merges = list(merges)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.special_tokens = {t: self.vocab[t] for t in special_tokens if t in self.vocab}
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_files(cls, vocab_path, merges_path) -> "BPETokenizer":
        with open(vocab_path, encoding="utf-8") as f:
            vocab = json.load(f)
        with open(merges_path, encoding="utf-8") as f:
            merges = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#version")]
        return cls(vocab, merges)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _bpe(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get(p, 1 << 60), i) for i, p in enumerate(zip(parts, parts[1:]))]
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
        """Token ids of ``text`` (special tokens are not parsed)."""
        ids: list[int] = []
        for piece in GPT2_PATTERN.findall(text):
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self._bpe(word))
        return ids

    def decode_bytes(self, ids) -> bytes:
        """Raw bytes of ``ids``; unknown ids and special tokens decode to nothing."""
        out = bytearray()
        for i in ids:
            token = self.id_to_token.get(int(i))
            if token is None or token in self.special_tokens:
                continue
            out.extend(self.byte_decoder[c] for c in token)
        return bytes(out)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"type": "gpt2_bpe", "vocab": self.vocab, "merges": self.merges}


def train_bpe(text: str, vocab_size: int, special_tokens=(END_OF_TEXT,)) -> tuple[dict[str, int], list[str]]:
    """Learn a GPT-2-format byte-level BPE (vocab, merges) from ``text``.

    Deterministic: ties between equally frequent pairs break on the pair itself.
    """
    byte_encoder = bytes_to_unicode()
    words = collections.Counter(
        tuple(byte_encoder[b] for b in piece.encode("utf-8")) for piece in GPT2_PATTERN.findall(text)
    )
    vocab = {byte_encoder[b]: i for i, b in enumerate(sorted(byte_encoder))}
    merges: list[str] = []
    words = {w: c for w, c in words.items()}
    n_merges = vocab_size - len(vocab) - len(special_tokens)
    for _ in range(max(0, n_merges)):
        pairs: collections.Counter = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(f"{best[0]} {best[1]}")
        vocab[best[0] + best[1]] = len(vocab)
        new_words = {}
        for word, count in words.items():
            if len(word) > 1 and best[0] in word:
                merged, j = [], 0
                while j < len(word):
                    if j < len(word) - 1 and word[j] == best[0] and word[j + 1] == best[1]:
                        merged.append(best[0] + best[1])
                        j += 2
                    else:
                        merged.append(word[j])
                        j += 1
                word = tuple(merged)
            new_words[word] = new_words.get(word, 0) + count
        words = new_words
    for token in special_tokens:
        vocab[token] = len(vocab)
    return vocab, merges
