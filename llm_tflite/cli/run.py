"""``llm-tflite generate`` and ``llm-tflite bench``: running files."""

from __future__ import annotations

import sys

from llm_tflite.cli.common import add_json, print_json


def cmd_generate(args) -> int:
    from llm_tflite.runtime.runner import InterpreterRunner

    runner = InterpreterRunner(args.file, num_threads=args.threads)
    sampler_args = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if args.json:
        text = runner.generate(args.prompt, args.max_new_tokens, args.sampler, **sampler_args)
        print_json({"file": args.file, "prompt": args.prompt, "text": text})
    elif args.stream:
        pieces = runner.stream(args.prompt, args.max_new_tokens, args.sampler, **sampler_args)
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        print(args.prompt + runner.generate(args.prompt, args.max_new_tokens, args.sampler, **sampler_args))
    return 0


def cmd_bench(args) -> int:
    from llm_tflite.evaluation.bench import bench_file, bench_keras

    result = bench_file(args.file, args.prompt_tokens, args.new_tokens, args.runs, args.threads)
    if args.reference:
        result.update(bench_keras(args.reference, result["prompt_tokens"], result["new_tokens"], args.runs))
        result["decode_speedup_vs_keras"] = result["decode_tokens_per_s"] / result["keras_generate_tokens_per_s"]
    if args.json:
        print_json(result)
        return 0
    print(f"{result['file']}: prefill {result['prefill_tokens_per_s']:.0f} tokens/s "
          f"({result['prompt_tokens']} tokens), decode {result['decode_tokens_per_s']:.1f} tokens/s")
    if args.reference:
        print(f"Keras generate (same process): {result['keras_generate_tokens_per_s']:.1f} tokens/s; "
              f"decode speed-up {result['decode_speedup_vs_keras']:.2f}x")
    return 0


def add_commands(cli) -> None:
    from llm_tflite.runtime import sampling

    p = cli.add_parser("generate", help="continue a prompt with a .tflite file")
    p.add_argument("file", help="the .tflite file (llm-tflite convert writes one)")
    p.add_argument("prompt", help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=64, help="most tokens to generate (stops earlier at the end token)")
    p.add_argument("--sampler", default="greedy", choices=sampling.SAMPLERS, help="how the next token is chosen")
    p.add_argument("--temperature", type=float, default=sampling.TEMPERATURE,
                   help="divides the logits before sampling (not used by greedy)")
    p.add_argument("--top-k", type=int, default=sampling.TOP_K, help="top_k: sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=sampling.TOP_P,
                   help="top_p: sample among the most likely tokens whose probability reaches p")
    p.add_argument("--seed", type=int, help="seed of a random sampler; the same seed gives the same text")
    p.add_argument("--threads", type=int, help="interpreter threads (default: the runtime's)")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    add_json(p)
    p.set_defaults(func=cmd_generate)

    p = cli.add_parser("bench", help="prefill/decode speed of a prefill_decode file, optionally against Keras")
    p.add_argument("file", help="a prefill_decode .tflite file")
    p.add_argument("--reference", help="a model to compare with (preset name or directory), run in this process")
    p.add_argument("--prompt-tokens", type=int, default=64, help="prompt length for the prefill measurement")
    p.add_argument("--new-tokens", type=int, default=64, help="greedy decode steps measured after the prompt")
    p.add_argument("--runs", type=int, default=3, help="repetitions; the median is reported")
    p.add_argument("--threads", type=int, help="interpreter threads (default: the runtime's)")
    add_json(p)
    p.set_defaults(func=cmd_bench)
