"""The engine interface: what a file kind or backend gives ``InterpreterRunner``.

The runner composes an engine with the tokenizer, the text pipeline (stop strings,
filters) and the retry rule; it never asks which engine it holds. An engine says what it
can do and does it:

- ``check_container`` (before the file's record is read) and ``open`` (a verified file);
- ``check(sampler, settings, seed, stop_token_ids)``: refuse, before any work, what it
  cannot run (``InvalidArgumentError``);
- ``token_budget`` (prompt + new tokens one generation may hold), ``vocab_size``, and
  ``fills_context`` (with ``max_new_tokens`` unset, generate until the budget is full);
- ``deterministic(sampler)``: whether a retry could change the text;
- ``tokens(request, ids, limit, prompt, seed)``: the generation as ``(token, reason)``
  steps, where ``token`` is an id, a ``Chunk`` of text the engine decoded itself, or
  ``None`` (nothing more), and ``reason`` is set on the last step (``stop``, ``length``,
  ``context``);
- ``sequence(observer)``: a ``Sequence`` (its own KV caches and position) to feed tokens
  one call at a time, for engines that expose logits (``SequenceEngine``); the others say
  why they cannot (``require_sequences``).

``SequenceEngine`` gives every engine that exposes logits the runner's samplers and both
searches. Engines are chosen by ``open_engine`` from the ``ENGINES`` table (backend, then
the file's export mode): a new engine is a new class and a new row, not a new branch.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Iterator

from llm_tflite.errors import InvalidArgumentError, ModelFileError
from llm_tflite.runtime import sampling

#: backend -> the file's export mode -> its engine class (``module:Class``, imported when used).
ENGINES = {
    "interpreter": {"prefill_decode": "llm_tflite.runtime.prefill_decode:PrefillDecodeEngine",
                    "generate": "llm_tflite.runtime.generate:GenerateEngine"},
    "litert-lm": {"prefill_decode": "llm_tflite.runtime.litertlm_backend:LiteRTLMEngine"},
}
BACKENDS = tuple(ENGINES)


@dataclasses.dataclass
class Chunk:
    """Text an engine produced and decoded itself, with the token ids our tokenizer reads in it."""

    text: str
    ids: list


@dataclasses.dataclass
class Request:
    """One generation's validated settings (``InterpreterRunner`` builds it)."""

    max_new_tokens: int | None
    sampler: object
    settings: dict
    seed: int | None
    stop: list
    stop_token_ids: set
    context_overflow: str
    filter: object
    #: A ``Sequence`` to continue (chat: its caches hold a prefix of the prompt, up to its position).
    sequence: object = None
    #: ``llm_tflite.runtime.constraints.JSONConstraint``: only tokens it allows are sampled.
    constraint: object = None


@dataclasses.dataclass
class ModelFile:
    """A verified model file, as engines open it."""

    path: str
    data: object  # the model's bytes (a bundle's model section), mapped
    is_bundle: bool
    metadata: dict
    tokenizer: object


Step = tuple  # (int | Chunk | None, str | None)


class Engine:
    """Base of engines; see the module docstring for the interface."""

    #: ``prefill_decode``, ``generate`` or ``litert-lm``: for messages and ``llm-tflite`` output only.
    kind = ""
    #: With ``max_new_tokens`` unset, generate until ``token_budget`` is full (a generate-mode graph
    #: runs to its ``max_length``) rather than ``DEFAULT_MAX_NEW_TOKENS``.
    fills_context = False
    token_budget: int
    vocab_size: int

    @classmethod
    def check_container(cls, path: str, container, is_bundle: bool) -> None:
        """``ModelFileError`` if this engine cannot run a file of this container (a plain .tflite or a
        .litertlm bundle, ``container`` as mapped); runs before the file's record is read."""

    @classmethod
    def open(cls, model: ModelFile, *, num_threads: int, weight_cache: str) -> "Engine":
        """The engine of a verified file (``open_engine`` calls it)."""
        raise NotImplementedError

    def check(self, sampler, settings: dict, seed, stop_token_ids: set) -> None:
        raise NotImplementedError

    def deterministic(self, sampler) -> bool:
        return sampling.is_deterministic(sampler)

    def tokens(self, request: Request, ids: list[int], limit: int, prompt: str | None, seed) -> Iterator[Step]:
        raise NotImplementedError

    def require_sequences(self, what: str) -> None:
        """Raise ``unsupported(what)`` unless this engine gives token-level access (``sequence``)."""
        raise self.unsupported(what)

    def sequence(self, observer=None):
        raise self.unsupported("sequence")

    def unsupported(self, what: str) -> Exception:
        """The error for a token-level call (``sequence``, ``generate_ids``, ``logits``) this engine cannot serve."""
        return InvalidArgumentError(f"{what} is not available with this engine ({self.kind})")


