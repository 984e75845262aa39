"""What one batched decode step costs: ``decode_rows`` for 1, 2, 4, 8 rows, grouped calls, FC alone.

    .venv/bin/python benchmarks/batch_step.py [FILE] [--fc] [--workers] [--lanes | --lanes-memory N]

FILE (default ``build/serve/gpt2_base_dynamic_int8_b8.tflite``, which ``benchmarks/serve_load.py``
converts) must have ``decode_batch`` signatures. Prints, for rows at position 20 (decode window
128), the median wall and CPU time of a step for 1 (``decode``), 2, 4 and 8 rows, in 4
interleaved rounds; then 7 rows at position 20 and one at 300 / 700 as one call (the furthest
row's window) and as two (``BatchingEngine._calls`` groups them so). With ``--fc``: the same
``FULLY_CONNECTED`` shapes as GPT-2 124M (12 layers and the head, dynamic-range int8) alone in a
graph, for 1, 4 and 8 rows: the part of a step that reads the weights. With ``--workers``: how far a
Python thread gets while one long model call runs (whether the binding holds the GIL), and decode
steps per second of one runner with 2 threads against two runners with 1 thread each driven from
two Python threads (what ``serve --workers 2`` does in one process). With ``--lanes`` (alone): rows per
second of 4, 5, 6 and 8 rows at positions 40 and 300 as one call on 2 threads against the rows shared
out over two twins of one thread (``serve --lanes``). With ``--lanes-memory N`` (alone): RssAnon of a
batching runner with N lanes after 8 generations. Not a test: a benchmark.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def step_costs(runner) -> None:
    engine = runner.engine
    sequences = [runner.sequence() for _ in range(8)]
    for sequence in sequences:
        sequence.feed_last(runner.encode("ROMEO: hello there"))
    pad = engine.new_state()
    costs = {rows: ([], []) for rows in (1, 2, 4, 8)}
    for _ in range(4):
        for rows, (wall, cpu) in costs.items():
            for k in range(12):
                start, start_cpu = time.perf_counter(), time.process_time()
                if rows == 1:
                    sequences[0].position = 20
                    sequences[0].feed([5])
                else:
                    engine.decode_rows([s.caches for s in sequences[:rows]], [5] * rows, [20] * rows, pad)
                if k >= 2:
                    wall.append(time.perf_counter() - start)
                    cpu.append(time.process_time() - start_cpu)
    print("rows at position 20: " + ", ".join(
        f"{rows}: {np.median(wall) * 1000:.1f} ms wall / {np.median(cpu) * 1000:.1f} ms CPU"
        for rows, (wall, cpu) in costs.items()))
    for far in (300, 700):
        positions = [20] * 7 + [far]
        one, two = [], []
        for _ in range(15):
            start = time.process_time()
            engine.decode_rows([s.caches for s in sequences], [5] * 8, positions, pad)
            one.append(time.process_time() - start)
            start = time.process_time()
            engine.decode_rows([s.caches for s in sequences[:7]], [5] * 7, positions[:7], pad)
            sequences[7].position = far
            sequences[7].feed([5])
            two.append(time.process_time() - start)
        print(f"7 rows at 20 and 1 at {far}: one call {np.median(one[3:]) * 1000:.0f} ms CPU, "
              f"a call per window {np.median(two[3:]) * 1000:.0f} ms CPU")


def fully_connected_alone(threads: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.cpu_options import CpuOptions
    from ai_edge_litert.options import Options

    rng = np.random.default_rng(0)
    shapes = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
    weights = [tf.constant(rng.standard_normal(shape, np.float32) * 0.02) for _ in range(12) for shape in shapes]
    head = tf.constant(rng.standard_normal((768, 50257), np.float32) * 0.02)
    for rows in (1, 4, 8):
        @tf.function(input_signature=[tf.TensorSpec([rows, 768], tf.float32)])
        def layers(x):
            for i in range(12):
                qkv = tf.matmul(x, weights[4 * i])
                x = x + tf.matmul(qkv[:, :768], weights[4 * i + 1])
                x = x + tf.matmul(tf.nn.relu(tf.matmul(x, weights[4 * i + 2])), weights[4 * i + 3])
            return {"logits": tf.matmul(x, head)}

        converter = tf.lite.TFLiteConverter.from_concrete_functions([layers.get_concrete_function()])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # int8 weights, float activations: as dynamic_int8
        model = CompiledModel.from_buffer(converter.convert(), options=Options(cpu_options=CpuOptions(num_threads=threads)))
        name = list(model.get_signature_list())[0]
        inputs = {k: model.create_input_buffer_by_name(name, k) for k in model.get_input_tensor_details(name)}
        outputs = {k: model.create_output_buffer_by_name(name, k) for k in model.get_output_tensor_details(name)}
        for buffer in inputs.values():
            buffer.write(np.ones((rows, 768), np.float32))
        times = []
        for _ in range(30):
            start = time.perf_counter()
            model.run_by_name(name, inputs, outputs)
            times.append(time.perf_counter() - start)
        print(f"FULLY_CONNECTED alone, {rows} rows: {np.median(times[5:]) * 1000:.1f} ms wall")


def two_workers(path) -> None:
    import threading

    from llm_tflite import InterpreterRunner

    def steps_per_second(runner, out, index):
        sequence = runner.sequence()
        sequence.feed_last(runner.encode("ROMEO: hello"))
        start = time.perf_counter()
        for _ in range(60):
            sequence.position = 20
            sequence.feed([5])
        out[index] = 60 / (time.perf_counter() - start)

    one = InterpreterRunner(path, num_threads=2)
    # a Python thread spinning while one long call (a 128-token prefill) runs: its progress shows
    # whether the binding lets go of the GIL during the call
    count, stop = [0], threading.Event()

    def spin():
        while not stop.is_set():
            count[0] += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    time.sleep(0.5)
    start_count, start = count[0], time.perf_counter()
    time.sleep(0.5)
    alone_rate = (count[0] - start_count) / (time.perf_counter() - start)
    sequence = one.sequence()
    start_count, start = count[0], time.perf_counter()
    sequence.feed_last(list(range(100, 228)))
    took = time.perf_counter() - start
    stop.set()
    spinner.join()
    print(f"a spinning thread beside one {took * 1000:.0f} ms prefill_128 call: "
          f"{(count[0] - start_count) / took / alone_rate:.0%} of its progress alone")
    pair = [InterpreterRunner(path, num_threads=1) for _ in range(2)]
    for _ in range(2):
        alone = [0.0]
        steps_per_second(one, alone, 0)
        both = [0.0, 0.0]
        threads = [threading.Thread(target=steps_per_second, args=(runner, both, i)) for i, runner in enumerate(pair)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(f"one runner with 2 threads: {alone[0]:.1f} steps/s; two runners with 1 thread each, from two "
              f"Python threads: {sum(both):.1f} steps/s together")


def lanes(path, rounds: int = 2, seconds: float = 4.0) -> None:
    """Rows per second of a step decoded as one call on the engine's 2 threads against the rows shared
    out over two twins of one thread each computing at once (``BatchingEngine``'s lanes), rows all at
    one position; the two alternate, in ``rounds`` rounds."""
    import threading

    from llm_tflite import InterpreterRunner

    engine = InterpreterRunner(path, num_threads=2).engine
    twins = [engine.twin(1), engine.twin(1)]
    states = [engine.new_state() for _ in range(8)]
    pads = [engine.new_state() for _ in range(3)]

    def run(model, rows, position, pad, deadline, out, index):
        count = 0
        while time.perf_counter() < deadline:
            model.decode_rows(rows, [5] * len(rows), [position] * len(rows), pad)
            count += len(rows)
        out[index] = count

    for position in (40, 300):
        for rows in (4, 5, 6, 8):
            one, two = [], []
            for _ in range(rounds):
                for kind in ("one", "two"):
                    out = [0, 0]
                    deadline = time.perf_counter() + seconds
                    if kind == "one":
                        run(engine, states[:rows], position, pads[0], deadline, out, 0)
                        one.append(out[0] / seconds)
                        continue
                    half = (rows + 1) // 2
                    threads = [threading.Thread(target=run, args=(twin, part, position, pad, deadline, out, i))
                               for i, (twin, part, pad) in enumerate(zip(twins, [states[:half], states[half:rows]],
                                                                         pads[1:]))]
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        thread.join()
                    two.append(sum(out) / seconds)
            print(f"position {position}, {rows} rows: one call on 2 threads "
                  f"{' / '.join(f'{r:.0f}' for r in one)} rows/s, two lanes of 1 thread "
                  f"{' / '.join(f'{r:.0f}' for r in two)} rows/s")


def lanes_memory(path, lanes: int) -> None:
    """Anonymous memory (RssAnon, ``/proc/self/status``) of a batching runner with ``lanes`` lanes: after it
    is made with 8 slots reserved, and after 8 generations of 64 tokens from 8 threads at once. Run once
    per value, each in a fresh process."""
    import threading

    from llm_tflite import InterpreterRunner

    def anonymous_mb() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) // 1024 for line in status if line.startswith("RssAnon:"))

    runner = InterpreterRunner(path, num_threads=2, batching=True, lanes=lanes)
    runner.engine.reserve(8)
    made = anonymous_mb()
    threads = [threading.Thread(target=runner.complete, args=("ROMEO:", 64, "random"),
                                kwargs=dict(temperature=0.8, seed=i)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"{lanes} lane(s): RssAnon {made} MB after reserve(8), {anonymous_mb()} MB after 8 generations")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", nargs="?", default=str(ROOT / "build" / "serve" / "gpt2_base_dynamic_int8_b8.tflite"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fc", action="store_true", help="also time the FULLY_CONNECTED ops alone")
    parser.add_argument("--workers", action="store_true", help="also time two runners in two Python threads")
    parser.add_argument("--lanes", action="store_true", help="only: a step's rows in one call on 2 threads against "
                        "two lanes of 1 thread (positions 40 and 300; 4, 5, 6 and 8 rows)")
    parser.add_argument("--lanes-memory", type=int, metavar="LANES", help="only: RssAnon of a batching runner with "
                        "LANES lanes, made and after 8 generations (run once per value)")
    args = parser.parse_args()

    from llm_tflite import InterpreterRunner

    if args.lanes_memory:
        lanes_memory(args.file, args.lanes_memory)
        return 0
    if args.lanes:
        lanes(args.file)
        return 0
    step_costs(InterpreterRunner(args.file, num_threads=args.threads))
    if args.fc:
        fully_connected_alone(args.threads)
    if args.workers:
        two_workers(args.file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
