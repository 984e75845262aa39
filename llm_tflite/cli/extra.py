"""``llm-tflite`` commands for training, fine-tuning and evaluation."""

from __future__ import annotations

import dataclasses
import json


def _print_loss(label: str, loss: dict | None) -> None:
    if loss:
        print(f"{label}: {loss['nats_per_char']:.4f} nats/char, {loss['nats_per_token']:.4f} nats/token "
              f"(perplexity {loss['perplexity']:.2f}) over {loss['tokens']:,} tokens")


def cmd_train(args) -> int:
    from llm_tflite.training.train import TrainConfig, train

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if f.name != "architecture" and getattr(args, f.name, None) is not None}
    record = train(args.data, args.output, TrainConfig.for_architecture(args.architecture or "gpt2", **overrides))
    _print_loss("held-out", record["heldout"])
    print(f"wrote preset {args.output}")
    return 0


def cmd_finetune(args) -> int:
    from llm_tflite.training.finetune import finetune

    result = finetune(
        args.model, args.data, args.output, family=args.family, text_field=args.text_field,
        heldout=args.heldout, epochs=args.epochs, max_steps=args.max_steps, max_minutes=args.max_minutes,
        batch_size=args.batch_size, sequence_length=args.sequence_length,
        learning_rate=args.learning_rate, seed=args.seed,
    )
    _print_loss("held-out before", result.before)
    _print_loss("held-out after ", result.after)
    if result.before and result.after:
        drop = 1 - result.after["nats_per_char"] / result.before["nats_per_char"]
        print(f"held-out loss lowered by {drop:.1%} in {result.steps} steps ({result.seconds / 60:.1f} min)")
    print(f"wrote preset {args.output}")
    return 0


def _eval_text(args) -> tuple[str, str]:
    """(text to evaluate, text before it): the last ``--heldout-fraction`` of the data, or all of it."""
    from llm_tflite.training.data import load_texts
    from llm_tflite.errors import DataError

    text = "\n".join(load_texts(args.data, args.text_field))
    fraction = getattr(args, "heldout_fraction", None)
    if fraction is None:
        return text, ""
    if not 0 < fraction < 1:
        raise DataError(f"--heldout-fraction must be between 0 and 1, got {fraction}")
    cut = int(len(text) * (1 - fraction))
    return text[cut:], text[:cut]


def cmd_eval(args) -> int:
    text, _ = _eval_text(args)
    if str(args.model).endswith(".tflite"):
        import os

        from llm_tflite.evaluation.metrics import keras_logits_fn, tflite_heldout_loss
        from llm_tflite.runtime.runner import InterpreterRunner

        reference = None
        if args.reference and str(args.reference).endswith(".tflite"):
            reference = InterpreterRunner(args.reference).logits
        elif args.reference:
            from llm_tflite.plugins.registry import load_model

            reference = keras_logits_fn(load_model(args.reference, family=args.family)[1])
        loss = tflite_heldout_loss(InterpreterRunner(args.model), text, window=args.window,
                                   max_tokens=args.max_tokens, reference=reference)
        loss["file_bytes"] = os.path.getsize(args.model)
    else:
        from llm_tflite.evaluation.metrics import keras_heldout_loss
        from llm_tflite.plugins.registry import load_model

        _, lm = load_model(args.model, family=args.family)
        loss = keras_heldout_loss(lm, text, sequence_length=args.window, max_tokens=args.max_tokens)
    if args.json:
        print(json.dumps(loss, indent=2))
    else:
        _print_loss("held-out", loss)
        if "kl_divergence" in loss:
            print(f"vs reference: KL divergence {loss['kl_divergence']:.3e} nats/token, "
                  f"top-1 agreement {loss['top1_agreement']:.2%}")
    return 0


def add_train(sub):
    from llm_tflite.training.train import TrainConfig

    p = sub.add_parser("train", help="train a small GPT-2 or PaLM-style model (tokenizer + model) from scratch on a text file")
    p.add_argument("--data", required=True, help="UTF-8 text file; its first 90%% trains, the rest is held out")
    p.add_argument("-o", "--output", required=True, help="preset directory to write")
    p.add_argument("--architecture", choices=("gpt2", "palm"), help="default gpt2; palm changes the other defaults too")
    for field in dataclasses.fields(TrainConfig):
        if field.name == "architecture":
            continue
        p.add_argument("--" + field.name.replace("_", "-"), dest=field.name, type=type(field.default),
                       help=f"default {field.default}")
    p.set_defaults(func=cmd_train)


