"""How long prompts of several lengths take in two files of one model (different prefill lengths).

    .venv/bin/python benchmarks/prefill_lengths.py OLD NEW [--lengths 16,40,56,64,72,100,192,256] [--repeats 12]

Both files load in one process and take turns for every prompt (``Sequence.feed_last``: the
prompt's calls and its last token's logits, as generation runs them), so a slow spell of the
machine falls on both. Prints each length's plan in each file, the median milliseconds and
OLD / NEW (above 1: NEW is faster). Used to choose the default prefill lengths, e.g. on files of
``llm-tflite convert gpt2_base_en --random-weights --context-length 1024 --quantize S`` with
``--prefill-lengths 8,32,128`` and with the default. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    import numpy as np

    from llm_tflite.cli.common import int_list
    from llm_tflite.runtime.runner import InterpreterRunner

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--lengths", type=int_list, default=[16, 40, 56, 64, 72, 100, 192, 256])
    parser.add_argument("--repeats", type=int, default=12, help="timed prompts per file and length (2 more warm up)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    runners = [InterpreterRunner(path, num_threads=args.threads) for path in (args.old, args.new)]
    ids = [int(i) for i in np.random.default_rng(0).integers(100, runners[0].engine.vocab_size, max(args.lengths))]
    times = {n: ([], []) for n in args.lengths}
    for repeat in range(args.repeats + 2):
        for n in args.lengths:
            for which in ((0, 1) if repeat % 2 == 0 else (1, 0)):  # alternate who goes first
                sequence = runners[which].sequence()
                start = time.perf_counter()
                sequence.feed_last(ids[:n])
                if repeat >= 2:
                    times[n][which].append(time.perf_counter() - start)
                del sequence
    print("| prompt tokens | plan, old | plan, new | old ms | new ms | old / new |")
    print("|---:|---|---|---:|---:|---:|")
    for n in args.lengths:
        plans = [" + ".join(f"{size}" if size == length else f"{length}({size})"
                            for length, size in runner.engine.last_chunks(n, 0)) for runner in runners]
        old, new = (1000 * float(np.median(t)) for t in times[n])
        print(f"| {n} | {plans[0]} | {plans[1]} | {old:.0f} | {new:.0f} | {old / new:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
