"""Look up what plugins registered: families, quantization strategies, presets, samplers, filters.

Lookup only: loading a model through them is ``llm_tflite.families.loading.load_model``.
"""

from __future__ import annotations

import dataclasses

from llm_tflite.errors import ModelSourceError, UnknownFamilyError, UnknownStrategyError
from llm_tflite.plugins.manager import collect


@dataclasses.dataclass(frozen=True)
class Registered:
    """An item a plugin registered, and the plugin it came from."""

    item: object
    plugin: str


def _by_name(hook_name: str) -> dict[str, Registered]:
    found: dict[str, Registered] = {}
    for item, plugin in collect(hook_name):
        found[item.name] = Registered(item, plugin)  # later plugins may override built-ins
    return found


def families() -> dict[str, Registered]:
    return _by_name("register_families")


def strategies() -> dict[str, Registered]:
    return _by_name("register_quantizers")


def presets() -> dict[str, Registered]:
    return _by_name("register_presets")


def samplers() -> dict[str, Registered]:
    """Sampler classes plugins registered (the built-in ones are ``llm_tflite.runtime.sampling.SAMPLERS``)."""
    return _by_name("register_samplers")


def filters() -> dict[str, Registered]:
    """Text filters, by name: ``profanity`` (built in) and the plugins'."""
    return _by_name("register_filters")


def _get(name: str, known: dict[str, Registered], what: str, error):
    if name not in known:
        raise error(
            f"unknown {what} {name!r}; registered: {', '.join(sorted(known)) or '(none)'}. "
            "Install the plugin that provides it (llm-tflite plugins lists what is loaded)."
        )
    return known[name].item


def get_family(name: str):
    """The family registered as ``name``; ``UnknownFamilyError`` lists the ones that exist."""
    return _get(name, families(), "model family", UnknownFamilyError)


def get_strategy(name: str):
    """The quantization strategy registered as ``name``; ``UnknownStrategyError`` lists the ones that exist."""
    return _get(name, strategies(), "quantization strategy", UnknownStrategyError)


def resolve_family(source, family: str | None = None):
    """The family that loads ``source``: the named one, a preset's, or the one that claims it."""
    if family is not None:
        return get_family(family)
    if isinstance(source, str):
        known_presets = presets()
        if source in known_presets:
            return get_family(known_presets[source].item.family)
    claimants = [r.item for r in families().values() if r.item.owns(source)]
    if not claimants:
        what = repr(source) if isinstance(source, str) else f"a {type(source).__name__} object"
        raise ModelSourceError(
            f"no registered model family recognises {what}; pass family=... (--family NAME), one of: "
            f"{', '.join(sorted(families()))}, or a preset that `llm-tflite plugins` lists"
        )
    return claimants[0]

