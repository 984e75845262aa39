"""Named models: the two shipped ones, the standard GPT-2 sizes and PaLM-style sizes (pure data)."""

from __future__ import annotations

import os

from llm_tflite.families.base import Preset
from llm_tflite.plugins.hookspecs import hookimpl

PRESETS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "presets")
DEFAULT_PRESET = "gpt2_tiny_shakespeare"
DEFAULT_PRESET_DIR = os.path.join(PRESETS_DIR, DEFAULT_PRESET)
PALM_PRESET = "palm_tiny_shakespeare"
PALM_PRESET_DIR = os.path.join(PRESETS_DIR, PALM_PRESET)

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
