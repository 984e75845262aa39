"""The interface a model family implements. Built-in and third-party families alike."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any


@contextlib.contextmanager
def without_preprocessor(causal_lm):
    """The KerasHub task fed token ids directly: its preprocessor is detached for the block.

    ``fit`` and ``generate`` on ``{"token_ids", "padding_mask"}`` need it; it is put back
    even when the block raises.
    """
    preprocessor, causal_lm.preprocessor = causal_lm.preprocessor, None
    try:
        yield causal_lm
    finally:
        causal_lm.preprocessor = preprocessor


@dataclasses.dataclass(frozen=True)
class KVCacheSpec:
    """Size of the per-layer caches ``kv_cache_k_{i}`` and ``kv_cache_v_{i}``, each
    ``[1, heads, context, head_dim]`` (``families.ops``)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    #: Each layer's sliding window in tokens, or None (global); empty: every layer is global. A
    #: local layer's caches may hold only its window plus a chunk (``families.ops.Ring``): the
    #: converter decides (``Converter(ring_caches=...)``) and records each cache's length.
    sliding_windows: tuple = ()
    #: The caches' type, the converter's choice (``Converter(kv_cache=...)``): ``float32``, or ``int8``
    #: values with one float32 scale per slot and head beside them, ``kv_cache_k_{i}_scale``
    #: and ``kv_cache_v_{i}_scale``, each ``[1, heads, context, 1]``
    #: (``families.ops.Quantized``, what a family's cache pair then holds).
    dtype: str = "float32"

    def cache_lengths(self, context_length: int, longest_chunk: int, ring: bool = True, multiple: int = 1) -> list[int]:
        """Each layer's cache length: the context, or for a local layer (with ``ring``) its window
        plus the longest chunk a signature takes, rounded up to a ``multiple``, when that is shorter
        (``families.ops.Ring``)."""
        windows = self.sliding_windows or [None] * self.num_layers
        return [min(context_length, -(-(int(w) + int(longest_chunk)) // multiple) * multiple) if ring and w
                else context_length for w in windows]


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named model: which family loads it, from where, and (for random weights) its architecture.

    Args:
        name: the name users type (``gpt2_base_en``).
        family: the family's name (``gpt2``).
        source: what the family's ``load`` receives: a KerasHub preset name, a handle or a directory.
        description: one line for ``llm-tflite plugins``.
        config: backbone arguments, so ``--random-weights`` needs no download.
    """

    name: str
    family: str
    source: str
    description: str = ""
    config: dict | None = None


class ModelFamily:
    """A kind of model llm-tflite can convert (GPT-2, PaLM-style, ...).

    Subclass it, fill in the methods, and register an instance from a plugin's
    ``register_families`` hook. The core owns signatures, conversion, quantization and
    the runtime loop; the family owns loading, the tokenizer and the forward pass.
    """

    #: Name users type with ``--family``.
    name: str = ""
    #: One line shown by ``llm-tflite plugins``.
    description: str = ""
    #: The forward pass can run a batched decode (``Converter(batch_sizes=...)``): it takes each
    #: token's position from ``input_pos`` (not ``input_pos[0]`` + offset) and writes and reads the
    #: caches only through ``update_key_cache`` / ``update_value_cache`` / ``causal_attention``,
    #: which then receive ``Rows`` (one cache per token: each token is another sequence's step).
    batched_decode: bool = False

    def owns(self, source: Any) -> bool:
        """True if ``source`` (a Keras model, a preset directory or handle) is this family's."""
        return False

    def load(self, source: Any, *, random_weights: bool = False, config: dict | None = None):
        """Return a Keras causal LM from a preset name/handle, a local preset directory or a model object.

        With ``random_weights`` build the architecture (``config``) without downloading weights.
        """
        raise NotImplementedError

    def tokenizer_spec(self, model) -> dict:
        """JSON-serialisable tokenizer description (``{"type": "gpt2_bpe", ...}``) stored in the artifact."""
        raise NotImplementedError

    def special_tokens(self, model) -> dict:
        """``{"bos_id": int | None, "eos_id": int | None, "add_bos": bool}``.

        The default reads a KerasHub ``CausalLM``'s preprocessor (``start_token_id``,
        ``end_token_id``, ``add_start_token``); override it for other models.
        """
        tokenizer = model.preprocessor.tokenizer
        return {
            "bos_id": int(tokenizer.start_token_id),
            "eos_id": int(tokenizer.end_token_id),
            "add_bos": bool(model.preprocessor.add_start_token),
        }

    #: The family's documented chat template (a file in ``llm_tflite/families/chat_templates``, a
    #: Hugging Face ``chat_template``), used when a model brings none of its own; None: no chat.
    chat_template_file: str | None = None
    #: Tokens that end a chat turn, beside the end token (``<end_of_turn>``, ``<|im_end|>``).
    end_of_turn_tokens: tuple = ()
    #: LiteRT-LM's ``LlmModelType`` for the family's bundles with a chat template: how its Conversation
    #: API hands messages to the template (``generic_model``, ``gemma3``, ``qwen3``, ...).
    litertlm_model_type: str = "generic_model"

    def chat_format(self, model) -> dict | None:
        """How the model chats, for the file's record: ``{"template", "bos_token", "eos_token",
        "stop_token_ids"}``, or None when it has no chat template.

        The template is the Hugging Face checkpoint's own (``chat_template`` in its
        ``tokenizer_config.json``, or ``chat_template.jinja``) when the model was loaded from one,
        else the family's ``chat_template_file``. Chat stops at the end token, ``end_of_turn_tokens``
        and the checkpoint's ``generation_config.json`` end tokens.
        """
        import os

        from llm_tflite.families.loading import HF_CHAT_ATTRIBUTE

        tokenizer = getattr(getattr(model, "preprocessor", None), "tokenizer", None)
        found = dict(getattr(tokenizer, HF_CHAT_ATTRIBUTE, None) or {})
        special = self.special_tokens(model)
        if not found.get("template"):
            if not self.chat_template_file:
                return None
            path = os.path.join(os.path.dirname(__file__), "chat_templates", self.chat_template_file)
            with open(path, encoding="utf-8") as f:
                found["template"] = f.read()
            found["bos_token"] = _token_text(tokenizer, special.get("bos_id"))
            found["eos_token"] = _token_text(tokenizer, special.get("eos_id"))
        stops = set(found.get("stop_token_ids") or ())
        stops |= {i for i in (_token_id(tokenizer, t) for t in self.end_of_turn_tokens) if i is not None}
        if special.get("eos_id") is not None:
            stops.add(int(special["eos_id"]))
        return {"template": found["template"], "bos_token": found.get("bos_token"),
                "eos_token": found.get("eos_token"), "stop_token_ids": sorted(stops)}

    def litertlm_tokenizer(self, tokenizer_spec: dict) -> tuple[str, bytes]:
        """The tokenizer a ``.litertlm`` bundle carries for LiteRT-LM's engine: ``("hf", tokenizer.json
        bytes)`` or ``("sentencepiece", model proto bytes)``.

        ``tokenizer_spec`` is what ``tokenizer_spec`` stored in the file. The default handles the
        built-in types (``gpt2_bpe`` -> HF byte-level BPE, ``hf_tokenizer`` -> its ``tokenizer.json``,
        ``sentencepiece`` -> its model); override it
        for another tokenizer, or when the engine must see a variant of it (the PaLM-style family
        restores newlines in its SentencePiece model). It runs without TensorFlow.
        """
        import base64

        from llm_tflite.errors import ModelFileError

        kind = tokenizer_spec.get("type")
        if kind == "hf_tokenizer":  # a checkpoint's own tokenizer.json: the engine reads it as it is
            return "hf", tokenizer_spec["json"].encode("utf-8")
        if kind == "gpt2_bpe":  # the runtime's own tokenizer, so both engines read text alike
            from llm_tflite.tokenizers import tokenizer_from_spec

            return "hf", tokenizer_from_spec(tokenizer_spec).to_json().encode("utf-8")
        if kind == "sentencepiece":
            return "sentencepiece", base64.b64decode(tokenizer_spec["model"])
        raise ModelFileError(f"family {self.name or '(unknown)'!r} cannot bundle a {kind!r} tokenizer for "
                             "LiteRT-LM; the family must implement litertlm_tokenizer")

    def count_weights(self, config: dict) -> int | None:
        """Weights of the architecture ``config`` (backbone arguments, as a preset's ``config.json``
        holds them) describes, without building it; None if unknown. Lets conversion refuse a model
        too large for a strategy before loading it (``ModelTooLargeError``)."""
        return None

    def max_context_length(self, model) -> int:
        """Longest sequence the model's position encoding supports."""
        raise NotImplementedError

    def kv_cache_spec(self, model) -> KVCacheSpec:
        raise NotImplementedError

    def forward_with_cache(self, model, tokens, input_pos, caches):
        """TensorFlow forward pass with an external KV cache.

        Args:
            model: what ``load`` returned.
            tokens: int32 ``[1, L]``.
            input_pos: int32 ``[L]``, consecutive positions of ``tokens``.
            caches: list of ``(k, v)`` float32, one pair per layer: keys and values each
                ``[1, heads, context, head_dim]`` (``llm_tflite.families.cache_shapes``). A local
                layer's pair (``KVCacheSpec.sliding_windows``) may be a ``families.ops.Ring``, shorter:
                pass ``ring=True`` to the cache updates and ``causal_attention`` for it.

        Returns:
            ``(logits [1, L, vocab], new_caches)``; use ``llm_tflite.families.update_key_cache`` / ``update_value_cache`` to write
            the new keys/values so the file keeps builtin ops only.
        """
        raise NotImplementedError

    def forward_with_hidden_states(self, model, tokens, input_pos, caches):
        """``forward_with_cache`` that also returns the last hidden states ``[1, L, hidden]`` (the
        vectors the LM head scores), for ``--hidden-states`` files and contrastive search.

        Returns:
            ``(logits, new_caches, hidden_states)``.
        """
        from llm_tflite.errors import ConversionError

        raise ConversionError(f"family {self.name!r} does not expose hidden states; convert without --hidden-states")

    def generate_function(self, model, *, max_length: int, sampler: str, seed: int | None, **settings):
        """A ``tf.function`` of a scalar ``tf.string`` prompt -> ``tf.string`` text, for ``--mode generate``.

        ``settings``: ``temperature``, ``top_k``, ``top_p`` of a random sampler, fixed in the graph
        (``llm_tflite.families.generate_graph.keras_generate_function`` takes them as they are).
        """
        from llm_tflite.errors import ConversionError

        raise ConversionError(
            f"family {self.name!r} does not support the 'generate' export mode; use --mode prefill_decode"
        )

    #: Backbone attributes ``model_config`` records when the backbone has them (KerasHub names).
    MODEL_CONFIG_ATTRIBUTES = (
        "num_layers", "num_heads", "num_query_heads", "num_key_value_heads", "hidden_dim", "vocabulary_size",
    )

    def model_config(self, model) -> dict:
        """Small facts about the model recorded in the artifact (sizes, parameter count).

        The default reads a KerasHub backbone's usual attributes and counts its parameters.
        """
        backbone = getattr(model, "backbone", None)
        if backbone is None:
            return {}
        config = {a: getattr(backbone, a) for a in self.MODEL_CONFIG_ATTRIBUTES if hasattr(backbone, a)}
        return {**config, "parameters": int(backbone.count_params())}


def _token_id(tokenizer, text: str) -> int | None:
    """The id of the token spelled ``text`` in a KerasHub tokenizer, or None when it has none."""
    try:
        i = int(tokenizer.token_to_id(text))
        return i if tokenizer.id_to_token(i) == text else None
    except Exception:  # KeyError, or a tokenizer without these methods
        return None


def _token_text(tokenizer, i) -> str | None:
    try:
        return None if i is None else str(tokenizer.id_to_token(int(i)))
    except Exception:
        return None
