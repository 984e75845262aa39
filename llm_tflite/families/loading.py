"""Loading models: ``load_model`` (any source, through the registered families) and KerasHub presets
with errors that say what went wrong and what to do."""

from __future__ import annotations

import json
import os

from llm_tflite.errors import ModelSourceError


def is_preset_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def preset_class_name(path: str) -> str | None:
    """The backbone class a KerasHub preset directory holds (``GPT2Backbone``), or None."""
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("class_name")
    except (OSError, ValueError):
        return None


def load_keras_preset(task_cls, source: str):
    """``task_cls.from_preset(source)``, turning download and file errors into ``ModelSourceError``."""
    if "://" not in source and (os.path.sep in source or source.startswith(".")):
        if not os.path.exists(source):
            raise ModelSourceError(f"no such preset directory: {source!r}")
        if not is_preset_dir(source):
            raise ModelSourceError(
                f"{source!r} is not a KerasHub preset directory (no config.json); save one with "
                "causal_lm.save_to_preset(dir)"
            )
    try:
        return task_cls.from_preset(source)
    except Exception as e:  # kagglehub/HF raise many types; none helps a user on its own
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = (
            "If you are offline, download the preset elsewhere and pass its local directory, "
            "or for benchmarks convert a registered preset name (llm-tflite plugins) with "
            "--random-weights, which downloads nothing."
            if not os.path.isdir(source)
            else "Check that the directory was written by save_to_preset with a matching KerasHub version."
        )
        raise ModelSourceError(f"could not load preset {source!r}: {type(e).__name__}: {first_line[:300]}. {hint}") from e


def load_model(source, *, family: str | None = None, random_weights: bool = False):
    """Load a Keras causal LM from a preset name, handle, local preset directory or model object.

    Args:
        source: ``"gpt2_tiny_shakespeare"``, ``"kaggle://keras/gpt2/keras/gpt2_base_en"``, a
            directory written by ``save_to_preset``, or a Keras model.
        family: the family name, when it cannot be told from ``source``.
        random_weights: build the architecture with random weights (no download).

    Returns:
        ``(family, model)``.

    Example:
        >>> family, lm = load_model("gpt2_tiny_shakespeare")  # doctest: +SKIP
    """
    from llm_tflite.console import import_keras
    from llm_tflite.plugins import registry  # here: importing llm_tflite loads no plugins

    fam = registry.resolve_family(source, family)
    import_keras()  # TensorFlow backend, start-up chatter silenced
    config = None
    if isinstance(source, str):
        preset = registry.presets().get(source)
        if preset is not None:
            source, config = preset.item.source, preset.item.config
    return fam, fam.load(source, random_weights=random_weights, config=config)
