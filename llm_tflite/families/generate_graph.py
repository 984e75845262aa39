"""The graph of the ``generate`` export mode: tokenizer, decoding loop and sampler in one ``tf.function``.

A family's ``generate_function`` builds it with ``keras_generate_function``; the converter settings
that turn it into a file (``llm_tflite.export.generate``) stay with the export stage.

Why not ``GPT2CausalLM.generate`` in a ``tf.function`` (the published recipe)? On current
KerasHub its post-processing calls ``convert_to_numpy`` on symbolic tensors, the default
sampler keeps its seed in a variable, and the converted while loop cannot find its
weight variables at run time. We instead trace the family's own cached forward pass
(the same one ``prefill_decode`` uses) inside a ``keras.StatelessScope`` that maps every
weight to a constant, so the graph holds no variables at all and quantizers see the
weights as constants.
"""

from __future__ import annotations

import tensorflow as tf

from llm_tflite.families.ops import cache_shapes
from llm_tflite.runtime import sampling
from llm_tflite.runtime.sampling import GENERATE_SAMPLERS


def _sample(logits, sampler: str, seed: int, step, top_k: int = sampling.TOP_K, top_p: float = sampling.TOP_P,
            temperature: float = sampling.TEMPERATURE):
    """Next token id (int32 scalar) from ``logits`` ``[vocab]``; random samplers are stateless."""
    if sampler == "greedy":
        return tf.cast(tf.argmax(logits), tf.int32)
    logits = logits / tf.constant(temperature, logits.dtype)
    seeds = tf.stack([tf.constant(seed, tf.int32), step])
    if sampler == "top_k":
        values, indices = tf.math.top_k(logits, k=top_k)
        choice = tf.random.stateless_categorical(values[None], 1, seed=seeds, dtype=tf.int32)[0, 0]
        return tf.gather(indices, choice)
    if sampler == "top_p":
        values, indices = tf.math.top_k(logits, k=tf.shape(logits)[0])
        probs = tf.nn.softmax(values)
        cumulative = tf.cumsum(probs, exclusive=True)
        values = tf.where(cumulative < top_p, values, tf.constant(-1e9, values.dtype))
        choice = tf.random.stateless_categorical(values[None], 1, seed=seeds, dtype=tf.int32)[0, 0]
        return tf.gather(indices, choice)
    raise ValueError(f"unknown generate-mode sampler {sampler!r}; choose one of {', '.join(GENERATE_SAMPLERS)}")


def keras_generate_function(
    family, lm, *, max_length: int, sampler: str = "greedy", seed: int | None = None, encode=None, decode=None,
    temperature: float = sampling.TEMPERATURE, top_k: int = sampling.TOP_K, top_p: float = sampling.TOP_P,
):
    """A concrete ``tf.function``: scalar (or ``[1]``) string prompt -> string prompt + continuation.

    Args:
        family: the model's ``ModelFamily`` (its ``forward_with_cache`` is traced).
        lm: a KerasHub ``CausalLM`` with a preprocessor (its tokenizer runs in the graph).
        max_length: total tokens, start token and prompt included (as ``CausalLM.generate``).
        sampler: ``greedy``, ``top_k`` or ``top_p``.
        seed: seed of a random sampler (default 0).
        temperature, top_k, top_p: settings of a random sampler, fixed in the graph.
        encode: graph function scalar string -> int ids (default: the preprocessor's tokenizer).
        decode: graph function int ids -> scalar string (default: the tokenizer's ``detokenize``).
    """
    import keras

    if sampler not in GENERATE_SAMPLERS:
        raise ValueError(f"unknown generate-mode sampler {sampler!r}; choose one of {', '.join(GENERATE_SAMPLERS)}")
    if max_length > family.max_context_length(lm):
        raise ValueError(f"max_length {max_length} exceeds the model's {family.max_context_length(lm)} positions")
    tokenizer = lm.preprocessor.tokenizer
    encode = encode or tokenizer
    decode = decode or tokenizer.detokenize
    special = family.special_tokens(lm)
    bos, eos, add_bos = special["bos_id"], special["eos_id"], special["add_bos"]
    spec = family.kv_cache_spec(lm)
    weights = [(v, tf.constant(v.numpy())) for v in lm.backbone.variables]
    seed = 0 if seed is None else int(seed)

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="prompt")], autograph=False)
    def generate(prompt):
        with keras.StatelessScope(state_mapping=weights):
            text = tf.reshape(prompt, [])
            ids = tf.cast(encode(text), tf.int32)
            if add_bos:
                ids = tf.concat([tf.constant([bos], tf.int32), ids], 0)
            ids = ids[: max_length - 1]
            n = tf.shape(ids)[0]
            key_shape, value_shape = cache_shapes(spec.num_kv_heads, spec.head_dim, max_length)
            caches = [(tf.zeros(key_shape, tf.float32), tf.zeros(value_shape, tf.float32))
                      for _ in range(spec.num_layers)]
            logits, caches = family.forward_with_cache(lm, ids[None], tf.range(n), caches)
            buffer = tf.concat([ids, tf.zeros([max_length - n], tf.int32)], 0)
            flat = [c for pair in caches for c in pair]

            def keep_going(position, done, *_):
                return tf.logical_and(position < max_length, tf.logical_not(done))

            def step(position, done, buffer, last_logits, *flat_caches):
                token = _sample(last_logits, sampler, seed, position, top_k=top_k, top_p=top_p, temperature=temperature)
                finished = tf.equal(token, eos)
                buffer = tf.tensor_scatter_nd_update(buffer, [[position]], [token])
                pairs = list(zip(flat_caches[0::2], flat_caches[1::2]))
                new_logits, pairs = family.forward_with_cache(lm, token[None, None], position[None], pairs)
                return (position + 1, finished, buffer, new_logits[0, -1], *[c for p in pairs for c in p])

            loop = tf.while_loop(
                keep_going, step, (n, tf.constant(False), buffer, logits[0, -1], *flat),
                maximum_iterations=max_length,
            )
            end, stopped, buffer = loop[0], loop[1], loop[2]
            length = tf.where(stopped, end - 1, end)  # drop the end token
            start = 1 if add_bos else 0
            return tf.reshape(decode(buffer[start:length]), [])

    return generate.get_concrete_function()
