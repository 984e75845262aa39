"""The Llama 3.x family: ``keras_hub.models.Llama3CausalLM``, run by the decoder kit.

Llama's choices: RMSNorm, grouped-query attention, SwiGLU, RoPE base 500k with Llama 3.1's
frequency scaling (3.1 and 3.2), a separate head in KerasHub's presets.
"""

from __future__ import annotations

from llm_tflite.families.decoder import Block, DecoderFamily, llama_style_block
from llm_tflite.families.qwen3 import bpe_spec, count_llama_like
from llm_tflite.plugins.hookspecs import hookimpl

SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


class Llama3Family(DecoderFamily):
    name = "llama3"
    description = "Llama 3.x decoders (keras_hub.models.Llama3CausalLM): grouped-query attention, SwiGLU, scaled RoPE"
    causal_lm = "Llama3CausalLM"
    backbone_class = "Llama3Backbone"
    preset_prefixes = ("llama3",)
    hf_model_types = ("llama",)
    hf_name_prefixes = ("llama-3", "meta-llama-3")
    max_positions = 131072  # Llama 3.1 and 3.2; Llama 3 (8B) was trained with 8,192
    chat_template_file = "llama3.jinja"  # the instruction-tuned models' (Hugging Face tokenizer_config.json)
    end_of_turn_tokens = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")

    def random_tokenizer(self, vocabulary_size: int):
        import keras_hub

        from llm_tflite.families.presets import borrowed_bpe

        vocabulary, merges = borrowed_bpe(vocabulary_size, SPECIAL_TOKENS)
        return keras_hub.models.Llama3Tokenizer(vocabulary=vocabulary, merges=merges)

    def train_tokenizer(self, text: str, vocabulary_size: int):
        import keras_hub

        from llm_tflite.tokenizers.bpe_training import train_bpe

        vocabulary, merges = train_bpe(text, vocabulary_size, special_tokens=SPECIAL_TOKENS)
        return keras_hub.models.Llama3Tokenizer(vocabulary=vocabulary, merges=merges)

    def tokenizer_spec(self, model) -> dict:
        return bpe_spec(model.preprocessor.tokenizer)

    def count_weights(self, config: dict) -> int | None:
        return count_llama_like(config, query_key_norms=False, tied=False)

    def blocks(self, model) -> list[Block]:
        return [llama_style_block(layer) for layer in model.backbone.transformer_layers]


@hookimpl
def register_families(register):
    register(Llama3Family())
