"""The ``prefill_decode`` export mode: the LiteRT-LM signature convention.

``prefill_{L}``: inputs ``tokens`` int32 ``[1, L]``, ``input_pos`` int32 ``[L]`` and the
caches; outputs the updated caches only, as LiteRT-LM's own files do: an engine runs a prompt
but its last token through prefill and the last through ``decode``. Logits over the whole
vocabulary for every prompt token would cost more than the rest of the network on large
vocabularies (Gemma 3: 1.7x). ``score_{L}``: the same inputs, outputs ``logits`` float32
``[1, L, vocab]`` (and ``hidden_states``) beside the caches: what scoring a text needs
(``Sequence.feed``: eval, compare); LiteRT-LM ignores them. Files written before
``score_lengths`` was recorded have logits in ``prefill_{L}`` and no ``score_{L}``.
``decode``: inputs as ``prefill_1``, outputs ``logits`` ``[1, 1, vocab]`` and the caches.
``prompt_{L}`` (record ``prompt_lengths``): ``prefill_{L}`` with one more input, ``last`` int32
``[1]``, and one more output, ``logits`` ``[1, 1, vocab]`` of the token at ``last``: a prompt's last
chunk (padding after ``last``), so a prompt of ``L`` tokens or fewer is one call, not a prefill and a
``decode`` that each read every weight. The head runs for that one row (``families.ops.output_rows``).
``window_{W}_prefill_{L}`` / ``window_{W}_prompt_{L}``: ``prefill_{L}`` / ``prompt_{L}`` attending
over the first ``W`` cache slots, for
chunks that end within them (record ``prefill_windows``: the decode windows above ``L`` and at
most a quarter of the context; not named ``prefill_...``, which LiteRT-LM would take for a
prefill of that length).
``decode_window_{W}``: ``decode`` attending over the first
``W`` cache slots only, for positions below ``W`` (cheaper early in a long context; LiteRT-LM
uses ``decode`` and ignores them). Caches are float32 (or int8 with ``kv_cache_k_{i}_scale`` /
``kv_cache_v_{i}_scale`` beside them: ``KVCacheSpec.dtype``), ``kv_cache_k_{i}`` and
``kv_cache_v_{i}`` each ``[1, kv_heads, context_length, head_dim]`` (metadata ``kv_cache_layout:
"bnth"``, format 5; LiteRT-LM's engine runs them). Files written before hold values as
``[1, kv_heads, head_dim, context_length]`` (``"transposed"``) or both as
``[1, context_length, kv_heads, head_dim]`` (no layout recorded), and still run.

``decode_batch_{B}`` (and ``decode_batch_{B}_window_{W}``): one decode step of ``B`` sequences
at once, each at its own position: ``tokens`` ``[B, 1]``, ``input_pos`` ``[B]``, and each row's
own caches ``kv_cache_k_{i}_row{b}`` / ``kv_cache_v_{i}_row{b}`` (the same buffers its sequence
uses with every other signature); ``logits`` ``[B, 1, vocab]``. The weights are read once for
the whole batch; attention runs per row over that row's cache. LiteRT-LM ignores them.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from llm_tflite.families.base import KVCacheSpec
from llm_tflite.families.ops import Quantized, Ring, Rows, attention_window, cache_shapes, prompt_last
from llm_tflite.litert.bind import WEIGHT_PREFIX
from llm_tflite.litert.metadata import stored_cache_shape
from llm_tflite.runtime.prefill_decode import (decode_batch_name, prefill_window_name,  # the runtime reads these names
                                               prompt_name, row_cache_name)


def cache_names(spec: KVCacheSpec) -> list[str]:
    """Each layer's caches in order: keys, values (and with int8 caches their scales)."""
    names = []
    for i in range(spec.num_layers):
        names += [f"kv_cache_k_{i}", f"kv_cache_v_{i}"]
        if spec.dtype == "int8":
            names += [f"kv_cache_k_{i}_scale", f"kv_cache_v_{i}_scale"]
    return names


def cache_input_spec(spec: KVCacheSpec, name: str, length: int, context_length: int,
                     rings_as_context: bool = False) -> tf.TensorSpec:
    """The input ``name`` (``kv_cache_{k|v}_{i}[_scale][_row{b}]``) of a layer whose caches hold ``length``
    slots, as the file stores it (``stored_cache_shape``)."""
    heads, dim = spec.num_kv_heads, (1 if "_scale" in name else spec.head_dim)  # a scale per slot and head
    key, value = cache_shapes(heads, dim, length)
    dtype = tf.int8 if spec.dtype == "int8" and "_scale" not in name else tf.float32
    shape = stored_cache_shape(key if "_k_" in name else value, context_length, rings_as_context)
    return tf.TensorSpec(shape, dtype, name=name)


def batch_cache_names(spec: KVCacheSpec, rows: int) -> list[str]:
    return [row_cache_name(name, row) for name in cache_names(spec) for row in range(rows)]


