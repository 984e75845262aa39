"""TensorFlow building blocks that convert to builtin TFLite ops only.

KV caches are keys and values ``[1, kv_heads, context, head_dim]`` (record ``kv_cache_layout:
"bnth"``): a head's slots are rows, so a decode window's first ``W`` slots of a head are one block.
LiteRT-LM's engine reads a cache's capacity from axis 2, so files in it run there (same greedy text as
``InterpreterRunner``, 2026-12-04). Until format 5 the values were ``[1, kv_heads, head_dim, context]``
(litert-torch's ``KV_LAYOUT_TRANSPOSED``), whose window is ``heads * head_dim`` strided pieces; the
runtime still reads those files. What it changed, measured: docs/serve.md and docs/performance.md
("A window is one block of each head's cache").
"""

from __future__ import annotations

import contextlib

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla


_window: list = [None]
_last: list = [None]

#: What a slot a query may not see adds to its attention score (its weight after the softmax: 0).
MASKED = -1e9


@contextlib.contextmanager
def attention_window(slots: int | None):
    """While tracing a signature: ``causal_attention`` reads only the first ``slots`` cache slots.

    A ``decode_window_{W}`` signature (used while the position is below ``W``) or a
    ``window_{W}_prefill_{L}`` (for prompt chunks that end within ``W``) then costs what a
    ``W``-token context costs, not the whole cache. Families that attend with their own code
    stay correct; they only do not get faster.
    """
    _window[0], saved = slots, _window[0]
    try:
        yield
    finally:
        _window[0] = saved


@contextlib.contextmanager
def prompt_last(index):
    """While tracing a ``prompt_{L}`` signature (the last chunk of a prompt, whose next-token logits
    generation needs): ``output_rows`` keeps only the token at ``index`` (int32 ``[1]``)."""
    _last[0], saved = index, _last[0]
    try:
        yield
    finally:
        _last[0] = saved


def output_rows(x):
    """The rows of the last hidden states ``x`` ``[1, L, hidden]`` that the signature scores: all of
    them, or in a ``prompt_{L}`` the prompt's last token's ``[1, 1, hidden]``. A family calls it before
    its final norm and head, so a prompt costs one row of the head (Gemma 3's is a third of the 1B
    model), not ``L``; a family that does not is still right (the signature picks the row from its logits)."""
    return x if _last[0] is None else tf.gather(x, _last[0], axis=1)


class Rows(tuple):
    """The caches of one layer in a batched decode (``decode_batch_{B}``): one tensor per row, each
    row's own sequence's cache. Row ``b`` is token ``b`` of the ``[1, B, ...]`` activations; the
    cache updates and attention below run per row, every other op of a family runs unchanged."""


class Ring(tuple):
    """A local layer's ``(key cache, value cache)`` that holds only its last ``R`` positions:
    position ``p`` lives in slot ``p mod R``. ``R`` (the caches' length) is the layer's window plus
    the longest chunk a signature takes (``KVCacheSpec.cache_lengths``), so a chunk written before it attends
    never overwrites a position any of its tokens still sees, and a padded chunk's filler lands
    only in slots no later token sees. The attention mask follows from the slot's age
    ``(p - slot) mod R``: visible when it is below the window and not before position 0."""


class Quantized(tuple):
    """An int8 cache ``(values, scales)`` (``Converter(kv_cache="int8")``): ``values`` int8 in a float
    cache's layout, ``scales`` float32 with the head-dimension axis of size 1 (``[1, H, C, 1]``), so
    slot ``c`` of head ``h`` holds ``values * scale``. A written vector is quantized to 127 steps of its
    largest magnitude; attention reads the int8 values as they are and applies the scales where they
    factor out: keys' to the scores, values' to the probabilities."""


def cache_shapes(num_kv_heads: int, head_dim: int, context_length: int) -> tuple[list[int], list[int]]:
    """``(key cache shape, value cache shape)`` of one layer."""
    return [1, num_kv_heads, context_length, head_dim], [1, num_kv_heads, context_length, head_dim]


