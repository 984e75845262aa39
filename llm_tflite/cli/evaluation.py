"""``llm-tflite eval`` and ``llm-tflite compare``: what a model or a strategy costs and buys."""

from __future__ import annotations

import dataclasses

from llm_tflite.cli.common import add_data, add_family, add_json, print_json
from llm_tflite.cli.training import print_loss


def _eval_text(args) -> tuple[str, str]:
    """(text to evaluate, text before it): the last ``--heldout-fraction`` of the data, or all of it."""
    from llm_tflite.training.data import load_texts, split_heldout

    text = "\n".join(load_texts(args.data, args.text_field))
    if args.heldout_fraction is None:
        return text, ""
    before, held_out = split_heldout(text, args.heldout_fraction)
    return held_out, before


def cmd_eval(args) -> int:
    from llm_tflite.errors import DataError

    if args.max_tokens is not None and args.max_tokens < 2:
        raise DataError(f"--max-tokens must be at least 2 (one token predicts the next), got {args.max_tokens}")
    text, _ = _eval_text(args)
    if str(args.model).endswith(".tflite"):
        import os

        from llm_tflite.evaluation.metrics import keras_logits_fn, tflite_heldout_loss
        from llm_tflite.runtime.runner import InterpreterRunner

        runner = InterpreterRunner(args.model)
        reference = None
        if args.reference and str(args.reference).endswith(".tflite"):
            reference_runner = InterpreterRunner(args.reference)
            if reference_runner.metadata["tokenizer"] != runner.metadata["tokenizer"]:
                raise DataError(f"{args.reference!r} uses another tokenizer than {args.model!r}: per-token KL and "
                                "top-1 agreement would compare different tokens; give a reference of the same model")
            reference = reference_runner.logits
        elif args.reference:
            from llm_tflite.evaluation.metrics import keras_tokenize
            from llm_tflite.families.loading import load_model

            _, reference_lm = load_model(args.reference, family=args.family)
            sample = text[:2000]
            if keras_tokenize(reference_lm.preprocessor.tokenizer, sample).tolist() != runner.tokenizer.encode(sample):
                raise DataError(f"{args.reference!r} tokenizes the text differently from {args.model!r}: per-token "
                                "KL and top-1 agreement would compare different tokens; give the model the file "
                                "was converted from")
            reference = keras_logits_fn(reference_lm)
        loss = tflite_heldout_loss(runner, text, window=args.window,
                                   max_tokens=args.max_tokens, reference=reference)
        loss["file_bytes"] = os.path.getsize(args.model)
    else:
        from llm_tflite.evaluation.metrics import keras_heldout_loss
        from llm_tflite.families.loading import load_model

        _, lm = load_model(args.model, family=args.family)
        loss = keras_heldout_loss(lm, text, sequence_length=args.window, max_tokens=args.max_tokens)
    if args.json:
        print_json(loss)
    else:
        print_loss("held-out", loss)
        if "kl_divergence" in loss:
            print(f"vs reference: KL divergence {loss['kl_divergence']:.3e} nats/token, "
                  f"top-1 agreement {loss['top1_agreement']:.2%}")
    return 0


def cmd_compare(args) -> int:
    from llm_tflite.evaluation.compare import compare, resolve_strategies, write_reports
    from llm_tflite.plugins.registry import get_strategy

    names = resolve_strategies(args.strategies)  # unknown names fail here, before any conversion
    text, before = _eval_text(args)
    calibration = None
    if any(get_strategy(n).needs_calibration for n in names):
        from llm_tflite.errors import DataError
        from llm_tflite.quantize.calibration import calibration_from_text, text_calibration

        if args.calibration:
            calibration = text_calibration(args.calibration, num_samples=args.calibration_samples)
        elif before:
            calibration = calibration_from_text(before, args.calibration_samples, "the text before the held-out part")
        else:
            raise DataError("full_int8 needs calibration text: pass --calibration PATH, or --heldout-fraction so "
                            "the text before the held-out part calibrates")
    results = compare(args.model, names, text, args.output, calibration=calibration, family=args.family,
                      random_weights=args.random_weights, max_tokens=args.max_tokens,
                      context_length=args.context_length)
    paths = write_reports(results, args.output, f"{args.model}: {len(results)} strategies")
    if args.json:
        print_json({"results": [dataclasses.asdict(r) for r in results], "reports": paths})
    else:
        print(open(paths["md"], encoding="utf-8").read())
        print("wrote " + ", ".join(paths.values()))
    return 0 if all(not r.error for r in results) else 1


def _add_heldout_fraction(p, extra: str = "") -> None:
    p.add_argument("--heldout-fraction", type=float,
                   help="evaluate only the last fraction of the text (0.1: tiny Shakespeare's held-out split)" + extra)


def add_commands(cli) -> None:
    p = cli.add_parser("eval", help="held-out loss (nats/char, perplexity) of a model or .tflite file")
    p.add_argument("model", help=".tflite file, preset name or preset directory")
    add_data(p, "evaluation text")
    add_family(p)
    p.add_argument("--reference", help=".tflite files: float reference (a float32 .tflite, preset or directory) "
                   "for KL divergence and top-1 agreement")
    _add_heldout_fraction(p)
    p.add_argument("--window", type=int, help="tokens per window (default: the model's sequence length)")
    p.add_argument("--max-tokens", type=int, help="evaluate only the first N tokens")
    add_json(p)
    p.set_defaults(func=cmd_eval)

    p = cli.add_parser("compare", help="convert with several quantization strategies and report size, "
                       "perplexity, KL divergence, top-1 agreement and speed (Markdown, CSV, PNG)")
    p.add_argument("model", help="preset name, local preset directory or handle")
    p.add_argument("--strategies", default="all", help="'all' or a comma-separated list (float32 is always included)")
    add_data(p, "evaluation text")
    _add_heldout_fraction(p, "; the text before it calibrates full_int8 unless --calibration is given")
    p.add_argument("--calibration", help="calibration text file or folder (full_int8)")
    p.add_argument("--calibration-samples", type=int, default=32, help="calibration samples cut from that text")
    p.add_argument("--max-tokens", type=int, help="evaluate only the first N held-out tokens")
    p.add_argument("--context-length", type=int, help="the files' context, also the evaluation window (default: "
                   "the model's, at most 1024; give a model trained on shorter windows its training length)")
    add_family(p)
    p.add_argument("--random-weights", action="store_true", help="the architecture with random weights (no download)")
    p.add_argument("-o", "--output", required=True, help="directory for the .tflite files and results.{md,csv,png}")
    add_json(p)
    p.set_defaults(func=cmd_compare)
