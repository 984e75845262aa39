"""The Mistral family: how llm-tflite loads, tokenizes and runs ``keras_hub.models.MistralCausalLM``.

A fourth decoder is a mapping from its KerasHub backbone to the core's kit of decoder parts
(``llm_tflite.families.DecoderFamily``): which layer is the norm, the projections, the RoPE,
the MLP's gate; the kit runs them over the external KV caches.
"""

from __future__ import annotations

import base64
import pathlib

from llm_tflite.families import Block, DecoderFamily, llama_style_block

TINY_PRESET = "mistral_tiny_random"
TINY_CONFIG = {
    "vocabulary_size": 1000,
    "num_layers": 2,
    "num_query_heads": 4,
    "num_key_value_heads": 2,
    "hidden_dim": 64,
    "intermediate_dim": 128,
    "sliding_window": 16,  # shorter than the tests' prompts, so the window is exercised
}
TOKENIZER_MODEL = pathlib.Path(__file__).with_name("tokenizer.model")


class MistralFamily(DecoderFamily):
    name = "mistral"
    description = ("Mistral decoders (keras_hub.models.MistralCausalLM): sliding-window grouped-query "
                   "attention, SwiGLU")
    causal_lm = "MistralCausalLM"
    backbone_class = "MistralBackbone"
    preset_prefixes = ("mistral_",)
    max_positions = 32768

    def load(self, source, *, random_weights=False, config=None):
        # the tiny preset has no published weights: it is always built from its architecture
        return super().load(source, random_weights=random_weights or source == TINY_PRESET, config=config)

    def random_tokenizer(self, vocabulary_size: int):
        import keras_hub

        from llm_tflite.errors import ModelSourceError

        tokenizer = keras_hub.models.MistralTokenizer(proto=TOKENIZER_MODEL.read_bytes())
        if vocabulary_size != tokenizer.vocabulary_size():
            raise ModelSourceError(f"the shipped tokenizer has {tokenizer.vocabulary_size()} pieces, not "
                                   f"{vocabulary_size}: random weights are for {TINY_PRESET!r}")
        return tokenizer

    def tokenizer_spec(self, model) -> dict:
        # The core's runtime SentencePiece tokenizer reads this; no plugin code runs at inference.
        proto = model.preprocessor.tokenizer.proto
        return {"type": "sentencepiece", "model": base64.b64encode(proto).decode("ascii")}

    def blocks(self, model) -> list[Block]:
        # Mistral's decoder layers are laid out as Llama's; every layer attends over its window
        return [llama_style_block(layer, sliding_window=layer.sliding_window)
                for layer in model.backbone.transformer_layers]
