"""Run an llm-tflite ``.tflite`` file: tokenize, prefill, decode, sample, detokenize.

For ``prefill_decode`` files this module imports neither TensorFlow nor Keras: it needs
``ai_edge_litert`` (or, failing that, ``tf.lite``), numpy and the pure-Python tokenizers.
Every option is documented, with its default and an example, in ``docs/runner.md``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import numpy as np

from llm_tflite.errors import ContextLengthError, DataError, InvalidArgumentError, ModelFileError, RuntimeFailure
from llm_tflite.litert.flatbuffer import check_tensor_sizes, map_model_file
from llm_tflite.litert.litertlm import check_engine_sections, is_litertlm, model_bytes
from llm_tflite.litert.metadata import read_verified_metadata
from llm_tflite.runtime import sampling
from llm_tflite.runtime.results import AutocompleteResult, GenerationResult, TextPipeline
from llm_tflite.runtime.tokenizers import tokenizer_from_spec

#: New tokens when ``max_new_tokens`` is not given (fewer if the context holds fewer).
DEFAULT_MAX_NEW_TOKENS = 64
#: Generations ``autocomplete`` makes before it gives up on filtered output (the app's "three tries").
FILTER_TRIES = 3
CONTEXT_OVERFLOW = ("error", "truncate")
#: Sampler settings the runner passes on when given (``None``: the sampler's default).
SAMPLER_SETTINGS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "frequency_penalty",
                    "presence_penalty")
SEARCH_SETTINGS = ("num_beams", "length_penalty", "penalty_alpha")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_max_new_tokens(max_new_tokens) -> None:
    if max_new_tokens is not None and (not _is_int(max_new_tokens) or max_new_tokens < 1):
        raise InvalidArgumentError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")


def _prompt_text(prompt) -> str:
    if isinstance(prompt, bytes):
        try:
            return prompt.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"the prompt is not valid UTF-8 ({e}); pass text encoded as UTF-8") from e
    if not isinstance(prompt, str):
        raise DataError(f"the prompt must be str or UTF-8 bytes, not {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"the prompt is not valid UTF-8 ({e}); pass text encoded as UTF-8") from e
    return prompt


@dataclasses.dataclass
class _Request:
    """One generation's validated settings."""

    max_new_tokens: int | None
    sampler: object
    settings: dict
    seed: int | None
    stop: list
    stop_token_ids: set
    context_overflow: str
    filter: object


@dataclasses.dataclass
class _Chunk:
    """Text a generate-mode graph produced, with the token ids our tokenizer reads in it."""

    text: str
    ids: list


class TextStream:
    """The pieces of a generation as they come; ``result`` is its ``GenerationResult`` once exhausted."""

    def __init__(self, pieces: Iterator[str], holder: list):
        self._pieces, self._holder = pieces, holder

    def __iter__(self):
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    @property
    def result(self) -> GenerationResult | None:
        return self._holder[0] if self._holder else None

    def close(self) -> None:
        """Stop generating (a client left); ``result`` stays ``None`` unless it had finished."""
        self._pieces.close()


