"""SentencePiece tokenizer of the PaLM-style family: the Keras layer of the model.

Training, growing and the newline convention (the trained normalizer maps ``\\n`` to
``NEWLINE_SYMBOL``, ``detokenize`` maps it back) live in ``llm_tflite.tokenizers.spm_training``.
"""

from __future__ import annotations

import keras
from keras_hub.tokenizers import SentencePieceTokenizer

from llm_tflite.tokenizers.spm_training import BOS, EOS, PAD, restore_newlines


@keras.saving.register_keras_serializable(package="llm_tflite")
class PaLMTokenizer(SentencePieceTokenizer):
    """KerasHub SentencePiece tokenizer with ``<s>``, ``</s>``, ``<pad>`` and newline restoration.

    Args:
        proto: a serialized SentencePiece model (``llm_tflite.tokenizers.spm_training.train_sentencepiece``)
            or a path to one.
    """

    backbone_cls = None  # set in palm_backbone.py (avoids an import cycle)

    def __init__(self, proto=None, **kwargs):
        self._add_special_token(BOS, "start_token")
        self._add_special_token(EOS, "end_token")
        self._add_special_token(PAD, "pad_token")
        super().__init__(proto=proto, **kwargs)

    def detokenize(self, inputs):
        return restore_newlines(super().detokenize(inputs))