def update_key_cache(cache: tf.Tensor, key: tf.Tensor, input_pos: tf.Tensor, ring: bool = False) -> tf.Tensor:
    """Write ``key`` ``[1, L, H, D]`` into ``cache`` ``[1, H, C, D]`` at ``input_pos[0]``.

    Lowers to TFLite's builtin DYNAMIC_UPDATE_SLICE, which updates in place where the
    runtime allows. The caller guarantees ``input_pos[0] + L <= C``. ``Rows`` of caches: row ``b``'s
    key goes into its own cache at ``input_pos[b]``. ``ring``: the cache is a ``Ring``'s, written at
    ``input_pos mod C``, a chunk wrapping around its end.
    """
    _, length, heads, dim = key.shape
    if isinstance(cache, Rows):  # B tokens [1, B, H, D] are B updates [1, H, 1, D] in memory: one reshape, one split
        updates = tf.split(tf.reshape(key, [len(cache), heads, 1, dim]), len(cache))
        return Rows(_write(row, update, position, axis=2, ring=ring)
                    for row, update, position in zip(cache, updates, tf.split(input_pos, len(cache))))
    # one token: [1, 1, H, D] is already [1, H, 1, D] in memory (a reshape, not a transpose)
    update = tf.reshape(key, [1, heads, 1, dim]) if length == 1 else tf.transpose(key, [0, 2, 1, 3])
    return _write(cache, update, input_pos, axis=2, ring=ring)


def update_value_cache(cache: tf.Tensor, value: tf.Tensor, input_pos: tf.Tensor, ring: bool = False) -> tf.Tensor:
    """Write ``value`` ``[1, L, H, D]`` into ``cache`` ``[1, H, C, D]`` at ``input_pos[0]`` (``Rows``: per row;
    ``ring``: at ``input_pos mod C``)."""
    _, length, heads, dim = value.shape
    if isinstance(cache, Rows):
        updates = tf.split(tf.reshape(value, [len(cache), heads, 1, dim]), len(cache))
        return Rows(_write(row, update, position, axis=2, ring=ring)
                    for row, update, position in zip(cache, updates, tf.split(input_pos, len(cache))))
    update = tf.reshape(value, [1, heads, 1, dim]) if length == 1 else tf.transpose(value, [0, 2, 1, 3])
    return _write(cache, update, input_pos, axis=2, ring=ring)


def _write(cache, update, input_pos, axis: int, ring: bool = False):
    """``update`` into ``cache`` from ``input_pos[0]`` along ``axis`` (DYNAMIC_UPDATE_SLICE); ``ring``: from
    ``input_pos[0] mod C``, the part past the end going to the start."""
    if isinstance(cache, Quantized):  # one scale per slot and head: over the head dimension, the other axis
        values, scales = cache
        scale = tf.reduce_max(tf.abs(update), axis=5 - axis, keepdims=True) / 127.0
        steps = tf.round(update / tf.maximum(scale, tf.constant(1e-30, update.dtype)))
        return Quantized((_write(values, tf.cast(steps, tf.int8), input_pos, axis, ring),
                          _write(scales, scale, input_pos, axis, ring)))
    zero = tf.zeros([], tf.int32)
    capacity, length = cache.shape[axis], update.shape[axis]
    start = tf.math.floormod(input_pos[0], capacity) if ring else input_pos[0]
    at = tf.stack([start if i == axis else zero for i in range(4)])
    if not ring or length == 1:  # one slot never wraps: updated in place
        return xla.dynamic_update_slice(cache, update, at)

    def part(tensor, begin, size):
        return tf.slice(tensor, [begin if i == axis else 0 for i in range(4)],
                        [size if i == axis else -1 for i in range(4)])

    # written into the cache followed by a copy of its first L slots, then the part past the end folded back
    extended = xla.dynamic_update_slice(tf.concat([cache, part(cache, 0, length)], axis), update, at)
    shape = [length if i == axis else 1 for i in range(4)]
    wrapped = tf.reshape(tf.range(length) < start + length - capacity, shape)
    head = tf.where(wrapped, part(extended, capacity, length), part(extended, 0, length))
    return tf.concat([head, part(extended, length, capacity - length)], axis)


