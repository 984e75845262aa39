"""A kit of decoder parts, and the decoder loop that composes them.

Today's decoders (Gemma 3, Qwen 3, Llama 3.x and their kin) differ in a handful of
choices: the norm (RMSNorm, Gemma's ``1 + w``), where norms sit (pre only, or also after
attention and the MLP), query/key norms, RoPE (base, scaling, per layer), grouped-query
attention, the attention scale and logit soft-cap, local sliding-window layers next to
global ones, the MLP's gate (SwiGLU, GeGLU), the embedding scale and a tied or separate
head. A family describes its model with ``Block`` and ``Attention`` records of those
choices, made from its KerasHub backbone's own layers (so norms, projections and RoPE
compute exactly what KerasHub computes), and ``DecoderFamily`` runs them over the external
KV caches of ``families.ops``: a new family is the mapping from its backbone to the kit.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from llm_tflite.families.base import KVCacheSpec, ModelFamily

Layer = Callable  # a Keras layer (or any function) of one tensor


@dataclasses.dataclass
class Attention:
    """One layer's attention: projections ``[1, L, hidden] -> [1, L, heads, head_dim]`` and back.

    Attributes:
        query, key, value, output: the projections (KerasHub's ``EinsumDense`` layers).
        rope: ``rope(x, positions)`` rotates ``x`` ``[1, L, heads, head_dim]`` for ``positions`` ``[L]``
            (KerasHub's ``RotaryEmbedding`` layer of this layer: its base and scaling).
        query_norm, key_norm: norms over ``head_dim`` before RoPE (Gemma 3, Qwen 3), or None.
        scale: query scale (None: ``1 / sqrt(head_dim)``).
        soft_cap: attention logit soft-cap (Gemma 2), or None.
        sliding_window: a local layer's window in tokens, or None (global).
    """

    query: Layer
    key: Layer
    value: Layer
    output: Layer
    rope: Callable
    query_norm: Layer | None = None
    key_norm: Layer | None = None
    scale: float | None = None
    soft_cap: float | None = None
    sliding_window: int | None = None


@dataclasses.dataclass
class Block:
    """One decoder layer: ``x + post_attention_norm(attention(attention_norm(x)))``, then the same
    with the MLP (the post norms are Gemma's; None skips them)."""

    attention_norm: Layer
    attention: Attention
    mlp_norm: Layer
    mlp: Layer
    post_attention_norm: Layer | None = None
    post_mlp_norm: Layer | None = None


def gated_mlp(gate: Layer, up: Layer, down: Layer, activation: Callable) -> Callable:
    """``down(activation(gate(x)) * up(x))``: SwiGLU with ``silu``, GeGLU with tanh-approximated ``gelu``."""
    return lambda x: down(activation(gate(x)) * up(x))


def llama_style_block(layer, **attention) -> Block:
    """The ``Block`` of a KerasHub decoder layer laid out as Llama's (Llama, Qwen and their kin:
    ``_self_attention_layernorm``, ``_self_attention_layer`` with ``_query_dense`` ... ``_output_dense``
    and ``rotary_embedding_layer``, ``_feedforward_layernorm``, a gated MLP); ``attention``: the
    ``Attention`` fields where the family differs (query/key norms, a sliding window)."""
    self_attention = layer._self_attention_layer
    return Block(
        attention_norm=layer._self_attention_layernorm,
        attention=Attention(
            query=self_attention._query_dense, key=self_attention._key_dense, value=self_attention._value_dense,
            output=self_attention._output_dense, rope=keras_rope(self_attention.rotary_embedding_layer),
            scale=self_attention._inv_norm_factor, **attention),
        mlp_norm=layer._feedforward_layernorm,
        mlp=gated_mlp(layer._feedforward_gate_dense, layer._feedforward_intermediate_dense,
                      layer._feedforward_output_dense, layer.activation),
    )


def keras_rope(layer) -> Callable:
    """``rope(x, positions)`` of a KerasHub ``RotaryEmbedding`` layer (any of its scaling variants).

    The layer's own cos and sin tables (its base, scaling and YaRN factor), applied with fewer ops than
    its ``call``: KerasHub turns ``(-x2, x1)`` into a negation, a stack and a reshape, here it is one
    concatenation ``(x2, x1)`` times ``sin`` with the sign folded in (the same values: a sign flip is
    exact), 2 ops fewer per call, 4 per layer (Gemma 3 270M's decode: 1,334 ops). A subclass that
    rotates otherwise, other axes or another dtype run the layer itself."""
    from keras_hub.src.layers.modeling.rotary_embedding import RotaryEmbedding

    kind = type(layer)
    if not isinstance(layer, RotaryEmbedding) or kind.call is not RotaryEmbedding.call or \
            kind._apply_rotary_pos_emb is not RotaryEmbedding._apply_rotary_pos_emb or \
            (layer.sequence_axis, layer.feature_axis) != (1, -1):
        return lambda x, positions: layer(x, positions=positions)

    def rope(x, positions):
        import tensorflow as tf

        if not isinstance(x, tf.Tensor) or x.dtype != layer.compute_dtype or x.shape.rank != 4:
            return layer(x, positions=positions)
        cos, sin = layer._compute_cos_sin_embedding(x, 0, positions)
        half = x.shape[-1] // 2
        x1, x2 = tf.split(x, 2, axis=-1)
        signs = tf.constant([-1.0] * half + [1.0] * half, sin.dtype)
        return x * cos + tf.concat([x2, x1], axis=-1) * (sin * signs)

    return rope


def run_blocks(blocks: list[Block], x, input_pos, caches):
    """The decoder layers over ``x`` ``[1, L, hidden]`` at ``input_pos``; returns ``(x, new_caches)``.

    A local layer's caches may be a ``families.ops.Ring`` (its last slots only)."""
    from llm_tflite.families.ops import Ring, causal_attention, update_key_cache, update_value_cache

    new_caches = []
    for block, layer_caches in zip(blocks, caches):
        key_cache, value_cache = layer_caches
        ring = isinstance(layer_caches, Ring)
        attention = block.attention
        h = block.attention_norm(x)
        query, key = attention.query(h), attention.key(h)
        if attention.query_norm is not None:
            query = attention.query_norm(query)
        if attention.key_norm is not None:
            key = attention.key_norm(key)
        query, key = attention.rope(query, input_pos), attention.rope(key, input_pos)
        key_cache = update_key_cache(key_cache, key, input_pos, ring)
        value_cache = update_value_cache(value_cache, attention.value(h), input_pos, ring)
        context = causal_attention(query, key_cache, value_cache, input_pos, scale=attention.scale,
                                   soft_cap=attention.soft_cap, sliding_window=attention.sliding_window, ring=ring)
        attended = attention.output(context)
        if block.post_attention_norm is not None:
            attended = block.post_attention_norm(attended)
        x = x + attended
        mlp = block.mlp(block.mlp_norm(x))
        if block.post_mlp_norm is not None:
            mlp = block.post_mlp_norm(mlp)
        x = x + mlp
        new_caches.append((key_cache, value_cache))
    return x, new_caches


class DecoderFamily(ModelFamily):
    """A family of KerasHub decoders run by the kit: subclasses give the KerasHub classes, the
    ``blocks`` of a model and, where it differs, ``embed``; the rest is here.

    Class attributes:
        causal_lm: name of the ``keras_hub.models`` task class (``Gemma3CausalLM``).
        backbone_class: name of its backbone class, as preset directories' ``config.json`` say.
        preset_prefixes: KerasHub preset names this family claims (``("gemma3_",)``).
    """

    batched_decode = True  # positions from input_pos, caches through families.ops
    causal_lm = ""
    backbone_class = ""
    preset_prefixes: tuple = ()
    #: ``model_type`` values of Hugging Face checkpoints (``config.json``) the family reads through
    #: KerasHub's Transformers loader, and lower-case prefixes of their hub names (``hf://google/gemma-3-1b-it``)
    hf_model_types: tuple = ()
    hf_name_prefixes: tuple = ()
    #: positions the family's published models were trained for (the context a file may have)
    max_positions = 8192

    # -- what a subclass writes -----------------------------------------------------------
    def blocks(self, model) -> list[Block]:
        raise NotImplementedError

    def random_tokenizer(self, vocabulary_size: int):
        """A KerasHub tokenizer of ``vocabulary_size`` ids for a random-weight model of a preset's
        architecture (no download): the shipped small tokenizer grown to that size."""
        raise NotImplementedError

    def train_tokenizer(self, text: str, vocabulary_size: int):
        """A KerasHub tokenizer of the family's kind trained on ``text`` (``llm-tflite train``)."""
        raise NotImplementedError

    def tokenizer_spec(self, model) -> dict:
        raise NotImplementedError

    def embed(self, model, tokens):
        """Token embeddings ``[1, L, hidden]`` (Gemma scales them by ``sqrt(hidden)``)."""
        import tensorflow as tf

        # a 1-D lookup, so weight quantizers can treat it as an EMBEDDING_LOOKUP table
        return tf.gather(model.backbone.token_embedding.embeddings, tf.reshape(tokens, [-1]))[None]

    # -- the rest -------------------------------------------------------------------------
    def load(self, source, *, random_weights=False, config=None):
        import json
        import os

        import keras
        import keras_hub

        from llm_tflite.errors import ModelSourceError
        from llm_tflite.families.loading import attach_hf_chat, attach_hf_tokenizer, is_hf_source, is_preset_dir, load_keras_preset

        task = getattr(keras_hub.models, self.causal_lm)
        if not isinstance(source, str):
            if getattr(source, "preprocessor", None) is None:
                raise ModelSourceError(f"this {type(source).__name__} has no preprocessor, so its tokenizer is "
                                       f"unknown; build it with keras_hub.models.{self.causal_lm}(backbone=..., "
                                       f"preprocessor=keras_hub.models.{self.causal_lm}Preprocessor(...))")
            return source
        if is_hf_source(source):  # a Hugging Face checkpoint: KerasHub's Transformers loader reads it
            if random_weights:
                keras.utils.set_random_seed(0)
            lm = load_keras_preset(task, source, load_weights=not random_weights)
            attach_hf_tokenizer(lm, source)
            attach_hf_chat(lm, source)
            return lm
        if not random_weights:
            return load_keras_preset(task, source)
        preprocessor = None
        if is_preset_dir(source):  # its own architecture and tokenizer, new weights
            with open(os.path.join(source, "config.json"), encoding="utf-8") as f:
                config = json.load(f)["config"]
            preprocessor = load_keras_preset(getattr(keras_hub.models, self.causal_lm + "Preprocessor"), source)
        if config is None:
            raise ModelSourceError(f"no architecture is known for {source!r} without downloading it; use one of "
                                   "the registered presets (llm-tflite plugins) or a local preset directory")
        keras.utils.set_random_seed(0)
        backbone = getattr(keras_hub.models, self.backbone_class)(
            **{k: v for k, v in config.items() if k not in ("name", "trainable", "dtype")})
        if preprocessor is None:
            preprocessor = getattr(keras_hub.models, self.causal_lm + "Preprocessor")(
                self.random_tokenizer(int(config["vocabulary_size"])), sequence_length=1024)
        return task(backbone=backbone, preprocessor=preprocessor)

    def max_context_length(self, model) -> int:
        return self.max_positions

    def owns(self, source) -> bool:
        from llm_tflite.families.loading import hf_model_type, is_preset_dir, preset_class_name

        if isinstance(source, str):
            if is_preset_dir(source):
                model_type = hf_model_type(source)
                if model_type is not None:
                    return model_type in self.hf_model_types
                return preset_class_name(source) == self.backbone_class
            if source.startswith("hf://"):  # "hf://Qwen/Qwen3-0.6B": the hub name says which model it is
                return source.lower().rstrip("/").rsplit("/", 1)[-1].startswith(self.hf_name_prefixes)
            # a preset name, or a handle whose path names one ("kaggle://keras/gemma3/keras/gemma3_1b/3")
            parts = source.lower().split("://", 1)[-1].split("/")
            return any(part.startswith(self.preset_prefixes) for part in parts)
        return any(c.__name__ == self.causal_lm for c in type(source).__mro__)

    def kv_cache_spec(self, model) -> KVCacheSpec:
        backbone = model.backbone
        head_dim = getattr(backbone, "head_dim", None) or backbone.hidden_dim // backbone.num_query_heads
        return KVCacheSpec(num_layers=backbone.num_layers, num_kv_heads=backbone.num_key_value_heads,
                           head_dim=int(head_dim),
                           sliding_windows=tuple(block.attention.sliding_window for block in self.blocks(model)))

    def final_norm(self, model) -> Callable:
        """The norm before the head (default: the backbone's ``layer_norm``)."""
        return model.backbone.layer_norm

    def forward_with_cache(self, model, tokens, input_pos, caches):
        logits, new_caches, _ = self.forward_with_hidden_states(model, tokens, input_pos, caches)
        return logits, new_caches

    def forward_with_hidden_states(self, model, tokens, input_pos, caches):
        from llm_tflite.families.ops import output_rows

        backbone = model.backbone
        x, new_caches = run_blocks(self.blocks(model), self.embed(model, tokens), input_pos, caches)
        x = output_rows(x)  # a prompt's last token only, in a prompt_{L}
        x = self.final_norm(model)(x)  # what KerasHub's call_with_cache returns as hidden_states
        return backbone.token_embedding(x, reverse=True), new_caches, x  # tied or separate head, soft-capped

    def generate_function(self, model, *, max_length, sampler, seed, **settings):
        from llm_tflite.families.generate_graph import keras_generate_function

        return keras_generate_function(self, model, max_length=max_length, sampler=sampler, seed=seed, **settings)
