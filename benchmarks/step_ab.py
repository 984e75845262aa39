"""One decode step of two files side by side, at one position, in our runtime.

    .venv/bin/python benchmarks/step_ab.py A.tflite B.tflite [POSITION] [--rows 1,8] [--signature decode]

Both files (prefill_decode; 8 rows need ``decode_batch_8``: ``--batch-sizes 2,4,8``) load in one
process, 2 threads; 8 rounds, each timing 40 steps of each file in turn after 5 warm-up steps; prints
the median ms of a step and B / A. One row runs the decode signature the runner would pick at
POSITION (its decode window), or ``--signature`` (``decode``: the whole-cache signature, the one
LiteRT-LM runs); more rows run ``decode_rows``. Not a test: a benchmark (docs/performance.md, "One
token attends with products and sums" and "In LiteRT-LM's engine too").
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from llm_tflite import InterpreterRunner


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs=2)
    parser.add_argument("position", nargs="?", type=int, default=20)
    parser.add_argument("--rows", default="1,8", help="comma-separated row counts (default 1,8)")
    parser.add_argument("--signature", help="the signature of a one-row step (default: the runner's choice)")
    args = parser.parse_args(argv)
    rows_list, pos = [int(n) for n in args.rows.split(",")], args.position
    setups = []
    for path in args.files:
        runner = InterpreterRunner(path, num_threads=2)
        sequences = [runner.sequence() for _ in range(max(rows_list))]
        for sequence in sequences:
            sequence.feed_last(runner.encode("ROMEO: hello there"))
        setups.append((runner.engine, sequences, runner.engine.new_state()))

    def step(setup, rows):
        engine, sequences, pad = setup
        if rows == 1:
            return engine.call(args.signature or engine.decode_signature(pos),
                               dict(tokens=np.zeros((1, 1), np.int32), input_pos=np.array([pos], np.int32),
                                    caches=sequences[0].caches))
        return engine.decode_rows([s.caches for s in sequences[:rows]], [5] * rows, [pos] * rows, pad)

    times = {(i, r): [] for i in range(2) for r in rows_list}
    for _ in range(8):
        for i, setup in enumerate(setups):
            for r in rows_list:
                for _ in range(5):
                    step(setup, r)
                started = time.perf_counter()
                for _ in range(40):
                    step(setup, r)
                times[i, r].append((time.perf_counter() - started) / 40 * 1000)
    for r in rows_list:
        a, b = statistics.median(times[0, r]), statistics.median(times[1, r])
        print(f"pos {pos} rows {r}: A {a:.2f} ms  B {b:.2f} ms  B/A {b / a:.3f}")


if __name__ == "__main__":
    main()
