"""Loading models: ``load_model`` (any source, through the registered families) and KerasHub presets
with errors that say what went wrong and what to do."""

from __future__ import annotations

import contextlib
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


def hf_model_type(path: str) -> str | None:
    """The ``model_type`` of a local Hugging Face checkpoint directory (``config.json`` with
    ``model_type``, as ``transformers`` writes it), or None for anything else."""
    if not isinstance(path, str) or not is_preset_dir(path):
        return None
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or "registered_name" in config or not isinstance(config.get("model_type"), str):
        return None
    return config["model_type"]


#: The attribute of a KerasHub tokenizer that holds the ``tokenizer.json`` text of the Hugging Face
#: checkpoint it was loaded from (``attach_hf_tokenizer``): the tokenizer the file then carries.
HF_TOKENIZER_ATTRIBUTE = "llm_tflite_tokenizer_json"


def is_hf_source(source) -> bool:
    return isinstance(source, str) and (source.startswith("hf://") or hf_model_type(source) is not None)


def attach_hf_tokenizer(causal_lm, source: str) -> None:
    """Keep the checkpoint's own ``tokenizer.json`` with the model KerasHub loaded from it: KerasHub
    splits text with GPT-2's pattern whatever the checkpoint says (Qwen and Llama 3 split digits
    and punctuation their own way), so the file carries the checkpoint's tokenizer, run at run time
    by Hugging Face ``tokenizers`` itself. Nothing happens where there is none (Gemma's
    ``tokenizer.model`` is SentencePiece's own file already)."""
    try:
        from keras_hub.src.utils.preset_utils import get_file

        with open(get_file(source, "tokenizer.json"), encoding="utf-8") as f:
            text = f.read()
    except (OSError, ValueError, UnicodeDecodeError):  # FileNotFoundError too: no tokenizer.json
        return
    setattr(causal_lm.preprocessor.tokenizer, HF_TOKENIZER_ATTRIBUTE, text)


#: The attribute of a KerasHub tokenizer that holds the chat format of the Hugging Face checkpoint it
#: was loaded from (``attach_hf_chat``): ``{"template", "bos_token", "eos_token", "stop_token_ids"}``.
HF_CHAT_ATTRIBUTE = "llm_tflite_chat"


def _token_content(value) -> str | None:
    """A ``tokenizer_config.json`` token: a string, or ``{"content": ...}`` (an ``AddedToken``)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_hf_chat(source: str) -> dict | None:
    """The chat format of a Hugging Face checkpoint: its ``chat_template`` (``chat_template.jinja``, or
    ``tokenizer_config.json``'s ``chat_template``: a string, or a list of named templates, of which
    ``default``), its ``bos_token`` / ``eos_token`` strings and ``generation_config.json``'s end
    tokens; None when it has no template. Files that are missing or unreadable count as absent."""
    from keras_hub.src.utils.preset_utils import get_file

    def read(name: str):
        try:
            with open(get_file(source, name), encoding="utf-8") as f:
                return f.read() if name.endswith(".jinja") else json.load(f)
        except (OSError, ValueError, UnicodeDecodeError):  # FileNotFoundError too
            return None

    config = read("tokenizer_config.json")
    config = config if isinstance(config, dict) else {}
    template = read("chat_template.jinja") or config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str) or not template.strip():
        return None
    generation = read("generation_config.json")
    eos = generation.get("eos_token_id") if isinstance(generation, dict) else None
    eos = eos if isinstance(eos, list) else [eos]
    return {"template": template, "bos_token": _token_content(config.get("bos_token")),
            "eos_token": _token_content(config.get("eos_token")),
            "stop_token_ids": sorted({int(i) for i in eos if isinstance(i, int) and not isinstance(i, bool) and i >= 0})}


def attach_hf_chat(causal_lm, source: str) -> None:
    """Keep the checkpoint's chat format (``read_hf_chat``) with the model KerasHub loaded from it."""
    chat = read_hf_chat(source)
    if chat is not None:
        setattr(causal_lm.preprocessor.tokenizer, HF_CHAT_ATTRIBUTE, chat)


