"""Searches over several continuations: beam search and contrastive search.

Both follow KerasHub's ``BeamSampler`` and ``ContrastiveSampler`` step for step (the tests
compare token for token on the shipped GPT-2), running on ``Sequence`` objects: each beam
or candidate forks its parent's KV caches (the arrays are shared until the next step
replaces them, so a fork costs no copy).

Beam search: every step extends each beam by every token, keeps the ``num_beams`` best
sums of log-probabilities, and stops when every beam holds a stop token (beams that hold
one keep being extended, as in KerasHub). The best beam, cut at its first stop token, wins;
``length_penalty`` (HF's; 0 = KerasHub's plain sum) divides its score by ``length ** penalty``.

Contrastive search (Su et al., 2022): among the ``k`` most likely next tokens, take the one
maximising ``(1 - alpha) * p(token) - alpha * max cosine(hidden(token), hidden(earlier
tokens))``. It needs the model's last hidden states: convert with ``--hidden-states``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


def _log_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``log(softmax(logits / temperature))`` in float32, as KerasHub computes it."""
    scaled = np.asarray(logits, np.float32) / np.float32(temperature)
    shifted = scaled - scaled.max(axis=-1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        return np.log(probs)


def beam_search(sequence, logits, *, max_new_tokens: int, num_beams: int, temperature: float,
                length_penalty: float, stop_ids) -> list[int]:
    """The best beam's new tokens after the prompt already fed to ``sequence`` (``logits``: its last)."""
    stop_ids = set(stop_ids)
    beams = [(sequence, np.asarray(logits, np.float32), [])] * num_beams
    scores = np.array([0.0] + [-1e9] * (num_beams - 1), np.float32)
    for step in range(max_new_tokens):
        if stop_ids and all(any(t in stop_ids for t in tokens) for _, _, tokens in beams):
            break
        total = np.stack([_log_probabilities(beam_logits, temperature) for _, beam_logits, _ in beams])
        total = total + scores[:, None]
        flat = total.reshape(-1)
        chosen = np.argpartition(-flat, num_beams - 1)[:num_beams]
        vocab = total.shape[1]
        last = step == max_new_tokens - 1
        new_beams = []
        for index in chosen:
            parent, token = divmod(int(index), vocab)
            parent_sequence, _, tokens = beams[parent]
            child = parent_sequence.fork()
            child_logits = None if last else child.feed([token])[-1]
            new_beams.append((child, child_logits, tokens + [token]))
        beams, scores = new_beams, flat[chosen]

    def cut(tokens):
        for i, t in enumerate(tokens):
            if t in stop_ids:
                return tokens[:i]
        return tokens

    lengths = np.array([max(len(cut(tokens)), 1) for _, _, tokens in beams], np.float32)
    final = scores / lengths**length_penalty if length_penalty else scores
    return cut(beams[int(np.argmax(final))][2])


def _cosine_max(history: np.ndarray, candidate: np.ndarray) -> float:
    """The largest cosine similarity between ``candidate`` and any row of ``history``."""
    norms = np.sqrt((history * history).sum(axis=-1)) * np.sqrt((candidate * candidate).sum())
    return float(((history @ candidate) / norms).max())


def contrastive_search(sequence, logits, hidden_states, *, max_new_tokens: int, k: int, alpha: float,
                       temperature: float, stop_ids) -> Iterator[int]:
    """Yield tokens chosen by contrastive search after the prompt already fed to ``sequence``.

    ``hidden_states``: the last hidden states of the prompt's tokens ``[n, hidden]``.
    """
    stop_ids = set(stop_ids)
    history = [np.asarray(h, np.float32) for h in hidden_states]
    for _ in range(max_new_tokens):
        scaled = np.asarray(logits, np.float32) / np.float32(temperature)
        probs = np.exp(scaled - scaled.max())
        probs = probs / probs.sum()
        candidates = np.argpartition(-probs, k - 1)[:k]
        candidates = candidates[np.argsort(-probs[candidates], kind="stable")]
        previous = np.stack(history)
        best = None
        for token in candidates:
            child = sequence.fork()
            child_logits, child_hidden = child.feed_with_hidden([int(token)])
            score = (1 - alpha) * float(probs[token]) - alpha * _cosine_max(previous, child_hidden[-1])
            if best is None or score > best[0]:
                best = (score, int(token), child, child_logits[-1], child_hidden[-1])
        _, token, sequence, logits, hidden = best
        yield token
        if token in stop_ids:
            return
        history.append(hidden)