class SequenceEngine(Engine):
    """An engine that exposes next-token logits through ``Sequence`` objects: every per-token
    sampler (the built-in chain and plugins') and beam and contrastive search run on it."""

    context_length: int

    def require_sequences(self, what: str) -> None:
        pass

    def sequence(self, observer=None):
        raise NotImplementedError

    def check(self, sampler, settings: dict, seed, stop_token_ids: set) -> None:
        sampling.check_settings(sampler, settings, seed)

    def tokens(self, request: Request, ids: list[int], limit: int, prompt: str | None, seed) -> Iterator[Step]:
        if request.sampler in ("beam", "contrastive") and (request.sequence is not None or request.constraint):
            raise InvalidArgumentError(f"{request.sampler} search does not run in chat or with a JSON schema; use a "
                                       "per-token sampler (greedy, random, top_k, top_p)")
        if request.sampler == "beam":
            return self.beam_tokens(ids, limit, request)
        if request.sampler == "contrastive":
            return self.contrastive_tokens(ids, limit, request)
        choose = sampling.make_sampler(request.sampler, seed=seed, **request.settings)
        if request.constraint is not None:
            choose = request.constraint.wrap(choose)
        return self.sample_tokens(ids, limit, choose, request.stop_token_ids, request.sequence)

    def sample_tokens(self, prompt_ids, limit: int, choose, stops, sequence=None) -> Iterator[Step]:
        """One token per step from ``choose(logits, history)``, until a stop token, ``limit`` or the context:
        the prompt fed, then the sequence's ``generate`` loop (a batching engine's runs in its scheduler).

        ``sequence``: one whose caches already hold ``prompt_ids[:sequence.position]`` (chat); only
        the rest is fed. A sequence made here is closed at the end (its caches go back at once)."""
        owned = sequence is None
        if owned:
            sequence = self.sequence()
        start = sequence.position = min(sequence.position, len(prompt_ids) - 1)
        try:
            logits = sequence.feed_last(prompt_ids[start:])
            yield from sequence.generate(logits, choose, list(prompt_ids), limit, stops)
        finally:
            if owned:
                sequence.close()

    def beam_tokens(self, ids, limit: int, request: Request) -> Iterator[Step]:
        from llm_tflite.runtime.search import beam_search

        sequence = self.sequence()
        logits = sequence.feed_last(ids)
        room = self.context_length - sequence.position + 1  # the last token is never fed
        cap = min(limit, room)
        tokens = beam_search(sequence, logits, max_new_tokens=cap,
                             num_beams=request.settings.get("num_beams", sampling.NUM_BEAMS),
                             temperature=request.settings.get("temperature", sampling.TEMPERATURE),
                             length_penalty=request.settings.get("length_penalty", sampling.LENGTH_PENALTY),
                             stop_ids=request.stop_token_ids)
        reason = "stop" if len(tokens) < cap else "length" if cap == limit else "context"
        for i, token in enumerate(tokens):
            yield token, reason if i == len(tokens) - 1 else None
        if not tokens:
            yield None, "stop"

    def contrastive_tokens(self, ids, limit: int, request: Request) -> Iterator[Step]:
        from llm_tflite.runtime.search import contrastive_search

        sequence = self.sequence()
        logits, hidden = sequence.feed_with_hidden(ids)
        room = self.context_length - sequence.position  # every candidate is fed
        limit_here = min(limit, room)
        tokens = contrastive_search(sequence, logits[-1], hidden, max_new_tokens=limit_here,
                                    k=request.settings.get("top_k", sampling.CONTRASTIVE_K),
                                    alpha=request.settings.get("penalty_alpha", sampling.PENALTY_ALPHA),
                                    temperature=request.settings.get("temperature", sampling.TEMPERATURE),
                                    stop_ids=request.stop_token_ids)
        count = 0
        for token in tokens:
            if token in request.stop_token_ids:
                yield None, "stop"
                return
            count += 1
            yield token, ("length" if limit_here == limit else "context") if count == limit_here else None


def engine_class(backend: str, export_mode: str, path: str):
    """The engine class that runs a file of ``export_mode`` on ``backend``."""
    modes = ENGINES[backend]
    if export_mode not in modes:
        raise ModelFileError(f"backend={backend!r} cannot run {path!r}, a {export_mode} file; it runs "
                             f"{', '.join(modes)} files")
    module, name = modes[export_mode].split(":")
    return getattr(importlib.import_module(module), name)


def check_container(backend: str, path: str, container, is_bundle: bool) -> None:
    """What ``backend``'s engines require of the file's container, checked before its record is read."""
    for spec in ENGINES[backend].values():
        module, name = spec.split(":")
        getattr(importlib.import_module(module), name).check_container(path, container, is_bundle)


def open_engine(backend: str, model: ModelFile, *, num_threads: int, weight_cache: str) -> Engine:
    """The engine for ``model`` on ``backend``."""
    cls = engine_class(backend, model.metadata["export_mode"], model.path)
    return cls.open(model, num_threads=num_threads, weight_cache=weight_cache)
