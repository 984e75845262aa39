"""The PaLM-style decoder (Keras 3, built from KerasHub layers): one class per file.

``family.py`` is the built-in plugin that registers it; the Keras classes load lazily, so
registering plugins does not import Keras. Training its SentencePiece model is
``llm_tflite.tokenizers.spm_training.train_sentencepiece``.
"""

import importlib

_CLASSES = {
    "PaLMBackbone": "palm_backbone",
    "PaLMCausalLM": "palm_causal_lm",
    "PaLMCausalLMPreprocessor": "palm_causal_lm_preprocessor",
    "PaLMDecoderBlock": "palm_decoder_block",
    "PaLMTokenizer": "palm_tokenizer",
}

__all__ = sorted(_CLASSES)


def __getattr__(name):
    if name not in _CLASSES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_CLASSES[name]}"), name)
