"""Gemma 3's local layers with ring caches against the naive layout: ``python benchmarks/ring_caches.py``.

Converts ``gemma3_270m`` (random weights) at ``--context-length`` twice, with ring caches (the
default) and with ``--no-ring-caches``, at ``--quantize``; with a quantized strategy also a
float32 naive file as the reference. Then, in our runner (2 threads):

- logits over 1,300 random tokens (700 scored, 1 decoded, 599 scored: the rings wrap twice at a
  4,096 context): ring against naive, max abs / std of the naive file's logits and top-1 agreement,
  and each against float32 when quantized;
- 40 greedy tokens after a 1,400-token prompt, ring against naive.

Speed: ``llm-tflite bench FILE --prompt-tokens 64,512 --new-tokens 32 --runs 3 --threads 2`` on the two
files (docs/performance.md). Not a CI test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np

CHUNKS = ((0, 700), (700, 701), (701, 1300))


def convert(path: str, context: int, quantize: str, ring: bool) -> str:
    if not os.path.exists(path):
        cli = os.path.join(os.path.dirname(sys.executable), "llm-tflite")
        subprocess.run([cli, "convert", "gemma3_270m", "--random-weights", "--quantize", quantize, "--context-length",
                        str(context), "-q", "-o", path] + ([] if ring else ["--no-ring-caches"]), check=True)
    return path


def scores(runner, ids) -> np.ndarray:
    sequence = runner.sequence()
    return np.concatenate([sequence.feed(ids[a:b]) for a, b in CHUNKS])


def compare(x, y) -> str:
    return f"max abs / std {np.abs(x - y).max() / y.std():.2g}, top-1 {(x.argmax(-1) == y.argmax(-1)).mean():.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context-length", type=int, default=4096)
    parser.add_argument("--quantize", default="none")
    parser.add_argument("--work", default=os.path.join("build", "ring_caches"))
    args = parser.parse_args(argv)
    from llm_tflite import InterpreterRunner

    os.makedirs(args.work, exist_ok=True)
    stem = os.path.join(args.work, f"{args.quantize}_{args.context_length}")
    files = {"ring": convert(stem + "_ring.tflite", args.context_length, args.quantize, True),
             "naive": convert(stem + "_naive.tflite", args.context_length, args.quantize, False)}
    if args.quantize != "none":
        files["float32"] = convert(os.path.join(args.work, f"none_{args.context_length}_naive.tflite"),
                                   args.context_length, "none", False)
    runners = {k: InterpreterRunner(v, num_threads=2) for k, v in files.items()}
    ids = [int(i) for i in np.random.default_rng(5).integers(10, 262000, 1400)]
    logits = {k: scores(r, ids) for k, r in runners.items()}
    print(f"gemma3_270m, {args.quantize}, context {args.context_length}, 1,300 tokens")
    print(f"  ring against naive: {compare(logits['ring'], logits['naive'])}")
    if "float32" in logits:
        for k in ("ring", "naive"):
            print(f"  {k} against float32: {compare(logits[k], logits['float32'])}")
    greedy = {k: list(runners[k].generate_ids(ids, 40, stop_token_ids=[])) for k in ("ring", "naive")}
    print(f"  greedy tokens after 1,400: {sum(a == b for a, b in zip(greedy['ring'], greedy['naive']))} of 40 the same")
    return 0


if __name__ == "__main__":
    sys.exit(main())
