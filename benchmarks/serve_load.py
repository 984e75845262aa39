"""Serving many users: ``llm-tflite serve --parallel`` against ``llama-server -np``, same run.

    .venv/bin/python benchmarks/serve_load.py [--clients 1,2,4,8,16] [--requests 4] [--max-tokens 64]
        [--parallel 8] [--lanes auto] [--rounds 1] [--plot docs/images/serve_throughput.png] [--file OURS.tflite]
        [--in-process]

Both servers run as processes on this machine with 2 threads on loopback, one after the other at
each load (the order alternating), serving GPT-2 124M with random weights:
- ours: ``llm-tflite convert gpt2_base_en --random-weights --quantize dynamic_int8 --batch-sizes
  2,4,8`` (written to ``build/serve/`` once), ``llm-tflite serve FILE --parallel N``;
- llama.cpp: the same architecture as a Q8_0 GGUF and ``llama-server -np N -c N*1024 -t 2``
  (``benchmarks/llama_cpp.py`` builds both from the ``llama-cpp-python`` sdist).

At each load, every client sends ``--requests`` streamed ``/v1/completions`` requests one after
another (a short prompt, ``--max-tokens`` new tokens, temperature 0.8, its own seed; llama-server
with ``ignore_eos``). Reported per server: aggregate decode tokens/s (tokens / wall time of the
load), time to first token (p50), request latency (p50/p95/p99). Our texts at the ``--parallel``
load are checked against the unbatched runner's for their seeds. ``--rounds R`` measures every load R
times, the loads interleaved (1, 8, 1, 8, ...), and reports medians: a ratio is taken within its round
(8 clients against the same round's one client), so a slow spell of the machine moves both.
``--in-process`` runs the loads as threads on one batching runner instead (no HTTP, no llama.cpp) and
reports how much of each lane's time LiteRT's call takes. Bounded: a fixed number of
requests, each with a 600 s timeout, to 127.0.0.1 only. Not a test: a benchmark.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import pathlib
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
FILE = ROOT / "build" / "serve" / "gpt2_base_dynamic_int8_b8.tflite"
PROMPTS = ["ROMEO:", "JULIET: O Romeo, Romeo!", "First Citizen:", "KING RICHARD III:", "MENENIUS: I tell you",
           "O, what a rogue", "My lord, the", "Thou art"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A server process on a free loopback port, up once ``/health`` answers 200."""

    def __init__(self, name: str, command: list[str]):
        self.name, self.port = name, free_port()
        command = [part.replace("{port}", str(self.port)) for part in command]
        self.log = open(ROOT / "build" / "serve" / f"{name}.log", "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while True:
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{name} did not start; see build/serve/{name}.log")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def stream(port: int, body: dict) -> dict:
    """One streamed completion: time to first text, latency, text, finish reason, text events."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    connection.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"status {response.status}: {response.read()[:200]!r}")
    first, text, finish, events = None, [], None, 0
    for line in response:
        line = line.strip()
        if not line.startswith(b"data:") or line == b"data: [DONE]":
            continue
        choice = (json.loads(line[5:]).get("choices") or [{}])[0]
        if choice.get("text"):
            first = first or time.perf_counter() - start
            text.append(choice["text"])
            events += 1
        finish = choice.get("finish_reason") or finish
    connection.close()
    return {"ttft": first or 0.0, "latency": time.perf_counter() - start, "text": "".join(text),
            "finish": finish, "events": events}


def batch_counts(port: int) -> tuple[float, float]:
    """Our server's decode calls and the requests' steps they carried, from ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(connection.getresponse().read().decode())}
    return (families["llm_tflite_batch_steps"].samples[0].value, families["llm_tflite_batch_rows"].samples[0].value)


