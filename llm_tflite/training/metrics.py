"""Held-out loss of a Keras causal LM, per token and per character: what training reports.

Nats per character makes models with different tokenizers comparable: the summed
negative log-likelihood of every token of the text divided by the text's length in
characters. ``llm_tflite.evaluation.metrics`` measures ``.tflite`` files the same way
(same windows, same summary) and offers these functions under its own name too.
"""

from __future__ import annotations

import math

import numpy as np

from llm_tflite.console import progress
from llm_tflite.errors import DataError


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def token_windows(ids: np.ndarray, window: int, bos_id: int | None) -> list[np.ndarray]:
    """Cut ``ids`` into windows of at most ``window`` tokens whose targets tile ``ids``.

    With ``bos_id`` each window starts with it and every token of ``ids`` is predicted
    once; without, consecutive windows overlap by one token and only the very first
    token of ``ids`` goes unpredicted.
    """
    windows = []
    step = window - 1
    for start in range(0, len(ids), step):
        if bos_id is not None:
            chunk = np.concatenate([[bos_id], ids[start : start + step]])
        else:
            chunk = ids[max(start - 1, 0) : start + step]
        if len(chunk) > 1:
            windows.append(np.asarray(chunk, dtype=np.int32))
    return windows


def summarize_nll(total_nll: float, n_tokens: int, n_chars: int) -> dict:
    if n_tokens < 1:
        raise DataError("nothing was evaluated: the text gives no token to predict (empty text, or --max-tokens "
                        "below 2); evaluate more text")
    per_token = total_nll / n_tokens
    return {
        "tokens": n_tokens,
        "chars": n_chars,
        "nats_per_token": per_token,
        "perplexity": math.exp(per_token),
        "nats_per_char": total_nll / max(n_chars, 1),
    }


def keras_heldout_loss(causal_lm, text: str, sequence_length: int | None = None, batch_size: int = 8,
                       max_tokens: int | None = None, desc: str = "eval") -> dict:
    """Held-out loss of a KerasHub ``CausalLM`` on ``text``.

    Args:
        causal_lm: a ``keras_hub.models.CausalLM`` with a preprocessor.
        text: the held-out text.
        sequence_length: window length in tokens (default: the preprocessor's).
        batch_size: windows per forward pass.
        max_tokens: evaluate only the first ``max_tokens`` tokens (quick checks).

    Returns:
        dict with ``tokens``, ``chars``, ``nats_per_token``, ``perplexity``, ``nats_per_char``.

    Example:
        >>> keras_heldout_loss(lm, open("heldout.txt").read())["nats_per_char"]  # doctest: +SKIP
        1.62
    """
    tokenizer = causal_lm.preprocessor.tokenizer
    ids = keras_tokenize(tokenizer, text)
    n_chars = len(text)
    if max_tokens is not None and len(ids) > max_tokens:
        ids = ids[:max_tokens]
        n_chars = len(_detokenize(tokenizer, ids))
    window = sequence_length or causal_lm.preprocessor.sequence_length
    bos = getattr(tokenizer, "start_token_id", None)
    windows = token_windows(ids, window, bos)
    total_nll = 0.0
    n_tokens = 0
    for i in progress(range(0, len(windows), batch_size), desc=desc, unit="batch"):
        batch = windows[i : i + batch_size]
        width = max(len(w) for w in batch)
        token_ids = np.zeros((len(batch), width), np.int32)
        mask = np.zeros((len(batch), width), bool)
        for row, w in enumerate(batch):
            token_ids[row, : len(w)] = w
            mask[row, : len(w)] = True
        logits = np.asarray(causal_lm({"token_ids": token_ids, "padding_mask": mask}, training=False))
        logp = log_softmax(logits[:, :-1])
        targets = token_ids[:, 1:]
        picked = np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        valid = mask[:, 1:]
        total_nll -= float(picked[valid].sum())
        n_tokens += int(valid.sum())
    return summarize_nll(total_nll, n_tokens, n_chars)


def keras_tokenize(tokenizer, texts):
    """Token ids from a KerasHub tokenizer, through its TensorFlow graph path.

    ``texts`` is a string (returns one int32 array) or a list of strings (returns a list).

    KerasHub 0.30's eager path for byte-pair tokenizers hands its split pattern to
    ``tokenizers.pre_tokenizers.Split`` as a plain string, which that library matches
    literally (huggingface/tokenizers#1565), so eagerly the whole text becomes one
    BPE word. Inside ``tf.function`` KerasHub splits with GPT-2's pattern, as training
    with ``tf.data`` and the ``generate`` export do; so do we.
    """
    import tensorflow as tf

    single = isinstance(texts, str)
    batch = [texts] if single else list(texts)
    fn = tf.function(tokenizer, autograph=False, input_signature=[tf.TensorSpec([None], tf.string)])
    ids = [np.asarray(row, np.int32) for row in fn(tf.constant(batch)).to_list()]
    return ids[0] if single else ids


def _detokenize(tokenizer, ids) -> str:
    text = tokenizer.detokenize(np.asarray(ids, np.int32))
    text = text.numpy() if hasattr(text, "numpy") else text
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
