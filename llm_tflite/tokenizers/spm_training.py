"""Unigram SentencePiece models as llm-tflite trains them: training, growing, and the newline convention.

Newlines: TF Text's fast SentencePiece kernels (the ones with TFLite custom-op
implementations) treat ``\\n`` as whitespace, so the trained model's normalizer maps
``\\n`` to ``NEWLINE_SYMBOL`` (U+2424) and decoding maps it back (``restore_newlines``,
or ``restore_newline_pieces`` in the model itself). Both the ``sentencepiece`` library
and the fast kernels then produce the same ids.

The Keras layer that wraps such a model is ``llm_tflite.families.palm.PaLMTokenizer``.
"""

from __future__ import annotations

import io

NEWLINE_SYMBOL = "\u2424"
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"


def restore_newlines(text):
    """Map ``NEWLINE_SYMBOL`` back to ``\\n`` in a str, list of str, bytes or tf string tensor."""
    if isinstance(text, str):
        return text.replace(NEWLINE_SYMBOL, "\n")
    if isinstance(text, bytes):
        return text.replace(NEWLINE_SYMBOL.encode(), b"\n")
    if isinstance(text, (list, tuple)):
        return [restore_newlines(t) for t in text]
    import tensorflow as tf

    return tf.strings.regex_replace(text, NEWLINE_SYMBOL, "\n")


def restore_newline_pieces(proto: bytes, symbol: str, *, identity_normalizer: bool = False) -> bytes:
    """``proto`` with ``symbol`` replaced by ``\\n`` in every piece (``train_sentencepiece``: the trained
    normalizer maps ``\\n`` to ``symbol``), so decoding yields newlines without string ops.

    ``identity_normalizer``: also drop the normalizer (its only rule is ``\\n`` -> ``symbol``), so the
    model encodes raw text with ``\\n`` to the same ids: the variant for engines that run the model as
    it is (LiteRT-LM).
    """
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    for piece in model.pieces:
        piece.piece = piece.piece.replace(symbol, "\n")
    if identity_normalizer:
        model.normalizer_spec.name = "identity"
        model.normalizer_spec.precompiled_charsmap = b""
    return model.SerializeToString()


def train_sentencepiece(texts, vocab_size: int) -> bytes:
    """Train a unigram SentencePiece model on ``texts`` (an iterable of str); return its serialized proto.

    Unigram because TF Text's fast (TFLite-ready) kernels only implement unigram models;
    whitespace and newlines are kept exactly, so ``detokenize(tokenize(text)) == text``
    for text whose characters were seen in training.
    """
    import os
    import tempfile

    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        rule = os.path.join(tmp, "newline.tsv")
        with open(rule, "w", encoding="utf-8") as f:
            f.write(f"A\t{ord(NEWLINE_SYMBOL):X}\n")  # \n -> NEWLINE_SYMBOL, nothing else
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            vocab_size=vocab_size,
            model_type="unigram",
            character_coverage=1.0,
            normalization_rule_tsv=rule,
            remove_extra_whitespaces=False,
            max_sentence_length=1 << 16,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            unk_piece=UNK,
            bos_piece=BOS,
            eos_piece=EOS,
            pad_piece=PAD,
            num_threads=2,
            minloglevel=2,
        )
    return model.getvalue()


def extend_sentencepiece(proto: bytes, vocab_size: int) -> bytes:
    """Grow a unigram SentencePiece model to ``vocab_size`` pieces with joins of its own word pieces.

    For random-weight models of the large-vocabulary sizes (``palm_1b5``: 256,000 ids) that borrow
    the shipped 2,048-piece tokenizer: every id then decodes to visible text ("▁king" + "dom").
    The new pieces score below every trained one; deterministic.
    """
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    if vocab_size <= len(model.pieces):
        return proto
    normal = [p.piece for p in model.pieces if p.type == p.NORMAL]

    def letters(text: str) -> bool:
        return text.isascii() and text.isalpha()

    words = [p for p in normal if p.startswith("\u2581") and letters(p[1:])]
    suffixes = [p for p in normal if letters(p)]
    if not words or not suffixes:
        raise ValueError("the SentencePiece model has no word pieces to grow from; train it on more text")
    seen = {p.piece for p in model.pieces}
    score = min(p.score for p in model.pieces if p.type == p.NORMAL) - 1.0
    for suffix in suffixes:
        for word in words:
            if len(model.pieces) >= vocab_size:
                return model.SerializeToString()
            if word + suffix not in seen:
                seen.add(word + suffix)
                piece = model.pieces.add()
                piece.piece, piece.score, piece.type = word + suffix, score, piece.NORMAL
                score -= 1e-4
    raise ValueError(f"cannot grow the SentencePiece model to {vocab_size} pieces from {len(normal)}")


def train_byte_fallback_sentencepiece(texts, vocab_size: int, *, user_defined=("<start_of_turn>", "<end_of_turn>")) -> bytes:
    """A unigram SentencePiece model the way Gemma's is made: byte fallback (any text encodes), no
    normalization (``\\n`` is a piece of its own), and Gemma's special pieces ``<pad>`` 0, ``<eos>`` 1,
    ``<bos>`` 2, ``<unk>`` 3, then ``user_defined`` (its chat turn markers). For random-weight models
    of Gemma's shapes (``llm_tflite.families.gemma3``): grown with ``extend_sentencepiece``.
    """
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_by_whitespace=True, max_sentence_length=1 << 16,
        user_defined_symbols=["\n", *user_defined], pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>", num_threads=2, minloglevel=2,
    )
    return model.getvalue()
