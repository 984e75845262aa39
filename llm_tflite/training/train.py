"""Train a small causal LM (tokenizer and model) from scratch on a text file.

This is how the shipped ``gpt2_tiny_shakespeare`` and ``palm_tiny_shakespeare`` presets were made; the exact command
and its figures are in ``docs/models.md``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from llm_tflite.console import import_keras, logger, stop_if_interrupted
from llm_tflite.errors import DataError
from llm_tflite.families.base import without_preprocessor
from llm_tflite.training.data import split_heldout


#: The kit families (``llm_tflite.families.decoder``): a small model of the family's own shape,
#: with a tokenizer of its kind trained on the text.
KIT_ARCHITECTURES = ("gemma3", "qwen3", "llama3")
ARCHITECTURES = ("gpt2", "palm") + KIT_ARCHITECTURES


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of ``train``; every field is recorded in ``training.json``.

    Use ``TrainConfig.for_architecture("palm")`` for the PaLM-style defaults.
    """

    architecture: str = "gpt2"
    vocab_size: int = 2048
    num_layers: int = 4
    num_heads: int = 4
    num_key_value_heads: int = 1  # not GPT-2 (one K/V head per query head)
    hidden_dim: int = 256
    intermediate_dim: int = 1024
    sequence_length: int = 256
    dropout: float = 0.1
    batch_size: int = 16
    steps: int = 1600
    learning_rate: float = 2e-3
    min_learning_rate: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    train_fraction: float = 0.9
    seed: int = 1234
    max_minutes: float = 0.0  # stop early after this long (0: no limit); recorded steps say how far it got

    #: One line per field, for ``llm-tflite train --help``.
    HELP = {
        "vocab_size": "tokenizer vocabulary size (byte-level BPE for gpt2, qwen3, llama3; SentencePiece unigram "
                      "for palm, with byte fallback for gemma3)",
        "num_layers": "decoder blocks",
        "num_heads": "attention (query) heads",
        "num_key_value_heads": "not gpt2: key/value heads (1 = multi-query attention)",
        "hidden_dim": "width of the residual stream",
        "intermediate_dim": "width of the feed-forward layer",
        "sequence_length": "tokens per training sample (also the model's position limit)",
        "dropout": "dropout rate",
        "batch_size": "samples per step",
        "steps": "optimizer steps",
        "learning_rate": "peak learning rate (AdamW, cosine decay after warm-up)",
        "min_learning_rate": "learning rate at the end of the cosine decay",
        "warmup_steps": "linear warm-up steps",
        "weight_decay": "AdamW weight decay (not on biases and norms)",
        "train_fraction": "leading fraction of the text used for training; the rest is held out",
        "seed": "random seed (data order and initial weights)",
        "max_minutes": "stop after this many minutes (0: no limit)",
    }

    @classmethod
    def for_architecture(cls, architecture: str, **overrides) -> "TrainConfig":
        """Defaults of the shipped model of that architecture, with ``overrides``."""
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        if architecture == "gpt2" and overrides.get("num_key_value_heads") not in (None, 1):
            raise ValueError("num_key_value_heads does not apply to gpt2 (one K/V head per query head); use another "
                             "--architecture or drop --num-key-value-heads")
        kit = {"num_key_value_heads": 2, "intermediate_dim": 768, "dropout": 0.0}  # grouped-query, gated MLP
        defaults = {"palm": {"intermediate_dim": 768, "dropout": 0.15, "steps": 1400},
                    **{name: kit for name in KIT_ARCHITECTURES},
                    "gemma3": {**kit, "num_layers": 6}}.get(architecture, {})  # five local layers, one global
        return cls(**{"architecture": architecture, **defaults, **overrides})


