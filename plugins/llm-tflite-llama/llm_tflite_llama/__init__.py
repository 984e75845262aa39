"""llm-tflite plugin: the Llama family. Registered through the entry point in pyproject.toml."""

from llm_tflite import Preset, hookimpl

from llm_tflite_llama.family import TINY_CONFIG, TINY_PRESET, LlamaFamily


@hookimpl
def register_families(register):
    register(LlamaFamily())


@hookimpl
def register_presets(register):
    register(Preset(
        name=TINY_PRESET,
        family="llama",
        source=TINY_PRESET,
        description="2-layer Llama with random weights (GQA 4/2 heads, 64 wide): tests the pipeline offline",
        config=TINY_CONFIG,
    ))
