"""Train a small GPT-2 (tokenizer and model) from scratch on a text file.

This is how the shipped ``gpt2_tiny_shakespeare`` preset was made; the exact command
and its figures are in ``docs/models.md``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from llm_tflite.errors import DataError


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of ``train_gpt2``; every field is recorded in ``training.json``."""

    vocab_size: int = 2048
    num_layers: int = 4
    num_heads: int = 4
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


def split_text(text: str, train_fraction: float) -> tuple[str, str]:
    """First ``train_fraction`` of the characters for training, the rest held out."""
    cut = int(len(text) * train_fraction)
    return text[:cut], text[cut:]


def StepLogger(every: int, total: int, max_seconds: float | None = None):
    """A Keras callback: a progress bar (or a log line every ``every`` steps), and an optional time limit."""
    import keras

    from llm_tflite.progress import progress

    class Logger(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.start = time.time()
            self.steps_done = 0
            self.bar = progress(total=total, desc="train", unit="step")

        def on_train_batch_end(self, batch, logs=None):
            self.steps_done = batch + 1
            self.bar.update()
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}")
            elapsed = time.time() - self.start
            if self.bar.disable and ((batch + 1) % every == 0 or batch + 1 == total):
                print(f"step {batch + 1}/{total} loss {logs['loss']:.4f} elapsed {elapsed:.0f}s "
                      f"eta {elapsed / (batch + 1) * (total - batch - 1):.0f}s", flush=True)
            if max_seconds is not None and elapsed > max_seconds:
                print(f"time limit reached after {batch + 1} steps", flush=True)
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            self.bar.close()

    return Logger()


def train_gpt2(data_path: str, output_dir: str, config: TrainConfig | None = None) -> dict:
    """Train a byte-level BPE tokenizer and a GPT-2 on ``data_path``; write a KerasHub preset.

    Args:
        data_path: a UTF-8 text file; its first ``train_fraction`` is used for training.
        output_dir: the KerasHub preset directory to write.
        config: hyper-parameters (defaults: the shipped model's).

    Returns:
        The training record (also written to ``output_dir/training.json``).

    Example:
        >>> train_gpt2("../shared/data/tinyshakespeare/input.txt", "my_preset")  # doctest: +SKIP
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import keras_hub

    from llm_tflite.evaluation import keras_heldout_loss
    from llm_tflite.tokenizers.bpe import END_OF_TEXT, BPETokenizer, train_bpe

    config = config or TrainConfig()
    try:
        with open(data_path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read training text {data_path!r}: {e}") from e
    train_text, heldout_text = split_text(text, config.train_fraction)
    if len(train_text) < 1000:
        raise DataError(f"{data_path!r} holds too little text to train on ({len(train_text)} characters)")

    keras.utils.set_random_seed(config.seed)
    started = time.time()
    print(f"training BPE tokenizer (vocab {config.vocab_size}) on {len(train_text):,} characters", flush=True)
    vocab, merges = train_bpe(train_text, config.vocab_size)
    bpe = BPETokenizer(vocab, merges)
    ids = np.asarray(bpe.encode(train_text), np.int32)
    bos = vocab[END_OF_TEXT]
    print(f"{len(ids):,} training tokens ({len(train_text) / len(ids):.2f} characters per token)", flush=True)

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
    causal_lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)

    # Each sample: BOS + T-1 tokens from a random offset; targets are the next tokens.
    rng = np.random.default_rng(config.seed)
    T, B = config.sequence_length, config.batch_size
    starts = rng.integers(0, len(ids) - T, size=config.steps * B)
    offsets = starts[:, None] + np.arange(T)[None, :]
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
    causal_lm.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    print(f"training {backbone.count_params():,} parameters for {config.steps} steps", flush=True)
    causal_lm.fit(
        {"token_ids": inputs, "padding_mask": np.ones_like(inputs, bool)},
        targets,
        batch_size=B,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[StepLogger(every=50, total=config.steps)],
    )
    train_seconds = time.time() - started

    final = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)
    heldout = keras_heldout_loss(final, heldout_text, desc="held-out loss")
    record = {
        "data": os.path.basename(os.path.dirname(os.path.abspath(data_path))) + "/" + os.path.basename(data_path),
        "split": f"first {config.train_fraction:.0%} of characters train, rest held out",
        "config": dataclasses.asdict(config),
        "parameters": int(backbone.count_params()),
        "train_tokens": int(len(ids)),
        "train_seconds": round(train_seconds, 1),
        "heldout": heldout,
    }
    final.save_to_preset(output_dir)
    with open(os.path.join(output_dir, "training.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    print(json.dumps(record["heldout"], indent=2), flush=True)
    return record
