"""Fine-tune a registered family's Keras model on text; write a preset the converter accepts."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time

import numpy as np

from llm_tflite.families.base import without_preprocessor
from llm_tflite.console import logger
from llm_tflite.families.loading import save_preset
from llm_tflite.litert.flatbuffer import check_writable
from llm_tflite.training.data import load_texts, split_documents
from llm_tflite.training.distribution import first_host, several_hosts
from llm_tflite.errors import DataError, InvalidArgumentError


@dataclasses.dataclass
class FinetuneResult:
    """The fine-tuned model, held-out loss before and after, and where it was saved."""

    model: object
    before: dict | None
    after: dict | None
    output_dir: str | None
    steps: int
    seconds: float
    #: Weights training changed, over all the model's weights (LoRA: well under 5 %).
    trainable_fraction: float = 1.0


#: ``finetune(precision=...)``: Keras dtype policies (mixed ones keep float32 weights, compute in 16 bits).
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def _training_arrays(docs_ids, bos, eos, sequence_length, pad_id=0):
    """Each document as ``[BOS] ids [EOS]``, tiled by windows of ``sequence_length`` next-token targets."""
    rows = []
    for ids in docs_ids:
        seq = ([bos] if bos is not None else []) + [int(t) for t in ids] + ([eos] if eos is not None else [])
        rows += [seq[s : s + sequence_length + 1] for s in range(0, len(seq) - 1, sequence_length)]
    x = np.full((len(rows), sequence_length), pad_id, np.int32)
    y = np.full((len(rows), sequence_length), pad_id, np.int32)
    weight = np.zeros((len(rows), sequence_length), np.float32)
    for i, chunk in enumerate(rows):
        n = len(chunk) - 1
        x[i, :n], y[i, :n], weight[i, :n] = chunk[:-1], chunk[1:], 1.0
    return x, y, weight


def finetune(model, data, output_dir=None, *, family=None, text_field=None, heldout=None,
             heldout_fraction=0.1, epochs=1, max_steps=None, max_minutes=None, batch_size=8,
             sequence_length=128, learning_rate=5e-4, seed=0, eval_max_tokens=50_000, precision="float32",
             lora_rank=None, distribution=None, mesh=None, checkpoint_dir=None, checkpoint_every=None, resume=False):
    """Fine-tune ``model`` on text files, as the KerasHub GPT-2 tutorials do.

    Adam with a learning rate decaying linearly to zero over the planned steps, sparse
    cross-entropy on next tokens, ``sequence_length`` tokens per sample. Runs on the backend
    Keras has in this process: TensorFlow or JAX (the tutorials' ``KERAS_BACKEND=jax``).

    Args:
        model: preset name, local preset directory, handle or Keras model (any registered family).
        data: a path or list of paths (``.txt`` files, folders, ``.json``/``.jsonl`` records).
        output_dir: write the fine-tuned preset here (optional).
        text_field: the JSON field with the text (``"paragraphs"`` for the Tang poems).
        heldout: paths of held-out data; default: the last ``heldout_fraction`` of the documents.
        epochs, max_steps, max_minutes: how long to train (the first limit reached wins).
        batch_size, sequence_length, learning_rate, seed: training settings.
        eval_max_tokens: cap on held-out tokens evaluated before and after.
        precision: ``float32``, ``mixed_float16`` or ``mixed_bfloat16`` (the policy the model is
            loaded under; the preset written keeps float32 weights either way).
        lora_rank: train rank-``R`` LoRA adapters on the attention's query and value kernels
            (KerasHub's ``backbone.enable_lora``) instead of every weight; the preset written has
            them merged into the kernels, so conversion needs nothing new.
        distribution: ``"data"`` (every device, each batch split) or ``"model"`` (a ``mesh`` of
            devices, big matrices sharded): Keras' distribution API, JAX backend
            (``llm_tflite.training.distribution``).
        mesh: ``"BATCHxMODEL"`` for ``distribution="model"`` (default ``1xN`` over N devices).
        checkpoint_dir, checkpoint_every: write every variable of the model and optimizer to
            ``checkpoint_dir`` every ``checkpoint_every`` steps (``llm_tflite.training.checkpoints``);
            it is deleted once the whole run's preset is written, kept where a time limit stopped it.
        resume: go on from the checkpoint in ``checkpoint_dir``, as if the run had never stopped
            (same batches, same learning-rate schedule); the settings must be the run's.

    Returns:
        ``FinetuneResult`` with held-out ``before``/``after`` dicts (``nats_per_char``, ...).

    Raises:
        DataError: missing paths, empty corpus, records without ``text_field``, non-UTF-8
            files -- all before any training starts.

    Example:
        >>> r = finetune("gpt2_tiny_shakespeare", "poems/", "tang_preset", text_field="paragraphs",
        ...              max_minutes=15)  # doctest: +SKIP
        >>> r.before["nats_per_char"], r.after["nats_per_char"]  # doctest: +SKIP
    """
    if output_dir:
        check_writable(output_dir, directory=True)
    texts = load_texts(data, text_field)
    heldout_texts = load_texts(heldout, text_field) if heldout else None
    if heldout_texts is None and heldout_fraction:
        texts, heldout_texts = split_documents(texts, heldout_fraction)
    if batch_size < 1 or sequence_length < 2:
        raise DataError("batch_size must be >= 1 and sequence_length >= 2")

    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if lora_rank is not None and (isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 1):
        raise InvalidArgumentError(f"lora_rank must be a positive integer, not {lora_rank!r}")
    if (checkpoint_every is not None or resume) and checkpoint_dir is None:
        raise InvalidArgumentError("checkpoint_every and resume need checkpoint_dir (the CLI puts it beside -o)")
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise InvalidArgumentError(f"checkpoint_every must be a positive number of steps, not {checkpoint_every!r}")
    if max_minutes is not None and several_hosts():
        raise InvalidArgumentError("max_minutes with several hosts would stop each at its own step (and the others "
                                   "would wait forever): give max_steps instead")
    fingerprint = {"model": model if isinstance(model, str) else type(model).__name__, "batch_size": batch_size,
                   "sequence_length": sequence_length, "learning_rate": learning_rate, "seed": seed,
                   "precision": precision, "lora_rank": lora_rank}
    from llm_tflite.console import TRAINING_BACKENDS, import_keras

    keras = import_keras(TRAINING_BACKENDS)
    keras.utils.set_random_seed(seed)
    with _distribution(keras, distribution, mesh, model, family, batch_size):
        lm = _load(keras, model, family, precision)
        total_weights = int(lm.count_params())
        if lora_rank is not None:
            lm.backbone.enable_lora(lora_rank)
        trainable = sum(int(np.prod(w.shape)) for w in lm.trainable_weights)
        if lora_rank is not None:
            logger.info("LoRA rank %d: training %s of %s weights (%.2f%%)", lora_rank, f"{trainable:,}",
                        f"{total_weights:,}", 100 * trainable / total_weights)
        before, after, steps, total_steps, seconds = _train(
            keras, lm, texts, heldout_texts, epochs=epochs, max_steps=max_steps, max_minutes=max_minutes,
            batch_size=batch_size, sequence_length=sequence_length, learning_rate=learning_rate, seed=seed,
            eval_max_tokens=eval_max_tokens, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
            resume=resume, fingerprint=fingerprint)
    if output_dir and first_host():  # one host writes
        save_preset(lm, output_dir)  # LoRA adapters merged into the kernels
    if checkpoint_dir is not None and output_dir and first_host() and steps >= total_steps:  # the preset is the run's end
        import shutil

        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        shutil.rmtree(os.fspath(checkpoint_dir) + ".old", ignore_errors=True)
    elif checkpoint_every is not None and steps < total_steps:  # Saver wrote a checkpoint where it stopped
        logger.warning("stopped after step %d of %d: the same command with --resume goes on from %s", steps,
                       total_steps, checkpoint_dir)
    return FinetuneResult(lm, before, after, output_dir, steps, seconds, trainable / total_weights)


def _load(keras, model, family, precision):
    """The model under the ``precision`` policy (a model object must already have it)."""
    from llm_tflite.families.loading import load_model

    if not isinstance(model, str):
        policy = model.dtype_policy.name
        if policy != precision:
            raise InvalidArgumentError(f"this model was built under the {policy} policy, not {precision}: build it "
                                       f"under keras.config.set_dtype_policy({precision!r}), or pass its preset")
        return load_model(model, family=family)[1]
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        return load_model(model, family=family)[1]
    finally:
        keras.config.set_dtype_policy(previous)


def _distribution(keras, kind, mesh, model, family, batch_size):
    """The distribution's scope (variables made inside it are laid out on the devices), or a no-op."""
    import contextlib

    if kind != "model" and mesh is not None:
        raise InvalidArgumentError("mesh goes with distribution='model'")
    if kind is None:
        return contextlib.nullcontext()
    if not isinstance(model, str):
        raise InvalidArgumentError("a distribution lays variables out as they are made: pass the model's preset "
                                   "(name or directory), not a model object already made")
    from llm_tflite.plugins import registry
    from llm_tflite.training.distribution import make_distribution

    backbone_class = None
    if kind == "model":
        import keras_hub

        fam = registry.resolve_family(model, family)
        backbone_class = getattr(keras_hub.models, getattr(fam, "backbone_class", "") or "", None)
    return make_distribution(keras, kind, mesh=mesh, backbone_class=backbone_class, batch_size=batch_size).scope()


def _train(keras, lm, texts, heldout_texts, *, epochs, max_steps, max_minutes, batch_size, sequence_length,
           learning_rate, seed, eval_max_tokens, checkpoint_dir, checkpoint_every, resume, fingerprint):
    """Held-out loss before, ``fit``, held-out loss after: ``(before, after, steps, total_steps, seconds)``."""
    from llm_tflite.training import checkpoints
    from llm_tflite.training.metrics import keras_heldout_loss, keras_tokenize
    from llm_tflite.training.train import StepLogger

    tokenizer = lm.preprocessor.tokenizer
    bos = getattr(tokenizer, "start_token_id", None)
    eos = getattr(tokenizer, "end_token_id", None)
    x, y, weight = _training_arrays(keras_tokenize(tokenizer, texts), bos, eos, sequence_length)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y, weight = x[order], y[order], weight[order]
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total_steps = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)

    heldout_text = "\n".join(heldout_texts) if heldout_texts else None
    before = keras_heldout_loss(lm, heldout_text, max_tokens=eval_max_tokens, desc="held-out before") if heldout_text else None

    schedule = keras.optimizers.schedules.PolynomialDecay(learning_rate, decay_steps=total_steps, end_learning_rate=0.0)
    lm.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=["accuracy"],
    )
    # the same batches: the training token ids (data, text field, tokenizer, sequence length, order)
    fingerprint = {**fingerprint, "total_steps": total_steps, "data_sha256": hashlib.sha256(x.tobytes()).hexdigest()}
    first = 0
    if checkpoint_dir is not None:
        lm.optimizer.build(lm.trainable_variables)  # its variables exist before a checkpoint is read into them
        if resume:
            first = checkpoints.restore(checkpoint_dir, lm, fingerprint, total_steps)
            logger.info("resuming after step %d of %d from %s", first, total_steps, checkpoint_dir)
    started = time.time()
    step_logger = StepLogger(every=max(1, total_steps // 20), total=total_steps - first,
                             max_seconds=max_minutes and max_minutes * 60, tokens_per_step=batch_size * sequence_length)
    callbacks = [step_logger]
    if checkpoint_every is not None:
        callbacks.append(checkpoints.Saver(checkpoint_dir, checkpoint_every, fingerprint, first_step=first,
                                           write=first_host()))
    repeats = math.ceil(total_steps * batch_size / len(x))
    xs, ys, ws = (np.concatenate([a] * repeats)[first * batch_size : total_steps * batch_size] for a in (x, y, weight))
    if len(xs):
        with without_preprocessor(lm):  # we feed token ids
            lm.fit({"token_ids": xs, "padding_mask": ws > 0}, ys, sample_weight=ws, batch_size=batch_size,
                   epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    else:  # resumed from the last step: nothing to train
        step_logger.bar.close()
    seconds = time.time() - started
    after = keras_heldout_loss(lm, heldout_text, max_tokens=eval_max_tokens, desc="held-out after") if heldout_text else None
    return before, after, first + step_logger.steps_done, total_steps, seconds

