"""``llm-tflite bench``: prefill and decode speed of a ``prefill_decode`` file.

With ``--reference MODEL`` the same continuation is also produced by the Keras model's
``generate`` in the same process, and speeds are reported as ratios against it.
"""

from __future__ import annotations

import json
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
    start = time.perf_counter()
    logits = runner._engine.forward(prompt, 0)[-1]
    prefill = time.perf_counter() - start
    position, token = len(prompt), int(np.argmax(logits))
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = int(np.argmax(runner._engine.forward([token], position)[-1]))
        position += 1
    return prefill, time.perf_counter() - start


def bench_file(path, prompt_tokens=64, new_tokens=64, runs=3, num_threads=None) -> dict:
    from llm_tflite.runtime.runner import InterpreterRunner

    runner = InterpreterRunner(path, num_threads=num_threads)
    prompt = _prompt(runner, prompt_tokens, new_tokens)
    runner._engine.forward(prompt, 0)  # warm-up
    times = [_timed_run(runner, prompt, new_tokens) for _ in range(runs)]
    return {
        "file": str(path),
        "prompt_tokens": len(prompt),
        "new_tokens": new_tokens,
        "prefill_tokens_per_s": len(prompt) / _median([t[0] for t in times]),
        "decode_tokens_per_s": new_tokens / _median([t[1] for t in times]),
    }


def decode_speeds(paths, prompt_tokens=32, new_tokens=64, rounds=5) -> dict:
    """Decode tokens/s of several files, measured in interleaved rounds so that load changes on
    the machine hit all of them alike (ratios between files are what is meaningful)."""
    from llm_tflite.runtime.runner import InterpreterRunner

    runners = {path: InterpreterRunner(path) for path in paths}
    prompts = {path: _prompt(r, prompt_tokens, new_tokens) for path, r in runners.items()}
    for path, runner in runners.items():
        _timed_run(runner, prompts[path], 4)  # warm-up
    seconds = {path: [] for path in paths}
    for _ in range(rounds):
        for path, runner in runners.items():
            seconds[path].append(_timed_run(runner, prompts[path], new_tokens)[1])
    return {path: new_tokens / _median(s) for path, s in seconds.items()}


def bench_keras(model, prompt_tokens, new_tokens, runs=3) -> dict:
    import keras_hub

    from llm_tflite.plugins.registry import load_model

    _, lm = load_model(model)
    lm.compile(sampler=keras_hub.samplers.GreedySampler())
    preprocessor, lm.preprocessor = lm.preprocessor, None
    total = prompt_tokens + new_tokens
    x = {"token_ids": np.ones((1, total), np.int32), "padding_mask": np.arange(total)[None] < prompt_tokens}
    try:
        lm.generate(x, stop_token_ids=None)  # compile
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            lm.generate(x, stop_token_ids=None)
            times.append(time.perf_counter() - start)
    finally:
        lm.preprocessor = preprocessor
    return {"keras_generate_tokens_per_s": new_tokens / _median(times)}


def cmd_bench(args) -> int:
    result = bench_file(args.file, args.prompt_tokens, args.new_tokens, args.runs, args.threads)
    if args.reference:
        result.update(bench_keras(args.reference, result["prompt_tokens"], result["new_tokens"], args.runs))
        result["decode_speedup_vs_keras"] = result["decode_tokens_per_s"] / result["keras_generate_tokens_per_s"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['file']}: prefill {result['prefill_tokens_per_s']:.0f} tokens/s "
              f"({result['prompt_tokens']} tokens), decode {result['decode_tokens_per_s']:.1f} tokens/s")
        if args.reference:
            print(f"Keras generate (same process): {result['keras_generate_tokens_per_s']:.1f} tokens/s; "
                  f"decode speed-up {result['decode_speedup_vs_keras']:.2f}x")
    return 0


def add_bench(sub):
    p = sub.add_parser("bench", help="prefill/decode speed of a prefill_decode file, optionally vs Keras")
    p.add_argument("file")
    p.add_argument("--reference", help="a model to compare with (preset name or directory), run in this process")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