def StepLogger(every: int, total: int, max_seconds: float | None = None, tokens_per_step: int | None = None):
    """A Keras callback: a progress bar with the loss (and tokens/s given ``tokens_per_step``), or a log
    line every ``every`` steps where there is no bar; and an optional time limit."""
    from llm_tflite.console import TRAINING_BACKENDS, progress

    keras = import_keras(TRAINING_BACKENDS)

    class Logger(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.start = time.time()
            self.steps_done = 0
            self.bar = progress(total=total, desc="train", unit="step")

        def on_train_batch_end(self, batch, logs=None):
            stop_if_interrupted()  # a Ctrl+C lost inside TensorFlow stops training at the next step
            self.steps_done = batch + 1
            self.bar.update()
            now = time.time()
            elapsed = now - self.start
            if batch == 0:
                self.first_step_end = now  # the first step compiles: speed counts the steps after it
            speed = (f"{tokens_per_step * batch / max(now - self.first_step_end, 1e-9):,.0f}"
                     if tokens_per_step and batch else None)
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", **({"tok/s": speed} if speed else {}))
            if self.bar.disable and ((batch + 1) % every == 0 or batch + 1 == total):
                logger.info("step %d/%d loss %.4f%s elapsed %.0fs eta %.0fs", batch + 1, total, logs["loss"],
                            f" {speed} tokens/s" if speed else "", elapsed, elapsed / (batch + 1) * (total - batch - 1))
            if max_seconds is not None and elapsed > max_seconds:
                logger.info("time limit reached after %d steps", batch + 1)
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            self.bar.close()

    return Logger()


def _gpt2_model(train_text: str, config: TrainConfig):
    """Tokenizer trained on ``train_text``, an untrained GPT2CausalLM, and the training token ids."""
    import keras_hub

    from llm_tflite.tokenizers.bpe import BPETokenizer
    from llm_tflite.tokenizers.bpe_training import train_bpe

    vocab, merges = train_bpe(train_text, config.vocab_size)
    ids = BPETokenizer(vocab, merges).encode(train_text)
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocab, merges=merges)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=config.sequence_length)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(vocab),
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        hidden_dim=config.hidden_dim,
        intermediate_dim=config.intermediate_dim,
        dropout=config.dropout,
        max_sequence_length=config.sequence_length,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor), ids


def _palm_model(train_text: str, config: TrainConfig):
    """SentencePiece model trained on ``train_text``, an untrained PaLMCausalLM, and the training token ids."""
    import sentencepiece

    from llm_tflite.families.palm import PaLMBackbone, PaLMCausalLM, PaLMCausalLMPreprocessor, PaLMTokenizer
    from llm_tflite.tokenizers.spm_training import train_sentencepiece

    # SentencePiece trains on "sentences"; paragraphs keep their newlines.
    proto = train_sentencepiece((p + "\n\n" for p in train_text.split("\n\n")), config.vocab_size)
    ids = sentencepiece.SentencePieceProcessor(model_proto=proto).encode(train_text)
    preprocessor = PaLMCausalLMPreprocessor(PaLMTokenizer(proto), sequence_length=config.sequence_length)
    backbone = PaLMBackbone(
        vocabulary_size=config.vocab_size,
        num_layers=config.num_layers,
        num_query_heads=config.num_heads,
        num_key_value_heads=config.num_key_value_heads,
        hidden_dim=config.hidden_dim,
        intermediate_dim=config.intermediate_dim,
        max_sequence_length=config.sequence_length,
        dropout=config.dropout,
    )
    return PaLMCausalLM(backbone=backbone, preprocessor=preprocessor), ids


