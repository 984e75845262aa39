"""One prefill call of LiteRT-LM-style files side by side, outside any engine.

    .venv/bin/python benchmarks/prefill_calls.py FILE[:SIGNATURE] FILE[:SIGNATURE] ... [--positions 0,384]
        [--rounds 6] [--threads 2]

Each FILE (a ``.litertlm`` bundle, ours or litert-torch's, or a ``.tflite``) loads its model in
``ai_edge_litert``'s interpreter (XNNPACK, ``--threads``); SIGNATURE (default ``prefill_128``) is called
with random tokens at ``input_pos`` = POSITION .. POSITION + L - 1, caches of zeros and, where the
signature has a ``mask`` input (litert-torch's), the causal mask of those positions. The files take turns,
``--rounds`` times (the order reversed every other round, one warm-up call first), and the median ms of
a call at each position is printed. Its time includes copying the caches in and out, the same for
every file of one shape. Not a test: a benchmark (docs/performance.md, "Side by side with litert-torch").
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def load(spec: str, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    from llm_tflite.litert.litertlm import is_litertlm, model_bytes

    path, _, signature = spec.partition(":")
    with open(path, "rb") as f:
        data = f.read()
    model = bytes(model_bytes(data, path)) if is_litertlm(data) else data
    runner = Interpreter(model_content=model, num_threads=threads).get_signature_runner(signature or "prefill_128")
    return runner, runner.get_input_details()


def feeds(details: dict, position: int, rng) -> dict:
    length = int(details["input_pos"]["shape"][0])
    out = {name: np.zeros(d["shape"], d["dtype"]) for name, d in details.items()}
    out["input_pos"] = np.arange(position, position + length, dtype=details["input_pos"]["dtype"])
    out["tokens"] = rng.integers(1, 1000, details["tokens"]["shape"]).astype(details["tokens"]["dtype"])
    if "mask" in details:  # [1, 1, L, C]: 0 where a row sees the slot, very negative elsewhere
        slots = details["mask"]["shape"][-1]
        visible = np.arange(slots)[None, :] <= out["input_pos"][:, None]
        out["mask"] = np.where(visible, 0.0, -1e9).astype(details["mask"]["dtype"]).reshape(details["mask"]["shape"])
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="FILE or FILE:SIGNATURE")
    parser.add_argument("--positions", default="0,384")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    positions = [int(p) for p in args.positions.split(",")]
    rng = np.random.default_rng(0)
    setups = [(spec, *load(spec, args.threads)) for spec in args.files]
    times = {(spec, p): [] for spec in args.files for p in positions}
    for spec, runner, details in setups:
        runner(**feeds(details, 0, rng))  # warm-up
    for number in range(args.rounds):
        for spec, runner, details in (setups if number % 2 == 0 else setups[::-1]):
            for position in positions:
                inputs = feeds(details, position, rng)
                started = time.perf_counter()
                runner(**inputs)
                times[spec, position].append(time.perf_counter() - started)
    for spec in args.files:
        cells = ", ".join(f"position {p}: {statistics.median(times[spec, p]) * 1000:.1f} ms" for p in positions)
        print(f"{spec}: {cells}")


if __name__ == "__main__":
    main()
