"""Gemma 3's ring caches in LiteRT-LM's engine: ``python benchmarks/litertlm_rings.py``.

Converts ``gemma3_270m`` (random weights) at dynamic int8 and ``--context-length`` (default 4,096) into
two ``.litertlm`` bundles: with ring caches stored context-shaped (what ``convert --format litertlm``
writes: ``[1, 1, C, heads * R * D / C]``, ``litert.metadata.stored_cache_shape``) and with
``--no-ring-caches`` (every layer holds the whole context). Then runs both in LiteRT-LM's engine
(``litert_lm.Benchmark``, CPU, 2 threads, prefill 64 and 2,048 tokens, 100 decode tokens,
``max_num_tokens`` the context), ``--rounds`` interleaved rounds, and prints each file's KV-cache
bytes and the median tokens/s, then the second file's per-round ratios to the first's (their median
and range: LiteRT-LM's rate moves a lot from one call to the next).

``--files A B`` measures two existing bundles instead (e.g. litert-torch's and ours,
``benchmarks/litert_torch.py``'s work directory; ``--prefills 512 --rounds 8``). Not a CI test: run
it alone on the machine (docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def convert(path: str, context: int, ring: bool) -> str:
    if not os.path.exists(path):
        cli = os.path.join(os.path.dirname(sys.executable), "llm-tflite")
        subprocess.run([cli, "convert", "gemma3_270m", "--random-weights", "--quantize", "dynamic_int8",
                        "--context-length", str(context), "-q", "-o", path] + ([] if ring else ["--no-ring-caches"]),
                       check=True)
    return path


def cache_bytes(path: str) -> str:
    """MB of one sequence's KV caches (the record's shapes, however the file stores them); "?" for a
    file without our record (litert-torch's)."""
    import numpy as np

    from llm_tflite import InterpreterRunner
    from llm_tflite.errors import LLMTFLiteError

    try:
        specs = InterpreterRunner(path, weight_cache="memory").engine.cache_specs
    except LLMTFLiteError:
        return "?"
    return f"{sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in specs.values()) / 1e6:.1f} MB"


def speed(path: str, prefill: int, context: int) -> tuple[float, float]:
    import litert_lm

    info = litert_lm.Benchmark(model_path=path, backend=litert_lm.Backend.CPU(thread_count=2), prefill_tokens=prefill,
                               decode_tokens=100, max_num_tokens=context).run()
    return info.last_prefill_tokens_per_second, info.last_decode_tokens_per_second


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context-length", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prefills", default="64,2048", help="prompt lengths (default 64,2048)")
    parser.add_argument("--files", nargs=2, help="two existing .litertlm bundles to measure instead")
    parser.add_argument("--work", default=os.path.join(ROOT, "build", "litertlm_rings"))
    args = parser.parse_args(argv)
    prefills = [int(n) for n in args.prefills.split(",")]
    if args.files:
        files = {os.path.relpath(path): path for path in args.files}
    else:
        os.makedirs(args.work, exist_ok=True)
        files = {name: convert(os.path.join(args.work, f"gemma3_270m_{name}_{args.context_length}.litertlm"),
                               args.context_length, name == "rings") for name in ("naive", "rings")}
    results = {(name, p): [] for name in files for p in prefills}
    for _ in range(args.rounds):
        for prefill in prefills:
            for name, path in files.items():  # interleaved
                results[name, prefill].append(speed(path, prefill, args.context_length))
    print(f"| context {args.context_length:,}, LiteRT-LM | KV caches | "
          + " | ".join(f"prefill {p} tok/s | decode after {p} tok/s" for p in prefills) + " |")
    print("| --- | ---: |" + " ---: | ---: |" * len(prefills))
    for name, path in files.items():
        cells = []
        for prefill in prefills:
            runs = results[name, prefill]
            cells += [f"{statistics.median(r[0] for r in runs):,.0f}", f"{statistics.median(r[1] for r in runs):.1f}"]
        print(f"| {name} | {cache_bytes(path)} | " + " | ".join(cells) + " |")
    first, second = files
    for prefill in prefills:
        for what, i in (("prefill", 0), ("decode", 1)):
            ratios = [b[i] / a[i] for a, b in zip(results[first, prefill], results[second, prefill])]
            print(f"{second} / {first}, {what} at {prefill}: per-round ratios median {statistics.median(ratios):.2f}, "
                  f"{min(ratios):.2f}-{max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
