"""TensorFlow building blocks that convert to builtin TFLite ops only.

KV caches use LiteRT-LM's layout (litert-torch's ``KV_LAYOUT_TRANSPOSED``): keys
``[1, kv_heads, context, head_dim]`` and values ``[1, kv_heads, head_dim, context]``. The
engine reads a cache's capacity from that layout, so files in it run in LiteRT-LM's engine
(checked with ``shared/tools/litertlm_probe.py``: same greedy text as ``InterpreterRunner``).
"""

from __future__ import annotations

import contextlib

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla


_window: list = [None]


@contextlib.contextmanager
def attention_window(slots: int | None):
    """While tracing a signature: ``causal_attention`` reads only the first ``slots`` cache slots.

    A ``decode_window_{W}`` signature (used while the position is below ``W``) then costs what
    a ``W``-token context costs, not the whole cache. Families that attend with their own code
    stay correct; they only do not get faster.
    """
    _window[0], saved = slots, _window[0]
    try:
        yield
    finally:
        _window[0] = saved


class Rows(tuple):
    """The caches of one layer in a batched decode (``decode_batch_{B}``): one tensor per row, each
    row's own sequence's cache. Row ``b`` is token ``b`` of the ``[1, B, ...]`` activations; the
    cache updates and attention below run per row, every other op of a family runs unchanged."""


def cache_shapes(num_kv_heads: int, head_dim: int, context_length: int) -> tuple[list[int], list[int]]:
    """``(key cache shape, value cache shape)`` of one layer."""
    return [1, num_kv_heads, context_length, head_dim], [1, num_kv_heads, head_dim, context_length]


def update_key_cache(cache: tf.Tensor, key: tf.Tensor, input_pos: tf.Tensor) -> tf.Tensor:
    """Write ``key`` ``[1, L, H, D]`` into ``cache`` ``[1, H, C, D]`` at ``input_pos[0]``.

    Lowers to TFLite's builtin DYNAMIC_UPDATE_SLICE, which updates in place where the
    runtime allows. The caller guarantees ``input_pos[0] + L <= C``. ``Rows`` of caches: row ``b``'s
    key goes into its own cache at ``input_pos[b]``.
    """
    if isinstance(cache, Rows):
        return Rows(update_key_cache(row, key[:, b : b + 1], input_pos[b : b + 1]) for b, row in enumerate(cache))
    zero = tf.zeros([], tf.int32)
    return xla.dynamic_update_slice(cache, tf.transpose(key, [0, 2, 1, 3]), tf.stack([zero, zero, input_pos[0], zero]))


def update_value_cache(cache: tf.Tensor, value: tf.Tensor, input_pos: tf.Tensor) -> tf.Tensor:
    """Write ``value`` ``[1, L, H, D]`` into ``cache`` ``[1, H, D, C]`` at ``input_pos[0]`` (``Rows``: per row)."""
    if isinstance(cache, Rows):
        return Rows(update_value_cache(row, value[:, b : b + 1], input_pos[b : b + 1]) for b, row in enumerate(cache))
    zero = tf.zeros([], tf.int32)
    return xla.dynamic_update_slice(cache, tf.transpose(value, [0, 2, 3, 1]),
                                    tf.stack([zero, zero, zero, input_pos[0]]))


def causal_attention(query, key_cache, value_cache, input_pos, *, scale: float | None = None,
                     soft_cap: float | None = None, sliding_window: int | None = None):
    """Scaled dot-product attention of ``query`` ``[1, L, H, D]`` over cached keys at positions <= its own.

    ``key_cache`` ``[1, kv_heads, C, D]``, ``value_cache`` ``[1, kv_heads, D, C]``. Multi-query and
    grouped-query attention (fewer key heads than query heads) repeat the key/value heads.

    Args:
        scale: what the query is multiplied by (default ``1 / sqrt(D)``; Gemma's
            ``query_head_dim_normalize=False`` uses ``1 / sqrt(hidden / heads)``).
        soft_cap: Gemma 2's attention logit soft-capping, ``cap * tanh(scores / cap)``.
        sliding_window: a local layer's window: a query at position ``p`` sees keys at
            ``p - window + 1 .. p`` only (Gemma 3's local layers).

    With ``Rows`` of caches (a batched decode), token ``b`` of ``query`` attends over row ``b``'s
    caches up to its own position ``input_pos[b]``.
    """
    if isinstance(key_cache, Rows):
        return tf.concat([causal_attention(query[:, b : b + 1], keys, values, input_pos[b : b + 1], scale=scale,
                                           soft_cap=soft_cap, sliding_window=sliding_window)
                          for b, (keys, values) in enumerate(zip(key_cache, value_cache))], axis=1)
    window = _window[0]
    if window is not None and window < key_cache.shape[2]:  # the slots a decode window may see
        key_cache, value_cache = key_cache[:, :, :window, :], value_cache[:, :, :, :window]
    num_heads, head_dim = query.shape[2], query.shape[3]
    kv_heads = key_cache.shape[1]
    if kv_heads != num_heads:
        key_cache = tf.repeat(key_cache, num_heads // kv_heads, axis=1)
        value_cache = tf.repeat(value_cache, num_heads // kv_heads, axis=1)
    query = query * tf.constant(1.0 / head_dim**0.5 if scale is None else scale, query.dtype)
    scores = tf.einsum("bqhd,bhkd->bhqk", query, key_cache)
    if soft_cap is not None:
        cap = tf.constant(soft_cap, scores.dtype)
        scores = tf.tanh(scores / cap) * cap
    context = key_cache.shape[2]
    slots = tf.range(context)[None, :]
    visible = slots <= input_pos[:, None]  # [L, C]
    if sliding_window is not None and sliding_window < context:
        visible = tf.logical_and(visible, slots > input_pos[:, None] - sliding_window)
    scores = tf.where(visible[None, None], scores, tf.constant(-1e9, scores.dtype))
    probs = tf.nn.softmax(scores, axis=-1)
    return tf.einsum("bhqk,bhdk->bqhd", probs, value_cache)
