"""The PaLM-style family: ``llm_tflite.families.palm.PaLMCausalLM`` (a built-in plugin, same hooks as third parties)."""

from __future__ import annotations

import base64
import os

from llm_tflite.families.base import KVCacheSpec, ModelFamily
from llm_tflite.plugins.hookspecs import hookimpl
from llm_tflite.families.loading import is_preset_dir, load_keras_preset, preset_class_name
from llm_tflite.tokenizers.spm_training import NEWLINE_SYMBOL, restore_newline_pieces


class PaLMFamily(ModelFamily):
    name = "palm"
    batched_decode = True  # positions from input_pos, caches through families.ops
    description = "PaLM-style decoders: parallel blocks, SwiGLU, RoPE, multi-query attention, SentencePiece"

    def owns(self, source) -> bool:
        if isinstance(source, str):
            if is_preset_dir(source):
                return preset_class_name(source) == "PaLMBackbone"
            return False
        return any(c.__name__ == "PaLMCausalLM" for c in type(source).__mro__)

    def load(self, source, *, random_weights=False, config=None):
        import keras

        from llm_tflite.families.palm import PaLMBackbone, PaLMCausalLM, PaLMCausalLMPreprocessor, PaLMTokenizer

        if not isinstance(source, str):
            return source
        from llm_tflite.errors import ModelSourceError

        if random_weights:
            # The architecture of a local preset (or a registered size's ``config``) with fresh weights;
            # the preset's tokenizer is kept, the sizes borrow the shipped one (grown to their vocabulary).
            import json

            from llm_tflite.families.presets import PALM_PRESET_DIR

            tokenizer_dir = PALM_PRESET_DIR
            if config is None:
                if not is_preset_dir(source):
                    raise ModelSourceError(f"--random-weights for the palm family needs a local preset directory or "
                                           f"a registered size (llm-tflite plugins), got {source!r}")
                with open(os.path.join(source, "config.json"), encoding="utf-8") as f:
                    config = json.load(f)["config"]
                tokenizer_dir = source
            keras.utils.set_random_seed(0)
            backbone = PaLMBackbone(**{k: v for k, v in config.items() if k not in ("name", "trainable", "dtype")})
            tokenizer = load_keras_preset(PaLMTokenizer, tokenizer_dir)
            if backbone.vocabulary_size > tokenizer.vocabulary_size():
                from llm_tflite.tokenizers.spm_training import extend_sentencepiece

                tokenizer = PaLMTokenizer(proto=extend_sentencepiece(tokenizer.proto, backbone.vocabulary_size))
            preprocessor = PaLMCausalLMPreprocessor(tokenizer, sequence_length=backbone.max_sequence_length)
            return PaLMCausalLM(backbone=backbone, preprocessor=preprocessor)
        if config is not None and not is_preset_dir(source):
            raise ModelSourceError(f"{source!r} is a PaLM-style architecture without published weights: convert it "
                                   "with --random-weights, or train/fine-tune it and convert the preset directory")
        return load_keras_preset(PaLMCausalLM, source)

    def tokenizer_spec(self, model) -> dict:
        proto = model.preprocessor.tokenizer.proto
        return {"type": "sentencepiece", "model": base64.b64encode(proto).decode("ascii"), "newline_symbol": NEWLINE_SYMBOL}

    def litertlm_tokenizer(self, tokenizer_spec: dict) -> tuple[str, bytes]:
        """The SentencePiece model as LiteRT-LM's engine must see it: with ``\\n`` in its pieces and no
        normalizer, so the engine's text has newlines where ours has (same ids; tested)."""
        kind, proto = super().litertlm_tokenizer(tokenizer_spec)
        symbol = tokenizer_spec.get("newline_symbol")
        if kind == "sentencepiece" and symbol:
            proto = restore_newline_pieces(proto, symbol, identity_normalizer=True)
        return kind, proto

    def count_weights(self, config: dict) -> int | None:
        try:
            d, layers, ff = int(config["hidden_dim"]), int(config["num_layers"]), int(config["intermediate_dim"])
            heads, kv_heads = int(config["num_query_heads"]), int(config["num_key_value_heads"])
            head_dim = int(config.get("head_dim") or d // heads)
            vocab = int(config["vocabulary_size"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return None
        # per layer (no biases): query/output, one key and value per kv head, SwiGLU (3 matrices), a norm
        per_layer = 2 * d * heads * head_dim + 2 * d * kv_heads * head_dim + 3 * d * ff + d
        return vocab * d + layers * per_layer + d  # tied embedding, final norm

    def max_context_length(self, model) -> int:
        return int(model.backbone.max_sequence_length)

    def kv_cache_spec(self, model) -> KVCacheSpec:
        backbone = model.backbone
        return KVCacheSpec(
            num_layers=backbone.num_layers, num_kv_heads=backbone.num_key_value_heads, head_dim=backbone.head_dim
        )

    def forward_with_cache(self, model, tokens, input_pos, caches):
        logits, new_caches, _ = self.forward_with_hidden_states(model, tokens, input_pos, caches)
        return logits, new_caches

    def forward_with_hidden_states(self, model, tokens, input_pos, caches):
        import tensorflow as tf

        from llm_tflite.families.ops import causal_attention, output_rows, update_key_cache, update_value_cache

        backbone = model.backbone
        x = tf.gather(backbone.token_embedding.embeddings, tf.reshape(tokens, [-1]))[None]
        positions = tf.cast(input_pos, tf.float32)
        new_caches = []
        for block, (key_cache, value_cache) in zip(backbone.transformer_layers, caches):
            h = block.layer_norm(x)
            query, key, value = block.project_qkv(h, positions)
            key_cache = update_key_cache(key_cache, key, input_pos)
            value_cache = update_value_cache(value_cache, value, input_pos)
            x = block.combine(x, h, causal_attention(query, key_cache, value_cache, input_pos))
            new_caches.append((key_cache, value_cache))
        x = output_rows(x)  # a prompt's last token only, in a prompt_{L}
        x = backbone.layer_norm(x)
        return backbone.token_embedding(x, reverse=True), new_caches, x

    def generate_function(self, model, *, max_length, sampler, seed, **settings):
        """Tokenizer in the graph through TF Text's fast SentencePiece ops (TFLite custom kernels, no Flex)."""
        import tensorflow_text as tf_text

        from llm_tflite.families.generate_graph import keras_generate_function

        proto = model.preprocessor.tokenizer.proto
        encoder = tf_text.FastSentencepieceTokenizer(proto)
        decoder = tf_text.FastSentencepieceTokenizer(restore_newline_pieces(proto, NEWLINE_SYMBOL))
        return keras_generate_function(
            self, model, max_length=max_length, sampler=sampler, seed=seed, **settings,
            encode=encoder.tokenize, decode=decoder.detokenize,
        )


@hookimpl
def register_families(register):
    register(PaLMFamily())