def causal_attention(query, key_cache, value_cache, input_pos, *, scale: float | None = None,
                     soft_cap: float | None = None, sliding_window: int | None = None, ring: bool = False):
    """Scaled dot-product attention of ``query`` ``[1, L, H, D]`` over cached keys at positions <= its own.

    ``key_cache`` and ``value_cache`` ``[1, kv_heads, C, D]``. Multi-query and
    grouped-query attention (fewer key heads than query heads) group the query heads by the key head
    they share: the caches are read as they are, never repeated.

    Args:
        scale: what the query is multiplied by (default ``1 / sqrt(D)``; Gemma's
            ``query_head_dim_normalize=False`` uses ``1 / sqrt(hidden / heads)``).
        soft_cap: Gemma 2's attention logit soft-capping, ``cap * tanh(scores / cap)``.
        sliding_window: a local layer's window: a query at position ``p`` sees keys at
            ``p - window + 1 .. p`` only (Gemma 3's local layers).

    With ``Rows`` of caches (a batched decode), token ``b`` of ``query`` attends over row ``b``'s
    caches up to its own position ``input_pos[b]``. ``ring``: the caches are a ``Ring``'s (a local
    layer's last slots, already holding the query's own keys).
    """
    _, length, num_heads, head_dim = query.shape
    if length == 1 or isinstance(key_cache, Rows):  # a decode step: one token (per row)
        if not isinstance(key_cache, Rows):
            key_cache, value_cache = Rows([key_cache]), Rows([value_cache])
        return _decode_attention(query, key_cache, value_cache, input_pos, scale, soft_cap, sliding_window, ring)
    capacity = _slots(key_cache)
    key_cache, value_cache = _first_slots(key_cache, value_cache, _window[0])
    kv_heads = _part(key_cache).shape[1]
    group = num_heads // kv_heads
    query = query * tf.constant(1.0 / head_dim**0.5 if scale is None else scale, query.dtype)
    if None in query.shape:  # a generate graph (dynamic batch and length): repeated caches, as KerasHub does
        return _attention_repeating_caches(query, key_cache, value_cache, input_pos, group, soft_cap, sliding_window)
    # the query heads grouped by the key head they share: [1, kv_heads, group * L, D], so the caches
    # are read as laid out (no repeated copy of them per call), as a decode step does
    query = tf.reshape(tf.transpose(tf.reshape(query, [length, kv_heads, group, head_dim]), [1, 2, 0, 3]),
                       [1, kv_heads, group * length, head_dim])
    scores = _scores(query, key_cache)  # [1, kv_heads, group * L, C]
    scores = _soft_capped(scores, soft_cap)
    visible = _visible(input_pos, _slots(key_cache), sliding_window, capacity if ring else None)  # [L, C]
    if group > 1:
        visible = tf.tile(visible, [group, 1])  # [group * L, C], in the query's order
    scores = scores + tf.where(visible, tf.constant(0.0, scores.dtype), tf.constant(MASKED, scores.dtype))
    out = _context(tf.nn.softmax(scores, axis=-1), value_cache)  # [1, kv_heads, group * L, D]
    return tf.reshape(tf.transpose(tf.reshape(out, [kv_heads, group, length, head_dim]), [2, 0, 1, 3]),
                      [1, length, num_heads, head_dim])


def _part(cache):
    """A cache's values tensor (a ``Quantized`` cache's int8 values, or the cache itself)."""
    return cache[0] if isinstance(cache, Quantized) else cache


def _slots(key_cache) -> int:
    return _part(key_cache).shape[2]


def _first_slots(key_cache, value_cache, window):
    """The caches' first ``window`` slots (all with None or a window past their end): what a window
    signature (``decode_window_{W}``, ``window_{W}_prefill_{L}``) attends over."""
    if window is None or window >= _slots(key_cache):
        return key_cache, value_cache
    if isinstance(key_cache, Quantized):
        return (Quantized(t[:, :, :window, :] for t in key_cache), Quantized(t[:, :, :window, :] for t in value_cache))
    return key_cache[:, :, :window, :], value_cache[:, :, :window, :]


def _scores(query, key_cache):
    """``query`` ``[1, kv_heads, Q, D]`` times the keys ``[1, kv_heads, C, D]``: ``[1, kv_heads, Q, C]``. An int8
    cache's values are multiplied as they are (cast), its per-slot scales applied to the scores."""
    if not isinstance(key_cache, Quantized):
        return tf.matmul(query, key_cache, transpose_b=True)
    values, scales = key_cache
    _, heads, slots, _ = values.shape
    scores = tf.matmul(query, tf.cast(values, query.dtype), transpose_b=True)
    return scores * tf.reshape(scales, [1, heads, 1, slots])  # [1, H, C, 1] is [1, H, 1, C] in memory


def _context(probs, value_cache):
    """``probs`` ``[1, kv_heads, Q, C]`` times the values ``[1, kv_heads, C, D]``: ``[1, kv_heads, Q, D]``. An
    int8 cache's per-slot scales weight the probabilities first."""
    if not isinstance(value_cache, Quantized):
        return tf.matmul(probs, value_cache)
    values, scales = value_cache
    _, heads, slots, _ = values.shape
    return tf.matmul(probs * tf.reshape(scales, [1, heads, 1, slots]), tf.cast(values, probs.dtype))


