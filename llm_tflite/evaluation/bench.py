"""``llm-tflite bench``: what ``generate`` gets from a ``prefill_decode`` file, and what it could get.

It measures the path ``generate`` takes (a ``Sequence``: prefill signatures, then one
``decode`` call per token, greedy): load time; time to first token and prefill tokens/s
for several prompt lengths; decode tokens/s just after a short prompt and near the end of
the context (median, min and max over rounds); peak RSS. And the bound: a CPU decodes at
most read bandwidth / bytes read per token (the weights as the runtime holds them, plus
the whole KV cache, which every step's attention reads), with the read bandwidth measured
on the spot; the fraction of it reached says how much a faster engine could gain. On a
``.litertlm`` bundle, LiteRT-LM's engine is measured beside ours. With ``--reference MODEL``
the Keras model's ``generate`` runs in the same process as the baseline.
"""

from __future__ import annotations

import os
import resource
import threading
import time

import numpy as np

#: Prompt lengths of the prefill/time-to-first-token measurement.
PROMPT_LENGTHS = (8, 64, 256)
NEW_TOKENS = 100


def _median(values):
    return float(np.median(values))


def _spread(tokens: int, seconds: list[float]) -> dict:
    rates = [tokens / s for s in seconds]
    return {"median": _median(rates), "min": float(min(rates)), "max": float(max(rates))}


def _prompt(runner, prompt_tokens: int, new_tokens: int) -> list[int]:
    prompt_tokens = max(1, min(prompt_tokens, runner.context_length - new_tokens - 1))
    rng = np.random.default_rng(0)
    return [int(t) for t in rng.integers(0, min(runner.tokenizer.vocab_size, 255), size=prompt_tokens)]


def _timed_run(runner, prompt, new_tokens) -> tuple[float, float, int]:
    """``(seconds to the first token, seconds for the decode steps after it, steps)``: greedy, through
    the runner's own token loop (the one ``generate`` runs), never stopping at the end token, up to
    ``new_tokens`` steps or the end of the context."""
    start = time.perf_counter()
    tokens = runner.generate_ids(list(prompt), new_tokens + 1, "greedy", stop_token_ids=[])
    next(tokens)  # prefill and the first token
    first = time.perf_counter() - start
    start = time.perf_counter()
    steps = sum(1 for _ in tokens)
    return first, time.perf_counter() - start, steps


def _generate_rate(runner, text: str, new_tokens: int) -> float:
    """Decode tokens/s of plain generations (``runner.complete``: tokenizing, the loop, detokenizing,
    stop checks) of ``new_tokens`` and of one token: ``(n - 1) / (t(n) - t(1))``."""
    def timed(count):
        start = time.perf_counter()
        result = runner.complete(text, max_new_tokens=count, stop_token_ids=[])
        return time.perf_counter() - start, result.completion_tokens

    one = min(timed(1)[0] for _ in range(2))
    seconds, made = timed(new_tokens)
    return (made - 1) / max(seconds - one, 1e-9)


def _late_decode(runner, new_tokens) -> tuple[int, float]:
    """``(steps, seconds)`` of up to ``new_tokens`` decode steps that end at the last slot of the context."""
    start_at = max(runner.context_length - new_tokens, 1)
    _, seconds, steps = _timed_run(runner, _prompt(runner, start_at, 0)[:start_at], new_tokens)
    return steps, seconds


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


def read_bandwidth(threads: int = 2, megabytes: int = 512, rounds: int = 5) -> float:
    """Bytes/s this machine reads from memory with ``threads`` threads (best of ``rounds``).

    A reduction over 64-bit integers (numpy's ``bitwise_or``, which releases the GIL) over a
    buffer much larger than the caches: a read stream with next to no compute per byte.
    """
    data = np.ones(megabytes << 17, np.uint64)  # megabytes MiB
    parts = np.array_split(data, threads)
    best = float("inf")
    for _ in range(rounds):
        workers = [threading.Thread(target=np.bitwise_or.reduce, args=(part,)) for part in parts]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = min(best, time.perf_counter() - start)
    return data.nbytes / best


def read_bandwidth_apart(threads: int) -> float:
    """``read_bandwidth`` in a fresh process: no runtime thread pool spinning beside it, and its
    buffer stays out of this process's peak RSS."""
    import subprocess
    import sys

    code = f"from llm_tflite.evaluation.bench import read_bandwidth; print(read_bandwidth({int(threads)}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def bandwidth_samples(samples: list[float]) -> dict:
    """The read bandwidth figures ``bench`` reports: every sample (each the best of its rounds, taken at
    different moments of the run), their median and spread, and the one the bound uses: the highest,
    since a bound on speed must not come from a moment the memory system was busy."""
    median = _median(samples)
    return {"samples_bytes_per_s": list(samples), "median_bytes_per_s": median, "min_bytes_per_s": min(samples),
            "max_bytes_per_s": max(samples), "spread": (max(samples) - min(samples)) / median,
            "bound_uses_bytes_per_s": max(samples)}


def held_weight_bytes(runner) -> int:
    """Bytes of weights the runtime holds for ``runner``'s file (float16 and weight-only int8 expanded)."""
    from llm_tflite.errors import LLMTFLiteError
    from llm_tflite.litert.flatbuffer import map_model_file, weight_bytes
    from llm_tflite.litert.litertlm import is_litertlm, tflite_section
    from llm_tflite.plugins.registry import get_strategy

    try:
        expansion = get_strategy(runner.metadata["quantization"]).memory_expansion
    except LLMTFLiteError:  # a strategy from a plugin that is not installed here
        expansion = 1.0
    data = map_model_file(runner.path)  # its tables only are read
    return int(weight_bytes(tflite_section(data, repr(runner.path)) if is_litertlm(data) else data) * expansion)