# A model trained under a mixed policy (mixed_float16, mixed_bfloat16) saves that policy in its preset's
# config.json, and KerasHub 0.30 cannot load it back: its ``_resolve_dtype`` asks
# ``standardize_dtype("mixed_float16")``, a ValueError. The weights are float32 (a mixed policy computes in
# 16 bits and keeps its variables in 32), so such a preset loads under the policy in force, and the presets
# we write say float32.


def _saved_policy(source: str) -> str:
    """The dtype policy's name a local KerasHub preset's ``config.json`` records ("" if none)."""
    try:
        with open(os.path.join(source, "config.json"), encoding="utf-8") as f:
            dtype = json.load(f).get("config", {}).get("dtype")
    except (OSError, ValueError, AttributeError):
        return ""
    name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
    return name if isinstance(name, str) else ""


def save_preset(causal_lm, directory) -> None:
    """``causal_lm.save_to_preset(directory)``, with what a model trained here needs besides.

    - LoRA adapters merge into the kernels in float32. Keras merges in the layer's compute dtype, so
      under a mixed policy every merged kernel would be rounded to 16 bits (EinsumDense.kernel casts the
      sum to ``compute_dtype``), though the frozen kernel and the adapters are float32.
    - The preset says float32 where a mixed policy was, as its weights are, so that KerasHub loads it.
    """
    from llm_tflite.console import stop_if_interrupted
    from llm_tflite.errors import OutputPathError
    from llm_tflite.litert.flatbuffer import write_atomic

    lora = [layer for layer in causal_lm._flatten_layers() if getattr(layer, "lora_enabled", False)]
    policies = [layer.dtype_policy for layer in lora]
    try:
        for layer in lora:
            layer.dtype_policy = "float32"
        stop_if_interrupted()  # before the preset's files, not between them
        causal_lm.save_to_preset(os.fspath(directory))
        if _saved_policy(directory).startswith("mixed_"):
            path = os.path.join(directory, "config.json")
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            config["config"]["dtype"]["config"]["name"] = "float32"
            write_atomic(path, json.dumps(config, indent=4).encode("utf-8"))
        tokenizer = causal_lm.preprocessor.tokenizer
        for attribute, name in SAVED_WITH_PRESET.items():  # what a Hugging Face checkpoint brought
            value = getattr(tokenizer, attribute, None)
            if value is not None:
                write_atomic(os.path.join(directory, name), json.dumps(value).encode("utf-8"))
    except OSError as e:
        raise OutputPathError(f"could not write the preset {os.fspath(directory)!r}: {e}; free some space (or point "
                              "TMPDIR elsewhere for temporary presets) and retry") from e
    finally:
        for layer, policy in zip(lora, policies):
            layer.dtype_policy = policy


#: What a model loaded from a Hugging Face checkpoint carries beside KerasHub's files, and the preset
#: files ``save_preset`` keeps it in (``load_keras_preset`` reads them back).
SAVED_WITH_PRESET = {HF_TOKENIZER_ATTRIBUTE: "llm_tflite_tokenizer_json.json", HF_CHAT_ATTRIBUTE: "llm_tflite_chat.json"}


def _attach_saved(loaded, source: str) -> None:
    """Give a model (or preprocessor) loaded from a preset ``save_preset`` wrote what it kept."""
    tokenizer = getattr(loaded, "tokenizer", None) or getattr(getattr(loaded, "preprocessor", None), "tokenizer", None)
    for attribute, name in SAVED_WITH_PRESET.items():
        path = os.path.join(source, name)
        if tokenizer is None or not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                value = json.load(f)
        except (OSError, ValueError) as e:
            raise ModelSourceError(f"{path!r} is unreadable ({e}); save the preset again") from None
        if not isinstance(value, dict if attribute == HF_CHAT_ATTRIBUTE else str):
            raise ModelSourceError(f"{path!r} holds a {type(value).__name__}, not what llm-tflite writes there; "
                                   "save the preset again")
        setattr(tokenizer, attribute, value)