def _soft_capped(scores, soft_cap):
    """Gemma 2's attention logit soft-capping, ``cap * tanh(scores / cap)`` (``None``: the scores)."""
    if soft_cap is None:
        return scores
    cap = tf.constant(soft_cap, scores.dtype)
    return tf.tanh(scores / cap) * cap


def _visible(input_pos, context: int, sliding_window, ring: int | None = None):
    """``[L, C]``: which of ``context`` cache slots the token at each of ``input_pos`` may attend to
    (its own and earlier ones; with a sliding window, only the last ``sliding_window`` of them).

    ``ring``: the length of a ``Ring``'s caches, whose slot ``s`` holds position ``p - age`` with
    ``age = (p - s) mod ring``: visible when ``age < sliding_window`` and ``age <= p``."""
    slots = tf.range(context)[None, :]
    if ring is not None:
        age = tf.math.floormod(input_pos[:, None] - slots, ring)
        return tf.logical_and(age <= input_pos[:, None], age < sliding_window)
    visible = slots <= input_pos[:, None]
    if sliding_window is not None and sliding_window < context:
        visible = tf.logical_and(visible, slots > input_pos[:, None] - sliding_window)
    return visible


def _attention_repeating_caches(query, key_cache, value_cache, input_pos, group, soft_cap, sliding_window):
    """``causal_attention`` (``query`` already scaled) with the key/value heads repeated ``group`` times:
    for graphs whose shapes are not all known."""
    if isinstance(key_cache, Quantized):
        raise TypeError("int8 caches are for prefill_decode files, whose shapes are known")
    if group > 1:
        key_cache = tf.repeat(key_cache, group, axis=1)
        value_cache = tf.repeat(value_cache, group, axis=1)
    scores = tf.einsum("bqhd,bhkd->bhqk", query, key_cache)
    scores = _soft_capped(scores, soft_cap)
    visible = _visible(input_pos, key_cache.shape[2], sliding_window)  # [L, C]
    scores = tf.where(visible[None, None], scores, tf.constant(MASKED, scores.dtype))
    return tf.einsum("bhqk,bhkd->bqhd", tf.nn.softmax(scores, axis=-1), value_cache)


