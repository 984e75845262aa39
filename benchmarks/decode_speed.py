"""Decode speed and memory of GPT-2 124M through every strategy, against the bound and the baselines.

    .venv/bin/python benchmarks/decode_speed.py [--strategies none,float16,dynamic_int8,weight_only_int8,int4_blockwise]
        [--context 1024] [--new-tokens 100] [--before REV] [--out build/perf] [--doc docs/performance.md]

In one go, on this machine: converts `gpt2_base_en --random-weights` (speed does not depend
on trained weights) with each strategy at context 1,024 (kept in --out between runs), bundles
the dynamic_int8 file for LiteRT-LM, then for each file in a fresh process:
`llm-tflite bench FILE --json` (decode tokens/s against the bound it measures, load time,
time to first token, and plain generations' decode rate in rounds between its own: bench's
figure against what `generate` gets, same process) and `llm-tflite generate` of --new-tokens
tokens (its peak RSS); KerasHub's `GPT2CausalLM.generate` (XLA, greedy, same random
architecture) as the baseline; with --before REV, our runner at git revision REV (a worktree)
on the same files (a plain generation's decode rate: (t(N) - t(1)) / (N - 1)). Writes the table and a PNG plot into --doc's figures section
(between the `<!-- decode_speed -->` markers). Run it with nothing else running; it takes
about 30 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
MARK_BEGIN, MARK_END = "<!-- decode_speed -->", "<!-- /decode_speed -->"

GENERATE_RATE = """
import json, os, sys, time
sys.path.insert(0, sys.argv[3]) if len(sys.argv) > 3 else None
from llm_tflite import InterpreterRunner
runner = InterpreterRunner(sys.argv[1], num_threads=os.cpu_count())  # older runners defaulted to 1
n = int(sys.argv[2])
ids = runner.encode("ROMEO:")
def timed(count):
    start = time.perf_counter()
    tokens = list(runner.generate_ids(ids, count))
    assert len(tokens) == count, len(tokens)  # random weights may not stop early: eos is one id in 50,257
    return time.perf_counter() - start
