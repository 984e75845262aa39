"""llm-tflite plugin: the Mistral family. Registered through the entry point in pyproject.toml."""

from llm_tflite import Preset, hookimpl

from llm_tflite_mistral.family import TINY_CONFIG, TINY_PRESET, MistralFamily


@hookimpl
def register_families(register):
    register(MistralFamily())


@hookimpl
def register_presets(register):
    register(Preset(
        name=TINY_PRESET,
        family="mistral",
        source=TINY_PRESET,
        description="2-layer Mistral with random weights (GQA 4/2 heads, 64 wide, 16-token window): tests "
                    "the pipeline offline",
        config=TINY_CONFIG,
    ))