def decode_bytes_per_token(runner, position: int | None = None, weights: int | None = None) -> dict:
    """Bytes a decode step at ``position`` reads: the weights as the runtime holds them
    (``held_weight_bytes``, unless given), and the KV cache slots its signature attends over (a
    decode window's, or the whole cache)."""
    weights = held_weight_bytes(runner) if weights is None else weights
    cache = runner.engine.cache_bytes(None if position is None else runner.engine.decode_window(position))
    return {"weights": weights, "kv_cache": cache, "total": weights + cache}


def bench_file(path, prompt_lengths=PROMPT_LENGTHS, new_tokens=NEW_TOKENS, runs=3, num_threads=None) -> dict:
    """Load, prefill, decode and memory figures of a ``prefill_decode`` file (or bundle), and the bound."""
    if isinstance(prompt_lengths, int):
        prompt_lengths = (prompt_lengths,)
    start = time.perf_counter()
    runner = _prefill_decode_runner(path, num_threads)
    load_seconds = time.perf_counter() - start
    prompts = {len(p): p for p in (_prompt(runner, n, new_tokens) for n in prompt_lengths)}
    shortest = min(prompts)
    text = runner.decode(prompts[shortest]) or "ROMEO:"
    _timed_run(runner, prompts[shortest], 4)  # warm-up
    _generate_rate(runner, text, 4)
    bandwidths = [read_bandwidth_apart(runner.num_threads)]  # sampled before, between and after the runs
    prefill, decode, generated = {}, [], []
    for length, prompt in prompts.items():
        times = []
        for _ in range(runs):
            times.append(_timed_run(runner, prompt, new_tokens if length == shortest else 0))
            if length == shortest:  # plain generations, interleaved: what `generate` gets, same process
                generated.append(_generate_rate(runner, text, new_tokens))
        prefill[str(length)] = {"time_to_first_token_s": _median([t[0] for t in times]),
                                "tokens_per_s": length / _median([t[0] for t in times])}
        if length == shortest:
            decode = [t[1] for t in times]
    bandwidths.append(read_bandwidth_apart(runner.num_threads))
    late = [_late_decode(runner, new_tokens) for _ in range(runs)]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    last_early = min(prompts) + new_tokens - 1
    weights = held_weight_bytes(runner)
    read, read_late = decode_bytes_per_token(runner, last_early, weights), decode_bytes_per_token(runner, None, weights)
    bandwidths.append(read_bandwidth_apart(runner.num_threads))
    bandwidth = bandwidth_samples(bandwidths)
    early, late_figures = _spread(new_tokens, decode), _spread(late[0][0], [t for _, t in late])
    bound = bandwidth["bound_uses_bytes_per_s"] / read["total"]
    bound_late = bandwidth["bound_uses_bytes_per_s"] / read_late["total"]
    # Decoding faster than the bound means the bytes or the bandwidth were mis-measured (a sample
    # taken while the system was busy): the fraction is reported, and flagged, never a result.
    exceeded = [name for name, rate, limit in (("early", early["median"], bound), ("late", late_figures["median"],
                                                                                    bound_late)) if rate > limit]
    result = {
        "file": str(path),
        "file_bytes": os.path.getsize(path),
        "quantization": runner.metadata["quantization"],
        "context_length": runner.context_length,
        "threads": runner.num_threads,
        "load_s": load_seconds,
        "prefill": prefill,
        "new_tokens": new_tokens,
        "decode_tokens_per_s": early["median"],
        "decode_early": {**early, "positions": [min(prompts), min(prompts) + new_tokens]},
        # runner.complete of as many tokens after the same prompt as text, in rounds between bench's
        "generate_decode_tokens_per_s": _median(generated),
        "decode_over_generate": early["median"] / _median(generated),
        "decode_late": {**late_figures, "positions": [runner.context_length - late[0][0], runner.context_length],
                        "bound_tokens_per_s": bound_late, "fraction_of_bound": late_figures["median"] / bound_late,
                        "bytes_read_per_token": read_late},
        "peak_rss_bytes": peak_rss,
        "bytes_read_per_token": read,
        "read_bandwidth_bytes_per_s": bandwidth["bound_uses_bytes_per_s"],
        "read_bandwidth": bandwidth,
        "bound_exceeded": exceeded,
        "decode_bound_tokens_per_s": bound,
        "decode_fraction_of_bound": early["median"] / bound,
        # the figures of earlier versions, for scripts that read them
        "prompt_tokens": min(prompts),
        "prefill_tokens_per_s": prefill[str(max(prompts))]["tokens_per_s"],
    }
    if runner.is_bundle:
        result["litert_lm"] = bench_litert_lm(path, max(prompts), new_tokens, runs, runner.num_threads)
    return result


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


def bench_keras(model, prompt_tokens, new_tokens, runs=3, random_weights=False) -> dict:
    """Keras ``generate`` (greedy, XLA) tokens/s of ``model`` in this process: the baseline."""
    from llm_tflite.families.base import without_preprocessor
    from llm_tflite.families.loading import load_model

    _, lm = load_model(model, random_weights=random_weights)  # Keras on TensorFlow, quietly, before KerasHub
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
