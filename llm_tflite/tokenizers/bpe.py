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


def hf_tokenizer(vocab: dict[str, int], merges: list[str], special_tokens=(END_OF_TEXT,), added_tokens=()):
    """A ``tokenizers.Tokenizer`` for a GPT-2-format ``vocab``/``merges`` (what ``tokenizer.json`` holds):
    ``special_tokens`` are added as special tokens, the other ``added_tokens`` as plain added ones
    (kept whole, decoded as text)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE(vocab=dict(vocab), merges=[tuple(m.split(" ")) for m in merges]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in special_tokens if t in vocab])
    tokenizer.add_tokens([AddedToken(t, special=False) for t in added_tokens if t in vocab and t not in special_tokens])
    return tokenizer



#: What a file's ``tokenizer.json`` may hold (it is untrusted data): the parts byte-level BPE
#: tokenizers use (GPT-2, Qwen, Llama 3), nothing that pads, truncates, samples or strips.
ALLOWED_NORMALIZERS = {None, "NFC", "NFKC", "NFD", "NFKD"}
ALLOWED_PRE_TOKENIZERS = {"ByteLevel", "Split", "Digits", "Sequence"}
MAX_TOKENIZER_JSON = 64 << 20  # bytes; Qwen 3's is 11 MB
MAX_ID = 1 << 24


def _checked_tokenizer_json(text: str) -> dict:
    """The parsed ``tokenizer.json``, or ``ValueError`` saying what it holds that we do not run."""
    if len(text) > MAX_TOKENIZER_JSON:
        raise ValueError(f"{len(text):,} characters, more than {MAX_TOKENIZER_JSON:,}")
    spec = json.loads(text)
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ValueError("not a BPE model")
    if model.get("dropout") not in (None, 0, 0.0):
        raise ValueError("BPE dropout (encoding would be random)")
    if (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise ValueError("not byte-level (its decoder is not ByteLevel)")
    normalizer = spec.get("normalizer")
    normalizers = (normalizer.get("normalizers") or [] if normalizer and normalizer.get("type") == "Sequence"
                   else [normalizer])
    if any((n or {}).get("type") not in ALLOWED_NORMALIZERS for n in normalizers):
        raise ValueError(f"normalizer {normalizer!r:.200} is not one llm-tflite runs")
    pre = spec.get("pre_tokenizer") or {}
    pres = pre.get("pretokenizers") or [] if pre.get("type") == "Sequence" else [pre]
    if not pres or any(p.get("type") not in ALLOWED_PRE_TOKENIZERS - {"Sequence"} for p in pres) \
            or not any(p.get("type") == "ByteLevel" for p in pres):
        raise ValueError(f"pre-tokenizer {pre!r:.200} is not a byte-level one llm-tflite runs")
    ids = list(model["vocab"].values()) + [t.get("id") for t in spec.get("added_tokens") or []]
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_ID for i in ids):
        raise ValueError(f"token ids outside 0..{MAX_ID - 1}")
    return spec


def _library_tokenizer(build):
    """``build()`` (a ``tokenizers.Tokenizer``), its errors -- Rust panics included, which are not
    ``Exception`` -- turned into ``ValueError``."""
    try:
        return build()
    except BaseException as e:  # pyo3's PanicException derives from BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit, MemoryError)):
            raise
        raise ValueError(f"{type(e).__name__}: {str(e)[:200]}") from e


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
        tokenizer.no_truncation()  # a checkpoint's training settings, not how text is read
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.silent = set(silent)
        self._added = {i: t.content.encode("utf-8") for i, t in tokenizer.get_added_tokens_decoder().items()}
        self._bytes: dict[int, bytes] = {}
        # ids run 0..vocab_size-1 (the highest id + 1, should the vocabulary have gaps)
        self.vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1

    @classmethod
    def from_json(cls, text: str) -> "HFTokenizer":
        """From a ``tokenizer.json``'s text (untrusted: checked first); ``ModelFileError`` unless it
        is a byte-level BPE of the parts llm-tflite runs."""
        from tokenizers import Tokenizer

        try:
            _checked_tokenizer_json(text)
            tokenizer = _library_tokenizer(lambda: Tokenizer.from_str(text))
        except (ValueError, TypeError, AttributeError) as e:  # json's errors; a list where a dict belongs
            raise ModelFileError(f"this file's tokenizer.json is not usable: {str(e)[:300]}") from e
        return cls(tokenizer, {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special})

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    #: Special tokens written out in ``text`` are read as themselves already (``tokenizers``' added tokens).
    encode_with_special_tokens = encode

    def _token_bytes(self, i: int) -> bytes:
        if i in self.silent:
            return b""
        if i in self._added:
            return self._added[i]
        token = self.tokenizer.id_to_token(i)
        if token is None:
            return b""
        decoder = _byte_decoder()
        if all(c in decoder for c in token):
            return bytes(decoder[c] for c in token)
        return token.encode("utf-8")  # not byte-mapped: its own text, as ``tokenizers`` decodes it

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
        added = [t for t in added_tokens if t in vocab]
        special = [t for t in special_tokens if t in vocab]
        try:
            tokenizer = _library_tokenizer(lambda: hf_tokenizer(vocab, merges, [t for t in special if t in added], added))
        except ValueError as e:  # a merge of tokens the vocabulary lacks, ...
            raise ModelFileError(f"this file's BPE tokenizer (vocab/merges) is damaged ({str(e)[:200]}); convert "
                                 "the model again") from e
        super().__init__(tokenizer, {vocab[t] for t in special})

    def to_json(self) -> str:
        """This tokenizer as a ``tokenizer.json`` (what a ``.litertlm`` bundle carries for LiteRT-LM)."""
        return self.tokenizer.to_str()
