"""The Llama family: how llm-tflite loads, tokenizes and runs ``keras_hub.models.LlamaCausalLM``."""

from __future__ import annotations

import base64
import pathlib

from llm_tflite import KVCacheSpec, ModelFamily

TINY_PRESET = "llama_tiny_random"
TINY_CONFIG = {
    "vocabulary_size": 1000,
    "num_layers": 2,
    "num_query_heads": 4,
    "num_key_value_heads": 2,
    "hidden_dim": 64,
    "intermediate_dim": 128,
}
TINY_CONTEXT = 128
TOKENIZER_MODEL = pathlib.Path(__file__).with_name("tokenizer.model")


class LlamaFamily(ModelFamily):
    name = "llama"
    description = "Llama decoders (keras_hub.models.LlamaCausalLM): RMSNorm, RoPE, grouped-query attention"

    def owns(self, source) -> bool:
        if isinstance(source, str):  # KerasHub preset names and handles: "llama2_7b_en", "kaggle://keras/llama2/..."
            name = source.lower().rsplit("/", 1)[-1] if "://" in source else source.lower()
            return name.startswith("llama")
        return any(c.__name__ == "LlamaCausalLM" for c in type(source).__mro__)

    def load(self, source, *, random_weights=False, config=None):
        import keras
        import keras_hub

        from llm_tflite.errors import ModelSourceError
        from llm_tflite.families import load_keras_preset

        if not isinstance(source, str):
            return source
        if source == TINY_PRESET or random_weights:
            if config is None:
                raise ModelSourceError(f"no architecture is known for {source!r}; try {TINY_PRESET!r}")
            keras.utils.set_random_seed(0)
            backbone = keras_hub.models.LlamaBackbone(**config)
            tokenizer = keras_hub.models.LlamaTokenizer(proto=TOKENIZER_MODEL.read_bytes())
            preprocessor = keras_hub.models.LlamaCausalLMPreprocessor(tokenizer, sequence_length=TINY_CONTEXT)
            return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=preprocessor)
        return load_keras_preset(keras_hub.models.LlamaCausalLM, source)

    def tokenizer_spec(self, model) -> dict:
        # The core's runtime SentencePiece tokenizer reads this; no plugin code runs at inference.
        proto = model.preprocessor.tokenizer.proto
        return {"type": "sentencepiece", "model": base64.b64encode(proto).decode("ascii")}

    def max_context_length(self, model) -> int:
        # Llama has no position table; its usable context is what it was trained with.
        return int(model.preprocessor.sequence_length)

    def kv_cache_spec(self, model) -> KVCacheSpec:
        backbone = model.backbone
        return KVCacheSpec(
            num_layers=backbone.num_layers,
            num_kv_heads=backbone.num_key_value_heads,
            head_dim=backbone.hidden_dim // backbone.num_query_heads,
        )

    def forward_with_cache(self, model, tokens, input_pos, caches):
        import tensorflow as tf

        from llm_tflite.families import causal_attention, update_key_cache, update_value_cache

        backbone = model.backbone
        x = tf.gather(backbone.token_embedding.embeddings, tf.reshape(tokens, [-1]))[None]
        start = input_pos[0]  # positions are consecutive from here
        new_caches = []
        for layer, (key_cache, value_cache) in zip(backbone.transformer_layers, caches):
            attention = layer._self_attention_layer
            h = layer._self_attention_layernorm(x)
            query = attention.rotary_embedding_layer(attention._query_dense(h), start_index=start)
            key = attention.rotary_embedding_layer(attention._key_dense(h), start_index=start)
            key_cache = update_key_cache(key_cache, key, input_pos)
            value_cache = update_value_cache(value_cache, attention._value_dense(h), input_pos)
            x = x + attention._output_dense(causal_attention(query, key_cache, value_cache, input_pos))
            h = layer._feedforward_layernorm(x)
            gate = layer.activation(layer._feedforward_gate_dense(h))
            x = x + layer._feedforward_output_dense(layer._feedforward_intermediate_dense(h) * gate)
            new_caches.append((key_cache, value_cache))
        x = backbone.layer_norm(x)
        return backbone.token_embedding(x, reverse=True), new_caches
