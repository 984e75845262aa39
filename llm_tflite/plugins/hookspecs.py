"""The hooks a plugin can implement.

The ``register_*`` hooks take a ``register`` callback (call it once per item), so adding
hook arguments later never breaks a plugin; pluggy passes each implementation only the
arguments it names.
"""

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


@hookspec
def register_samplers(register):
    """Register next-token samplers: call ``register(cls)`` with a ``TokenSampler`` subclass for each."""


@hookspec
def register_filters(register):
    """Register text filters: call ``register(filter)`` with an object that has ``name`` and ``find(text)``."""


@hookspec
def register_commands(cli):
    """Add ``llm-tflite`` subcommands: ``cli.add_parser(name, help=...)`` returns an argparse parser;
    give it ``set_defaults(func=handler)`` where ``handler(args)`` returns the exit code."""
