"""Preprocessor of ``PaLMCausalLM``: tokenizes, adds ``<s>``/``</s>``, pads, shifts labels."""

from __future__ import annotations

import keras
from keras_hub.models import CausalLMPreprocessor

from llm_tflite.families.palm.palm_backbone import PaLMBackbone
from llm_tflite.families.palm.palm_tokenizer import PaLMTokenizer


@keras.saving.register_keras_serializable(package="llm_tflite")
class PaLMCausalLMPreprocessor(CausalLMPreprocessor):
    """KerasHub's ``CausalLMPreprocessor`` bound to ``PaLMTokenizer``."""

    backbone_cls = PaLMBackbone
    tokenizer_cls = PaLMTokenizer
