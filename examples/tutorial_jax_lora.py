"""The KerasHub GPT-2 tutorial's way, on the shipped model: JAX, mixed_float16 and LoRA, then a .tflite.

    python examples/tutorial_jax_lora.py --flow reddit     # Reddit TIFU records (tfds), field "documents"
    python examples/tutorial_jax_lora.py --flow tang       # Tang poems (../shared/data), field "paragraphs"

Each flow: KERAS_BACKEND=jax and mixed_float16 as the tutorial sets them -> LoRA rank 4 fine-tuning
(``llm_tflite.finetune``) -> a continuation from Keras on JAX -> ``Converter().convert(model)`` straight
from this JAX process (a TensorFlow child does the tracing) -> the same prompt on the .tflite.
``--data`` takes any source ``--data`` of ``llm-tflite finetune`` takes (a JSON Lines file of
Reddit-style records works offline).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile

os.environ["KERAS_BACKEND"] = "jax"  # as the tutorial does, before Keras is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import llm_tflite  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
TANG = ROOT.parent / "shared" / "data" / "chinese-poetry" / "quan_tang_shi"
FLOWS = {
    "reddit": {"data": ["tfds:reddit_tifu/short:train[:4000]"], "field": "documents", "prompt": "today i"},
    "tang": {"data": [str(TANG / f"poet.tang.{i}.json") for i in (0, 1000)], "field": "paragraphs",
             "prompt": "昨夜雨疏风骤"},
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flow", choices=FLOWS, default="reddit")
    parser.add_argument("--data", action="append", help="training data (default: the flow's)")
    parser.add_argument("--text-field", help="the field with the text (default: the flow's)")
    parser.add_argument("--max-steps", type=int, default=300, help="fine-tuning steps (default 300)")
    parser.add_argument("--out", help="where the .tflite goes (default: a temporary folder)")
    args = parser.parse_args(argv)
    flow = FLOWS[args.flow]
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="tutorial_"))

    keras.mixed_precision.set_global_policy("mixed_float16")
    result = llm_tflite.finetune(
        "gpt2_tiny_shakespeare", args.data or flow["data"], text_field=args.text_field or flow["field"],
        lora_rank=4, precision="mixed_float16", max_steps=args.max_steps, batch_size=8, sequence_length=128,
        learning_rate=5e-3, eval_max_tokens=5000)
    before, after = result.before["nats_per_char"], result.after["nats_per_char"]
    print(f"Keras on {keras.backend.backend()}, {result.model.dtype_policy.name}, LoRA rank 4: trained "
          f"{result.trainable_fraction:.2%} of the weights; held-out {before:.3f} -> {after:.3f} nats/char")

    result.model.compile(sampler="greedy")
    keras_text = result.model.generate(flow["prompt"], max_length=40)
    print("Keras (JAX):", keras_text)

    tflite = out / f"{args.flow}.tflite"
    llm_tflite.Converter(quantize="dynamic_int8").convert(result.model, tflite)
    runner = llm_tflite.InterpreterRunner(tflite)
    tflite_text = flow["prompt"] + runner.generate(flow["prompt"], max_new_tokens=24)
    print(".tflite (int8):", tflite_text)
    figures = {"backend": keras.backend.backend(), "trainable_fraction": result.trainable_fraction,
               "before_nats_per_char": before, "after_nats_per_char": after, "keras": keras_text,
               "tflite_text": tflite_text, "tflite": str(tflite)}
    print(json.dumps(figures, ensure_ascii=False, indent=2))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
