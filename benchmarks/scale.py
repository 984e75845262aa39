"""Conversion and generation at the seeds' size: peak memory and time per model and strategy.

    python benchmarks/scale.py [--models gpt2_base_en,...,palm_1b5] [--strategies dynamic_int8,...]
        [--runs MODEL:STRATEGY,...] [--out build/scale] [--doc docs/performance.md] [--new-tokens 20]

For each model (``--random-weights``: speed and memory do not depend on trained weights) and
strategy it runs ``llm-tflite convert`` under ``/usr/bin/time`` (peak RSS, wall time), then
``llm-tflite generate`` twice (the first load on a machine packs the weights into XNNPACK's
cache file, later loads map it) and writes the table between the ``<!-- scale -->`` markers of
``docs/performance.md``. A strategy whose file would not fit a flatbuffer is refused before
converting; the table says so. Runs by hand (tens of minutes), never in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
MARK_BEGIN, MARK_END = "<!-- scale -->", "<!-- /scale -->"
MODELS = "gpt2_base_en,gpt2_medium_en,gpt2_large_en,gpt2_extra_large_en,palm_1b5"
STRATEGIES = "dynamic_int8,weight_only_int8,int4_blockwise,float16"


def timed(command: list[str], env=None) -> dict:
    """Run ``command`` under ``/usr/bin/time``: exit code, wall seconds, peak RSS bytes, output."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        result = subprocess.run(["/usr/bin/time", "-o", report.name, "-f", "%e %M", *command],
                                capture_output=True, text=True, env=env)
        wall, rss_kb = report.read().strip().splitlines()[-1].split()
    return {"code": result.returncode, "wall_s": float(wall), "peak_rss": int(rss_kb) * 1024,
            "stdout": result.stdout, "stderr": result.stderr}


def kv_cache_bytes(path: pathlib.Path) -> int:
    from llm_tflite.litert.metadata import read_metadata

    record = read_metadata(path)
    spec = record["kv_cache"]  # each layer's cache length: a local layer's ring may be shorter than the context
    lengths = spec.get("lengths", [record["context_length"]] * spec["num_layers"])
    return 2 * spec["num_kv_heads"] * spec["head_dim"] * sum(lengths) * 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--strategies", default=STRATEGIES)
    parser.add_argument("--runs", help="model:strategy pairs instead of every model with every strategy")
    parser.add_argument("--regenerate", action="store_true",
                        help="keep files converted before (and their conversion figures); measure generate again")
    parser.add_argument("--out", default=str(ROOT / "build" / "scale"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"))
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--prompt", default="ROMEO:")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env_cli = [sys.executable, "-m", "llm_tflite"]
    # rows of earlier runs are kept (a run of a few pairs updates those pairs in the table)
    saved = out / "scale.json"
    rows = json.loads(saved.read_text()) if saved.exists() else []
    runs = ([tuple(pair.split(":")) for pair in args.runs.split(",")] if args.runs else
            [(m, s) for m in args.models.split(",") for s in args.strategies.split(",")])
    for model, strategy in runs:
        path = out / f"{model}_{strategy}.tflite"
        earlier = next((r for r in rows if (r["model"], r["strategy"]) == (model, strategy)), None)
        rows = [r for r in rows if r is not earlier]
        if args.regenerate and earlier is not None and (earlier["code"] or path.exists()):
            row = {k: earlier[k] for k in ("model", "strategy", "convert_s", "convert_rss", "code", "error")
                   if k in earlier}
            convert = {"code": row["code"], "stderr": row.get("error", "")}
        else:
            print(f"{model} {strategy}: converting", flush=True)
            convert = timed([*env_cli, "-q", "convert", model, "--random-weights", "--quantize", strategy,
                             "-o", str(path)])
            row = {"model": model, "strategy": strategy, "convert_s": convert["wall_s"],
                   "convert_rss": convert["peak_rss"], "code": convert["code"]}
        if convert["code"] != 0:
            row["error"] = (convert["stderr"].strip().splitlines() or ["?"])[-1]
            print(f"  refused/failed: {row['error']}", flush=True)
            rows.append(row)
            saved.write_text(json.dumps(rows, indent=1))
            continue
        row["file_bytes"] = path.stat().st_size
        row["kv_bytes"] = kv_cache_bytes(path)
        # a weight cache of its own, empty before the first load: "first" is a first load on a machine
        cache = out / "weight-cache"
        shutil.rmtree(cache, ignore_errors=True)
        env = {**os.environ, "LLM_TFLITE_CACHE_DIR": str(cache)}
        for run in ("first", "later"):
            generate = timed([*env_cli, "generate", str(path), args.prompt,
                              "--max-new-tokens", str(args.new_tokens)], env=env)
            if generate["code"] != 0:
                row["error"] = (generate["stderr"].strip().splitlines() or ["?"])[-1]
                break
            row[f"generate_{run}_s"], row[f"generate_{run}_rss"] = generate["wall_s"], generate["peak_rss"]
            row["text"] = generate["stdout"].strip()[:120]
        print(f"  {json.dumps({k: v for k, v in row.items() if k != 'text'})}", flush=True)
        rows.append(row)
        saved.write_text(json.dumps(rows, indent=1))
    write_doc(rows, args, pathlib.Path(args.doc))
    return 0


def write_doc(rows, args, doc: pathlib.Path) -> None:
    gib, mb = 2**30, 1e6
    order = {name: i for i, name in enumerate(MODELS.split(","))}
    rows = sorted(rows, key=lambda r: (order.get(r["model"], len(order)), r["model"], r["strategy"]))
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} cores, "
             f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / gib:.0f} GiB), `--random-weights`, "
             f"default context (1,024), by `benchmarks/scale.py`. `generate`: {args.new_tokens} tokens after "
             f"{args.prompt!r}; first load packs the weights into XNNPACK's cache file, later loads map it.", "",
             "| model | strategy | convert s | convert peak RSS GiB | file MB | generate s (first / later) "
             "| generate peak RSS MB (first / later) | file + KV + 150 MB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        if row.get("code"):
            lines.append(f"| {row['model']} | {row['strategy']} | {row['convert_s']:.0f} | "
                         f"{row['convert_rss'] / gib:.1f} | refused before converting: "
                         f"{row.get('error', '').replace('error: ', '').replace('|', '/')} | | | |")
            continue
        budget = row["file_bytes"] + row["kv_bytes"] + 150e6
        generate = (f"{row['generate_first_s']:.1f} / {row['generate_later_s']:.1f} | "
                    f"{row['generate_first_rss'] / mb:,.0f} / {row['generate_later_rss'] / mb:,.0f}"
                    if "generate_later_s" in row else f"failed: {row.get('error', '')} |")
        lines.append(f"| {row['model']} | {row['strategy']} | {row['convert_s']:.0f} | {row['convert_rss'] / gib:.1f} "
                     f"| {row['file_bytes'] / mb:,.0f} | {generate} | {budget / mb:,.0f} |")
    section = "\n".join([MARK_BEGIN, *lines, MARK_END])
    text = doc.read_text(encoding="utf-8")
    if MARK_BEGIN not in text:
        text += f"\n{MARK_BEGIN}\n{MARK_END}\n"
    head, rest = text.split(MARK_BEGIN, 1)
    doc.write_text(head + section + rest.split(MARK_END, 1)[1], encoding="utf-8")
    print(f"wrote {doc}")


if __name__ == "__main__":
    sys.exit(main())
