"""The GPT-2 tutorials' flow on the shipped model, end to end:

load -> generate -> fine-tune on Tang poems -> generate from 「昨夜雨疏风骤」 -> convert -> run the .tflite.

    python examples/tang_poems.py                 # full: up to 15 minutes of fine-tuning
    python examples/tang_poems.py --quick         # 450 steps, about six minutes (what the tests run)

Data: ../shared/data/chinese-poetry/quan_tang_shi (or --data-dir); the first four files
train, ``poet.tang.4000.json`` is held out.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import llm_tflite

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "chinese-poetry" / "quan_tang_shi"
PROMPT = "昨夜雨疏风骤"


def cjk_fraction(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    cjk = [c for c in chars if "\u3400" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff" or c in "，。？！、；："]
    return len(cjk) / max(len(chars), 1)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--quick", action="store_true", help="450 steps (about six minutes), reproducible")
    parser.add_argument("--max-minutes", type=float, default=14.0, help="fine-tuning time limit (default 14)")
    parser.add_argument("--seed", type=int, default=0, help="data order and dropout (default 0)")
    parser.add_argument("--out", default=None, help="where to write the preset and .tflite (default: a temp dir)")
    args = parser.parse_args(argv)
    data = pathlib.Path(args.data_dir)
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="tang_"))

    family, lm = llm_tflite.load_model("gpt2_tiny_shakespeare")
    lm.compile(sampler="greedy")
    print("before fine-tuning:", lm.generate(PROMPT, max_length=40))

    train_files = [data / f"poet.tang.{i}.json" for i in (0, 1000, 2000, 3000)]
    result = llm_tflite.finetune(
        lm, train_files, str(out / "tang_preset"), text_field="paragraphs",
        heldout=data / "poet.tang.4000.json",
        max_minutes=None if args.quick else args.max_minutes,
        max_steps=450 if args.quick else None,
        epochs=1 if args.quick else 3, batch_size=16, sequence_length=128, learning_rate=2e-3, seed=args.seed,
        eval_max_tokens=20_000 if args.quick else 100_000,
    )
    drop = 1 - result.after["nats_per_char"] / result.before["nats_per_char"]
    print(f"held-out loss: {result.before['nats_per_char']:.3f} -> {result.after['nats_per_char']:.3f} "
          f"nats/char ({drop:.1%} lower) after {result.steps} steps in {result.seconds / 60:.1f} min")

    result.model.compile(sampler="greedy")
    keras_text = result.model.generate(PROMPT, max_length=60)
    print("after fine-tuning (Keras):", keras_text)

    tflite = out / "tang.tflite"
    llm_tflite.Converter(quantize="dynamic_int8").convert(str(out / "tang_preset"), str(tflite))
    runner = llm_tflite.InterpreterRunner(tflite)
    greedy = runner.complete(PROMPT, max_new_tokens=48)
    tflite_text = PROMPT + greedy.text
    print("after fine-tuning (.tflite, int8, greedy):", tflite_text)
    sampled = PROMPT + runner.generate(PROMPT, max_new_tokens=72, sampler="top_k", top_k=40, temperature=0.8, seed=1)
    print("after fine-tuning (.tflite, int8, top-k sample):", sampled)
    figures = {
        "before_nats_per_char": result.before["nats_per_char"],
        "after_nats_per_char": result.after["nats_per_char"],
        "heldout_drop": drop,
        "steps": result.steps,
        "minutes": result.seconds / 60,
        "cjk_fraction_keras": cjk_fraction(keras_text[len(PROMPT):]),
        "cjk_fraction_tflite": cjk_fraction(tflite_text[len(PROMPT):]),
        "cjk_fraction_tflite_sampled": cjk_fraction(sampled[len(PROMPT):]),
        "tflite": str(tflite),
        # token ids, for a run whose text is not what it should be: bytes the text shows as U+FFFD
        "prompt_ids": [int(t) for t in runner.tokenizer.encode(PROMPT)],
        "greedy_ids": [int(t) for t in greedy.token_ids],
    }
    print(json.dumps(figures, ensure_ascii=False, indent=2))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
