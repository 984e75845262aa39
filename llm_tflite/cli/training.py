"""``llm-tflite train`` and ``llm-tflite finetune``: making and adapting models."""

from __future__ import annotations

import dataclasses

from llm_tflite.cli.common import add_data, add_family


def print_loss(label: str, loss: dict | None) -> None:
    if loss:
        print(f"{label}: {loss['nats_per_char']:.4f} nats/char, {loss['nats_per_token']:.4f} nats/token "
              f"(perplexity {loss['perplexity']:.2f}) over {loss['tokens']:,} tokens")


def cmd_train(args) -> int:
    from llm_tflite.training.train import TrainConfig, train

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if f.name != "architecture" and getattr(args, f.name, None) is not None}
    record = train(args.data, args.output, TrainConfig.for_architecture(args.architecture, **overrides))
    print_loss("held-out", record["heldout"])
    print(f"wrote preset {args.output}")
    return 0


def cmd_finetune(args) -> int:
    from llm_tflite.training.finetune import finetune

    result = finetune(
        args.model, args.data, args.output, family=args.family, text_field=args.text_field,
        heldout=args.heldout, epochs=args.epochs, max_steps=args.max_steps, max_minutes=args.max_minutes,
        batch_size=args.batch_size, sequence_length=args.sequence_length,
        learning_rate=args.learning_rate, seed=args.seed, precision=args.precision, lora_rank=args.lora_rank,
        distribution=args.distribution, mesh=args.mesh, checkpoint_every=args.checkpoint_every, resume=args.resume,
        checkpoint_dir=(args.output.rstrip("/\\") + ".checkpoint")
        if args.checkpoint_every is not None or args.resume else None,
    )
    if args.lora_rank is not None:
        print(f"LoRA rank {args.lora_rank}: trained {result.trainable_fraction:.2%} of the weights (merged into the preset)")
    print_loss("held-out before", result.before)
    print_loss("held-out after ", result.after)
    if result.before and result.after:
        drop = 1 - result.after["nats_per_char"] / result.before["nats_per_char"]
        print(f"held-out loss lowered by {drop:.1%} in {result.steps} steps ({result.seconds / 60:.1f} min)")
    print(f"wrote preset {args.output}")
    return 0


def add_commands(cli) -> None:
    from llm_tflite.console import TRAINING_BACKENDS
    from llm_tflite.training.distribution import DISTRIBUTIONS
    from llm_tflite.training.finetune import PRECISIONS
    from llm_tflite.training.train import ARCHITECTURES, TrainConfig

    p = cli.add_parser("train", help="train a small model (tokenizer + model) from scratch: GPT-2, PaLM-style, "
                       "Gemma 3, Qwen 3 or Llama 3 architecture")
    p.add_argument("--data", required=True, help="UTF-8 text file; its first 90%% trains, the rest is held out")
    p.add_argument("-o", "--output", required=True, help="preset directory to write")
    p.add_argument("--architecture", choices=ARCHITECTURES, default="gpt2",
                   help="gpt2 (byte-level BPE + GPT2CausalLM), palm (SentencePiece + PaLMCausalLM), or gemma3, "
                   "qwen3, llama3 (a small model of that family; palm and these change some defaults too)")
    others = {name: TrainConfig.for_architecture(name) for name in ARCHITECTURES if name != "gpt2"}
    for field in dataclasses.fields(TrainConfig):
        if field.name == "architecture":
            continue
        default = f"default: {field.default}"
        by_value: dict = {}
        for name, config in others.items():
            if getattr(config, field.name) != field.default:
                by_value.setdefault(getattr(config, field.name), []).append(name)
        default += "".join(f"; {', '.join(names)}: {value}" for value, names in by_value.items())
        p.add_argument("--" + field.name.replace("_", "-"), dest=field.name, type=type(field.default),
                       help=f"{TrainConfig.HELP[field.name]} ({default})")
    p.set_defaults(func=cmd_train)

    p = cli.add_parser("finetune", help="fine-tune a model on text files, folders or JSON records")
    p.add_argument("model", help="preset name, local preset directory or handle")
    add_data(p, "training text")
    p.add_argument("--heldout", action="append",
                   help="held-out file or folder (default: the last 10%% of --data)")
    p.add_argument("-o", "--output", required=True, help="preset directory to write")
    add_family(p)
    p.add_argument("--epochs", type=int, default=1, help="passes over the data")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--max-minutes", type=float, help="stop after this many minutes")
    p.add_argument("--batch-size", type=int, default=8, help="samples per step")
    p.add_argument("--sequence-length", type=int, default=128, help="tokens per sample")
    p.add_argument("--learning-rate", type=float, default=5e-4, help="Adam's initial learning rate (decays linearly to 0)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--backend", dest="keras_backend", choices=TRAINING_BACKENDS, default="tensorflow",
                   help="Keras backend to train on (default tensorflow; the KerasHub tutorials use jax)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="dtype policy: mixed ones compute in 16 bits and keep float32 weights (default float32)")
    p.add_argument("--lora-rank", type=int, metavar="R",
                   help="train rank-R LoRA adapters on the attention's query and value kernels instead of every "
                   "weight; merged into the preset's weights when saved")
    p.add_argument("--distribution", choices=DISTRIBUTIONS,
                   help="data: every device, each batch split; model: weights sharded over --mesh (JAX backend)")
    p.add_argument("--mesh", metavar="BATCHxMODEL", help="device mesh for --distribution model (default 1xN)")
    p.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="every N steps, save the model's and optimizer's variables to OUTPUT.checkpoint "
                   "(deleted when the preset is written)")
    p.add_argument("--resume", action="store_true",
                   help="go on from OUTPUT.checkpoint as if the run had not stopped (same command otherwise)")
    p.set_defaults(func=cmd_finetune)