def add_finetune(sub):
    p = sub.add_parser("finetune", help="fine-tune a model on text files, folders or JSON records")
    p.add_argument("model", help="preset name, local preset directory or handle")
    p.add_argument("--data", required=True, action="append", help="file or folder (repeatable)")
    p.add_argument("--heldout", action="append", help="held-out file or folder (default: last 10%% of --data)")
    p.add_argument("--text-field", help="JSON field with the text, e.g. paragraphs")
    p.add_argument("-o", "--output", required=True, help="preset directory to write")
    p.add_argument("--family")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sequence-length", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_finetune)


def add_eval(sub):
    p = sub.add_parser("eval", help="held-out loss (nats/char, perplexity) of a model or .tflite file")
    p.add_argument("model", help=".tflite file, preset name or preset directory")
    p.add_argument("--data", required=True, action="append")
    p.add_argument("--text-field")
    p.add_argument("--family")
    p.add_argument("--reference", help=".tflite files: float reference (a float32 .tflite, preset or directory) "
                   "for KL divergence and top-1 agreement")
    p.add_argument("--heldout-fraction", type=float,
                   help="evaluate only the last fraction of the text (0.1: tiny Shakespeare's held-out split)")
    p.add_argument("--window", type=int, help="tokens per window (default: model's sequence length)")
    p.add_argument("--max-tokens", type=int, help="evaluate only the first N tokens")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)


def cmd_compare(args) -> int:
    from llm_tflite.evaluation.compare import compare, resolve_strategies, write_reports
    from llm_tflite.plugins.registry import get_strategy

    names = resolve_strategies(args.strategies)  # unknown names fail here, before any conversion
    text, before = _eval_text(args)
    calibration = None
    if any(get_strategy(n).needs_calibration for n in names):
        from llm_tflite.quantize.calibration import calibration_from_text, text_calibration
        from llm_tflite.errors import DataError

        if args.calibration:
            calibration = text_calibration(args.calibration, num_samples=args.calibration_samples)
        elif before:
            calibration = calibration_from_text(before, args.calibration_samples, "the text before the held-out part")
        else:
            raise DataError("full_int8 needs calibration text: pass --calibration PATH, or --heldout-fraction so "
                            "the text before the held-out part calibrates")
    results = compare(args.model, names, text, args.output, calibration=calibration, family=args.family,
                      random_weights=args.random_weights, max_tokens=args.max_tokens)
    title = f"{args.model}: {len(results)} strategies"
    paths = write_reports(results, args.output, title)
    print(open(paths["md"], encoding="utf-8").read())
    print("wrote " + ", ".join(paths.values()))
    return 0 if all(not r.error for r in results) else 1


def add_compare(sub):
    p = sub.add_parser("compare", help="convert with several quantization strategies and report size, "
                       "perplexity, KL divergence, top-1 agreement and speed (Markdown, CSV, PNG)")
    p.add_argument("model", help="preset name, local preset directory or handle")
    p.add_argument("--strategies", default="all", help="'all' or a comma-separated list (float32 is always included)")
    p.add_argument("--data", required=True, action="append", help="evaluation text file or folder")
    p.add_argument("--heldout-fraction", type=float,
                   help="evaluate only the last fraction of the text (0.1 for tiny Shakespeare); the text "
                   "before it calibrates full_int8 unless --calibration is given")
    p.add_argument("--text-field")
    p.add_argument("--calibration", help="calibration text file or folder (full_int8)")
    p.add_argument("--calibration-samples", type=int, default=32)
    p.add_argument("--max-tokens", type=int, help="evaluate only the first N held-out tokens")
    p.add_argument("--family")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("-o", "--output", required=True, help="directory for the .tflite files and results.{md,csv,png}")
    p.set_defaults(func=cmd_compare)


def add_bench(sub):
    from llm_tflite.evaluation.bench import add_bench as add

    add(sub)


COMMANDS = [add_train, add_finetune, add_eval, add_compare, add_bench]