class InterpreterRunner:
    """Generate text from an llm-tflite ``.tflite`` file; needs nothing but the file.

    Args:
        path: the ``.tflite`` file written by ``Converter`` / ``llm-tflite convert``, or a
            ``.litertlm`` bundle of one (``llm-tflite bundle``).
        num_threads: CPU threads the runtime computes with (default: every core, ``os.cpu_count()``;
            decoding is bandwidth-bound, and one thread reaches about half of what two do).
        backend: ``interpreter`` (our loop on LiteRT; every feature) or ``litert-lm``
            (a bundle in LiteRT-LM's engine, ``pip install 'llm-tflite[litertlm]'``: ``generate``,
            ``complete``, ``stream`` and ``autocomplete`` with the greedy, random, top_k and top_p
            samplers; stop strings and filters as usual).
        weight_cache: where XNNPACK keeps the weights it repacks for its kernels: ``"auto"``
            (a file per model under ``~/.cache/llm-tflite/xnnpack``, or ``$LLM_TFLITE_CACHE_DIR``:
            the first load writes it, later loads map it in milliseconds and use about one copy
            of the weights' memory instead of two), ``"memory"`` (nothing written), or a directory.

    Example:
        >>> runner = InterpreterRunner("model.tflite")  # doctest: +SKIP
        >>> runner.generate("ROMEO:", max_new_tokens=32)  # doctest: +SKIP
        '\\nWhat, shall I ...'
    """

    def __init__(self, path, *, num_threads: int | None = None, backend: str = "interpreter",
                 weight_cache: str = "auto"):
        from llm_tflite.runtime.litertlm_backend import BACKENDS

        self.path = os.fspath(path)
        if num_threads is not None and not (_is_int(num_threads) and 1 <= num_threads <= 1024):
            raise InvalidArgumentError(f"num_threads must be an integer from 1 to 1024 (or None), got {num_threads!r}")
        if backend not in BACKENDS:
            raise InvalidArgumentError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.backend = backend
        self.num_threads = num_threads = num_threads or os.cpu_count() or 1
        if not isinstance(weight_cache, (str, os.PathLike)) or not weight_cache:
            raise InvalidArgumentError(f"weight_cache must be 'auto', 'memory' or a directory, got {weight_cache!r}")
        self.weight_cache = os.fspath(weight_cache)
        data = map_model_file(self.path)
        #: True for a ``.litertlm`` bundle (``llm-tflite bundle``): our .tflite is one of its sections.
        self.is_bundle = is_litertlm(data)
        if self.is_bundle and backend == "litert-lm":
            check_engine_sections(data, repr(self.path))
        elif backend == "litert-lm":
            raise ModelFileError(f"backend='litert-lm' runs .litertlm bundles; {self.path!r} is not one: "
                                 f"llm-tflite bundle {self.path} -o MODEL.litertlm")
        data = model_bytes(data, repr(self.path))
        # The file is untrusted: checksum, record schema and tensor shapes are checked before
        # the native runtime sees a byte of it.
        self.metadata = read_verified_metadata(data, repr(self.path))
        check_tensor_sizes(data, repr(self.path), limit=max(1 << 30, 2 * len(data)))
        self.export_mode = self.metadata["export_mode"]
        self.tokenizer = tokenizer_from_spec(self.metadata["tokenizer"])
        self.context_length = int(self.metadata["context_length"])
        self.prefill_lengths = sorted(int(n) for n in self.metadata.get("prefill_lengths", []))
        self.bos_id = self.metadata.get("bos_id")
        self.eos_id = self.metadata.get("eos_id")
        self.add_bos = bool(self.metadata.get("add_bos", False))
        self._piece_ids = None  # litert-lm: a piece's bytes -> its id
        if backend == "litert-lm":
            from llm_tflite.runtime.litertlm_backend import LiteRTLMEngine

            self.vocab_size = self.tokenizer.vocab_size
            self._engine = LiteRTLMEngine(self.path, num_threads, self.vocab_size,
                                          self.bos_id if self.add_bos else None, self.eos_id)
        elif self.export_mode == "prefill_decode":
            from llm_tflite.litert.expand import expansion_bytes
            from llm_tflite.runtime.prefill_decode import PrefillDecodeEngine
            from llm_tflite.runtime.weight_cache import can_expand, model_file

            # The runtime maps a plain file itself. Weights it would expand once per signature
            # (weight_only_int8) are expanded once, and a bundle's model section is kept, in a
            # file of the cache it maps instead.
            source, model_path, record = None, None, self.metadata
            added = expansion_bytes(data, repr(self.path))
            expand = bool(added) and can_expand(data, added, repr(self.path))
            if expand or self.is_bundle:
                source, model_path, record = model_file(data, self.metadata, self.weight_cache, repr(self.path), expand)
                data = None  # a bundle's section copy is not needed while the runtime loads the model
            self._engine = PrefillDecodeEngine(source, record, num_threads, self.path, self.weight_cache, model_path)
            self.vocab_size = self._engine.vocab_size
            self._check_token_ids()
        else:
            from llm_tflite.runtime.generate import GenerateEngine

            self._engine = GenerateEngine(bytes(data), self.metadata, num_threads, self.path)
            self.vocab_size = self.tokenizer.vocab_size

    def _check_token_ids(self) -> None:
        """The tokenizer and special tokens must fit the logits the graph produces."""
        if self.tokenizer.vocab_size > self.vocab_size:
            raise ModelFileError(f"{self.path!r}: its tokenizer has {self.tokenizer.vocab_size} tokens but the model "
                                 f"scores {self.vocab_size}; the file is inconsistent, re-convert it")
        for name in ("bos_id", "eos_id"):
            value = getattr(self, name)
            if value is not None and value >= self.vocab_size:
                raise ModelFileError(f"{self.path!r}: {name} {value} is outside the vocabulary of {self.vocab_size}; "
                                     "re-convert it")

    # -- token level -------------------------------------------------------------
    def encode(self, prompt) -> list[int]:
        """Token ids the model sees for ``prompt`` (with the start token if the family adds one)."""
        ids = self.tokenizer.encode(_prompt_text(prompt))
        return ([self.bos_id] if self.add_bos and self.bos_id is not None else []) + ids

    def decode(self, token_ids) -> str:
        """Text of ``token_ids`` (special tokens decode to nothing)."""
        return self.tokenizer.decode(token_ids)

    def sequence(self, observer=None):
        """A fresh ``Sequence`` (its own KV caches and position) on this runner's interpreter.

        ``observer(signature_name, inputs)``, if given, sees every signature call's inputs.
        """
        from llm_tflite.runtime.prefill_decode import Sequence

        self._require_prefill_decode("sequence")
        return Sequence(self._engine, observer)

    def logits(self, token_ids) -> np.ndarray:
        """Next-token logits ``[n, vocab]`` after each of ``token_ids`` (a fresh sequence)."""
        return self.sequence().feed(self._token_ids(token_ids))

    def _token_ids(self, token_ids) -> list[int]:
        try:
            ids = [int(t) for t in token_ids]
            exact = all(int(t) == t for t in token_ids)
        except (TypeError, ValueError, OverflowError):
            raise InvalidArgumentError("token ids must be a sequence of integers") from None
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if not exact or bad:
            raise InvalidArgumentError(f"token ids must be integers in 0..{self.vocab_size - 1}"
                                       + (f"; got {bad[:5]}" if bad else ""))
        return ids

    def generate_ids(self, prompt_ids, max_new_tokens=DEFAULT_MAX_NEW_TOKENS, sampler="greedy",
                     **sampler_args) -> Iterator[int]:
        """Yield new token ids after ``prompt_ids`` (per-token samplers; stops at the end token)."""
        self._require_prefill_decode("generate_ids")
        prompt_ids = self._token_ids(prompt_ids)
        _check_max_new_tokens(max_new_tokens)
        if not prompt_ids:
            raise DataError("the prompt is empty and the model adds no start token; pass some text")
        if len(prompt_ids) >= self.context_length:
            raise ContextLengthError(f"the prompt is {len(prompt_ids)} tokens but the model's context holds "
                                     f"{self.context_length}; shorten it or convert with a larger --context-length")
        choose = sampling.make_sampler(sampler, **sampler_args)
        stops = {self.eos_id} - {None}
        return (token for token, _ in self._sample_tokens(prompt_ids, max_new_tokens, choose, stops)
                if token is not None)

    def _sample_tokens(self, prompt_ids, max_new_tokens, choose, stops):
        """``(token, reason)`` pairs; reason is set on the last one (``stop``, ``length`` or ``context``)."""
        sequence = self.sequence()
        logits = sequence.feed(prompt_ids)[-1]
        history = list(prompt_ids)
        for count in range(1, max_new_tokens + 1):
            token = int(choose(logits, history))
            if token in stops:
                yield None, "stop"
                return
            history.append(token)
            if count == max_new_tokens:
                yield token, "length"
                return
            if sequence.position >= self.context_length:
                yield token, "context"
                return
            yield token, None
            logits = sequence.feed([token])[-1]

    # -- text level --------------------------------------------------------------
    def _request(self, max_new_tokens, sampler, seed, stop, stop_token_ids, context_overflow, text_filter,
                 settings) -> _Request:
        from llm_tflite.runtime.filters import resolve_filter

        _check_max_new_tokens(max_new_tokens)
        sampling.check_seed(seed)
        if sampler is None:  # the file's own: greedy, or what a generate-mode file was exported with
            sampler = self.metadata.get("default_sampler", "greedy")
        if context_overflow not in CONTEXT_OVERFLOW:
            raise InvalidArgumentError(f"context_overflow must be one of {', '.join(CONTEXT_OVERFLOW)}, "
                                       f"got {context_overflow!r}")
        if isinstance(stop, str):
            stop = [stop]
        if stop is not None and not (isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop)):
            raise InvalidArgumentError("stop must be a string or a list of strings")
        stop = list(stop or [])
        ids = {self.eos_id} - {None} if stop_token_ids is None else set(self._token_ids(stop_token_ids))
        given = {k: v for k, v in settings.items() if v is not None}
        unknown = set(given) - set(SAMPLER_SETTINGS) - set(SEARCH_SETTINGS)
        if unknown:
            raise InvalidArgumentError(f"unknown sampler settings {sorted(unknown)}")
        if self.backend == "litert-lm":
            self._engine.check(sampler, given, ids, {self.eos_id} - {None})
            sampling.make_sampler(sampler, seed=seed, **given)  # the same value checks as our loop
        elif sampler in sampling.SEARCHES:
            self._check_search(sampler, given)
        else:
            misplaced = set(given) & set(SEARCH_SETTINGS)
            if misplaced:
                raise InvalidArgumentError(f"{sorted(misplaced)} apply to sampler='beam' or 'contrastive', "
                                           f"not {sampler!r}")
            if self.export_mode == "generate":
                self._check_generate_mode(sampler, given, seed)
            else:
                sampling.make_sampler(sampler, seed=seed, **given)  # validates settings now, not mid-stream
        return _Request(max_new_tokens, sampler, given, seed, stop, ids, context_overflow, resolve_filter(text_filter))

    def _check_search(self, sampler, given) -> None:
        if self.export_mode == "generate":
            raise InvalidArgumentError(f"sampler={sampler!r} runs in the runner's loop, which needs a prefill_decode "
                                       "file; this generate-mode file has its loop in the graph")
        allowed = {"beam": {"num_beams", "length_penalty", "temperature"},
                   "contrastive": {"top_k", "penalty_alpha", "temperature"}}[sampler]
        extra = set(given) - allowed
        if extra:
            raise InvalidArgumentError(f"sampler={sampler!r} takes {sorted(allowed)}, not {sorted(extra)}")
        sampling.Sampler("random", temperature=given.get("temperature", sampling.TEMPERATURE))  # validates it
        beams, alpha, k = given.get("num_beams", 2), given.get("penalty_alpha", 0.5), given.get("top_k", 2)
        if not _is_int(beams) or beams < 1 or not _is_int(k) or k < 1:
            raise InvalidArgumentError("num_beams and top_k must be integers >= 1")
        if not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise InvalidArgumentError(f"penalty_alpha must be a number in [0, 1], got {alpha!r}")
        length_penalty = given.get("length_penalty", 0.0)
        if not isinstance(length_penalty, (int, float)) or not np.isfinite(length_penalty):
            raise InvalidArgumentError(f"length_penalty must be a finite number, got {length_penalty!r}")

    def _check_generate_mode(self, sampler, given, seed) -> None:
        """A generate-mode file fixed its sampler at export: say so instead of ignoring arguments."""
        fixed = self.metadata.get("default_sampler", "greedy")
        if sampler != fixed or given or (seed is not None and seed != self.metadata.get("seed")):
            raise InvalidArgumentError(
                f"this generate-mode file samples with {fixed!r} and the settings fixed at export "
                f"({self.metadata.get('sampler_settings', {})}, seed {self.metadata.get('seed')}); it cannot use "
                f"sampler={sampler!r}, {given or ''} {'seed=' + str(seed) if seed is not None else ''}. Convert "
                "again with --sampler/--temperature/--top-k/--top-p/--seed, or use a prefill_decode file"
            )

    def _fit_prompt(self, ids: list[int], request: _Request, budget: int) -> tuple[list[int], int, bool]:
        """``(prompt ids, new-token limit, truncated)`` within ``budget`` tokens (the context)."""
        bos = ids[:1] if self.add_bos and ids and ids[0] == self.bos_id else []
        body = ids[len(bos):]
        wanted = request.max_new_tokens
        room = budget - len(ids)
        if wanted is None and room >= 1:
            return ids, room if self.export_mode == "generate" else min(DEFAULT_MAX_NEW_TOKENS, room), False
        wanted = wanted or DEFAULT_MAX_NEW_TOKENS
        if room >= wanted:
            return ids, wanted, False
        if request.context_overflow == "error":
            raise ContextLengthError(
                f"the prompt is {len(ids)} tokens and {wanted} new ones were asked for, but the model's context "
                f"holds {budget}; shorten the prompt, ask for fewer tokens, pass context_overflow='truncate' "
                "(keeps the most recent tokens) or convert with a larger --context-length"
            )
        keep = max(budget - wanted - len(bos), 1)
        kept = bos + body[-keep:]
        return kept, min(wanted, budget - len(kept)), len(kept) < len(ids)

    def _prepare(self, text: str, request: _Request) -> tuple[list[int], int, str, str]:
        """``(prompt ids, new-token limit, prompt text, reason at the limit)`` after the context rule;
        raises before any work."""
        ids = self.encode(text)
        if not ids:
            raise DataError("the prompt is empty and the model adds no start token; pass some text")
        budget = self.context_length if self.export_mode == "prefill_decode" else int(self.metadata["max_length"])
        ids, limit, truncated = self._fit_prompt(ids, request, budget)
        # Reaching the limit ends with "length" when the caller set it, "context" when the context did.
        at_limit = "length" if request.max_new_tokens is not None and limit == request.max_new_tokens else (
            "length" if request.max_new_tokens is None and limit == DEFAULT_MAX_NEW_TOKENS else "context")
        return ids, limit, self.decode(ids) if truncated else text, at_limit

    def _generate_pieces(self, prepared, request: _Request, seed, holder: list) -> Iterator[str]:
        """Text pieces of one generation; appends its ``GenerationResult`` to ``holder``."""
        ids, limit, prompt, at_limit = prepared
        pipeline = TextPipeline(request.stop, request.filter)
        tokens: list[int] = []
        reason = "length"
        if request.filter is not None:
            found = request.filter.find(prompt)
            if found:  # rejected before inference: no model call
                holder.append(GenerationResult("", [], "filtered", len(ids), 0, prompt, found))
                return
        if self.backend == "litert-lm":
            events = self._litertlm_tokens(prompt, limit, request, seed)
        elif self.export_mode == "generate":
            events = self._generate_mode_tokens(prompt, ids, limit, request.stop_token_ids,
                                                request.max_new_tokens is not None)
        elif request.sampler == "beam":
            events = self._beam_tokens(ids, limit, request)
        elif request.sampler == "contrastive":
            events = self._contrastive_tokens(ids, limit, request)
        else:
            choose = sampling.make_sampler(request.sampler, seed=seed, **request.settings)
            events = self._sample_tokens(ids, limit, choose, request.stop_token_ids)
        for token, end in events:
            if isinstance(token, _Chunk):  # a generate-mode graph's text, as it detokenized it
                tokens.extend(token.ids)
                data = token.text.encode("utf-8")
            elif token is not None:
                tokens.append(token)
                data = self.tokenizer.decode_bytes([token])
            else:
                data = b""
            piece = pipeline.feed(data)
            if piece:
                yield piece
            if pipeline.stopped or pipeline.filtered:
                break
            if end:
                reason = at_limit if end == "length" else end
                break
        tail = pipeline.finish()
        if tail:
            yield tail
        if pipeline.filtered:
            reason = "filtered"
        elif pipeline.stopped:
            reason = "stop"
        text_out = "" if pipeline.filtered else pipeline.shown
        holder.append(GenerationResult(text_out, tokens, reason, len(ids), len(tokens), prompt, pipeline.filtered))

    def _litertlm_tokens(self, prompt: str, limit: int, request: _Request, seed):
        """LiteRT-LM's decode steps as ``_Chunk``s of the token each one decoded.

        The engine streams text, one step at a time; a step's text is looked up among our
        tokenizer's pieces, so results carry token ids and the text reads as our loop's (a
        SentencePiece engine drops the leading space of the first piece). A step that is not
        one piece (bytes of a character split over tokens) keeps the engine's text and our
        tokenizer's reading of it. The engine's first SentencePiece step is ambiguous when both
        ``X`` and ``▁X`` are pieces: it is read as ``▁X``, the piece that follows a word.
        """
        if self._piece_ids is None:
            self._piece_ids = {}
            for i in range(self.tokenizer.vocab_size):
                piece = self.tokenizer.decode_bytes([i])
                if piece:
                    self._piece_ids.setdefault(piece, i)
        count = 0
        pieces = self._engine.pieces(prompt, limit, request.sampler, request.settings, seed)
        try:
            for text in pieces:
                count += 1
                data = text.encode("utf-8")
                token = self._piece_ids.get(data)
                if count == 1 and self.metadata["tokenizer"]["type"] == "sentencepiece":  # "▁I" reached us as "I"; "I" and "▁I" may both exist
                    token = self._piece_ids.get(b" " + data, token)
                chunk = (_Chunk(self.tokenizer.decode_bytes([token]).decode("utf-8"), [token]) if token is not None
                         else _Chunk(text, self.tokenizer.encode(text) if text else []))
                yield chunk, "length" if count == limit else None
                if count == limit:
                    return
            yield None, "stop"
        finally:
            pieces.close()

    def _beam_tokens(self, ids, limit, request):
        from llm_tflite.runtime.search import beam_search

        sequence = self.sequence()
        logits = sequence.feed(ids)[-1]
        tokens = beam_search(sequence, logits, max_new_tokens=limit,
                             num_beams=request.settings.get("num_beams", sampling.NUM_BEAMS),
                             temperature=request.settings.get("temperature", sampling.TEMPERATURE),
                             length_penalty=request.settings.get("length_penalty", sampling.LENGTH_PENALTY),
                             stop_ids=request.stop_token_ids)
        reason = "length" if len(tokens) == limit else "stop"
        for i, token in enumerate(tokens):
            yield token, reason if i == len(tokens) - 1 else None
        if not tokens:
            yield None, "stop"

    def _contrastive_tokens(self, ids, limit, request):
        from llm_tflite.runtime.search import contrastive_search

        sequence = self.sequence()
        logits, hidden = sequence.feed_with_hidden(ids)
        tokens = contrastive_search(sequence, logits[-1], hidden, max_new_tokens=limit,
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
            yield token, "length" if count == limit else None

    def _generate_mode_tokens(self, prompt: str, ids: list[int], limit: int, stops, explicit: bool):
        """The graph's continuation as tokens; the prompt (as the graph sees it) is never returned."""
        output = self._engine.generate(prompt)
        echoed = self.decode(ids)  # the prompt as the in-graph tokenizer round-trips it
        if output.startswith(echoed):
            continuation = output[len(echoed):]
        elif output.startswith(prompt):
            continuation = output[len(prompt):]
        else:
            raise RuntimeFailure(
                "the generate-mode graph's output does not start with the prompt as its tokenizer reads it, so the "
                "continuation cannot be told apart from the prompt; use a prefill_decode file for this text"
            )
        tokens = self.tokenizer.encode(continuation)  # as our tokenizer reads the text: for counting and cutting
        ended = len(ids) + len(tokens) < int(self.metadata["max_length"])  # the graph stopped at its end token
        cut = next((i for i, t in enumerate(tokens) if t in stops), None)
        if cut is not None and cut < limit:
            yield _Chunk(self.decode(tokens[:cut]), tokens[:cut]), "stop"
        elif len(tokens) > limit and explicit:  # re-read text can hold more tokens than were generated
            yield _Chunk(self.decode(tokens[:limit]), tokens[:limit]), "length"
        else:  # the graph's own text, untouched
            yield _Chunk(continuation, tokens), "stop" if ended else "length"

    def stream(self, prompt, max_new_tokens: int | None = None, sampler: str | None = None, *, seed: int | None = None,
               stop=None, stop_token_ids=None, context_overflow: str = "error", filter=None,
               **settings) -> TextStream:
        """The continuation of ``prompt`` piece by piece, as it is generated (whole UTF-8 characters).

        Arguments as for ``complete``; the returned ``TextStream`` holds the ``GenerationResult``
        in ``.result`` once exhausted. A filtered word is never shown: the stream ends before it
        (``finish_reason == "filtered"``); a stop string is never shown, even split over tokens.
        """
        text = _prompt_text(prompt)
        request = self._request(max_new_tokens, sampler, seed, stop, stop_token_ids, context_overflow, filter,
                                settings)
        holder: list = []
        return TextStream(self._generate_pieces(self._prepare(text, request), request, seed, holder), holder)

    def complete(self, prompt, max_new_tokens: int | None = None, sampler: str | None = None, *, seed: int | None = None,
                 stop=None, stop_token_ids=None, context_overflow: str = "error", filter=None,
                 **settings) -> GenerationResult:
        """Continue ``prompt``; return text, token ids, ``finish_reason`` and token counts.

        Args:
            prompt: the text to continue (str, or UTF-8 bytes).
            max_new_tokens: most new tokens (default: 64, or what the context still holds).
            sampler: ``None`` (the file's: ``greedy``, or a generate-mode file's export setting),
                ``greedy``, ``random``, ``top_k``, ``top_p`` (per-token chain, see
                ``llm_tflite.runtime.sampling``), ``beam``, ``contrastive``, or a plugin's sampler name.
            seed: seed of random sampling; the same seed gives the same text in any process.
            stop: a string or list of strings; the text ends before the first one (not included).
            stop_token_ids: tokens that end generation (default: the model's end token).
            context_overflow: ``error`` (``ContextLengthError`` when prompt + new tokens exceed the
                context) or ``truncate`` (keep the most recent prompt tokens).
            filter: ``None`` (off), ``True`` (the profanity list), a word list, a registered filter's
                name, or an object with ``find(text)``. A prompt with a listed word is rejected
                without a model call; output with one is regenerated with a new seed, up to
                ``FILTER_TRIES`` generations in all, then ``finish_reason == "filtered"``.
            **settings: ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``repetition_penalty``,
                ``frequency_penalty``, ``presence_penalty``; ``num_beams`` and ``length_penalty``
                (beam); ``top_k`` and ``penalty_alpha`` (contrastive). ``None`` means the default.

        Example:
            >>> runner.complete("ROMEO:", 16, "top_k", top_p=0.9, seed=1, stop=["\n\n"]).finish_reason  # doctest: +SKIP
            'stop'
        """
        text = _prompt_text(prompt)
        request = self._request(max_new_tokens, sampler, seed, stop, stop_token_ids, context_overflow, filter,
                                settings)
        return self._complete(text, request)

    def _complete(self, text: str, request: _Request) -> GenerationResult:
        prepared = self._prepare(text, request)
        deterministic = (request.sampler in ("greedy", "beam", "contrastive") or self.export_mode == "generate"
                         or getattr(request.sampler, "deterministic", False))
        tries = FILTER_TRIES if request.filter is not None and not deterministic else 1
        result = None
        for attempt in range(tries):
            seed = None if request.seed is None else request.seed + attempt
            if request.seed is None and attempt:
                seed = int(np.random.default_rng().integers(2**62))
            holder: list = []
            for _ in self._generate_pieces(prepared, request, seed, holder):
                pass
            result = holder[0]
            result.attempts = attempt + 1
            if result.finish_reason != "filtered" or not result.token_ids:  # done, or the prompt was rejected
                break
        return result

    def generate(self, prompt, max_new_tokens: int | None = None, sampler: str | None = None, **kwargs) -> str:
        """The continuation of ``prompt`` as a string (``complete(...).text``); arguments as for ``complete``."""
        return self.complete(prompt, max_new_tokens, sampler, **kwargs).text

    def autocomplete(self, text, window_words: int = 20, max_new_tokens: int | None = 32, sampler="top_k", *,
                     seed: int | None = None, filter=True, context_overflow: str = "truncate", stop=None,
                     **settings) -> AutocompleteResult:
        """The seeds' autocomplete app as one call: a suggestion to show after ``text``.

        Keeps the last ``window_words`` words of ``text`` (``window_text``), rejects it without
        a model call if it holds a listed word (``reason="bad_language"``), generates, and
        retries with new seeds when the suggestion holds one; after ``FILTER_TRIES`` filtered
        tries, or when nothing new comes, ``reason="no_suggestion"``.

        Args:
            text: what the user has typed.
            window_words: words of context sent to the model (the app's slider: 5-50, default 20).
            max_new_tokens, sampler, seed, stop, **settings: as for ``complete`` (default ``top_k``,
                KerasHub's tutorial default, with our ``top_k=50``).
            filter: as for ``complete``; on (the profanity list) by default.
            context_overflow: ``truncate`` (default: keep the most recent tokens) or ``error``.

        Example:
            >>> r = runner.autocomplete("ROMEO: But soft, what light", window_words=20, seed=1)  # doctest: +SKIP
            >>> r.suggestion, r.reason  # doctest: +SKIP
            (' through yonder window', None)
        """
        from llm_tflite.runtime.autocomplete import window_text

        if not _is_int(window_words) or window_words < 1:
            raise InvalidArgumentError(f"window_words must be a positive integer, got {window_words!r}")
        window = window_text(_prompt_text(text), window_words)
        request = self._request(max_new_tokens, sampler, seed, stop, None, context_overflow, filter, settings)
        try:
            result = self._complete(window, request)
        except ContextLengthError:
            return AutocompleteResult(None, "context", [], None, window, 0)
        if result.finish_reason == "filtered":
            reason = "bad_language" if not result.token_ids else "no_suggestion"
            return AutocompleteResult(None, reason, [], "filtered", result.prompt,
                                      result.attempts if result.token_ids else 0, result.filtered)
        if not result.text.strip():
            return AutocompleteResult(None, "no_suggestion", [], result.finish_reason, result.prompt, result.attempts)
        return AutocompleteResult(result.text, None, result.text.split(), result.finish_reason, result.prompt,
                                  result.attempts)

    def _require_prefill_decode(self, what):
        if self.backend == "litert-lm":
            raise InvalidArgumentError(f"{what} runs in our own loop; this runner uses backend='litert-lm', "
                                       "which offers generate, complete, stream and autocomplete")
        if self.export_mode != "prefill_decode":
            raise ModelFileError(f"{what} needs a prefill_decode file; {self.path!r} is a {self.export_mode} file")
