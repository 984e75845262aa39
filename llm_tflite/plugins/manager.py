"""The plugin manager: built-in plugins and entry points of group ``llm_tflite``.

Built-in families (``llm_tflite.families``) and strategies (``llm_tflite.quantize.strategies``) are plugins too, so
they register through exactly the same hooks as third-party packages.

``LLM_TFLITE_PLUGINS`` restricts which third-party plugins load: a comma-separated list
of entry-point names (empty: none). Built-in plugins always load.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys

import pluggy

from llm_tflite.plugins import hookspecs
from llm_tflite.errors import PluginError

DEFAULT_PLUGINS = (
    "llm_tflite.families.gpt2",
    "llm_tflite.families.palm.family",
    "llm_tflite.families.gemma3",
    "llm_tflite.families.qwen3",
    "llm_tflite.families.llama3",
    "llm_tflite.quantize.strategies",
    "llm_tflite.families.presets",
    "llm_tflite.runtime.builtin_plugin",
)
BUILTIN_DISTRIBUTION = "llm-tflite"

pm = pluggy.PluginManager("llm_tflite")
pm.add_hookspecs(hookspecs)

_distributions: dict[str, str] = {}
_loaded = False


def load_plugins() -> pluggy.PluginManager:
    """Register built-in and entry-point plugins once; return the plugin manager."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    for module_name in DEFAULT_PLUGINS:
        if pm.get_plugin(module_name) is None:
            pm.register(importlib.import_module(module_name), name=module_name)
            _distributions[module_name] = BUILTIN_DISTRIBUTION
    allowed = os.environ.get("LLM_TFLITE_PLUGINS")
    allow = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for entry_point in importlib.metadata.entry_points(group="llm_tflite"):
        if allow is not None and entry_point.name not in allow:
            continue
        if pm.get_plugin(entry_point.name) is not None:
            continue
        dist = entry_point.dist.name if entry_point.dist else entry_point.value
        try:
            module = entry_point.load()
            pm.register(module, name=entry_point.name)
        except Exception as e:  # a broken third-party plugin must not look like our bug
            raise PluginError(
                f"plugin {entry_point.name!r} from distribution {dist!r} failed to load: {e}. "
                f"Upgrade or uninstall it (pip uninstall {dist}), or skip it with "
                f"LLM_TFLITE_PLUGINS set to the plugins you want."
            ) from e
        _distributions[entry_point.name] = dist
    pm.check_pending()
    return pm


def distribution_of(plugin_name: str) -> str:
    """The distribution a plugin came from (``llm-tflite`` for built-ins)."""
    return _distributions.get(plugin_name, "(registered at runtime)")


def _plugin_in_frames(frames, impls: dict) -> str | None:
    """The plugin whose hook implementation is the innermost of ``frames`` (innermost first)."""
    for frame in frames:
        name = impls.get(frame.f_code)
        if name is not None:
            return name
    return None


def _outer_frames(frame):
    while frame is not None:
        yield frame
        frame = frame.f_back


def _traceback_frames(tb):
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return reversed(frames)


def call_hook(hook_name: str, **kwargs) -> None:
    """Call a hook through pluggy on every plugin; a plugin that raises becomes a ``PluginError`` naming it."""
    load_plugins()
    hook = getattr(pm.hook, hook_name)
    impls = {impl.function.__code__: impl.plugin_name for impl in hook.get_hookimpls()}
    try:
        hook(**kwargs)
    except Exception as e:
        plugin = _plugin_in_frames(_traceback_frames(e.__traceback__), impls) or "(unknown)"
        raise PluginError(
            f"plugin {plugin!r} ({distribution_of(plugin)}) raised in {hook_name}: {e!r}. "
            "Fix or uninstall that plugin."
        ) from e


def collect(hook_name: str) -> list[tuple[object, str]]:
    """Call one ``register_*`` hook (through pluggy) and return ``(item, plugin_name)`` pairs.

    Items come in plugin registration order (built-ins first), so a later plugin's item
    with the same name overrides a built-in one.
    """
    load_plugins()
    impls = {impl.function.__code__: impl.plugin_name for impl in getattr(pm.hook, hook_name).get_hookimpls()}
    items: list[tuple[object, str]] = []

    def register(item):
        plugin = _plugin_in_frames(_outer_frames(sys._getframe(1)), impls) or "(unknown)"
        items.append((item, plugin))

    call_hook(hook_name, register=register)
    order = {name: index for index, (name, _) in enumerate(pm.list_name_plugin())}
    return sorted(items, key=lambda pair: order.get(pair[1], len(order)))