def percentile(values, q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def load(port: int, clients: int, requests: int, max_tokens: int, extra: dict) -> tuple[dict, list]:
    bodies = [{"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0.8, "seed": i, **extra}
              for i in range(clients * requests)]

    def client(number):
        return [(i, stream(port, bodies[i])) for i in range(number, len(bodies), clients)]

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - started
    # "length": max_tokens tokens; an early stop counts its text events (one per token on both servers
    # but for pieces of text a token does not complete)
    tokens = sum(max_tokens if r["finish"] == "length" else r["events"] for _, r in results)
    return {"tokens_per_s": tokens / wall, "ttft": percentile([r["ttft"] for _, r in results], 0.5),
            "p50": percentile([r["latency"] for _, r in results], 0.5),
            "p95": percentile([r["latency"] for _, r in results], 0.95),
            "p99": percentile([r["latency"] for _, r in results], 0.99),
            "early": sum(r["finish"] != "length" for _, r in results)}, sorted(results, key=lambda x: x[0])


def _median_row(rounds: list[dict], ones) -> dict:
    """One load's row from its rounds: each figure's median, and the ranges of tokens/s and of the ratios
    (each ratio taken within its round, against the other server or this round's one client)."""
    import statistics

    def median(name, key):
        return statistics.median(r[name][key] for r in rounds)

    def spread(values, digits):
        low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
        return f" ({low}-{high})" if low != high else ""

    row = {"clients": rounds[0]["clients"],
           **{name: {key: median(name, key) for key in rounds[0][name]} for name in ("llm-tflite", "llama.cpp")}}
    ratios = [r["llm-tflite"]["tokens_per_s"] / r["llama.cpp"]["tokens_per_s"] for r in rounds]
    vs_one = [r["llm-tflite"]["tokens_per_s"] / one["llm-tflite"]["tokens_per_s"] for r, one in zip(rounds, ones)] \
        if ones else None
    row.update(ratio=statistics.median(ratios), vs_one=vs_one and statistics.median(vs_one),
               spread={"ours": spread([r["llm-tflite"]["tokens_per_s"] for r in rounds], 1),
                       "theirs": spread([r["llama.cpp"]["tokens_per_s"] for r in rounds], 1),
                       "ratio": spread(ratios, 2), "vs_one": spread(vs_one, 2) if vs_one else ""})
    return row


def in_process(path, levels: list[int], args) -> int:
    """The same loads without HTTP: client threads calling ``complete`` on one batching runner (``--lanes``),
    and each lane's time in LiteRT's call and in its steps (a step's Python beside the call; the requests'
    sampling runs between steps) against the load's wall time."""
    import collections
    import threading

    from llm_tflite import InterpreterRunner
    from llm_tflite.runtime import batching, native

    spent = collections.defaultdict(float)

    def timed(kind, function):
        def wrapper(*a, **k):
            started = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                spent[kind, threading.current_thread().name] += time.perf_counter() - started
        return wrapper

    native.NativeModel.run_bound = timed("call", native.NativeModel.run_bound)
    batching.BatchingEngine._step = timed("step", batching.BatchingEngine._step)
    lanes = args.lanes if args.lanes == "auto" else int(args.lanes)
    runner = InterpreterRunner(path, num_threads=args.threads, batching=True, lanes=lanes)
    runner.complete(PROMPTS[0], 8, "greedy")  # warm-up
    print("| round | clients | tok/s | each lane: LiteRT's call / its steps / the load |\n| ---: | ---: | ---: | --- |")
    for number in range(args.rounds):
        for clients in levels:
            made = [0] * clients

            def client(c):
                for k in range(args.requests):
                    i = c + clients * k
                    made[c] += runner.complete(PROMPTS[i % len(PROMPTS)], args.max_tokens, "random", temperature=0.8,
                                               seed=i).completion_tokens
            spent.clear()
            started = time.perf_counter()
            threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
            shares = ", ".join(f"{spent['call', name]:.2f} / {spent['step', name]:.2f} / {wall:.2f} s"
                               for name in sorted({name for _, name in spent}))
            print(f"| {number + 1} | {clients} | {sum(made) / wall:.1f} | {shares} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,2,4,8,16", help="concurrent clients at each load")
    parser.add_argument("--requests", type=int, default=4, help="requests each client sends, one after another")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=8, help="slots of both servers")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", help="write the throughput plot (PNG) here")
    parser.add_argument("--file", type=pathlib.Path, default=FILE,
                        help="our file (converted as above when it is the default and missing, or written with "
                        "other default windows)")
    parser.add_argument("--workers", type=int, default=1,
                        help="our runners (serve --workers), each with --parallel / workers slots and cores / workers threads")
    parser.add_argument("--lanes", default="auto", help="our runners' lanes (serve --lanes; 1: none)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every load this many times, interleaved; the table shows medians (and ranges)")
    parser.add_argument("--in-process", action="store_true",
                        help="no servers: the loads as threads on one batching runner, and where its lanes' time goes")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    if args.in_process and args.plot:
        parser.error("--plot draws the servers' loads; --in-process runs none")
    if args.workers < 1 or args.parallel % args.workers:
        parser.error(f"--parallel {args.parallel} must split evenly over --workers {args.workers}")

    path = args.file
    if path == FILE and path.exists():  # converted by an older version: its default windows may differ
        from llm_tflite.export.converter import default_batch_windows, default_decode_windows
        from llm_tflite.litert.metadata import read_metadata

        record = read_metadata(str(path))
        context = record["context_length"]
        if record.get("decode_windows") != default_decode_windows(context, batched=True) or \
                record.get("decode_batch_windows") != default_batch_windows(context):
            path.unlink()
    if path == FILE and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(ROOT / ".venv" / "bin" / "llm-tflite"), "convert", "gpt2_base_en", "--random-weights",
                        "--quantize", "dynamic_int8", "--batch-sizes", "2,4,8", "-o", str(path)], check=True)

    from llm_tflite import InterpreterRunner

    if args.in_process:
        return in_process(path, levels, args)
    import llama_cpp

    gguf, bin_dir = llama_cpp.gpt2_gguf("Q8_0"), llama_cpp.tools()
    runner = InterpreterRunner(path, num_threads=args.threads)
    check = [{"prompt": PROMPTS[i % len(PROMPTS)], "seed": i} for i in range(args.parallel * args.requests)]
    expected = [runner.complete(b["prompt"], args.max_tokens, "random", temperature=0.8, seed=b["seed"]).text
                for b in check]
    del runner

    servers = {
        "llm-tflite": ([str(ROOT / ".venv" / "bin" / "llm-tflite"), "serve", str(path), "--workers", str(args.workers),
                        "--parallel", str(args.parallel // args.workers), "--lanes", str(args.lanes),
                        "--port", "{port}", "--queue-timeout", "600"], {}),
        "llama.cpp": ([str(bin_dir / "llama-server"), "-m", str(gguf), "-np", str(args.parallel), "-c",
                       str(1024 * args.parallel), "-t", str(args.threads), "-tb", str(args.threads), "--port", "{port}",
                       "--host", "127.0.0.1"], {"ignore_eos": True}),
    }
    runs = []  # runs[round][level]: a row of both servers' figures at that load
    for number in range(args.rounds):
        rows = []
        for level, clients in enumerate(levels):  # which server goes first alternates by load and by round
            row = {"clients": clients}
            for name in (list(servers) if (number + level) % 2 == 0 else list(servers)[::-1]):
                command, extra = servers[name]
                server = Process(name, command)
                try:
                    load(server.port, 1, 1, 8, extra)  # warm-up: weights paged in, first signatures run
                    before = batch_counts(server.port) if name == "llm-tflite" else None
                    row[name], results = load(server.port, clients, args.requests, args.max_tokens, extra)
                    if before is not None:
                        calls, carried = (after - start for after, start in zip(batch_counts(server.port), before))
                        row[name]["batch"] = carried / max(calls, 1)
                finally:
                    server.stop()
                if name == "llm-tflite" and clients == args.parallel:
                    row["same"] = sum(r["text"] == expected[i] for i, r in results)
                    row["checked"] = len(results)
                print(f"{clients} clients, {name}: {row[name]}", file=sys.stderr)
            rows.append(row)
        runs.append(rows)
    rows = [_median_row([run[level] for run in runs], levels[0] == 1 and [run[0] for run in runs])
            for level in range(len(levels))]
    same = sum(run[level].get("same", 0) for run in runs for level in range(len(levels)))
    checked = sum(run[level].get("checked", 0) for run in runs for level in range(len(levels)))
    print(f"\nGPT-2 124M, random weights, {args.max_tokens} new tokens per request, {args.requests} requests per client, "
          f"{args.threads} threads, --parallel / -np {args.parallel}"
          + (f"; medians of {args.rounds} interleaved rounds (ranges in brackets)" if args.rounds > 1 else "") + "\n")
    print("| clients | llm-tflite tok/s | llama.cpp tok/s | ratio | vs 1 client | our mean batch | TTFT p50 (ours / "
          "llama.cpp) | latency p50 / p95 / p99 (ours) | latency p50 / p95 / p99 (llama.cpp) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        ours, theirs = row["llm-tflite"], row["llama.cpp"]
        print(f"| {row['clients']} | {ours['tokens_per_s']:.1f}{row['spread']['ours']} | "
              f"{theirs['tokens_per_s']:.1f}{row['spread']['theirs']} | {row['ratio']:.2f}x{row['spread']['ratio']} | "
              f"{'' if row['vs_one'] is None else format(row['vs_one'], '.2f') + 'x' + row['spread']['vs_one']} | "
              f"{ours.get('batch', 0):.1f} | "
              f"{ours['ttft'] * 1000:.0f} / {theirs['ttft'] * 1000:.0f} ms | "
              f"{ours['p50']:.2f} / {ours['p95']:.2f} / {ours['p99']:.2f} s | "
              f"{theirs['p50']:.2f} / {theirs['p95']:.2f} / {theirs['p99']:.2f} s |")
    print(f"\nour texts at {args.parallel} clients equal to the unbatched runner's: "
          f"{f'{same}/{checked}' if checked else 'not checked'}; early stops: "
          f"{sum(r['llm-tflite']['early'] for run in runs for r in run)} ours, "
          f"{sum(r['llama.cpp']['early'] for run in runs for r in run)} llama.cpp")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 3.6))
        for name in servers:
            axis.plot(levels, [r[name]["tokens_per_s"] for r in rows], marker="o", label=name)
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(c) for c in levels])
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel("aggregate decode tokens/s")
        axis.set_title(f"GPT-2 124M int8 (Q8_0), 2 cores, {args.max_tokens} tokens per request")
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        figure.savefig(args.plot, dpi=120)
    return 1 if same != checked else 0


if __name__ == "__main__":
    sys.exit(main())
