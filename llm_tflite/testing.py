"""Test helpers for model families (built-in and plugins), so a family's tests are a page long.

Example (a plugin's test file):
    >>> from llm_tflite.testing import run_parity_test, run_greedy_test  # doctest: +SKIP
    >>> run_parity_test(keras_model, "model.tflite")  # doctest: +SKIP

They need TensorFlow and KerasHub (the Keras side of each comparison) and pytest-style asserts.
"""

from __future__ import annotations

import numpy as np

from llm_tflite import InterpreterRunner
from llm_tflite.litert import flatbuffer, metadata
from llm_tflite.evaluation.metrics import keras_logits_fn
from llm_tflite.families.base import without_preprocessor

PARITY_PROMPTS = (
    "First Citizen:",
    "ROMEO:\nBut soft, what light through yonder window breaks?",
    "a",
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune",
)


def run_parity_test(lm, tflite_path, prompts=PARITY_PROMPTS, tolerance=1e-4) -> float:
    """TFLite logits at every position match Keras within ``tolerance`` (max abs / std). Returns the worst."""
    runner = InterpreterRunner(tflite_path)
    worst = 0.0
    for prompt in prompts:
        ids = runner.encode(prompt)
        expected = keras_logits_fn(lm)(ids)
        got = runner.logits(ids)
        assert got.shape == expected.shape
        error = float(np.abs(got - expected).max() / expected.std())
        assert error < tolerance, f"{prompt!r}: normalised max abs error {error:.2e}"
        worst = max(worst, error)
    return worst


def run_cached_parity_test(lm, tflite_path, prompt_ids, step_ids, tolerance=1e-4) -> float:
    """The file's logits over ``prompt_ids`` (prefill signatures) and then ``step_ids`` one at a time
    (decode signatures, reading the cache) equal Keras's logits of the whole sequence within
    ``tolerance`` (max abs / std). Returns the error."""
    sequence = InterpreterRunner(tflite_path).sequence()
    got = np.concatenate([sequence.feed(list(prompt_ids))] + [sequence.feed([int(t)]) for t in step_ids])
    expected = keras_logits_fn(lm)(list(prompt_ids) + list(step_ids))
    assert got.shape == expected.shape
    error = float(np.abs(got - expected).max() / expected.std())
    assert error < tolerance, f"normalised max abs error {error:.2e} over {len(prompt_ids)} + {len(step_ids)} tokens"
    return error


def keras_greedy_ids(lm, prompt_ids, max_new_tokens, eos_id) -> list[int]:
    """``lm.generate`` with ``GreedySampler`` on token ids; the new ids up to the end token."""
    import keras_hub

    return keras_generate_ids(lm, keras_hub.samplers.GreedySampler(), prompt_ids, max_new_tokens, eos_id)


def keras_generate_ids(lm, sampler, prompt_ids, max_new_tokens, eos_id, stop_token_ids=None) -> list[int]:
    """``lm.generate`` with a KerasHub ``sampler`` on token ids; the new ids up to the end token.

    ``stop_token_ids`` as KerasHub takes them (``None``: run all ``max_new_tokens`` steps).
    """
    total = len(prompt_ids) + max_new_tokens
    token_ids = np.zeros((1, total), np.int32)
    token_ids[0, : len(prompt_ids)] = prompt_ids
    padding_mask = np.zeros((1, total), bool)
    padding_mask[0, : len(prompt_ids)] = True
    with without_preprocessor(lm):
        lm.compile(sampler=sampler)
        out = lm.generate({"token_ids": token_ids, "padding_mask": padding_mask}, stop_token_ids=stop_token_ids)
    new = [int(t) for t in np.asarray(out["token_ids"])[0, len(prompt_ids):]]
    return new[: new.index(eos_id)] if eos_id in new else new


def run_greedy_test(lm, tflite_path, prompt, max_new_tokens=64, compare_text=True) -> str:
    """InterpreterRunner's greedy continuation equals ``lm.generate`` with the greedy sampler.

    Token for token on the same prompt ids; with ``compare_text`` also as text through
    ``lm.generate(prompt)`` (prompts whose tokens KerasHub's eager tokenizer gets right).
    """
    runner = InterpreterRunner(tflite_path)
    prompt_ids = runner.encode(prompt)
    got_ids = list(runner.generate_ids(prompt_ids, max_new_tokens, "greedy"))
    assert got_ids == keras_greedy_ids(lm, prompt_ids, max_new_tokens, runner.eos_id)
    got = prompt + runner.generate(prompt, max_new_tokens=max_new_tokens, sampler="greedy")
    if compare_text:
        lm.compile(sampler="greedy")
        assert got == lm.generate(prompt, max_length=len(prompt_ids) + max_new_tokens)
    return got


def run_prefill_decode_file_test(tflite_path, num_layers) -> dict:
    """Signatures, cache tensors, tensor ranks and operator set of a prefill_decode file."""
    data = open(tflite_path, "rb").read()
    assert flatbuffer.non_builtin_ops(data) == set()
    meta = metadata.read_metadata_from_bytes(data)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data)
    signatures = interpreter.get_signature_list()
    assert "decode" in signatures
    assert {f"prefill_{n}" for n in meta["prefill_lengths"]} <= set(signatures)
    assert {f"decode_window_{w}" for w in meta.get("decode_windows", [])} <= set(signatures)
    caches = {f"kv_cache_{kind}_{i}" for i in range(num_layers) for kind in "kv"}
    for name, sig in signatures.items():
        assert set(sig["inputs"]) == caches | {"tokens", "input_pos"}, name
        assert set(sig["outputs"]) == caches | {"logits"}, name
    assert all(len(t["shape"]) <= 5 for t in interpreter.get_tensor_details())
    return meta
