"""What XNNPACK's half-precision inference (its FORCE_FP16 flag) would buy a float16 file, and cost.

Our float16 files store weights in float16 and compute in float32: XNNPACK unpacks the weights
to float32 when it packs them, so a decode step reads twice F16's bytes (docs/performance.md).
XNNPACK can instead compute the whole graph in float16 (``TFLITE_XNNPACK_DELEGATE_FLAG_FORCE_FP16``;
natively on CPUs with half-precision arithmetic, e.g. AVX512-FP16 or ARMv8.2-A). This script times
our signatures both ways and reads the memory each way holds, each case in a fresh process,
through ``ai_edge_litert``'s ``CompiledModel`` (2 threads):

- ``float32 + cache``: how our runtime runs a file (XNNPACK's weight cache file, shared by every
  signature);
- ``float16``: FORCE_FP16 without a weight cache;
- ``float16 + cache``: FORCE_FP16 with a weight cache file (LiteRT 2.3.0: the process aborts,
  "An invalid pack identifier was created": the cache cannot hold the half-precision copies
  XNNPACK's rewrite makes).

    .venv/bin/python benchmarks/xnnpack_fp16.py [FILE] [--rounds 2]

FILE defaults to ``benchmarks/llama_cpp.py``'s float16 GPT-2 124M (random weights, context 1,024).
Not a CI test.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_FILE = ROOT / "build" / "llama_cpp" / "ours_gpt2_base_float16_1024.tflite"
SIGNATURES = ("decode_window_128", "decode", "prompt_8", "prefill_128")
FORCE_FP16 = 0x1 | 0x2 | 0x4  # QS8 | QU8 (the delegate's defaults, which the flags replace) | FORCE_FP16
CASES = {"float32 + cache": (None, True), "float16": (FORCE_FP16, False), "float16 + cache": (FORCE_FP16, True)}


def rss_anon_mb() -> float:
    with open("/proc/self/status") as f:
        return int(re.search(r"RssAnon:\s+(\d+)", f.read()).group(1)) / 1024


def measure(path: str, flags: int | None, cache: str, threads: int, steps: int) -> dict:
    """In this process: compile ``path``, time each of ``SIGNATURES`` (median of ``steps`` calls)."""
    import time

    import numpy as np
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.cpu_options import CpuOptions
    from ai_edge_litert.options import Options

    options = CpuOptions(num_threads=threads, xnnpack_weight_cache_path=cache, xnnpack_flags=flags)
    model = CompiledModel.from_file(path, options=Options(cpu_options=options))
    keys = [model.get_signature_by_index(i)["key"] for i in range(model.get_num_signatures())]
    result = {"signatures": len(keys), "rss_anon_mb_loaded": rss_anon_mb(), "ms": {}}
    for name in SIGNATURES:
        index = keys.index(name)
        inputs, outputs = model.create_input_buffers(index), model.create_output_buffers(index)
        for (key, detail), buffer in zip(model.get_input_tensor_details(name).items(), inputs):
            value = np.zeros(detail["shape"], dtype=detail["dtype"])
            if key == "input_pos":
                value[...] = 100  # decode at position 100; a prompt chunk from position 100
            buffer.write(value)
        times = []
        for _ in range(steps + 2):
            start = time.perf_counter()
            model.run_by_index(index, inputs, outputs)
            times.append(time.perf_counter() - start)
        result["ms"][name] = 1000 * float(np.median(times[2:]))
    result["rss_anon_mb"] = rss_anon_mb()
    return result


def run_case(path: str, case: str, threads: int, steps: int) -> dict:
    """One case in a fresh process (its own weight cache file, removed after)."""
    flags, cached = CASES[case]
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "weights.xnnpack") if cached else ""
        done = subprocess.run([sys.executable, __file__, path, "--child", json.dumps([flags, cache, threads, steps])],
                              capture_output=True, text=True)
    if done.returncode:
        reason = [line for line in done.stderr.splitlines() if "ERROR" in line][-1:]
        return {"failed": f"exit status {done.returncode}" + (f": {reason[0].strip()}" if reason else "")}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", nargs="?", default=str(DEFAULT_FILE))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed calls per signature")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        flags, cache, threads, steps = json.loads(args.child)
        print(json.dumps(measure(args.file, flags, cache, threads, steps)))
        return 0
    if not os.path.isfile(args.file):
        print(f"{args.file} not found: run benchmarks/llama_cpp.py compare --pairs float16:F16 first, or give a "
              "float16 prefill_decode file", file=sys.stderr)
        return 1
    rows = {case: [] for case in CASES}
    for round_ in range(args.rounds):
        for case in CASES:
            rows[case].append(run_case(args.file, case, args.threads, args.steps))
            print(f"round {round_ + 1} {case}: {json.dumps(rows[case][-1])}", file=sys.stderr, flush=True)
    print(f"| case | {' | '.join(f'{n} ms' for n in SIGNATURES)} | RssAnon after, MB |")
    print("|---|" + "---:|" * (len(SIGNATURES) + 1))
    for case, results in rows.items():
        if any("failed" in r for r in results):
            print(f"| {case} | {next(r['failed'] for r in results if 'failed' in r)} |" + " |" * len(SIGNATURES))
            continue
        cells = [" / ".join(f"{r['ms'][n]:.1f}" for r in results) for n in SIGNATURES]
        cells.append(" / ".join(f"{r['rss_anon_mb']:.0f}" for r in results))
        print(f"| {case} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
