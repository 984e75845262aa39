"""A pytest plugin (``-p hook_monitor``) recording which hooks test-local plugins answered.

A hook counts when pluggy called an implementation of it from a plugin that is neither
built in nor installed (``DEFAULT_PLUGINS``, entry points): one a test registered. The
names go, as JSON ``{hook: [plugin, ...]}``, to the file ``$LLM_TFLITE_HOOK_LOG`` at the end.
"""

import importlib.metadata
import json
import os

_seen: dict[str, set] = {}


def pytest_configure(config):
    from llm_tflite.plugins.manager import DEFAULT_PLUGINS, pm

    installed = set(DEFAULT_PLUGINS) | {e.name for e in importlib.metadata.entry_points(group="llm_tflite")}

    def before(hook_name, hook_impls, kwargs):
        for impl in hook_impls:
            if impl.plugin_name not in installed:
                _seen.setdefault(hook_name, set()).add(impl.plugin_name)

    pm.add_hookcall_monitoring(before, lambda outcome, hook_name, hook_impls, kwargs: None)


def pytest_sessionfinish(session, exitstatus):
    with open(os.environ["LLM_TFLITE_HOOK_LOG"], "w", encoding="utf-8") as f:
        json.dump({hook: sorted(plugins) for hook, plugins in _seen.items()}, f)