def input_names(spec: KVCacheSpec, rows: int = 0, last: bool = False) -> list[str]:
    """Signature inputs, in the functions' argument order (``rows``: of a batched decode; ``last``:
    a ``prompt_{L}``)."""
    return ["tokens", "input_pos"] + (["last"] if last else []) + \
        (batch_cache_names(spec, rows) if rows else cache_names(spec))


def output_names(spec: KVCacheSpec, hidden_states: bool = False, rows: int = 0, logits: bool = True) -> list[str]:
    """Signature outputs, in the functions' flattened (sorted-key) order (``logits``: False for a
    ``prefill_{L}``, which outputs the caches only)."""
    caches = batch_cache_names(spec, rows) if rows else cache_names(spec)
    scores = ["logits"] + (["hidden_states"] if hidden_states else []) if logits else []
    return sorted(scores + caches)


class CapturedStateError(ValueError):
    """A family's forward pass reads state that is not one of the model's weights (it cannot be
    traced with the weights as inputs; the converter freezes it instead)."""


def model_variables(model) -> list:
    """The model's variables, each once (a tied embedding is one), in a fixed order: the
    ``weight_{i}`` inputs of ``signature_function(..., weights=...)``."""
    seen, unique = set(), []
    for variable in model.weights:
        if id(variable) not in seen:
            seen.add(id(variable))
            unique.append(variable)
    return unique


def weight_names(weights) -> list[str]:
    return [f"{WEIGHT_PREFIX}{i}" for i in range(len(weights))]


def signature_function(family, model, spec: KVCacheSpec, context_length: int, length: int,
                       hidden_states: bool = False, window: int | None = None, weights: list | None = None,
                       rows: int = 0, logits: bool = True, lengths: list[int] | None = None, last: bool = False,
                       rings_as_context: bool = False):
    """The concrete function of one signature, which processes ``length`` tokens.

    ``rows``: a batched decode (``length`` 1) of that many sequences, each with its own caches
    (``families.ops.Rows``).

    With ``hidden_states`` it also outputs the last hidden states ``[1, L, hidden]`` (what
    contrastive search compares), from the family's ``forward_with_hidden_states``. Without
    ``logits`` it outputs the caches only (a ``prefill_{L}``): the converter drops the head.
    ``last``: a ``prompt_{L}``: input ``last`` int32 ``[1]``, and the logits of that token alone
    (``families.ops.output_rows``; no hidden states).
    ``lengths``: each layer's cache length (``KVCacheSpec.cache_lengths``; default the context); a layer's
    caches shorter than the context are a ``Ring``, stored context-shaped with ``rings_as_context``
    (``litert.metadata.stored_cache_shape``: reshaped on the way in and out).

    ``weights`` (``model_variables(model)``): take them as inputs ``weight_{i}`` after the
    caches, read through ``keras.StatelessScope``, so the graph holds no weight at all (they are
    bound after conversion: ``llm_tflite.litert.bind``). Without it the weights are frozen
    into the graph as constants.
    """
    lengths = lengths or [context_length] * spec.num_layers
    names = batch_cache_names(spec, rows) if rows else cache_names(spec)
    per_layer = 4 if spec.dtype == "int8" else 2  # keys, values (scales)

    def layer(name: str) -> int:
        return int(name.split("_")[3])  # kv_cache_k_{i}(_row{b})

    stored = {name: cache_input_spec(spec, name, lengths[layer(name)], context_length, rings_as_context)
              for name in names}
    logical = [cache_input_spec(spec, name, lengths[layer(name)], context_length).shape for name in names]
    input_signature = [
        tf.TensorSpec([rows, 1] if rows else [1, length], tf.int32, name="tokens"),
        tf.TensorSpec([rows or length], tf.int32, name="input_pos"),
    ] + ([tf.TensorSpec([1], tf.int32, name="last")] if last else []) + list(stored.values())
    if weights is not None:
        input_signature += [tf.TensorSpec(v.shape, v.dtype, name=name) for v, name in zip(weights, weight_names(weights))]

    @tf.function(input_signature=input_signature, autograph=False)
    def run(tokens, input_pos, *rest):
        index, rest = (rest[0], rest[1:]) if last else (None, rest)
        if weights is None:
            return forward(tokens, input_pos, rest, index)
        import keras

        with keras.StatelessScope(state_mapping=list(zip(weights, rest[len(names):]))):
            return forward(tokens, input_pos, rest[: len(names)], index)

    def forward(tokens, input_pos, flat_caches, index):
        flat_caches = [tf.reshape(c, shape) if c.shape != shape else c for c, shape in zip(flat_caches, logical)]
        step = per_layer * (rows or 1)
        layers = [list(flat_caches[i : i + step]) for i in range(0, len(flat_caches), step)]
        if rows:  # the B rows as B tokens of one sequence, each with its own caches and position
            tokens = tf.reshape(tokens, [1, rows])
            layers = [[layer[j * rows : (j + 1) * rows] for j in range(per_layer)] for layer in layers]
        if per_layer == 4:  # int8 values and their scales: one Quantized cache (per row)
            layers = [[Rows(map(Quantized, zip(v, s))) if rows else Quantized((v, s))
                       for v, s in ((layer[0], layer[2]), (layer[1], layer[3]))] for layer in layers]
        elif rows:
            layers = [[Rows(part) for part in layer] for layer in layers]
        caches = [tuple(layer) for layer in layers]
        caches = [Ring(pair) if n < context_length else pair for pair, n in zip(caches, lengths)]
        if hidden_states and logits and not last:
            logits_, new_caches, hidden = family.forward_with_hidden_states(model, tokens, input_pos, caches)
            outputs = {"logits": tf.cast(logits_, tf.float32), "hidden_states": tf.cast(hidden, tf.float32)}
        elif last:
            with prompt_last(index):
                logits_, new_caches = family.forward_with_cache(model, tokens, input_pos, caches)
            if logits_.shape[1] != 1:  # a family that does not call output_rows: its row of the logits
                logits_ = tf.gather(logits_, index, axis=1)
            outputs = {"logits": tf.cast(logits_, tf.float32)}
        else:
            logits_, new_caches = family.forward_with_cache(model, tokens, input_pos, caches)
            outputs = {"logits": tf.cast(logits_, tf.float32)} if logits else {}
        if rows:
            outputs = {key: tf.reshape(value, [rows, 1, -1]) for key, value in outputs.items()}
        for i, (k, v) in enumerate(new_caches):
            for b, (row_k, row_v) in enumerate(zip(k, v) if rows else [(k, v)]):
                named = {f"kv_cache_k_{i}": row_k, f"kv_cache_v_{i}": row_v}
                if per_layer == 4:
                    named = {f"kv_cache_k_{i}": row_k[0], f"kv_cache_v_{i}": row_v[0],
                             f"kv_cache_k_{i}_scale": row_k[1], f"kv_cache_v_{i}_scale": row_v[1]}
                outputs.update({row_cache_name(name, b) if rows else name: t for name, t in named.items()})
        # each cache out as it came in
        return {key: tf.reshape(value, stored[key].shape) if key in stored and value.shape != stored[key].shape
                else value for key, value in outputs.items()}

    with attention_window(window):
        function = run.get_concrete_function()
    if weights is not None:
        if function.captured_inputs:
            raise CapturedStateError(f"the forward pass reads {len(function.captured_inputs)} variables or tensors "
                                     "that are not among the model's weights")
        return function
    # Freeze the weights into constants: TFLite would otherwise keep them as resource
    # variables (VAR_HANDLE/READ_VARIABLE), which quantizers skip. Freezing flattens the
    # outputs (a dict flattens in sorted key order); ``output_names`` names them again.
    return convert_variables_to_constants_v2(function)


