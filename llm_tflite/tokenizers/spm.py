"""SentencePiece at run time, through the ``sentencepiece`` library (no TensorFlow)."""

from __future__ import annotations

import base64

SPACE_SYMBOL = "\u2581"


class SentencePieceTokenizer:
    """Encode/decode with a serialized SentencePiece model stored in the artifact.

    Args:
        model_proto: the serialized ``ModelProto`` bytes.
        newline_symbol: a character the model's normalizer writes for ``\\n``; decoding maps it back.

    Example:
        >>> tok = SentencePieceTokenizer(open("tokenizer.model", "rb").read())  # doctest: +SKIP
        >>> tok.decode(tok.encode("ROMEO:\\nI will"))  # doctest: +SKIP
        'ROMEO:\\nI will'
    """

    def __init__(self, model_proto: bytes, newline_symbol: str | None = None):
        import sentencepiece

        self.model_proto = model_proto
        self.newline_symbol = newline_symbol
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        self._pieces = [self._piece_bytes(i) for i in range(self._sp.get_piece_size())]

    @classmethod
    def from_spec(cls, spec: dict) -> "SentencePieceTokenizer":
        return cls(base64.b64decode(spec["model"]), spec.get("newline_symbol"))

    def to_dict(self) -> dict:
        return {
            "type": "sentencepiece",
            "model": base64.b64encode(self.model_proto).decode("ascii"),
            "newline_symbol": self.newline_symbol,
        }

    def _piece_bytes(self, i: int) -> bytes:
        if self._sp.is_control(i):
            return b""
        if self._sp.is_unknown(i):
            return " \u2047 ".encode()  # what sentencepiece itself prints for <unk>
        piece = self._sp.id_to_piece(i)
        if self._sp.is_byte(i):  # byte fallback: <0x0A>
            return bytes([int(piece[3:-1], 16)])
        return self._restore(piece.replace(SPACE_SYMBOL, " ")).encode("utf-8")

    def _restore(self, text: str) -> str:
        return text.replace(self.newline_symbol, "\n") if self.newline_symbol else text

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no ``<s>``; special tokens are not parsed)."""
        return list(self._sp.encode(text))

    def encode_with_special_tokens(self, text: str) -> list[int]:
        """Token ids of ``text`` where control tokens written out (``<bos>``, ``<eos>``) become their
        ids, as Hugging Face tokenizers read a rendered chat template; the rest as ``encode``."""
        import re

        if not hasattr(self, "_controls"):
            controls = {self._sp.id_to_piece(i): i for i in range(self._sp.get_piece_size())
                        if self._sp.is_control(i) and self._sp.id_to_piece(i)}
            pattern = "|".join(re.escape(p) for p in sorted(controls, key=len, reverse=True))
            self._controls = (controls, re.compile(f"({pattern})") if pattern else None)
        controls, pattern = self._controls
        if pattern is None:
            return self.encode(text)
        ids: list[int] = []
        for i, part in enumerate(pattern.split(text)):
            if i % 2:
                ids.append(controls[part])
            elif part:
                ids.extend(self.encode(part))
        return ids

    def decode_bytes(self, ids) -> bytes:
        """UTF-8 of the pieces of ``ids`` joined as they appear mid-text (for streaming)."""
        return b"".join(self._pieces[int(i)] for i in ids if 0 <= int(i) < len(self._pieces))

    def decode(self, ids) -> str:
        """The text of ``ids`` as a whole (the leading space SentencePiece adds is removed)."""
        return self._restore(self._sp.decode([int(i) for i in ids if 0 <= int(i) < len(self._pieces)]))
