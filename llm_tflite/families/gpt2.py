"""The GPT-2 family: ``keras_hub.models.GPT2CausalLM``."""

from __future__ import annotations

import json
import os

from llm_tflite.families.base import KVCacheSpec, ModelFamily
from llm_tflite.plugins.hookspecs import hookimpl
from llm_tflite.families.loading import is_preset_dir, load_keras_preset, preset_class_name


class GPT2Family(ModelFamily):
    name = "gpt2"
    description = "OpenAI GPT-2 decoders (keras_hub.models.GPT2CausalLM)"
    batched_decode = True  # positions from input_pos, caches through families.ops

    def owns(self, source) -> bool:
        if isinstance(source, str):
            if is_preset_dir(source):
                return preset_class_name(source) == "GPT2Backbone"
            return "gpt2" in source.lower()
        cls_names = {c.__name__ for c in type(source).__mro__}
        return bool(cls_names & {"GPT2CausalLM"})

    def load(self, source, *, random_weights=False, config=None):
        import keras
        import keras_hub

        if not isinstance(source, str):
            if getattr(source, "preprocessor", None) is None:
                from llm_tflite.errors import ModelSourceError

                raise ModelSourceError(
                    "this GPT2CausalLM has no preprocessor, so its tokenizer is unknown; build it with "
                    "keras_hub.models.GPT2CausalLM(backbone=..., preprocessor=GPT2CausalLMPreprocessor(...))"
                )
            return source
        if random_weights:
            from llm_tflite.families.presets import DEFAULT_PRESET_DIR
            from llm_tflite.errors import ModelSourceError

            tokenizer_dir = DEFAULT_PRESET_DIR  # standard sizes borrow the shipped tokenizer
            if config is None and is_preset_dir(source):
                with open(os.path.join(source, "config.json"), encoding="utf-8") as f:
                    config = json.load(f)["config"]
                tokenizer_dir = source
            if config is None:
                raise ModelSourceError(
                    f"no architecture is known for {source!r} without downloading it; use one of the "
                    "registered presets (llm-tflite plugins) or a local preset directory"
                )
            keras.utils.set_random_seed(0)
            backbone = keras_hub.models.GPT2Backbone(
                **{k: v for k, v in config.items() if k not in ("name", "trainable", "dtype")}
            )
            tokenizer = load_keras_preset(keras_hub.models.GPT2Tokenizer, tokenizer_dir)
            if config["vocabulary_size"] > tokenizer.vocabulary_size():
                # a standard size (50,257 ids) borrowing the shipped 2,048-token tokenizer: grow it, so
                # every id the model emits decodes to visible text
                from llm_tflite.tokenizers.bpe_training import extend_bpe

                vocab, merges = extend_bpe(dict(tokenizer.vocabulary), list(tokenizer.merges), config["vocabulary_size"])
                tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocab, merges=merges)
            preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
                tokenizer, sequence_length=min(config.get("max_sequence_length", 1024), 1024)
            )
            return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)
        return load_keras_preset(keras_hub.models.GPT2CausalLM, source)

    def tokenizer_spec(self, model) -> dict:
        tokenizer = model.preprocessor.tokenizer
        return {"type": "gpt2_bpe", "vocab": dict(tokenizer.vocabulary), "merges": list(tokenizer.merges)}

    def count_weights(self, config: dict) -> int | None:
        try:
            d, layers, ff = int(config["hidden_dim"]), int(config["num_layers"]), int(config["intermediate_dim"])
            vocab, positions = int(config["vocabulary_size"]), int(config["max_sequence_length"])
        except (KeyError, TypeError, ValueError):
            return None
        # per layer: two norms, query/key/value/output with biases, the MLP with biases
        per_layer = 2 * 2 * d + 4 * (d * d + d) + (d * ff + ff) + (ff * d + d)
        return vocab * d + positions * d + layers * per_layer + 2 * d

    def max_context_length(self, model) -> int:
        return int(model.backbone.max_sequence_length)

    def kv_cache_spec(self, model) -> KVCacheSpec:
        backbone = model.backbone
        return KVCacheSpec(
            num_layers=backbone.num_layers,
            num_kv_heads=backbone.num_heads,
            head_dim=backbone.hidden_dim // backbone.num_heads,
        )

    def forward_with_cache(self, model, tokens, input_pos, caches):
        logits, new_caches, _ = self.forward_with_hidden_states(model, tokens, input_pos, caches)
        return logits, new_caches

    def forward_with_hidden_states(self, model, tokens, input_pos, caches):
        import tensorflow as tf

        from llm_tflite.families.ops import causal_attention, output_rows, update_key_cache, update_value_cache

        backbone = model.backbone
        # 1-D lookups, so weight quantizers can treat them as EMBEDDING_LOOKUP tables.
        positions = tf.gather(backbone.position_embedding.position_embeddings, input_pos)
        x = (tf.gather(backbone.token_embedding.embeddings, tf.reshape(tokens, [-1])) + positions)[None]
        new_caches = []
        for layer, (key_cache, value_cache) in zip(backbone.transformer_layers, caches):
            attention = layer._self_attention_layer
            h = layer._self_attention_layer_norm(x)
            key_cache = update_key_cache(key_cache, attention._key_dense(h), input_pos)
            value_cache = update_value_cache(value_cache, attention._value_dense(h), input_pos)
            context = causal_attention(attention._query_dense(h), key_cache, value_cache, input_pos)
            x = x + attention._output_dense(context)
            h = layer._feedforward_layer_norm(x)
            x = x + layer._feedforward_output_dense(layer._feedforward_intermediate_dense(h))
            new_caches.append((key_cache, value_cache))
        x = output_rows(x)  # a prompt's last token only, in a prompt_{L}
        x = backbone.layer_norm(x)  # KerasHub's GPT2CausalLM.call_with_cache returns this as hidden_states
        return backbone.token_embedding(x, reverse=True), new_caches, x

    def generate_function(self, model, *, max_length, sampler, seed, **settings):
        from llm_tflite.families.generate_graph import keras_generate_function

        return keras_generate_function(self, model, max_length=max_length, sampler=sampler, seed=seed, **settings)


@hookimpl
def register_families(register):
    register(GPT2Family())
