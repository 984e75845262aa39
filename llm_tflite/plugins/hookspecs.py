"""The hooks a plugin can implement. Each takes a ``register`` callback."""

import pluggy

hookspec = pluggy.HookspecMarker("llm_tflite")
hookimpl = pluggy.HookimplMarker("llm_tflite")


@hookspec
def register_families(register):
    """Register model families: call ``register(family)`` with a ``ModelFamily`` for each."""


@hookspec
def register_quantizers(register):
    """Register quantization strategies: call ``register(strategy)`` with a ``QuantizationStrategy``."""


@hookspec
def register_presets(register):
    """Register named models: call ``register(preset)`` with a ``Preset`` for each."""
