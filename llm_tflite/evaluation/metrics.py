"""Held-out loss per token and per character, of a Keras causal LM or of its ``.tflite`` file.

Nats per character makes models with different tokenizers comparable: the summed
negative log-likelihood of every token of the text divided by the text's length in
characters. The Keras side (``keras_heldout_loss``, ``keras_tokenize`` and the window and
summary helpers) lives in ``llm_tflite.training.metrics``, which training uses too; it is
imported here so evaluation code finds every metric in one module.
"""

from __future__ import annotations

import numpy as np

from llm_tflite.console import progress
from llm_tflite.training.metrics import (
    keras_heldout_loss,
    keras_tokenize,
    log_softmax,
    summarize_nll,
    token_windows,
)

__all__ = [
    "keras_heldout_loss", "keras_logits_fn", "keras_tokenize", "log_softmax", "summarize_nll", "tflite_heldout_loss",
    "token_windows",
]


def tflite_heldout_loss(runner, text: str, window: int | None = None, max_tokens: int | None = None,
                        desc: str = "eval", reference=None) -> dict:
    """Held-out loss of a ``prefill_decode`` file (an ``InterpreterRunner``) on ``text``.

    Windows as in ``keras_heldout_loss`` (start token + ``window - 1`` tokens), so figures
    from the Keras model and from its ``.tflite`` file compare directly.

    Args:
        runner: the ``InterpreterRunner`` to evaluate.
        text: held-out text.
        window: tokens per window (default: the file's context length).
        max_tokens: evaluate only the first ``max_tokens`` tokens.
        reference: optional callable ``token_ids -> logits [n, vocab]`` (a float32 file's
            ``InterpreterRunner.logits``, or ``keras_logits_fn(model)``): adds the mean
            ``kl_divergence`` (reference || evaluated, nats per token) and ``top1_agreement``.
    """
    ids = np.asarray(runner.tokenizer.encode(text), np.int32)
    n_chars = len(text)
    if max_tokens is not None and len(ids) > max_tokens:
        ids = ids[:max_tokens]
        n_chars = len(runner.tokenizer.decode(ids))
    window = min(window or runner.context_length, runner.context_length)
    bos = runner.bos_id if runner.add_bos else None
    total_nll, n_tokens, total_kl, agree = 0.0, 0, 0.0, 0
    for w in progress(token_windows(ids, window, bos), desc=desc, unit="window"):
        logp = log_softmax(runner.logits(w)[:-1])
        total_nll -= float(np.take_along_axis(logp, w[1:, None], axis=-1).sum())
        n_tokens += len(w) - 1
        if reference is not None:
            ref_logp = log_softmax(np.asarray(reference(w))[:-1])
            total_kl += float((np.exp(ref_logp) * (ref_logp - logp)).sum())
            agree += int((ref_logp.argmax(-1) == logp.argmax(-1)).sum())
    result = summarize_nll(total_nll, n_tokens, n_chars)
    if reference is not None:
        result["kl_divergence"] = total_kl / n_tokens
        result["top1_agreement"] = agree / n_tokens
    return result


def keras_logits_fn(causal_lm):
    """``token_ids -> logits [n, vocab]`` of a Keras causal LM, for ``tflite_heldout_loss(reference=...)``."""

    def logits(token_ids):
        x = np.asarray([token_ids], np.int32)
        return np.asarray(causal_lm({"token_ids": x, "padding_mask": np.ones_like(x, bool)}, training=False))[0]

    return logits
