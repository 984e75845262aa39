"""``llm-tflite convert``: a model to a ``.tflite`` file."""

from __future__ import annotations

from llm_tflite.cli.common import add_family, add_json, int_list, print_json, size, strategy_names


def output_format(args) -> str:
    return args.format or ("litertlm" if str(args.output).endswith(".litertlm") else "tflite")


def cmd_convert(args) -> int:
    import os
    import tempfile

    # TensorFlow's oneDNN CPU allocator keeps the float32 weights it freed in its own pool, so the
    # quantizing and writing stages stacked on a copy of them: gemma3_270m peaked at 4.0 GiB of
    # anonymous memory with it and 2.7 without, with the same file (the conversion runs no kernel
    # oneDNN speeds up). Set before TensorFlow is imported; a user's own setting wins.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    from llm_tflite.export.converter import DEFAULT_PREFILL_LENGTHS, Converter

    bundle = output_format(args) == "litertlm"
    if bundle:  # refused before minutes of work
        from llm_tflite.errors import InvalidArgumentError
        from llm_tflite.litert.flatbuffer import check_writable
        from llm_tflite.export.bundle import find_builder

        if args.mode != "prefill_decode":
            raise InvalidArgumentError("--format litertlm needs --mode prefill_decode: LiteRT-LM runs prefill_decode "
                                       "files (its loop is the engine's)")
        if args.kv_cache != "float32":
            raise InvalidArgumentError(f"--format litertlm needs float32 caches, not --kv-cache {args.kv_cache}: "
                                       "LiteRT-LM takes every kv_cache_* input for a cache of its own layout")
        check_writable(args.output)
        find_builder()

    calibration = None
    if args.calibration:
        from llm_tflite.quantize.calibration import text_calibration

        calibration = text_calibration(args.calibration, num_samples=args.calibration_samples)
    converter = Converter(
        mode=args.mode,
        quantize=args.quantize,
        context_length=args.context_length,
        prefill_lengths=args.prefill_lengths or DEFAULT_PREFILL_LENGTHS,
        score_lengths="auto" if args.score_lengths is None else args.score_lengths,
        prompt_lengths="auto" if args.prompt_lengths is None else args.prompt_lengths,
        # LiteRT-LM 0.18 takes the shortest cache for its token limit: a bundle's rings are stored context-shaped
        ring_caches=False if args.no_ring_caches else "litertlm" if bundle else True,
        decode_windows="auto" if args.decode_windows is None else args.decode_windows,
        kv_cache=args.kv_cache,
        batch_sizes=args.batch_sizes or (),
        max_length=args.max_length,
        sampler=args.sampler,
        seed=args.seed,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        hidden_states=args.hidden_states,
        chat_template=args.chat_template,
        calibration=calibration,
    )
    if not bundle:
        result = converter.convert(args.model, args.output, family=args.family, random_weights=args.random_weights)
        path, size_bytes = result.path, result.size_bytes
    else:
        from llm_tflite.export.bundle import build_bundle

        directory = os.path.dirname(os.path.abspath(args.output))
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".convert-") as work:
            result = converter.convert(args.model, os.path.join(work, "model.tflite"), family=args.family,
                                       random_weights=args.random_weights)
            path = build_bundle(result.path, args.output)
        size_bytes = os.path.getsize(path)
    meta = result.metadata
    return _report(args, path, size_bytes, meta, f"family {meta['family']}, mode {meta['export_mode']}, "
                   f"quantization {meta['quantization']}, context {meta['context_length']} tokens")


def _report(args, path: str, size_bytes: int, meta: dict, summary: str) -> int:
    """What convert and bundle print about the file they wrote (``--json``: path, size, record)."""
    if args.json:
        print_json({"path": path, "size_bytes": size_bytes, "metadata": meta})
    else:
        print(f"wrote {path} ({size(size_bytes)}): {summary}")
    return 0


def cmd_bundle(args) -> int:
    import os

    from llm_tflite.export.bundle import build_bundle
    from llm_tflite.litert.metadata import read_metadata

    path = build_bundle(args.file, args.output, max_num_tokens=args.max_num_tokens)
    meta = read_metadata(path)
    return _report(args, path, os.path.getsize(path), meta, f"{args.file} with its tokenizer and LiteRT-LM "
                   f"metadata (context {args.max_num_tokens or meta['context_length']} tokens)")


