"""Next-token samplers on numpy logits: greedy, temperature, top-k, top-p."""

from __future__ import annotations

import numpy as np

SAMPLERS = ("greedy", "temperature", "top_k", "top_p")
#: Samplers a ``generate``-mode graph can hold.
GENERATE_SAMPLERS = ("greedy", "top_k", "top_p")

#: Sampler settings used when none are given: the one home of these defaults (runner, CLI, generate export).
TEMPERATURE, TOP_K, TOP_P = 1.0, 50, 0.9


class Sampler:
    """Chooses the next token from a 1-D array of logits.

    Args:
        name: ``greedy`` (argmax), ``temperature`` (sample the softmax), ``top_k`` or ``top_p``.
        temperature: divides the logits before sampling (not used by ``greedy``).
        top_k: keep the ``k`` most likely tokens (``top_k``).
        top_p: keep the smallest set of tokens whose probability reaches ``p`` (``top_p``).
        seed: seed of the random generator; the same seed gives the same text.

    Example:
        >>> Sampler("greedy")(np.array([0.1, 2.0, -1.0]))
        1
    """

    def __init__(self, name="greedy", *, temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P, seed=None):
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
        if temperature <= 0:
            raise ValueError("temperature must be > 0 (use sampler='greedy' for deterministic output)")
        if not 0 < top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if top_k < 1:
            raise ValueError("top_k must be >= 1")
        self.name, self.temperature, self.top_k, self.top_p = name, temperature, top_k, top_p
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> int:
        logits = np.asarray(logits, np.float64).reshape(-1)
        if self.name == "greedy":
            return int(np.argmax(logits))
        logits = logits / self.temperature
        if self.name == "top_k":
            k = min(self.top_k, logits.size)
            cutoff = np.partition(logits, -k)[-k]
            logits = np.where(logits >= cutoff, logits, -np.inf)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        if self.name == "top_p":
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cumulative, self.top_p)) + 1]
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        return int(self.rng.choice(probs.size, p=probs))
