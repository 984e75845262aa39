"""The Gemma 3 family (text): ``keras_hub.models.Gemma3CausalLM``, run by the decoder kit.

Gemma's choices: RMSNorm with ``1 + w``, norms before and after both attention and the MLP,
query/key norms, grouped-query attention (one key/value head at 270M and 1B), GeGLU, the
embedding scaled by ``sqrt(hidden)``, a tied head, and five local layers (512-token sliding
window, RoPE base 10k) to each global one (RoPE base 1M).
"""

from __future__ import annotations

import base64

from llm_tflite.families.decoder import Attention, Block, DecoderFamily, gated_mlp, keras_rope
from llm_tflite.plugins.hookspecs import hookimpl


def rms_norm(layer):
    """Gemma's RMSNorm layer (KerasHub's ``gemma3_layers.RMSNormalization``) as it computes,
    ``x / sqrt(mean(x^2) + eps) * (1 + scale)`` in float32, with one ``RSQRT`` where KerasHub's
    ``reciprocal(sqrt(...))`` converts to ``SQRT`` and a ``DIV``: a decode step runs 109 norms of
    640 values in Gemma 3 270M, where an operator costs more than its arithmetic."""
    import keras

    def norm(x):
        x = keras.ops.cast(x, "float32")
        variance = keras.ops.mean(keras.ops.square(x), axis=-1, keepdims=True)
        scaled = x * keras.ops.rsqrt(variance + layer.epsilon) * (1 + keras.ops.cast(layer.scale, "float32"))
        return keras.ops.cast(scaled, layer.compute_dtype)

    return norm


class Gemma3Family(DecoderFamily):
    name = "gemma3"
    description = ("Gemma 3 text decoders (keras_hub.models.Gemma3CausalLM): local/global attention, "
                   "query/key norms, GeGLU")
    causal_lm = "Gemma3CausalLM"
    backbone_class = "Gemma3Backbone"
    preset_prefixes = ("gemma3_",)
    hf_model_types = ("gemma3_text",)  # the text models (270M, 1B); 4B and up are multimodal ("gemma3")
    hf_name_prefixes = ("gemma-3-",)
    max_positions = 32768  # the 270M and 1B models; the larger ones hold 131,072
    chat_template_file = "gemma3.jinja"  # the instruction-tuned models' (Hugging Face tokenizer_config.json)
    end_of_turn_tokens = ("<end_of_turn>",)

    def random_tokenizer(self, vocabulary_size: int):
        import keras_hub

        from llm_tflite.families.presets import GEMMA_TOKENIZER
        from llm_tflite.tokenizers.spm_training import extend_sentencepiece

        with open(GEMMA_TOKENIZER, "rb") as f:
            proto = extend_sentencepiece(f.read(), vocabulary_size)
        return keras_hub.models.Gemma3Tokenizer(proto=proto, has_vision_tokens=False)

    def train_tokenizer(self, text: str, vocabulary_size: int):
        import keras_hub

        from llm_tflite.tokenizers.spm_training import train_byte_fallback_sentencepiece

        proto = train_byte_fallback_sentencepiece([p + "\n\n" for p in text.split("\n\n")], vocabulary_size)
        return keras_hub.models.Gemma3Tokenizer(proto=proto, has_vision_tokens=False)

    def tokenizer_spec(self, model) -> dict:
        return {"type": "sentencepiece", "model": base64.b64encode(model.preprocessor.tokenizer.proto).decode("ascii")}

    def count_weights(self, config: dict) -> int | None:
        try:
            d, ff, layers = int(config["hidden_dim"]), int(config["intermediate_dim"]), int(config["num_layers"])
            heads, kv, head_dim = int(config["num_query_heads"]), int(config["num_key_value_heads"]), int(config["head_dim"])
            vocab = int(config["vocabulary_size"])
        except (KeyError, TypeError, ValueError):
            return None
        norms = 2 + bool(config.get("use_post_attention_norm")) + bool(config.get("use_post_ffw_norm"))
        per_layer = (2 * heads + 2 * kv) * head_dim * d + norms * d + 3 * d * ff
        per_layer += 2 * head_dim if config.get("use_query_key_norm", True) else 0
        return vocab * d + layers * per_layer + d

    def embed(self, model, tokens):
        import tensorflow as tf

        scale = tf.sqrt(tf.cast(model.backbone.hidden_dim, tf.float32))  # as KerasHub scales them
        return super().embed(model, tokens) * scale

    def final_norm(self, model):
        return rms_norm(model.backbone.layer_norm)

    def blocks(self, model) -> list[Block]:
        import keras

        def geglu(x):
            return keras.activations.gelu(x, approximate=True)

        blocks = []
        for layer in model.backbone.transformer_layers:
            attention = layer.attention
            per_head = attention.head_dim if attention.query_head_dim_normalize else (
                attention.hidden_dim // attention.num_query_heads)
            blocks.append(Block(
                attention_norm=rms_norm(layer.pre_attention_norm),
                attention=Attention(
                    query=attention.query_dense, key=attention.key_dense, value=attention.value_dense,
                    output=attention.output_dense, rope=keras_rope(attention.rope_layer),
                    query_norm=rms_norm(attention.query_norm) if attention.use_query_key_norm else None,
                    key_norm=rms_norm(attention.key_norm) if attention.use_query_key_norm else None,
                    scale=1.0 / per_head**0.5, soft_cap=attention.logit_soft_cap,
                    sliding_window=attention.sliding_window_size if attention.use_sliding_window_attention else None),
                mlp_norm=rms_norm(layer.pre_ffw_norm),
                mlp=gated_mlp(layer.gating_ffw, layer.gating_ffw_2, layer.ffw_linear, geglu),
                post_attention_norm=rms_norm(layer.post_attention_norm) if layer.use_post_attention_norm else None,
                post_mlp_norm=rms_norm(layer.post_ffw_norm) if layer.use_post_ffw_norm else None,
            ))
        return blocks


@hookimpl
def register_families(register):
    register(Gemma3Family())