def _kit_backbone_config(architecture: str, config: TrainConfig, vocabulary_size: int) -> dict:
    """Backbone arguments of a small model of a kit family: the family's own choices (Gemma's norms
    and local windows, Qwen's query/key norms, RoPE bases) at ``config``'s size."""
    if config.hidden_dim % config.num_heads or config.num_heads % config.num_key_value_heads:
        raise ValueError(f"hidden_dim ({config.hidden_dim}) must divide into num_heads ({config.num_heads}), and "
                         f"num_heads into num_key_value_heads ({config.num_key_value_heads})")
    head_dim = config.hidden_dim // config.num_heads
    common = dict(vocabulary_size=vocabulary_size, num_layers=config.num_layers, num_query_heads=config.num_heads,
                  num_key_value_heads=config.num_key_value_heads, hidden_dim=config.hidden_dim,
                  intermediate_dim=config.intermediate_dim, dropout=config.dropout)
    return {**common, **{
        # five local layers (half the training length) to each global one, as Gemma 3 has
        "gemma3": dict(image_size=None, head_dim=head_dim, query_head_dim_normalize=True, use_query_key_norm=True,
                       use_post_ffw_norm=True, use_post_attention_norm=True, use_sliding_window_attention=True,
                       sliding_window_size=max(config.sequence_length // 2, 1), layer_norm_epsilon=1e-6),
        "qwen3": dict(head_dim=head_dim, rope_max_wavelength=1000000, layer_norm_epsilon=1e-6,
                      tie_word_embeddings=True, sliding_window_size=None),
        "llama3": dict(rope_max_wavelength=500000, layer_norm_epsilon=1e-5, tie_word_embeddings=False),
    }[architecture]}


def _kit_model(train_text: str, config: TrainConfig):
    """A tokenizer of the family's kind trained on ``train_text``, an untrained model of the family
    (``config.architecture``: gemma3, qwen3, llama3), and the training token ids."""
    import keras_hub

    from llm_tflite.plugins.registry import get_family
    from llm_tflite.training.metrics import keras_tokenize

    family = get_family(config.architecture)
    tokenizer = family.train_tokenizer(train_text, config.vocab_size)
    ids = keras_tokenize(tokenizer, train_text)
    backbone = getattr(keras_hub.models, family.backbone_class)(
        **_kit_backbone_config(config.architecture, config, int(tokenizer.vocabulary_size())))
    preprocessor = getattr(keras_hub.models, family.causal_lm + "Preprocessor")(
        tokenizer, sequence_length=config.sequence_length)
    return getattr(keras_hub.models, family.causal_lm)(backbone=backbone, preprocessor=preprocessor), ids


def train(data_path: str, output_dir: str, config: TrainConfig | None = None) -> dict:
    """Train a tokenizer and a small causal LM on ``data_path``; write a KerasHub preset.

    Args:
        data_path: a UTF-8 text file; its first ``train_fraction`` is used for training.
        output_dir: the KerasHub preset directory to write.
        config: hyper-parameters (default: the shipped GPT-2's); ``config.architecture`` picks
            ``gpt2`` (byte-level BPE + GPT2CausalLM), ``palm`` (SentencePiece + PaLMCausalLM) or a
            kit family, ``gemma3`` / ``qwen3`` / ``llama3`` (its tokenizer kind + its KerasHub model).

    Returns:
        The training record (also written to ``output_dir/training.json``).

    Example:
        >>> train("../shared/data/tinyshakespeare/input.txt", "my_preset",
        ...       TrainConfig.for_architecture("palm"))  # doctest: +SKIP
    """
    from llm_tflite.console import import_keras

    keras = import_keras()

    from llm_tflite.training.metrics import keras_heldout_loss

    from llm_tflite.litert.flatbuffer import check_writable

    config = config or TrainConfig()
    check_writable(output_dir, directory=True)
    if config.architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {config.architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    try:
        with open(data_path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read training text {data_path!r}: {e}") from e
    train_text, heldout_text = split_heldout(text, 1 - config.train_fraction)
    if len(train_text) < 1000:
        raise DataError(f"{data_path!r} holds too little text to train on ({len(train_text)} characters)")

    keras.utils.set_random_seed(config.seed)
    started = time.time()
    logger.info("training the %s tokenizer (vocab %d) on %s characters", config.architecture, config.vocab_size,
                f"{len(train_text):,}")
    build = {"gpt2": _gpt2_model, "palm": _palm_model}.get(config.architecture, _kit_model)
    final, ids = build(train_text, config)
    ids = np.asarray(ids, np.int32)
    bos = final.preprocessor.tokenizer.start_token_id
    logger.info("%s training tokens (%.2f characters per token)", f"{len(ids):,}", len(train_text) / len(ids))

    # Each sample: BOS + T-1 tokens from a random offset (T tokens where the family has no BOS:
    # Qwen); targets are the next tokens.
    rng = np.random.default_rng(config.seed)
    T, B = config.sequence_length, config.batch_size
    starts = rng.integers(0, len(ids) - T, size=config.steps * B)
    offsets = starts[:, None] + np.arange(T)[None, :]
    if bos is None:
        inputs, targets = ids[offsets], ids[offsets + 1]
    else:
        targets = ids[offsets]
        inputs = np.concatenate([np.full((len(starts), 1), bos, np.int32), targets[:, :-1]], axis=1)

    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        warmup_target=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=config.steps - config.warmup_steps,
        alpha=config.min_learning_rate / config.learning_rate,
    )
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=config.weight_decay, beta_2=0.99, global_clipnorm=1.0
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    final.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    backbone = final.backbone
    logger.info("training %s parameters for %d steps", f"{backbone.count_params():,}", config.steps)
    step_logger = StepLogger(every=50, total=config.steps, max_seconds=config.max_minutes * 60 or None)
    with without_preprocessor(final):  # fit() gets token ids
        final.fit(
            {"token_ids": inputs, "padding_mask": np.ones_like(inputs, bool)},
            targets,
            batch_size=B,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[step_logger],
        )
    train_seconds = time.time() - started

    heldout = keras_heldout_loss(final, heldout_text, desc="held-out loss")
    record = {
        "data": os.path.basename(os.path.dirname(os.path.abspath(data_path))) + "/" + os.path.basename(data_path),
        "split": f"first {config.train_fraction:.0%} of characters train, rest held out",
        "config": dataclasses.asdict(config),
        "steps_done": step_logger.steps_done,
        "parameters": int(backbone.count_params()),
        "train_tokens": int(len(ids)),
        "train_seconds": round(train_seconds, 1),
        "heldout": heldout,
    }
    final.save_to_preset(output_dir)
    if config.architecture == "gpt2":  # the same vocabulary for HF tokenizers and LiteRT-LM
        from llm_tflite.tokenizers.bpe_training import write_tokenizer_json

        tokenizer = final.preprocessor.tokenizer
        write_tokenizer_json(dict(tokenizer.vocabulary), list(tokenizer.merges), os.path.join(output_dir, "tokenizer.json"))
    with open(os.path.join(output_dir, "training.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    logger.info("held-out: %s", json.dumps(record["heldout"]))
    return record