def _decode_attention(query, key_caches: Rows, value_caches: Rows, input_pos, scale, soft_cap, sliding_window,
                      ring: bool = False):
    """``causal_attention`` of one token per row (``query`` ``[1, rows, H, D]``), in the fewest ops: a
    decode step runs it per layer, batched or not. The query heads are grouped by the key head they
    share (no repeated caches) and scaled for all rows at once; each row's scores come from its own
    caches (two matrix products, or products and sums), the rows' scores are masked and normalised
    together (``_softmax``), each row's context comes from its own values; one reshape back. (Joining
    the rows' windows instead, for one product over all rows, made 8 rows at position 300 2.4x slower:
    the joined products leave the core's cache, one row's stay in it.)"""
    rows, (_, _, num_heads, head_dim) = len(key_caches), query.shape
    kv_heads = _part(key_caches[0]).shape[1]
    query = tf.reshape(query, [rows, kv_heads, num_heads // kv_heads, head_dim])
    query = query * tf.constant(1.0 / head_dim**0.5 if scale is None else scale, query.dtype)
    queries = tf.split(query, rows) if rows > 1 else [query]
    capacity = _slots(key_caches[0])
    windows = [_first_slots(keys, values, _window[0]) for keys, values in zip(key_caches, value_caches)]
    slots = _slots(windows[0][0])
    # products and sums for one query head per key head (measured on GPT-2); grouped heads keep the
    # matrix products until measured (their broadcast product is `group` times the window)
    single = query.shape[2] == 1
    scores = [(_one_token_scores if single else _scores)(q, keys) for q, (keys, _) in zip(queries, windows)]
    scores = _soft_capped(tf.concat(scores, axis=0) if rows > 1 else scores[0], soft_cap)  # [rows, H, (group,) W]
    visible = _visible(input_pos, slots, sliding_window, capacity if ring else None)  # [rows, W]
    bias = tf.where(visible, tf.constant(0.0, scores.dtype), tf.constant(MASKED, scores.dtype))
    bias = bias[0] if rows == 1 else tf.reshape(bias, [rows] + [1] * (scores.shape.rank - 2) + [slots])
    probs = _softmax(scores + bias)
    probs = tf.split(probs, rows) if rows > 1 else [probs]
    contexts = [(_one_token_context if single else _context)(p, values) for p, (_, values) in zip(probs, windows)]
    return tf.reshape(tf.concat(contexts, axis=0) if rows > 1 else contexts[0], [1, rows, num_heads, head_dim])


def _softmax(scores):
    """Softmax over the last axis, computed over a power-of-two length: ``scores`` of another length are
    padded with ``MASKED`` slots (weight 0) and the padding cut off after. XNNPACK's softmax sums a row
    in an order that depends on its length, so the same visible slots gave other bits over 48 slots than
    over 64 (19 of 40 random rows in a one-op graph; a sum over a middle axis, as the context's, does not
    depend on it). Every window, batched or not, and the whole cache then give a token the same bits: a
    sequence decodes the same alone and in any batch."""
    length = scores.shape[-1]
    padded = 1 << (length - 1).bit_length()
    if padded == length:
        return tf.nn.softmax(scores, axis=-1)
    filler = tf.fill([*scores.shape[:-1], padded - length], tf.constant(MASKED, scores.dtype))
    probs = tf.nn.softmax(tf.concat([scores, filler], axis=-1), axis=-1)
    return probs[..., :length]


# One token's attention as products and sums, not matrix products: XNNPACK runs a BATCH_MATMUL of
# two computed operands by packing the right one (the cache's window) on every call (a bfloat16
# kernel topped perf's profile of an 8-row step), which for one query row costs more than the
# products. GPT-2 124M int8, one step, the same weights (docs/performance.md, "One token attends
# with products and sums"): 1 row at position 900 5.63 -> 4.86 ms, 8 rows 31.7 -> 23.6 ms; at
# position 20 1-3 % faster. The sums are float32.


def _values_and_scales(cache):
    """``(values, per-slot scales or None)`` of a cache (``Quantized`` or float)."""
    return tuple(cache) if isinstance(cache, Quantized) else (cache, None)


def _one_token_scores(query, key_cache):
    """``query`` ``[1, kv_heads, group, D]`` times the keys ``[1, kv_heads, C, D]``: ``[1, kv_heads, group, C]``,
    as a broadcast product ``[kv_heads, group, C, D]`` summed over ``D`` (int8 keys cast, their per-slot
    scales applied to the scores). One query head per key head with float keys: ``[1, kv_heads, C]``, the
    operands as they come (a batched step runs this per row and layer, and each reshape is an op: 8 rows of
    GPT-2 had 671 reshapes in 2,136 ops)."""
    values, scales = _values_and_scales(key_cache)
    (_, heads, slots, dim), group = values.shape, query.shape[2]
    if scales is None and group == 1:  # [1, H, 1, D] x [1, H, C, D] as they are: [1, H, C], no reshapes
        return tf.reduce_sum(query * values, axis=-1)
    keys = tf.reshape(values if scales is None else tf.cast(values, query.dtype), [heads, 1, slots, dim])
    scores = tf.reshape(tf.reduce_sum(tf.reshape(query, [heads, group, 1, dim]) * keys, axis=-1),
                        [1, heads, group, slots])
    return scores if scales is None else scores * tf.reshape(scales, [1, heads, 1, slots])


def _one_token_context(probs, value_cache):
    """``probs`` ``[1, kv_heads, group, C]`` times the values ``[1, kv_heads, C, D]``: ``[1, kv_heads, group, D]``,
    as a broadcast product ``[kv_heads, group, C, D]`` summed over ``C`` (int8 values cast, their per-slot
    scales weighting the probabilities first)."""
    values, scales = _values_and_scales(value_cache)
    if probs.shape.rank == 3 and scales is None:  # _one_token_scores' [1, H, C] (float, one query head per key head)
        return tf.reduce_sum(tf.reshape(probs, [*probs.shape, 1]) * values, axis=2)
    (_, heads, slots, dim), group = values.shape, probs.shape[2]
    if scales is not None:
        probs = probs * tf.reshape(scales, [1, heads, 1, slots])
        values = tf.cast(values, probs.dtype)
    context = tf.reduce_sum(tf.reshape(probs, [heads, group, slots, 1]) * tf.reshape(values, [heads, 1, slots, dim]),
                            axis=2)
    return tf.reshape(context, [1, heads, group, dim])
