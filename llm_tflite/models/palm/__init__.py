"""The PaLM-style decoder (Keras 3, built from KerasHub layers): one class per file."""

from llm_tflite.models.palm.palm_backbone import PaLMBackbone
from llm_tflite.models.palm.palm_causal_lm import PaLMCausalLM
from llm_tflite.models.palm.palm_causal_lm_preprocessor import PaLMCausalLMPreprocessor
from llm_tflite.models.palm.palm_decoder_block import PaLMDecoderBlock
from llm_tflite.models.palm.palm_tokenizer import PaLMTokenizer, train_sentencepiece

PaLMTokenizer.backbone_cls = PaLMBackbone

__all__ = [
    "PaLMBackbone",
    "PaLMCausalLM",
    "PaLMCausalLMPreprocessor",
    "PaLMDecoderBlock",
    "PaLMTokenizer",
    "train_sentencepiece",
]