timed(4)
short, long = min(timed(1) for _ in range(3)), sorted(timed(n) for _ in range(3))[1]
print(json.dumps({"decode_tokens_per_s": (n - 1) / (long - short)}))
"""


def run(command, **kwargs) -> tuple[subprocess.CompletedProcess, float]:
    """``(result, seconds)`` of a subprocess; stops the benchmark with its stderr if it fails."""
    start = time.perf_counter()
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{result.stderr[-3000:]}")
    return result, time.perf_counter() - start


def peak_rss(command, **kwargs) -> tuple[subprocess.CompletedProcess, float, int]:
    """``(result, seconds, peak RSS bytes)`` of a subprocess, measured by GNU time."""
    result, seconds = run(["/usr/bin/time", "-f", "%M", *command], **kwargs)
    return result, seconds, int(result.stderr.strip().splitlines()[-1]) * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", default="none,float16,dynamic_int8,weight_only_int8,int4_blockwise")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--before", help="a git revision whose runner is measured on the same files")
    parser.add_argument("--out", default=str(ROOT / "build" / "perf"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"))
    parser.add_argument("--no-keras", action="store_true", help="skip the KerasHub baseline")
    parser.add_argument("--doc-only", action="store_true", help="rewrite the doc from OUT/decode_speed.json")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.doc_only:
        saved = json.loads((out / "decode_speed.json").read_text())
        write_doc(saved["rows"], saved["before"], saved["keras"], args, pathlib.Path(args.doc))
        return 0
    cli = str(BIN / "llm-tflite")
    env = {**os.environ, "LLM_TFLITE_NO_PROGRESS": "1"}
    rows = []
    for strategy in args.strategies.split(","):
        path = out / f"gpt2_base_{strategy}_{args.context}.tflite"
        convert_s = convert_rss = None
        if not path.exists():
            _, convert_s, convert_rss = peak_rss([cli, "-q", "convert", "gpt2_base_en", "--random-weights", "--quantize",
                                                  strategy, "--context-length", args.context, "-o", path], env=env)
            print(f"converted {strategy}: {convert_s:.0f} s, peak RSS {convert_rss / 2**30:.1f} GiB", flush=True)
        files = [path]
        if strategy == "dynamic_int8":
            bundle = path.with_suffix(".litertlm")
            if not bundle.exists():
                run([cli, "-q", "bundle", path, "-o", bundle], env=env)
            files.append(bundle)
        for file in files:
            bench, _ = run([cli, "-q", "bench", file, "--new-tokens", args.new_tokens, "--json"], env=env)
            figures = json.loads(bench.stdout)
            generated, generate_s, generate_rss = peak_rss(
                [cli, "-q", "generate", file, "ROMEO:", "--max-new-tokens", args.new_tokens], env=env)
            row = {"strategy": strategy, "file": file.name, "bench": figures, "convert_s": convert_s,
                   "convert_rss": convert_rss, "generate_s": generate_s, "generate_rss": generate_rss}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "bench"}), flush=True)
            print(f"  bench decode {figures['decode_tokens_per_s']:.1f} tok/s, bound "
                  f"{figures['decode_bound_tokens_per_s']:.1f}, plain generations "
                  f"{figures['generate_decode_tokens_per_s']:.1f}", flush=True)
    before = {}
    if args.before:
        worktree = out / f"before-{args.before}"
        if not worktree.exists():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.before],
                           check=True, capture_output=True)
        for row in rows:
            if row["file"].endswith(".tflite"):
                rate, _ = run([sys.executable, "-c", GENERATE_RATE, out / row["file"], str(args.new_tokens),
                                  str(worktree)], env={**env, "PYTHONPATH": str(worktree)})
                before[row["file"]] = json.loads(rate.stdout)["decode_tokens_per_s"]
                print(f"before ({args.before}) {row['file']}: {before[row['file']]:.1f} tok/s", flush=True)
    keras = None
    if not args.no_keras:
        code = ("import json; from llm_tflite.evaluation.bench import bench_keras; "
                f"print(json.dumps(bench_keras('gpt2_base_en', 8, {args.new_tokens}, random_weights=True)))")
        result, _ = run([sys.executable, "-c", code], env=env)
        keras = json.loads(result.stdout.strip().splitlines()[-1])["keras_generate_tokens_per_s"]
        print(f"KerasHub generate (XLA): {keras:.1f} tok/s", flush=True)
    (out / "decode_speed.json").write_text(json.dumps({"rows": rows, "before": before, "keras": keras}, indent=1))
    write_doc(rows, before, keras, args, pathlib.Path(args.doc))
    return 0


def write_doc(rows, before, keras, args, doc: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mb = 1e6
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} cores), GPT-2 124M "
             f"(`--random-weights`), context {args.context}, {args.new_tokens} new tokens, by "
             f"`benchmarks/decode_speed.py{' --before ' + args.before if args.before else ''}`.", "",
             "Early: positions 8–108 (a decode window of 128 slots); late: the last 100 positions (the whole "
             "cache). Bound: read bandwidth / bytes a step reads (weights as held in memory + the cache slots "
             "read). Plain generations: `runner.complete` of as many tokens after the same prompt (as text), "
             "timed in rounds between bench's own in the same process (fresh processes of one file differ "
             "from one another by up to ~7 %: `dynamic_int8` ran at 155–167 tok/s in three).", "",
             "| file | MB | decode tok/s early (min–max) | bound | reached | late tok/s | bound | reached "
             "| plain generations' decode tok/s (bench / them) | `generate` peak RSS MB | file + KV + 150 MB | load s "
             "| first token, 64-token prompt, ms |" + (f" before ({args.before}) tok/s |" if before else ""),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
             + (" ---: |" if before else "")]
    for row in rows:
        b = row["bench"]
        early, late = b["decode_early"], b["decode_late"]
        budget = b["file_bytes"] + late["bytes_read_per_token"]["kv_cache"] + 150e6  # the whole cache
        first = b["prefill"].get("64", next(iter(b["prefill"].values())))["time_to_first_token_s"]
        line = (f"| {row['file']} | {b['file_bytes'] / mb:.0f} | {early['median']:.1f} ({early['min']:.1f}–"
                f"{early['max']:.1f}) | {b['decode_bound_tokens_per_s']:.1f} | {b['decode_fraction_of_bound']:.0%} | "
                f"{late['median']:.1f} | {late['bound_tokens_per_s']:.1f} | {late['fraction_of_bound']:.0%} | "
                f"{b['generate_decode_tokens_per_s']:.1f} ({b['decode_over_generate']:.2f}) | "
                f"{row['generate_rss'] / mb:,.0f} | {budget / mb:,.0f} | "
                f"{b['load_s']:.2f} | {first * 1000:.0f} |")
        if before:
            line += f" {before[row['file']]:.1f} |" if row["file"] in before else " — |"
        lines.append(line)
        if b.get("litert_lm"):
            engine = b["litert_lm"]
            lines.append(f"| ↳ same bundle in LiteRT-LM's engine (its benchmark: {engine['new_tokens']} tokens after "
                         f"{engine['prompt_tokens']}, `decode` over the whole cache) | | | | | "
                         f"{engine['decode_tokens_per_s']:.1f} | {late['bound_tokens_per_s']:.1f} | "
                         f"{engine['decode_tokens_per_s'] / late['bound_tokens_per_s']:.0%} | | | | "
                         f"{engine['init_seconds']:.2f} | |" + (" |" if before else ""))
    if keras:
        lines.append(f"| KerasHub `generate` (XLA, float32) | | {keras:.1f} | | | | | | | | | | |"
                     + (" |" if before else ""))
    converted = list({r["strategy"]: r for r in rows if r["convert_s"]}.values())  # a bundle shares its file's
    if converted:
        lines += ["", "Conversion (same run): " + "; ".join(
            f"{r['strategy']} {r['convert_s']:.0f} s, peak RSS {r['convert_rss'] / 2**30:.1f} GiB" for r in converted) + "."]
    figure = doc.parent / "images" / "decode_speed.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    names = [r["file"].replace("gpt2_base_", "").replace(f"_{args.context}", "") for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["bench"]["decode_tokens_per_s"] for r in rows], 0.4, label="decode tok/s")
    ax.bar([x + 0.2 for x in xs], [r["bench"]["decode_bound_tokens_per_s"] for r in rows], 0.4,
           label="bandwidth bound tok/s", alpha=0.5)
    if keras:
        ax.axhline(keras, color="k", linestyle="--", label="KerasHub generate (XLA)")
    ax.set_xticks(list(xs), names, rotation=15)
    ax.set_ylabel("tokens/s")
    ax.set_title(f"GPT-2 124M, context {args.context}, {os.cpu_count()} cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(figure, dpi=100)
    section = "\n".join([MARK_BEGIN, *lines, "", f"![decode speed]({figure.relative_to(doc.parent)})", MARK_END])
    text = doc.read_text(encoding="utf-8") if doc.exists() else f"# Performance\n\n{MARK_BEGIN}\n{MARK_END}\n"
    head, rest = text.split(MARK_BEGIN, 1)
    doc.write_text(head + section + rest.split(MARK_END, 1)[1], encoding="utf-8")
    print(f"wrote {doc} and {figure}")


if __name__ == "__main__":
    sys.exit(main())
