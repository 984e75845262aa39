"""Next-token samplers on numpy logits: greedy, temperature, top-k, top-p."""

from __future__ import annotations

import math
import numbers

import numpy as np

from llm_tflite.errors import InvalidArgumentError

SAMPLERS = ("greedy", "temperature", "top_k", "top_p")
#: Samplers a ``generate``-mode graph can hold.
GENERATE_SAMPLERS = ("greedy", "top_k", "top_p")

#: Sampler settings used when none are given: the one home of these defaults (runner, CLI, generate export).
TEMPERATURE, TOP_K, TOP_P = 1.0, 50, 0.9


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


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
        if not isinstance(name, str) or name not in SAMPLERS:
            raise InvalidArgumentError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
        if not _is_number(temperature) or not math.isfinite(temperature) or temperature <= 0:
            raise InvalidArgumentError(f"temperature must be a finite number > 0, got {temperature!r} "
                                       "(use sampler='greedy' for deterministic output)")
        if not _is_number(top_p) or not 0 < top_p <= 1:  # NaN fails both comparisons
            raise InvalidArgumentError(f"top_p must be a number in (0, 1], got {top_p!r}")
        if not _is_integer(top_k) or top_k < 1:
            raise InvalidArgumentError(f"top_k must be an integer >= 1, got {top_k!r}")
        if seed is not None and (not _is_integer(seed) or not 0 <= seed < 2**63):
            raise InvalidArgumentError(f"seed must be None or an integer from 0 to 2**63 - 1, got {seed!r}")
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
