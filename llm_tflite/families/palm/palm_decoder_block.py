"""One PaLM-style decoder block: parallel attention and SwiGLU MLP, RoPE, multi-query attention, no biases."""

from __future__ import annotations

import keras
from keras import ops
from keras_hub.layers import RotaryEmbedding


class _RotaryEmbedding(RotaryEmbedding):
    """KerasHub's RoPE with the positions x frequencies outer product as a broadcast multiply.

    KerasHub writes it as ``einsum("bi,j->bij")``, which TFLite lowers to a FULLY_CONNECTED
    on a ``[head_dim / 2, 1]`` constant that quantizers then treat as a weight (int4 blocks
    cannot split it, static int8 would clip positions beyond the calibrated ones). The
    products are the same float32 values, so trained weights are unaffected.
    """

    def _compute_cos_sin_embedding(self, inputs, start_index=0, positions=None):
        if positions is None:
            positions = self._compute_positions(inputs, start_index)
        positions = ops.reshape(ops.cast(positions, "float32"), (1, -1, 1))
        freq = positions * ops.reshape(self._get_inverse_freq(ops.shape(inputs)[-1]), (1, 1, -1))
        embedding = ops.expand_dims(ops.concatenate([freq, freq], axis=-1), 2)  # [1, T, 1 (heads), D]
        return ops.cast(ops.cos(embedding), self.compute_dtype), ops.cast(ops.sin(embedding), self.compute_dtype)


@keras.saving.register_keras_serializable(package="llm_tflite")
class PaLMDecoderBlock(keras.layers.Layer):
    """``x + attention(norm(x)) + mlp(norm(x))``, as in PaLM (Chowdhery et al., 2022).

    Args:
        hidden_dim: width of the residual stream.
        num_query_heads: attention heads for queries; keys and values have ``num_key_value_heads``.
        num_key_value_heads: 1 for multi-query attention.
        head_dim: width of one head.
        intermediate_dim: width of the SwiGLU hidden layer.
        rope_max_wavelength: RoPE base.
        layer_norm_epsilon: epsilon of the (bias-free) layer norm.
        dropout: dropout on the attention and MLP outputs while training.
    """

    def __init__(
        self,
        hidden_dim,
        num_query_heads,
        num_key_value_heads,
        head_dim,
        intermediate_dim,
        rope_max_wavelength=10000,
        layer_norm_epsilon=1e-5,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.intermediate_dim = intermediate_dim
        self.rope_max_wavelength = rope_max_wavelength
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout

        def dense(units, name):
            return keras.layers.Dense(
                units,
                use_bias=False,
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
                dtype=self.dtype_policy,
                name=name,
            )

        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, center=False, dtype=self.dtype_policy, name="layer_norm"
        )
        self.query_dense = dense(num_query_heads * head_dim, "query")
        self.key_dense = dense(num_key_value_heads * head_dim, "key")
        self.value_dense = dense(num_key_value_heads * head_dim, "value")
        self.output_dense = dense(hidden_dim, "attention_output")
        self.gate_dense = dense(intermediate_dim, "mlp_gate")
        self.up_dense = dense(intermediate_dim, "mlp_up")
        self.down_dense = dense(hidden_dim, "mlp_down")
        self.rotary_embedding = _RotaryEmbedding(
            max_wavelength=rope_max_wavelength, dtype=self.dtype_policy, name="rotary_embedding"
        )
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.layer_norm.build(input_shape)
        for layer in (self.query_dense, self.key_dense, self.value_dense, self.gate_dense, self.up_dense):
            layer.build(input_shape)
        self.output_dense.build((None, None, self.num_query_heads * self.head_dim))
        self.down_dense.build((None, None, self.intermediate_dim))
        self.built = True

    def project_qkv(self, h, positions):
        """Queries ``[B, T, Hq, D]``, keys and values ``[B, T, Hkv, D]`` of normed input ``h``; RoPE at ``positions``."""
        batch, length = ops.shape(h)[0], ops.shape(h)[1]
        query = ops.reshape(self.query_dense(h), (batch, length, self.num_query_heads, self.head_dim))
        key = ops.reshape(self.key_dense(h), (batch, length, self.num_key_value_heads, self.head_dim))
        value = ops.reshape(self.value_dense(h), (batch, length, self.num_key_value_heads, self.head_dim))
        query = self.rotary_embedding(query, positions=positions)
        key = self.rotary_embedding(key, positions=positions)
        return query, key, value

    def combine(self, x, h, context, training=None):
        """The parallel residual update: ``x + out(context) + mlp(h)``; ``context`` is ``[B, T, Hq, D]``."""
        batch, length = ops.shape(context)[0], ops.shape(context)[1]
        attention = self.output_dense(ops.reshape(context, (batch, length, self.num_query_heads * self.head_dim)))
        mlp = self.down_dense(ops.silu(self.gate_dense(h)) * self.up_dense(h))
        return x + self.dropout_layer(attention, training=training) + self.dropout_layer(mlp, training=training)

    def attend(self, query, key, value, mask):
        """Softmax attention; ``mask`` is bool ``[B, Tq, Tk]`` (True = visible)."""
        repeats = self.num_query_heads // self.num_key_value_heads
        if repeats > 1:
            key = ops.repeat(key, repeats, axis=2)
            value = ops.repeat(value, repeats, axis=2)
        scores = ops.einsum("bqhd,bkhd->bhqk", query, key) * (1.0 / self.head_dim**0.5)
        scores = ops.where(mask[:, None, :, :], scores, ops.cast(-1e9, scores.dtype))
        probs = ops.softmax(ops.cast(scores, "float32"), axis=-1)
        return ops.einsum("bhqk,bkhd->bqhd", ops.cast(probs, value.dtype), value)

    def call(self, x, padding_mask=None, cache=None, cache_update_index=0, training=None):
        """Run the block on ``x`` ``[B, T, hidden]``.

        Without ``cache``: causal self-attention over ``x`` (masking padding). With ``cache``
        ``[B, 2, S, Hkv, D]``: write this step's keys/values at ``cache_update_index`` and
        attend to everything up to it; returns ``(x, cache)``.
        """
        length = ops.shape(x)[1]
        positions = ops.arange(length, dtype="float32") + ops.cast(cache_update_index, "float32")
        h = self.layer_norm(x)
        query, key, value = self.project_qkv(h, positions)
        if cache is None:
            mask = ops.tril(ops.ones((length, length), "bool"))[None]
            if padding_mask is not None:
                mask = ops.logical_and(mask, ops.cast(padding_mask, "bool")[:, None, :])
            return self.combine(x, h, self.attend(query, key, value, mask), training=training)
        cache_update_index = ops.cast(cache_update_index, "int32")  # Keras may hand it over as a float tensor
        start = [0, cache_update_index, 0, 0]
        key_cache = ops.slice_update(cache[:, 0], start, key)
        value_cache = ops.slice_update(cache[:, 1], start, value)
        cache_length = ops.shape(key_cache)[1]
        visible = ops.arange(cache_length)[None, :] <= (ops.arange(length) + cache_update_index)[:, None]
        context = self.attend(query, key_cache, value_cache, visible[None])
        return self.combine(x, h, context, training=training), ops.stack([key_cache, value_cache], axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_query_heads": self.num_query_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "head_dim": self.head_dim,
                "intermediate_dim": self.intermediate_dim,
                "rope_max_wavelength": self.rope_max_wavelength,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "dropout": self.dropout,
            }
        )
        return config
