"""``llm-tflite bench``: prefill and decode speed of a ``prefill_decode`` file.

With ``--reference MODEL`` the same continuation is also produced by the Keras model's
``generate`` in the same process, and speeds are reported as ratios against it.
"""

from __future__ import annotations

import time

import numpy as np


def _median(values):
    return float(np.median(values))


def _prompt(runner, prompt_tokens: int, new_tokens: int) -> list[int]:
    prompt_tokens = min(prompt_tokens, runner.context_length - new_tokens - 1)
    rng = np.random.default_rng(0)
    vocab = len(runner.tokenizer.vocab) if hasattr(runner.tokenizer, "vocab") else 256
    return [int(t) for t in rng.integers(0, min(vocab, 255), size=prompt_tokens)]


def _timed_run(runner, prompt, new_tokens) -> tuple[float, float]:
    """Seconds for the prefill of ``prompt`` and for ``new_tokens`` greedy decode steps after it."""
    sequence = runner.sequence()
    start = time.perf_counter()
    logits = sequence.feed(prompt)[-1]
    prefill = time.perf_counter() - start
    token = int(np.argmax(logits))
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = int(np.argmax(sequence.feed([token])[-1]))
    return prefill, time.perf_counter() - start


def _prefill_decode_runner(path, num_threads=None):
    from llm_tflite.errors import UnsupportedRuntimeError
    from llm_tflite.litert.metadata import read_metadata
    from llm_tflite.runtime.runner import InterpreterRunner

    mode = read_metadata(path).get("export_mode")  # a bundle's too
    if mode != "prefill_decode":
        raise UnsupportedRuntimeError(
            f"bench measures prefill and decode separately, which needs a prefill_decode file; {str(path)!r} is a "
            f"{mode} file, whose whole loop is one call: time `llm-tflite generate` on it instead, or bench the "
            "same model converted with --mode prefill_decode"
        )
    return InterpreterRunner(path, num_threads=num_threads)


def bench_file(path, prompt_tokens=64, new_tokens=64, runs=3, num_threads=None) -> dict:
    """Prefill and decode tokens/s of a ``prefill_decode`` file (medians over ``runs``)."""
    runner = _prefill_decode_runner(path, num_threads)
    prompt = _prompt(runner, prompt_tokens, new_tokens)
    runner.logits(prompt)  # warm-up
    times = [_timed_run(runner, prompt, new_tokens) for _ in range(runs)]
    result = {
        "file": str(path),
        "prompt_tokens": len(prompt),
        "new_tokens": new_tokens,
        "prefill_tokens_per_s": len(prompt) / _median([t[0] for t in times]),
        "decode_tokens_per_s": new_tokens / _median([t[1] for t in times]),
    }
    if _is_bundle(path):
        result["litert_lm"] = bench_litert_lm(path, len(prompt), new_tokens, runs, num_threads)
    return result


def _is_bundle(path) -> bool:
    from llm_tflite.litert.litertlm import MAGIC

    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def bench_litert_lm(path, prompt_tokens, new_tokens, runs=3, num_threads=None) -> dict | None:
    """LiteRT-LM's own benchmark of a bundle (its engine's prefill and decode; medians over ``runs``),
    or None when ``litert-lm-api`` is not installed (logged)."""
    from llm_tflite.console import logger, quiet_native
    from llm_tflite.errors import UnsupportedRuntimeError
    from llm_tflite.runtime.litertlm_backend import import_litert_lm

    try:
        litert_lm = import_litert_lm("measuring LiteRT-LM's engine")
    except UnsupportedRuntimeError as e:
        logger.warning("%s; only our loop is measured", e)
        return None
    infos = []
    for _ in range(runs):
        with quiet_native():
            infos.append(litert_lm.Benchmark(
                model_path=str(path), backend=litert_lm.Backend.CPU(thread_count=num_threads),
                prefill_tokens=prompt_tokens, decode_tokens=new_tokens).run())
    return {
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "init_seconds": _median([i.init_time_in_second for i in infos]),
        "time_to_first_token_seconds": _median([i.time_to_first_token_in_second for i in infos]),
        "prefill_tokens_per_s": _median([i.last_prefill_tokens_per_second for i in infos]),
        "decode_tokens_per_s": _median([i.last_decode_tokens_per_second for i in infos]),
    }


def decode_speeds(paths, prompt_tokens=32, new_tokens=64, rounds=5) -> dict:
    """Decode tokens/s of several files, measured in interleaved rounds so that load changes on
    the machine hit all of them alike (ratios between files are what is meaningful)."""
    runners = {path: _prefill_decode_runner(path) for path in paths}
    prompts = {path: _prompt(r, prompt_tokens, new_tokens) for path, r in runners.items()}
    for path, runner in runners.items():
        _timed_run(runner, prompts[path], 4)  # warm-up
    seconds = {path: [] for path in paths}
    for _ in range(rounds):
        for path, runner in runners.items():
            seconds[path].append(_timed_run(runner, prompts[path], new_tokens)[1])
    return {path: new_tokens / _median(s) for path, s in seconds.items()}


def bench_keras(model, prompt_tokens, new_tokens, runs=3) -> dict:
    """Keras ``generate`` (greedy, XLA) tokens/s of ``model`` in this process: the baseline."""
    from llm_tflite.families.base import without_preprocessor
    from llm_tflite.plugins.registry import load_model

    _, lm = load_model(model)  # Keras on TensorFlow, quietly, before KerasHub
    import keras_hub

    lm.compile(sampler=keras_hub.samplers.GreedySampler())
    total = prompt_tokens + new_tokens
    x = {"token_ids": np.ones((1, total), np.int32), "padding_mask": np.arange(total)[None] < prompt_tokens}
    with without_preprocessor(lm):
        lm.generate(x, stop_token_ids=None)  # compile
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            lm.generate(x, stop_token_ids=None)
            times.append(time.perf_counter() - start)
    return {"keras_generate_tokens_per_s": new_tokens / _median(times)}
