"""Load test of `llm-tflite serve` on localhost: concurrent clients, fixed seeds, latency.

    .venv/bin/python benchmarks/serve_load.py [--clients 8] [--requests 50] [--workers 2]

Converts the shipped GPT-2 (dynamic_int8) into build/, serves it on a free loopback port
(uvicorn in this process), first answers every request one by one through
``InterpreterRunner`` (the expected texts), then sends them from ``--clients`` threads at
once (``--requests`` each, POST /v1/completions, 24 tokens, temperature 0.8, seed = request
number). Prints errors, mismatches, p50/p95 latency and requests/s as a Markdown row.
Bounded: a fixed number of requests, each with a 120 s timeout, to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import pathlib
import statistics
import sys
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--workers", type=int, default=2, help="server runners")
    args = parser.parse_args()

    from llm_tflite import Converter, InterpreterRunner
    from llm_tflite.serve.app import Limits, create_app
    from test_serve import Server

    path = ROOT / "build" / "serve_load.tflite"
    if not path.exists():
        Converter(quantize="dynamic_int8").convert("gpt2_tiny_shakespeare", str(path))
    prompts = ["ROMEO:", "JULIET:", "KING RICHARD III:", "First Citizen:", "MENENIUS:", "O, what", "My lord,", "Thou"]
    bodies = [{"prompt": prompts[i % len(prompts)], "max_tokens": 24, "temperature": 0.8, "seed": i}
              for i in range(args.clients * args.requests)]
    runner = InterpreterRunner(path)
    expected = [runner.complete(b["prompt"], 24, "random", temperature=0.8, seed=b["seed"]).text for b in bodies]

    server = Server(create_app(path, workers=args.workers, limits=Limits(wait_seconds=120, max_waiting=64)))

    def send(index):
        request = urllib.request.Request(server.url + "/v1/completions", data=json.dumps(bodies[index]).encode(),
                                         headers={"Content-Type": "application/json"})
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                text = json.load(response)["choices"][0]["text"]
            return index, time.perf_counter() - start, text, None
        except (urllib.error.URLError, OSError, ValueError) as e:
            return index, time.perf_counter() - start, None, str(e)

    try:
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(send, range(len(bodies))))
        wall = time.perf_counter() - started
    finally:
        server.stop()
    errors = [r for r in results if r[3]]
    mismatches = [r for r in results if not r[3] and r[2] != expected[r[0]]]
    latencies = sorted(r[1] for r in results)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(f"{len(bodies)} requests, {args.clients} clients, {args.workers} workers: {len(errors)} errors, "
          f"{len(mismatches)} texts differing from sequential runs")
    print("| clients x requests | workers | errors | same as sequential | p50 latency | p95 latency | requests/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {args.clients} x {args.requests} | {args.workers} | {len(errors)} | "
          f"{len(bodies) - len(errors) - len(mismatches)}/{len(bodies)} | {statistics.median(latencies) * 1000:.0f} ms | "
          f"{p95 * 1000:.0f} ms | {len(bodies) / wall:.1f} |")
    return 1 if errors or mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
