"""TensorFlow building blocks that convert to builtin TFLite ops only."""

from __future__ import annotations

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla


def update_cache(cache: tf.Tensor, update: tf.Tensor, input_pos: tf.Tensor) -> tf.Tensor:
    """Write ``update`` ``[1, L, H, D]`` into ``cache`` ``[1, C, H, D]`` at ``input_pos[0]``.

    Lowers to TFLite's builtin DYNAMIC_UPDATE_SLICE, which updates in place where the
    runtime allows. The caller guarantees ``input_pos[0] + L <= C``.
    """
    zero = tf.zeros([], tf.int32)
    return xla.dynamic_update_slice(cache, update, tf.stack([zero, input_pos[0], zero, zero]))


def causal_attention(query, key_cache, value_cache, input_pos):
    """Scaled dot-product attention of ``query`` ``[1, L, H, D]`` over cached keys at positions <= its own.

    Multi-query attention (fewer key heads than query heads) is handled by repeating
    the key/value heads.
    """
    num_heads, head_dim = query.shape[2], query.shape[3]
    kv_heads = key_cache.shape[2]
    if kv_heads != num_heads:
        key_cache = tf.repeat(key_cache, num_heads // kv_heads, axis=2)
        value_cache = tf.repeat(value_cache, num_heads // kv_heads, axis=2)
    query = query * tf.constant(1.0 / head_dim**0.5, query.dtype)
    scores = tf.einsum("bqhd,bkhd->bhqk", query, key_cache)
    context = key_cache.shape[1]
    visible = tf.range(context)[None, :] <= input_pos[:, None]  # [L, C]
    scores = tf.where(visible[None, None], scores, tf.constant(-1e9, scores.dtype))
    probs = tf.nn.softmax(scores, axis=-1)
    return tf.einsum("bhqk,bkhd->bqhd", probs, value_cache)