def add_commands(cli) -> None:
    from llm_tflite.export.converter import DEFAULT_PREFILL_LENGTHS, EXPORT_MODES
    from llm_tflite.runtime import sampling
    from llm_tflite.runtime.sampling import GENERATE_SAMPLERS
    from llm_tflite.litert.metadata import KV_CACHE_TYPES

    p = cli.add_parser("convert", help="convert a model to a .tflite file")
    p.add_argument("model", help="preset name (llm-tflite plugins lists them), KerasHub handle, or local preset directory")
    p.add_argument("-o", "--output", required=True, help="the file to write (.tflite, or .litertlm for a bundle)")
    p.add_argument("--format", choices=("tflite", "litertlm"),
                   help="tflite: the model file; litertlm: a bundle LiteRT-LM's engine loads (model, tokenizer, "
                   "metadata; prefill_decode) (default: from the output's extension)")
    add_family(p)
    p.add_argument("--mode", default="prefill_decode", choices=EXPORT_MODES,
                   help="prefill_decode: builtin ops, KV cache outside (LiteRT-LM convention); "
                   "generate: the whole loop in one string-in/string-out graph (Android example app)")
    p.add_argument("--quantize", default="none", choices=strategy_names(), help="quantization strategy")
    p.add_argument("--random-weights", action="store_true", help="the architecture with random weights (no download)")
    p.add_argument("--context-length", type=int,
                   help="prefill_decode: KV-cache length in tokens (default: the model's, at most 1024)")
    p.add_argument("--prefill-lengths", type=int_list,
                   help=f"prefill_decode: prompt lengths with their own signature "
                   f"(default: {','.join(map(str, DEFAULT_PREFILL_LENGTHS))})")
    p.add_argument("--prompt-lengths", type=int_list,
                   help="prefill_decode: prefill lengths whose prompt_{L} signature runs a prompt's last chunk "
                   "and outputs its last token's logits, one call instead of a prefill and a decode (default: "
                   "the shortest prefill length; '' for none)")
    p.add_argument("--score-lengths", type=int_list,
                   help="prefill_decode: lengths of prefill signatures that also output every token's logits, what "
                   "eval, compare and scoring use (default: the longest prefill length; '' for none)")
    p.add_argument("--no-ring-caches", action="store_true",
                   help="prefill_decode: local (sliding-window) layers keep a cache of the whole context, not "
                   "their window plus the longest prefill (with --format litertlm the rings are stored in "
                   "context-length-shaped buffers, LiteRT-LM 0.18 taking the shortest cache as its token limit, "
                   "and kept only where a ring is at most half the context)")
    p.add_argument("--kv-cache", choices=KV_CACHE_TYPES, default="float32",
                   help="prefill_decode: the caches' type; int8 keeps one float32 scale per slot and head beside "
                   "int8 values: about a quarter of the memory (not for LiteRT-LM)")
    p.add_argument("--decode-windows", type=int_list,
                   help="prefill_decode: decode signatures that attend over the first W cache slots only, used while "
                   "the position is below W, and (W up to a quarter of the context) prefill ones for prompt chunks that end within W (default: 128, "
                   "256, ... below the context, from 32 with --batch-sizes, whose batched signatures also get 48, "
                   "96, ...; '' for none)")
    p.add_argument("--batch-sizes", type=int_list,
                   help="prefill_decode: decode signatures for B sequences at once, e.g. 4,8 (what serve --parallel "
                   "uses to serve many users; default none)")
    p.add_argument("--max-length", type=int, default=100, help="generate: prompt + continuation tokens")
    p.add_argument("--sampler", default="greedy", choices=GENERATE_SAMPLERS, help="generate: the sampler in the graph")
    p.add_argument("--seed", type=int, help="generate: seed of a random sampler (default: 0)")
    p.add_argument("--temperature", type=float, default=sampling.TEMPERATURE, help="generate: a random sampler's temperature")
    p.add_argument("--top-k", type=int, default=sampling.TOP_K, help="generate: k of the top_k sampler")
    p.add_argument("--top-p", type=float, default=sampling.TOP_P, help="generate: p of the top_p sampler")
    p.add_argument("--chat-template", help="a Jinja chat template file the file carries for chat "
                   "(default: the checkpoint's own, or the family's: Gemma 3, Qwen 3, Llama 3.x)")
    p.add_argument("--hidden-states", action="store_true",
                   help="prefill_decode: also output the last hidden states, which contrastive search needs")
    p.add_argument("--calibration", help="text file or folder for strategies that calibrate (full_int8)")
    p.add_argument("--calibration-samples", type=int, default=64, help="calibration samples cut from that text")
    add_json(p)
    p.set_defaults(func=cmd_convert)

    p = cli.add_parser("bundle", help="pack a prefill_decode .tflite with its tokenizer into a .litertlm bundle "
                       "for LiteRT-LM (Android, iOS, desktop)")
    p.add_argument("file", help="a prefill_decode .tflite file (llm-tflite convert writes one)")
    p.add_argument("-o", "--output", required=True, help="the .litertlm bundle to write")
    p.add_argument("--max-num-tokens", type=int, help="the engine's token budget (default: the file's context length)")
    add_json(p)
    p.set_defaults(func=cmd_bundle)
