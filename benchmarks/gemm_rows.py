"""How a matrix product's time grows with its rows (tokens): why an 8- or 64-token float32 prefill costs
what it does.

A graph of GPT-2 124M's MLP weights (12 layers of ``FULLY_CONNECTED`` 768 -> 3,072 -> 768, random
weights: 226 MB in float32, 57 MB in dynamic-range int8) is timed for 1 to 256 rows through
``ai_edge_litert``'s interpreter (XNNPACK, 2 threads, median of ``--calls``). A weight-bound product
costs about the same for 1 row as for a few; the time steps up where the runtime's kernel needs
another pass over the weights. XNNPACK's float32 kernel on this machine's AVX-512 computes 7 rows a
pass (measured: the time steps up at 8, 15, 22, 29 and 64 rows, not at 7, 14, 21, 28 or 63), so 8
rows take two passes and 64 rows ten (9 x 7 + 1).

    .venv/bin/python benchmarks/gemm_rows.py [--rows 1,4,7,8,...] [--calls 20]

Prints a Markdown table. Not a CI test: run it alone on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

HIDDEN, INNER, LAYERS = 768, 3072, 12
ROWS = (1, 2, 4, 6, 7, 8, 14, 15, 21, 22, 28, 29, 63, 64, 70, 126, 128, 252, 256)


def model_bytes(rows: int, int8: bool) -> bytes:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal((HIDDEN, INNER), np.float32) * 0.02,
                rng.standard_normal((INNER, HIDDEN), np.float32) * 0.02) for _ in range(LAYERS)]

    @tf.function(input_signature=[tf.TensorSpec([rows, HIDDEN], tf.float32)])
    def mlps(x):
        for up, down in weights:
            x = x + tf.matmul(tf.nn.relu(tf.matmul(x, tf.constant(up))), tf.constant(down))
        return x

    converter = tf.lite.TFLiteConverter.from_concrete_functions([mlps.get_concrete_function()])
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic-range int8, as --quantize dynamic_int8
    return converter.convert()


def time_rows(rows: int, int8: bool, calls: int, threads: int) -> float:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes(rows, int8), num_threads=threads)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"],
                           np.random.default_rng(1).standard_normal((rows, HIDDEN), np.float32))
    interpreter.invoke()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default=",".join(map(str, ROWS)), help="row counts to time")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    results = {(r, int8): time_rows(r, int8, args.calls, args.threads) for r in rows for int8 in (False, True)}
    print("| rows | float32 ms | x 1 row | ms per row | dynamic int8 ms | x 1 row | ms per row |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        f32, q8 = results[r, False], results[r, True]
        print(f"| {r} | {f32:.2f} | {f32 / results[rows[0], False]:.2f} | {f32 / r:.3f} "
              f"| {q8:.2f} | {q8 / results[rows[0], True]:.2f} | {q8 / r:.3f} |")


if __name__ == "__main__":
    main()
