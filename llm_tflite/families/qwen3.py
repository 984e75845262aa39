"""The Qwen 3 family: ``keras_hub.models.Qwen3CausalLM``, run by the decoder kit.

Qwen's choices: RMSNorm, query/key norms, grouped-query attention, SwiGLU, RoPE base 1M, a
tied head up to 4B; no start token.
"""

from __future__ import annotations

from llm_tflite.families.decoder import Block, DecoderFamily, llama_style_block
from llm_tflite.plugins.hookspecs import hookimpl

#: Qwen's special tokens (ids at the end of the vocabulary of a random-weight model).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


class Qwen3Family(DecoderFamily):
    name = "qwen3"
    description = "Qwen 3 decoders (keras_hub.models.Qwen3CausalLM): query/key norms, grouped-query attention, SwiGLU"
    causal_lm = "Qwen3CausalLM"
    backbone_class = "Qwen3Backbone"
    preset_prefixes = ("qwen3_0", "qwen3_1", "qwen3_3", "qwen3_4", "qwen3_8")  # not qwen3_5_*, qwen3_moe_*, ...
    hf_model_types = ("qwen3",)
    hf_name_prefixes = ("qwen3-",)
    max_positions = 40960
    chat_template_file = "qwen3.jinja"  # the instruction-tuned models' (Hugging Face tokenizer_config.json)
    end_of_turn_tokens = ("<|im_end|>", "<|endoftext|>")
    litertlm_model_type = "qwen3"

    def random_tokenizer(self, vocabulary_size: int):
        import keras_hub

        from llm_tflite.families.presets import borrowed_bpe

        vocabulary, merges = borrowed_bpe(vocabulary_size, SPECIAL_TOKENS)
        return keras_hub.models.Qwen3Tokenizer(vocabulary=vocabulary, merges=merges)

    def train_tokenizer(self, text: str, vocabulary_size: int):
        import keras_hub

        from llm_tflite.tokenizers.bpe_training import train_bpe

        vocabulary, merges = train_bpe(text, vocabulary_size, special_tokens=SPECIAL_TOKENS)
        return keras_hub.models.Qwen3Tokenizer(vocabulary=vocabulary, merges=merges)

    def tokenizer_spec(self, model) -> dict:
        return bpe_spec(model.preprocessor.tokenizer)

    def special_tokens(self, model) -> dict:
        tokenizer = model.preprocessor.tokenizer
        return {"bos_id": None, "eos_id": int(tokenizer.end_token_id), "add_bos": False}

    def count_weights(self, config: dict) -> int | None:
        return count_llama_like(config, query_key_norms=True, tied=True)

    def blocks(self, model) -> list[Block]:
        return [llama_style_block(layer, query_norm=layer._self_attention_layer._query_dense_layer_norm,
                                  key_norm=layer._self_attention_layer._key_dense_layer_norm,
                                  sliding_window=layer._self_attention_layer.sliding_window_size or None)
                for layer in model.backbone.transformer_layers]


def bpe_spec(tokenizer) -> dict:
    """The runtime spec of a KerasHub byte-level BPE tokenizer (Qwen 3, Llama 3): the Hugging Face
    checkpoint's own ``tokenizer.json`` when it was loaded from one (``attach_hf_tokenizer``; its
    padding and truncation settings dropped); otherwise GPT-2's format, with the special tokens
    that decode to nothing and the tokens kept whole in a text (KerasHub's ``unsplittable_tokens``:
    the special ones and added tokens)."""
    import json

    from llm_tflite.errors import ConversionError, ModelFileError
    from llm_tflite.families.loading import HF_TOKENIZER_ATTRIBUTE
    from llm_tflite.tokenizers.bpe import HFTokenizer

    text = getattr(tokenizer, HF_TOKENIZER_ATTRIBUTE, None)
    if text is not None:
        try:
            HFTokenizer.from_json(text)
        except ModelFileError as e:  # KerasHub would read it as byte-level BPE: wrong ids, silently
            raise ConversionError(f"the checkpoint's tokenizer.json cannot be carried: {e}. This family reads "
                                  "byte-level BPE tokenizers (Qwen 3, Llama 3), not SentencePiece-style ones "
                                  "(Llama 2 and others that share model_type 'llama')") from e
        spec = json.loads(text)
        spec["padding"] = spec["truncation"] = None
        return {"type": "hf_tokenizer", "json": json.dumps(spec, ensure_ascii=False)}
    return {"type": "gpt2_bpe", "vocab": dict(tokenizer.vocabulary), "merges": list(tokenizer.merges),
            "special_tokens": sorted(tokenizer.special_tokens),  # KerasHub keeps a set
            "added_tokens": sorted(tokenizer.unsplittable_tokens or ())}


def count_llama_like(config: dict, *, query_key_norms: bool, tied: bool) -> int | None:
    """Weights of a Llama-shaped decoder (RMSNorm, grouped-query attention, SwiGLU, no biases);
    ``tied``: the backbone's default for ``tie_word_embeddings``."""
    try:
        d, ff, layers = int(config["hidden_dim"]), int(config["intermediate_dim"]), int(config["num_layers"])
        heads, kv = int(config["num_query_heads"]), int(config["num_key_value_heads"])
        head_dim = int(config.get("head_dim") or d // heads)
        vocab = int(config["vocabulary_size"])
    except (KeyError, TypeError, ValueError):
        return None
    per_layer = (2 * heads + 2 * kv) * head_dim * d + 2 * d + 3 * d * ff + (2 * head_dim if query_key_norms else 0)
    heads_out = 1 if config.get("tie_word_embeddings", tied) else 2
    return heads_out * vocab * d + layers * per_layer + d


@hookimpl
def register_families(register):
    register(Qwen3Family())
