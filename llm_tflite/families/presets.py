"""Named models: the two shipped ones, the standard GPT-2 sizes, PaLM-style sizes and today's on-device
decoders (Gemma 3, Qwen 3, Llama 3.2) under KerasHub's names (pure data)."""

from __future__ import annotations

import os

from llm_tflite.families.base import Preset
from llm_tflite.plugins.hookspecs import hookimpl

PRESETS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "presets")
DEFAULT_PRESET = "gpt2_tiny_shakespeare"
DEFAULT_PRESET_DIR = os.path.join(PRESETS_DIR, DEFAULT_PRESET)
PALM_PRESET = "palm_tiny_shakespeare"
PALM_PRESET_DIR = os.path.join(PRESETS_DIR, PALM_PRESET)
#: A Gemma-style SentencePiece model (byte fallback, Gemma's special pieces, 4,096 pieces of tiny
#: Shakespeare; scripts/make_preset_tokenizers.py) that random-weight Gemma models grow to their size.
GEMMA_TOKENIZER = os.path.join(PRESETS_DIR, "tokenizers", "gemma_style.model")

SHIPPED = {
    DEFAULT_PRESET: ("gpt2", DEFAULT_PRESET_DIR, "3.7M-parameter GPT-2 trained on tiny Shakespeare"),
    PALM_PRESET: ("palm", PALM_PRESET_DIR, "PaLM-style decoder trained on tiny Shakespeare"),
}


def _gpt2(layers, heads, hidden):
    return {
        "vocabulary_size": 50257,
        "num_layers": layers,
        "num_heads": heads,
        "hidden_dim": hidden,
        "intermediate_dim": 4 * hidden,
        "max_sequence_length": 1024,
        "dropout": 0.1,
    }


GPT2_SIZES = {
    "gpt2_base_en": ("GPT-2 124M (12 layers, 768 wide)", _gpt2(12, 12, 768)),
    "gpt2_medium_en": ("GPT-2 355M (24 layers, 1024 wide)", _gpt2(24, 16, 1024)),
    "gpt2_large_en": ("GPT-2 774M (36 layers, 1280 wide)", _gpt2(36, 20, 1280)),
    "gpt2_extra_large_en": ("GPT-2 1558M (48 layers, 1600 wide)", _gpt2(48, 25, 1600)),
}


def _palm(layers, hidden):
    """PaLM's published ratios (Chowdhery et al. 2022, table 1 and section 2): 256-wide heads
    (hidden / 256 of them), one key/value head (multi-query), SwiGLU feed-forward 4x hidden,
    a 256k-token vocabulary shared by input and output embeddings, RoPE, parallel blocks, no
    biases, context 2,048. Only the depth and width are ours."""
    return {
        "vocabulary_size": 256000,
        "num_layers": layers,
        "num_query_heads": hidden // 256,
        "num_key_value_heads": 1,
        "hidden_dim": hidden,
        "head_dim": 256,
        "intermediate_dim": 4 * hidden,
        "max_sequence_length": 2048,
        "rope_max_wavelength": 10000,
        "layer_norm_epsilon": 1e-5,
        "dropout": 0.0,
    }


#: PaLM-style architectures at on-device sizes (no published weights: ``--random-weights``).
PALM_SIZES = {
    "palm_400m": ("PaLM-style 445M (12 layers, 1024 wide, 256k vocabulary)", _palm(12, 1024)),
    "palm_1b5": ("PaLM-style 1.48B (16 layers, 2048 wide, 256k vocabulary), the seeds' on-device size",
                 _palm(16, 2048)),
}


def borrowed_bpe(vocabulary_size: int, special_tokens) -> tuple[dict, list]:
    """The shipped GPT-2 tokenizer's byte-level BPE with a family's ``special_tokens`` instead of
    ``<|endoftext|>``, grown to ``vocabulary_size`` (the specials last): the tokenizer of a
    random-weight Qwen 3 or Llama 3 model."""
    import keras_hub

    from llm_tflite.families.loading import load_keras_preset
    from llm_tflite.tokenizers.bpe import END_OF_TEXT
    from llm_tflite.tokenizers.bpe_training import extend_bpe

    shipped = load_keras_preset(keras_hub.models.GPT2Tokenizer, DEFAULT_PRESET_DIR)
    vocabulary = {t: i for t, i in sorted(shipped.vocabulary.items(), key=lambda item: item[1]) if t != END_OF_TEXT}
    vocabulary = {t: i for i, t in enumerate(vocabulary)}
    for token in special_tokens:
        vocabulary[token] = len(vocabulary)
    return extend_bpe(vocabulary, list(shipped.merges), vocabulary_size, special_tokens=tuple(special_tokens))