def in_float32(causal_lm):
    """``causal_lm`` as conversion needs it: float32 compute and plain weights.

    A model built under a mixed policy (``mixed_float16``, ``mixed_bfloat16``) or with LoRA enabled
    goes through a temporary preset and comes back in float32 with LoRA merged into the kernels, as
    ``save_to_preset`` writes it, so it converts to the file its float32 copy gives. Others come back as is.
    """
    import keras

    def plain(layer) -> bool:  # quantized layers (int8, int4 policies) stay as they are
        policy = layer.dtype_policy
        return (policy.name == "float32" or policy.quantization_mode is not None) and not getattr(
            layer, "lora_enabled", False)

    if all(plain(layer) for layer in causal_lm._flatten_layers() if layer.weights):
        return causal_lm
    import tempfile

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        with tempfile.TemporaryDirectory(prefix="llm_tflite_float32_") as tmp:
            save_preset(causal_lm, tmp)
            return load_model(tmp)[1]
    finally:
        keras.config.set_dtype_policy(previous)


#: A Hugging Face weight this large (bytes) is ported into its variable a block of rows at a time.
PORT_BLOCK_BYTES = 64 << 20


@contextlib.contextmanager
def _ported_by_rows():
    """KerasHub's Transformers loader (``SafetensorLoader.port_weight``), without two whole copies of a
    large weight beside its variable (the tensor read from the file, and TensorFlow's copy of it at
    ``assign``): a weight that needs no reshaping hook is read from the file and assigned
    ``PORT_BLOCK_BYTES`` of rows at a time. Gemma 3 270M's 0.6 GiB embedding made the conversion's
    peak: +1.25 GiB while it was ported. Other weights, and other backends, go through KerasHub's own."""
    import numpy as np
    from keras_hub.src.utils.transformers import safetensor_utils

    from llm_tflite.console import keras_backend

    loader = safetensor_utils.SafetensorLoader
    original = loader.port_weight

    def port_weight(self, keras_variable, hf_weight_key, hook_fn=None):
        shape = tuple(int(d) for d in keras_variable.shape)
        dtype = np.dtype(keras_variable.dtype)
        large = len(shape) >= 2 and int(np.prod(shape)) * dtype.itemsize > PORT_BLOCK_BYTES
        if hook_fn is not None or not large or keras_backend() != "tensorflow":
            return original(self, keras_variable, hf_weight_key, hook_fn)
        stored = _safetensor_slice(self, hf_weight_key)
        if tuple(stored.get_shape()) != shape:
            return original(self, keras_variable, hf_weight_key, hook_fn)  # KerasHub says what is wrong
        rows = max(1, PORT_BLOCK_BYTES // (int(np.prod(shape[1:])) * dtype.itemsize))
        for start in range(0, shape[0], rows):
            end = min(start + rows, shape[0])  # safetensors refuses a slice past the end
            keras_variable.value[start:end].assign(np.asarray(stored[start:end], dtype))

    loader.port_weight = port_weight
    try:
        yield
    finally:
        loader.port_weight = original


def _safetensor_slice(loader, hf_weight_key):
    """The lazily read tensor ``SafetensorLoader.get_tensor`` would return whole (its file and key
    resolution, KerasHub 0.30)."""
    import safetensors
    from keras_hub.src.utils.preset_utils import SAFETENSOR_FILE, get_file

    if loader.safetensor_config is None:
        fname = loader.fname if loader.fname is not None else SAFETENSOR_FILE
    else:
        fname = loader.safetensor_config["weight_map"][loader.get_prefixed_key(
            hf_weight_key, loader.safetensor_config["weight_map"])]
    file = loader.safetensor_files.get(fname)
    if file is None:
        file = loader.safetensor_files[fname] = loader.enter_context(
            safetensors.safe_open(get_file(loader.preset, fname), framework="np"))
    return file.get_slice(loader.get_prefixed_key(hf_weight_key, file))


def load_keras_preset(task_cls, source: str, **kwargs):
    """``task_cls.from_preset(source, **kwargs)``, turning download and file errors into
    ``ModelSourceError``. ``source``: a KerasHub preset (name, handle or directory) or a Hugging Face
    checkpoint (``hf://ORG/NAME`` or a local directory in its layout), which KerasHub's Transformers
    loader reads."""
    if "://" not in source and (os.path.sep in source or source.startswith(".")):
        if not os.path.exists(source):
            raise ModelSourceError(f"no such preset directory: {source!r}")
        if not is_preset_dir(source):
            raise ModelSourceError(
                f"{source!r} is neither a KerasHub preset directory nor a Hugging Face checkpoint (no "
                "config.json); save one with causal_lm.save_to_preset(dir) or model.save_pretrained(dir)"
            )
    if "dtype" not in kwargs and _saved_policy(source).startswith("mixed_"):  # see _saved_policy
        import keras

        kwargs["dtype"] = keras.config.dtype_policy()
    try:
        with _ported_by_rows():
            loaded = task_cls.from_preset(source, **kwargs)
    except Exception as e:  # kagglehub/HF raise many types; none helps a user on its own
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = (
            "If you are offline, download the preset elsewhere and pass its local directory, "
            "or for benchmarks convert a registered preset name (llm-tflite plugins) with "
            "--random-weights, which downloads nothing."
            if not os.path.isdir(source)
            else "Check that the checkpoint is complete: config.json, model.safetensors (or its shards and "
            "model.safetensors.index.json) and the tokenizer files (tokenizer.json, or tokenizer.model for Gemma)."
            if hf_model_type(source) is not None
            else "Check that the directory was written by save_to_preset with a matching KerasHub version."
        )
        raise ModelSourceError(f"could not load preset {source!r}: {type(e).__name__}: {first_line[:300]}. {hint}") from e
    if os.path.isdir(source):
        _attach_saved(loaded, source)
    return loaded


def load_model(source, *, family: str | None = None, random_weights: bool = False):
    """Load a Keras causal LM from a preset name, handle, local preset directory or model object.

    Args:
        source: ``"gpt2_tiny_shakespeare"``, ``"kaggle://keras/gpt2/keras/gpt2_base_en"``, a
            directory written by ``save_to_preset``, a Hugging Face checkpoint (``"hf://Qwen/Qwen3-0.6B"``
            or a local directory in its layout, read by KerasHub's Transformers loader), or a Keras model.
        family: the family name, when it cannot be told from ``source``.
        random_weights: build the architecture with random weights (no download).

    Returns:
        ``(family, model)``.

    Example:
        >>> family, lm = load_model("gpt2_tiny_shakespeare")  # doctest: +SKIP
    """
    from llm_tflite.console import TRAINING_BACKENDS, import_keras
    from llm_tflite.plugins import registry  # here: importing llm_tflite loads no plugins

    try:
        fam = registry.resolve_family(source, family)
    except ModelSourceError as e:
        model_type = hf_model_type(source)
        if model_type is None:
            raise
        readers = {t: name for name, r in registry.families().items() for t in getattr(r.item, "hf_model_types", ())}
        raise ModelSourceError(
            f"{source!r} is a Hugging Face checkpoint of model_type {model_type!r}, which no registered family "
            f"reads; the families read: {', '.join(f'{t} ({n})' for t, n in sorted(readers.items()))}. A family "
            "plugin can add it (docs/plugins.md)") from e
    import_keras(TRAINING_BACKENDS)  # start-up chatter silenced; conversion makes sure of TensorFlow itself
    config = None
    if isinstance(source, str):
        preset = registry.presets().get(source)
        if preset is not None:
            source, config = preset.item.source, preset.item.config
    return fam, fam.load(source, random_weights=random_weights, config=config)
