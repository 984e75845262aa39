"""The ``llm-tflite`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys

from llm_tflite.errors import LLMTFLiteError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e5 else f"{n_bytes / 1e3:.1f} kB"


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def cmd_convert(args) -> int:
    from llm_tflite.export.converter import DEFAULT_PREFILL_LENGTHS, Converter

    calibration = None
    if args.calibration:
        from llm_tflite.quantize.calibration import text_calibration

        calibration = text_calibration(args.calibration, num_samples=args.calibration_samples)
    converter = Converter(
        mode=args.mode,
        quantize=args.quantize,
        context_length=args.context_length,
        prefill_lengths=args.prefill_lengths or DEFAULT_PREFILL_LENGTHS,
        max_length=args.max_length,
        sampler=args.sampler,
        seed=args.seed,
        calibration=calibration,
    )
    result = converter.convert(args.model, args.output, family=args.family, random_weights=args.random_weights)
    meta = result.metadata
    print(f"wrote {result.path} ({_size(result.size_bytes)}): family {meta['family']}, mode {meta['export_mode']}, "
          f"quantization {meta['quantization']}, context {meta['context_length']} tokens")
    return 0


def cmd_generate(args) -> int:
    from llm_tflite.runtime.runner import InterpreterRunner

    runner = InterpreterRunner(args.file, num_threads=args.threads)
    sampler_args = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if args.stream:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
        for piece in runner.stream(args.prompt, args.max_new_tokens, args.sampler, **sampler_args):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        print(args.prompt + runner.generate(args.prompt, args.max_new_tokens, args.sampler, **sampler_args))
    return 0


def cmd_plugins(args) -> int:
    from llm_tflite.plugins import registry
    from llm_tflite.plugins.manager import distribution_of

    rows = []
    for kind, found in (("family", registry.families()), ("strategy", registry.strategies()),
                        ("preset", registry.presets())):
        for name, reg in sorted(found.items()):
            rows.append({"kind": kind, "name": name, "plugin": reg.plugin,
                         "distribution": distribution_of(reg.plugin),
                         "description": getattr(reg.item, "description", "")})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for kind, heading in (("family", "families:"), ("strategy", "strategies:"), ("preset", "presets:")):
        print(heading)
        for row in (r for r in rows if r["kind"] == kind):
            print(f"  {row['name']:<22} {row['distribution']:<22} {row['description']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-tflite", description="Convert Keras LLMs to TFLite and run them.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a model to .tflite")
    p.add_argument("model", help="preset name (llm-tflite plugins), KerasHub handle, or local preset directory")
    p.add_argument("-o", "--output", required=True, help="the .tflite file to write")
    p.add_argument("--family", help="model family, when it cannot be told from MODEL")
    p.add_argument("--mode", default="prefill_decode", choices=["prefill_decode", "generate"])
    p.add_argument("--quantize", default="none", help="quantization strategy (default: none)")
    p.add_argument("--random-weights", action="store_true", help="the architecture with random weights (no download)")
    p.add_argument("--context-length", type=int, help="prefill_decode: KV-cache length (default: model's, max 1024)")
    p.add_argument("--prefill-lengths", type=_int_list, help="prefill_decode: e.g. 8,32,128")
    p.add_argument("--max-length", type=int, default=100, help="generate: prompt + continuation tokens")
    p.add_argument("--sampler", default="greedy", help="generate: greedy, top_k or top_p")
    p.add_argument("--seed", type=int, help="generate: seed of a random sampler")
    p.add_argument("--calibration", help="text file or folder for strategies that calibrate (full_int8)")
    p.add_argument("--calibration-samples", type=int, default=64)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("generate", help="continue a prompt with a .tflite file")
    p.add_argument("file")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sampler", default="greedy", choices=["greedy", "temperature", "top_k", "top_p"])
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("plugins", help="list model families, quantization strategies and presets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    for extra in _extra_commands():
        extra(sub)
    return parser


def _extra_commands():
    from llm_tflite.cli import extra as cli_extra

    return cli_extra.COMMANDS


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LLMTFLiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:  # bad argument values from our own checks
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `llm-tflite plugins | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
