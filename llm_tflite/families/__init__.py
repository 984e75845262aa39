"""Model families: the ``ModelFamily`` interface (``base``), the decoder kit (``decoder``), GPT-2, PaLM-style,
Gemma 3, Qwen 3, Llama 3.x, named presets, TF building blocks.

What a family plugin may import from here (docs/plugins.md):

- ``ModelFamily``, ``KVCacheSpec``, ``Preset``: the interface (also top-level ``llm_tflite`` names);
- ``load_keras_preset``, ``is_preset_dir``, ``preset_class_name``: loading KerasHub presets
  with errors that say what to do (``loading``);
- ``causal_attention``, ``update_key_cache``, ``update_value_cache``, ``cache_shapes``, ``Ring``,
  ``output_rows``: the TensorFlow building blocks of ``forward_with_cache`` that convert to builtin
  ops only (``ops``);
- ``keras_generate_function``: the ``--mode generate`` graph of ``generate_function`` (``generate_graph``);
- ``DecoderFamily``, ``Block``, ``Attention``, ``gated_mlp``, ``keras_rope``, ``llama_style_block``: the kit of decoder parts
  a family maps its KerasHub layers to (``decoder``).

Importing this package does not import TensorFlow: the ``ops`` and ``generate_graph`` names load
on first use.
"""

import importlib

from llm_tflite.families.base import KVCacheSpec, ModelFamily, Preset
from llm_tflite.families.decoder import Attention, Block, DecoderFamily, gated_mlp, keras_rope, llama_style_block
from llm_tflite.families.loading import is_preset_dir, load_keras_preset, preset_class_name

_LAZY = {
    "Ring": "ops",
    "cache_shapes": "ops",
    "causal_attention": "ops",
    "output_rows": "ops",
    "update_key_cache": "ops",
    "update_value_cache": "ops",
    "keras_generate_function": "generate_graph",
}

__all__ = sorted([
    "Attention", "Block", "DecoderFamily", "KVCacheSpec", "ModelFamily", "Preset", "gated_mlp", "is_preset_dir",
    "keras_rope", "llama_style_block", "load_keras_preset", "preset_class_name", *_LAZY,
])


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
