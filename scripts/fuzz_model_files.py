"""Fuzz the runner with damaged model files; print the table docs/runner.md records.

    .venv/bin/python scripts/fuzz_model_files.py [--cases 1200] [--seed 1] [-o build/fuzz]

Converts the shipped GPT-2 and PaLM-style models (prefill_decode float32, dynamic_int8 and
weight_only_int8, generate mode) into ``-o``, writes ``--cases`` damaged copies spread over them
(truncations, bit flips in header, tables and buffers, overwritten tensor shapes, damaged
metadata bytes, records re-signed with wrong contents), opens each in a subprocess under an
8 GiB address-space limit (``tests/fuzz.py``) and counts the outcomes. Exit status 1 if any
case crashed, hung, ran out of memory, raised an untyped error or produced different text.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fuzz  # noqa: E402

FILES = [  # (name, model, mode, quantization)
    ("gpt2_f32", "gpt2_tiny_shakespeare", "prefill_decode", "none"),
    ("gpt2_int8", "gpt2_tiny_shakespeare", "prefill_decode", "dynamic_int8"),
    ("gpt2_w8", "gpt2_tiny_shakespeare", "prefill_decode", "weight_only_int8"),  # expanded by the runner
    ("gpt2_generate", "gpt2_tiny_shakespeare", "generate", "none"),
    ("palm_int8", "palm_tiny_shakespeare", "prefill_decode", "dynamic_int8"),
    ("palm_generate", "palm_tiny_shakespeare", "generate", "none"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1200, help="damaged files in all (spread over the models)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the damage")
    parser.add_argument("-o", "--output", default="build/fuzz", help="working directory")
    args = parser.parse_args()
    from llm_tflite import Converter, InterpreterRunner

    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["LLM_TFLITE_CACHE_DIR"] = str(out / "cache")  # every damaged file's caches, not the user's
    started = time.time()
    table: dict[tuple, collections.Counter] = {}
    totals: collections.Counter = collections.Counter()
    defects = []
    per_file = args.cases // len(FILES)
    for name, model, mode, quantization in FILES:
        path = out / f"{name}.tflite"
        if not path.exists():
            Converter(mode=mode, quantize=quantization, max_length=48).convert(model, str(path))
        reference = InterpreterRunner(path).generate("ROMEO:", max_new_tokens=8)
        cases, kinds = [], []
        for i, (kind, damaged) in enumerate(fuzz.mutations(path.read_bytes(), per_file, args.seed, mode)):
            case = out / "cases" / name / f"{i}.tflite"
            case.parent.mkdir(parents=True, exist_ok=True)
            case.write_bytes(damaged)
            cases.append(str(case))
            kinds.append(kind)
        results = fuzz.run_cases(cases, "ROMEO:", reference)
        for r in results:
            table.setdefault((name, kinds[r["id"]]), collections.Counter())[r["outcome"]] += 1
            totals[r["outcome"]] += 1
            if r["outcome"] in fuzz.DEFECTS:
                defects.append({"file": name, "kind": kinds[r["id"]], **r})
        print(f"{name}: {dict(fuzz.summarize(results))}", flush=True)
    outcomes = ["typed", "same", *fuzz.DEFECTS]
    print(f"\n{sum(totals.values())} damaged files in {time.time() - started:.0f} s (seed {args.seed})\n")
    print("| file | damage | " + " | ".join(outcomes) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in outcomes) + " |")
    for (name, kind), counts in table.items():
        print(f"| {name} | {kind} | " + " | ".join(str(counts.get(o, 0)) for o in outcomes) + " |")
    print("| **all** | | " + " | ".join(f"**{totals.get(o, 0)}**" for o in outcomes) + " |")
    (out / "defects.json").write_text(json.dumps(defects, indent=2))
    if defects:
        print(f"\n{len(defects)} defects: {out / 'defects.json'}")
    return 1 if defects else 0


if __name__ == "__main__":
    os.environ.setdefault("LLM_TFLITE_NO_PROGRESS", "1")
    sys.exit(main())
