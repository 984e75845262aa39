"""Tokenizers, in one place: the runtime encoders and how llm-tflite trains and grows them.

The stage just above ``litert/``: it imports only ``errors``/``console`` and third-party
libraries, the optional ones (TensorFlow) lazily.

- ``tokenizer_from_spec`` (here): what ``InterpreterRunner`` rebuilds from a file's metadata, on
  the real libraries, without TensorFlow: ``bpe.BPETokenizer`` / ``bpe.HFTokenizer`` (Hugging Face
  ``tokenizers``) and ``spm.SentencePieceTokenizer`` (``sentencepiece``).
- ``bpe_training``: GPT-2-format byte-level BPE trained with HF ``tokenizers``
  (``train_bpe``, ``extend_bpe``, ``hf_tokenizer``, ``write_tokenizer_json``).
- ``spm_training``: unigram SentencePiece models as the PaLM-style family uses them
  (``train_sentencepiece``, ``extend_sentencepiece``, the ``NEWLINE_SYMBOL`` convention).
"""

from __future__ import annotations

from llm_tflite.errors import ModelFileError


def tokenizer_from_spec(spec: dict):
    """A tokenizer with ``encode(str) -> list[int]`` and ``decode_bytes(ids) -> bytes``."""
    kind = spec.get("type")
    if kind == "gpt2_bpe":
        from llm_tflite.tokenizers.bpe import END_OF_TEXT, BPETokenizer

        vocab, merges = spec.get("vocab"), spec.get("merges")
        valid = (isinstance(vocab, dict) and all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                                 and 0 <= v < 1 << 24 for k, v in vocab.items())
                 and isinstance(merges, list) and all(isinstance(m, str) and m.count(" ") == 1 for m in merges))
        special = spec.get("special_tokens", [END_OF_TEXT])  # files before special tokens were recorded: GPT-2's
        added = spec.get("added_tokens", [])  # files before added tokens were recorded: none
        if not valid or not all(isinstance(tokens, list) and all(isinstance(t, str) and t for t in tokens)
                                for tokens in (special, added)):
            raise ModelFileError("this file's BPE tokenizer (vocab/merges) is damaged; convert the model again")
        return BPETokenizer(vocab, merges, special, added)
    if kind == "hf_tokenizer":
        from llm_tflite.tokenizers.bpe import HFTokenizer

        if not isinstance(spec.get("json"), str):
            raise ModelFileError("this file's tokenizer.json is missing; convert the model again")
        return HFTokenizer.from_json(spec["json"])
    if kind == "sentencepiece":
        try:
            from llm_tflite.tokenizers.spm import SentencePieceTokenizer
        except ImportError as e:
            raise ModelFileError(
                "this file's SentencePiece tokenizer needs the 'sentencepiece' package: pip install sentencepiece"
            ) from e
        try:
            return SentencePieceTokenizer.from_spec(spec)
        except Exception as e:  # sentencepiece raises RuntimeError/TypeError on a damaged proto
            raise ModelFileError(f"this file's SentencePiece model is unreadable ({e}); convert the model again") from e
    raise ModelFileError(
        f"this file's tokenizer type {kind!r} is unknown to this llm-tflite version; upgrade llm-tflite"
    )
