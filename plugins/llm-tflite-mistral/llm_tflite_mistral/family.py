"""The Mistral family: how llm-tflite loads, tokenizes and runs ``keras_hub.models.MistralCausalLM``.

A fourth decoder is a mapping from its KerasHub backbone to the core's kit of decoder parts
(``llm_tflite.families.DecoderFamily``): which layer is the norm, the projections, the RoPE,
the MLP's gate; the kit runs them over the external KV caches.
"""

from __future__ import annotations

import base64
import pathlib

from llm_tflite.families import Attention, Block, DecoderFamily, gated_mlp, keras_rope

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

        from llm_tflite.tokenizers.spm_training import extend_sentencepiece

        # the shipped 1,000 pieces, grown with joins of its own word pieces for larger shapes
        return keras_hub.models.MistralTokenizer(proto=extend_sentencepiece(TOKENIZER_MODEL.read_bytes(),
                                                                            vocabulary_size))

    def tokenizer_spec(self, model) -> dict:
        # The core's runtime SentencePiece tokenizer reads this; no plugin code runs at inference.
        proto = model.preprocessor.tokenizer.proto
        return {"type": "sentencepiece", "model": base64.b64encode(proto).decode("ascii")}

    def blocks(self, model) -> list[Block]:
        blocks = []
        for layer in model.backbone.transformer_layers:
            attention = layer._self_attention_layer
            blocks.append(Block(
                attention_norm=layer._self_attention_layernorm,
                attention=Attention(
                    query=attention._query_dense, key=attention._key_dense, value=attention._value_dense,
                    output=attention._output_dense, rope=keras_rope(attention.rotary_embedding_layer),
                    scale=attention._inv_norm_factor, sliding_window=layer.sliding_window),
                mlp_norm=layer._feedforward_layernorm,
                mlp=gated_mlp(layer._feedforward_gate_dense, layer._feedforward_intermediate_dense,
                              layer._feedforward_output_dense, layer.activation),
            ))
        return blocks