def decode_window_name(window: int) -> str:
    return f"decode_window_{int(window)}"


def score_name(length: int) -> str:
    return f"score_{int(length)}"


class Signature(NamedTuple):
    """One signature: the tokens it takes, the cache slots it attends over (None: all), its rows
    (0: one sequence), whether it outputs logits (a ``prefill_{L}`` does not) and whether those are
    the logits of the token at input ``last`` alone (a ``prompt_{L}``)."""

    length: int
    window: int | None = None
    rows: int = 0
    logits: bool = True
    last: bool = False


def signatures(prefill_lengths, decode_windows=(), batch_sizes=(), score_lengths=None,
               prefill_windows=(), prompt_lengths=(), batch_windows=()) -> dict[str, Signature]:
    """Each signature of a file by name: ``prefill_{L}``, ``window_{W}_prefill_{L}``, ``score_{L}``,
    ``decode``, ``decode_window_{W}``, ``decode_batch_{B}`` and ``decode_batch_{B}_window_{W}``
    (and ``prompt_{L}``, ``window_{W}_prompt_{L}`` for each of ``prompt_lengths``).

    ``score_lengths`` None: a file written before ``score_{L}`` existed, whose ``prefill_{L}``
    output logits. ``batch_windows``: the ``decode_batch_{B}_window_{W}`` signatures' windows."""
    table = {f"prefill_{n}": Signature(int(n), logits=score_lengths is None) for n in prefill_lengths}
    table.update({prefill_window_name(n, w): Signature(int(n), int(w), logits=False)
                  for n in prefill_lengths for w in prefill_windows if n < w})
    table.update({prompt_name(n, w): Signature(int(n), w and int(w), last=True)
                  for n in prompt_lengths for w in [None, *prefill_windows] if w is None or n < w})
    table.update({score_name(n): Signature(int(n)) for n in score_lengths or ()})
    table["decode"] = Signature(1)
    table.update({decode_window_name(w): Signature(1, int(w)) for w in decode_windows})
    for rows in batch_sizes:
        table[decode_batch_name(rows)] = Signature(1, None, int(rows))
        table.update({decode_batch_name(rows, w): Signature(1, int(w), int(rows)) for w in batch_windows})
    return table
