"""Bring your own Hugging Face checkpoint: convert it, run it, bundle it for LiteRT-LM.

    python examples/hf_checkpoint.py CHECKPOINT_DIR_OR_HF_HANDLE [--out build/hf]
    python examples/hf_checkpoint.py --tiny qwen3      # writes a tiny random Qwen 3 checkpoint first (offline)

A checkpoint is what ``save_pretrained`` writes (``config.json`` + ``model.safetensors`` +
``tokenizer.json`` or ``tokenizer.model``), e.g. from ``huggingface-cli download Qwen/Qwen3-0.6B
--local-dir qwen3``, or a handle ``hf://Qwen/Qwen3-0.6B`` that KerasHub downloads. The family
(Gemma 3, Qwen 3, Llama 3.x) is read from ``config.json``'s ``model_type``.
"""

import argparse
import os

import llm_tflite
from llm_tflite.export.bundle import build_bundle


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", help="checkpoint directory or hf://ORG/NAME")
    parser.add_argument("--tiny", choices=["gemma3", "qwen3", "llama3"], help="write a tiny random checkpoint of a family")
    parser.add_argument("--out", default="build/hf", help="where the files go")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    checkpoint = args.checkpoint
    if args.tiny:
        from llm_tflite.testing import write_hf_checkpoint

        checkpoint = write_hf_checkpoint(os.path.join(args.out, f"tiny_{args.tiny}"), args.tiny)
    if checkpoint is None:
        parser.error("give a checkpoint, or --tiny FAMILY")

    converter = llm_tflite.Converter(quantize="dynamic_int8", context_length=256)
    result = converter.convert(checkpoint, os.path.join(args.out, "model.tflite"))
    print(f"{result.metadata['family']} model: {result.size_bytes / 1e6:.1f} MB at {result.path}")

    runner = llm_tflite.InterpreterRunner(result.path)
    print("greedy:", repr(runner.generate("The capital of France is", max_new_tokens=12)))

    bundle = build_bundle(result.path, os.path.join(args.out, "model.litertlm"))
    print("LiteRT-LM bundle:", bundle)


if __name__ == "__main__":
    main()
