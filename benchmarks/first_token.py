"""Where a first token's time goes: a new sequence (its zeroed caches), the prompt's calls, one decode step.

    .venv/bin/python benchmarks/first_token.py FILE [FILE ...] [--prompt-tokens 8] [--repeats 8] [--rounds 2]

Files are timed in turn, round after round, each in a fresh process, so a slow minute of the
machine falls on all of them. Prints the medians in milliseconds and the signatures the prompt ran.
Not a test: compare files converted from the same model in one run, for instance
``llm-tflite convert gpt2_base_en --random-weights --quantize dynamic_int8 --context-length 1024`` with
and without ``--prompt-lengths ''`` (no ``prompt_{L}``: the prompt's last token through ``decode``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time


def measure(path: str, prompt_tokens: int, repeats: int) -> dict:
    import numpy as np

    from llm_tflite.runtime.runner import InterpreterRunner

    runner = InterpreterRunner(path, num_threads=2, batching=False)
    ids = [10 + i % 200 for i in range(prompt_tokens)]
    calls = []
    runner.engine.call = lambda name, inputs, call=runner.engine.call: calls.append(name) or call(name, inputs)
    times = {"new sequence": [], "prompt": [], "decode step": []}
    for _ in range(repeats + 1):  # the first round warms up
        calls.clear()
        start = time.perf_counter()
        sequence = runner.sequence()
        made = time.perf_counter()
        logits = sequence.feed_last(ids)
        prompted = time.perf_counter()
        sequence.feed_last([int(logits.argmax())])
        stepped = time.perf_counter()
        for key, seconds in zip(times, (made - start, prompted - made, stepped - prompted)):
            times[key].append(seconds)
        del sequence
    return {"file": path, "prompt calls": calls[:-1],
            **{key: round(float(np.median(values[1:])) * 1e3, 2) for key, values in times.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one file, JSON out
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.files[0], args.prompt_tokens, args.repeats)))
        return 0
    for round_ in range(1, args.rounds + 1):
        for path in args.files:
            done = subprocess.run([sys.executable, __file__, path, "--one", "--prompt-tokens", str(args.prompt_tokens),
                                   "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"round {round_} {pathlib.Path(path).name}: new sequence {result['new sequence']} ms, "
                  f"{args.prompt_tokens}-token prompt {result['prompt']} ms ({' + '.join(result['prompt calls'])}), "
                  f"decode step {result['decode step']} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