def _gemma3(layers, hidden, intermediate):
    """Gemma 3's text models as KerasHub builds them (its checkpoint converter's reading of the
    published configs): 4 query heads of 256 and one key/value head, GeGLU, query/key norms, norms
    after attention and the MLP, 512-token local windows on five of every six layers."""
    return {
        "vocabulary_size": 262144, "image_size": None, "num_layers": layers, "num_query_heads": 4,
        "num_key_value_heads": 1, "hidden_dim": hidden, "intermediate_dim": intermediate, "head_dim": 256,
        "query_head_dim_normalize": True, "use_query_key_norm": True, "use_post_ffw_norm": True,
        "use_post_attention_norm": True, "attention_logit_soft_cap": None, "final_logit_soft_cap": None,
        "use_sliding_window_attention": True, "sliding_window_size": 512, "local_rope_scaling_factor": 1.0,
        "global_rope_scaling_factor": 1.0, "layer_norm_epsilon": 1e-6,
    }


def _qwen3(layers, hidden, intermediate):
    return {
        "vocabulary_size": 151936, "num_layers": layers, "num_query_heads": 16, "num_key_value_heads": 8,
        "head_dim": 128, "hidden_dim": hidden, "intermediate_dim": intermediate, "rope_max_wavelength": 1000000,
        "layer_norm_epsilon": 1e-6, "tie_word_embeddings": True, "sliding_window_size": None,
    }


def _llama3_2(layers, heads, hidden):
    """Llama 3.2: RoPE base 500k with Llama 3.1's frequency scaling (factor 32, from 8,192 positions);
    KerasHub's presets keep a separate head."""
    return {
        "vocabulary_size": 128256, "num_layers": layers, "num_query_heads": heads, "num_key_value_heads": 8,
        "hidden_dim": hidden, "intermediate_dim": 8192, "rope_max_wavelength": 500000,
        "rope_frequency_adjustment_factor": 32.0, "rope_low_freq_factor": 1.0, "rope_high_freq_factor": 4.0,
        "rope_pretraining_sequence_length": 8192, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": False,
    }


#: Today's on-device models under KerasHub's preset names, with the architecture carried here so
#: ``--random-weights`` builds the published shape offline (weight counts equal KerasHub's metadata).
DECODER_SIZES = {
    "gemma3_270m": ("gemma3", "Gemma 3 270M (18 layers, 640 wide, 262k vocabulary)", _gemma3(18, 640, 2048)),
    "gemma3_instruct_270m": ("gemma3", "Gemma 3 270M instruction-tuned", _gemma3(18, 640, 2048)),
    "gemma3_1b": ("gemma3", "Gemma 3 1B (26 layers, 1152 wide, 262k vocabulary)", _gemma3(26, 1152, 6912)),
    "gemma3_instruct_1b": ("gemma3", "Gemma 3 1B instruction-tuned", _gemma3(26, 1152, 6912)),
    "qwen3_0.6b_en": ("qwen3", "Qwen 3 0.6B (28 layers, 1024 wide, 152k vocabulary)", _qwen3(28, 1024, 3072)),
    "qwen3_1.7b_en": ("qwen3", "Qwen 3 1.7B (28 layers, 2048 wide)", _qwen3(28, 2048, 6144)),
    "llama3.2_1b": ("llama3", "Llama 3.2 1B (16 layers, 2048 wide, 128k vocabulary)", _llama3_2(16, 32, 2048)),
    "llama3.2_instruct_1b": ("llama3", "Llama 3.2 1B instruction-tuned", _llama3_2(16, 32, 2048)),
    "llama3.2_3b": ("llama3", "Llama 3.2 3B (28 layers, 3072 wide)", _llama3_2(28, 24, 3072)),
    "llama3.2_instruct_3b": ("llama3", "Llama 3.2 3B instruction-tuned", _llama3_2(28, 24, 3072)),
}


@hookimpl
def register_presets(register):
    for name, (family, source, what) in SHIPPED.items():
        register(Preset(name=name, family=family, source=source,
                        description=f"shipped with llm-tflite: {what} (docs/models.md)"))
    for name, (description, config) in GPT2_SIZES.items():
        register(Preset(
            name=name,
            family="gpt2",
            source=name,
            description=f"{description}; KerasHub preset (downloads when online, --random-weights offline)",
            config=config,
        ))
    for name, (description, config) in PALM_SIZES.items():
        register(Preset(name=name, family="palm", source=name,
                        description=f"{description}; architecture only: --random-weights", config=config))
    for name, (family, description, config) in DECODER_SIZES.items():
        register(Preset(name=name, family=family, source=name, config=config,
                        description=f"{description}; KerasHub preset (downloads when online, --random-weights offline)"))
