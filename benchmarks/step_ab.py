"""One decode step of two files side by side: ``decode`` (1 row) and ``decode_rows`` (8 rows) at one position.

    .venv/bin/python benchmarks/step_ab.py A.tflite B.tflite [POSITION]

Both files (prefill_decode, with ``decode_batch_8``: ``--batch-sizes 2,4,8``) load in one process;
8 rounds, each timing 40 steps of each file in turn after 5 warm-up steps; prints the median ms of
a step and B / A. 2 threads. Not a test: a benchmark (docs/performance.md, "One token attends with
products and sums").
"""

import time, numpy as np, sys, statistics
from llm_tflite import InterpreterRunner
files = sys.argv[1:3]
setups = []
for f in files:
    runner = InterpreterRunner(f, num_threads=2)
    engine = runner.engine
    seqs = [runner.sequence() for _ in range(8)]
    for s in seqs: s.feed_last(runner.encode("ROMEO: hello there"))
    setups.append((runner, engine, seqs, engine.new_state()))
pos = int(sys.argv[3]) if len(sys.argv) > 3 else 20
def step(setup, rows):
    runner, engine, seqs, pad = setup
    if rows == 1:
        return engine.call(engine.decode_signature(pos), dict(tokens=np.zeros((1,1),np.int32), input_pos=np.array([pos],np.int32), caches=seqs[0].caches))
    return engine.decode_rows([s.caches for s in seqs[:rows]], [5]*rows, [pos]*rows, pad)
res = {(i, r): [] for i in range(2) for r in (1, 8)}
for rnd in range(8):
    for i, setup in enumerate(setups):
        for r in (1, 8):
            for _ in range(5): step(setup, r)
            t = time.perf_counter()
            for _ in range(40): step(setup, r)
            res[(i, r)].append((time.perf_counter() - t) / 40 * 1000)
for r in (1, 8):
    a, b = statistics.median(res[(0, r)]), statistics.median(res[(1, r)])
    print(f"pos {pos} rows {r}: A {a:.2f} ms  B {b:.2f} ms  B/A {b/a:.3f}")
