"""Run an llm-tflite ``.tflite`` file: tokenize, prefill, decode, sample, detokenize.

For ``prefill_decode`` files this module imports neither TensorFlow nor Keras: it needs
``ai_edge_litert`` (or, failing that, ``tf.lite``), numpy and the tokenizer libraries (``tokenizers``,
``sentencepiece``).
Every option is documented, with its default and an example, in ``docs/runner.md``.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from llm_tflite.errors import ContextLengthError, DataError, InvalidArgumentError
from llm_tflite.litert.flatbuffer import check_tensor_sizes, map_model_file
from llm_tflite.litert.litertlm import bundled_tokenizer, is_litertlm, model_bytes
from llm_tflite.litert.metadata import read_verified_metadata
from llm_tflite.runtime import sampling
from llm_tflite.runtime.engine import BACKENDS, Chunk, ModelFile, Request, check_container, open_engine
from llm_tflite.runtime.results import (AutocompleteEvent, AutocompleteResult, AutocompleteStream, GenerationResult,
                                        TextPipeline, TextStream)
from llm_tflite.tokenizers import tokenizer_from_spec

#: New tokens when ``max_new_tokens`` is not given (fewer if the context holds fewer).
DEFAULT_MAX_NEW_TOKENS = 64
#: Generations ``autocomplete`` makes before it gives up on filtered output (the app's "three tries").
FILTER_TRIES = 3
CONTEXT_OVERFLOW = ("error", "truncate")


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
        batching: generations running at once from several threads decode together, one call
            for all of them (``llm_tflite.runtime.batching``; a file converted with ``batch_sizes``):
            what ``llm-tflite serve --parallel`` uses. Outputs are the same as without it. ``"auto"``:
            when the file has the signatures for it.
        lanes: with batching, schedulers that decode their own generations at the same time, each
            on a compiled model of the file with ``num_threads / lanes`` threads (``BatchingEngine``);
            a generation joins the first lane with fewer than 4 running, and a lane alone computes
            with all the threads (what they gain and cost: docs/serve.md, "Two lanes"). 1 (default):
            one; ``"auto"`` (``serve``'s default): 2 where they pay.

    Example:
        >>> runner = InterpreterRunner("model.tflite")  # doctest: +SKIP
        >>> runner.generate("ROMEO:", max_new_tokens=32)  # doctest: +SKIP
        '\\nWhat, shall I ...'
    """

    def __init__(self, path, *, num_threads: int | None = None, backend: str = "interpreter",
                 weight_cache: str = "auto", batching: bool | str = False, lanes: int | str = 1):
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
        if lanes != "auto" and not (_is_int(lanes) and lanes >= 1):
            raise InvalidArgumentError(f"lanes must be 'auto' or a positive integer, got {lanes!r}")
        lanes = lanes if lanes == "auto" else int(lanes)
        if lanes not in (1, "auto") and batching is False:
            raise InvalidArgumentError(f"lanes={lanes!r} needs batching (batching=True; serve: --parallel 2 or more)")
        container = map_model_file(self.path)
        #: True for a ``.litertlm`` bundle (``llm-tflite bundle``): our .tflite is one of its sections.
        self.is_bundle = is_litertlm(container)
        check_container(backend, self.path, container, self.is_bundle)
        data = model_bytes(container, repr(self.path))
        # The file is untrusted: checksum, record schema and tensor shapes are checked before
        # the native runtime sees a byte of it.
        record = read_verified_metadata(data, repr(self.path))
        # a bundle's record may point at its tokenizer section instead of carrying a copy: the runner's view
        # has it whole; the engine gets the record as stored (its weight cache compares it)
        self.metadata = {**record, "tokenizer": bundled_tokenizer(container, record["tokenizer"], repr(self.path))}
        del container
        check_tensor_sizes(data, repr(self.path), limit=max(1 << 30, 2 * len(data)))
        self.export_mode = self.metadata["export_mode"]
        self.tokenizer = tokenizer_from_spec(self.metadata["tokenizer"])
        self.context_length = int(self.metadata["context_length"])
        self.prefill_lengths = sorted(int(n) for n in self.metadata.get("prefill_lengths", []))
        self.bos_id = self.metadata.get("bos_id")
        self.eos_id = self.metadata.get("eos_id")
        self.add_bos = bool(self.metadata.get("add_bos", False))
        model = ModelFile(self.path, data, self.is_bundle, record, self.tokenizer)
        del data  # the engine drops the model's bytes once it has them elsewhere (a bundle's section copy)
        #: What runs the file (``llm_tflite.runtime.engine``): the compiled model and its signatures for
        #: a prefill_decode file, the graph for a generate-mode file, or LiteRT-LM's engine.
        self.engine = open_engine(backend, model, num_threads=num_threads, weight_cache=self.weight_cache)
        if batching not in (True, False, "auto"):
            raise InvalidArgumentError(f"batching must be True, False or 'auto', got {batching!r}")
        if batching is True or (batching == "auto" and getattr(self.engine, "batch_sizes", None)):
            from llm_tflite.runtime.batching import BatchingEngine

            self.engine = BatchingEngine(self.engine, lanes)
        elif lanes not in (1, "auto"):
            raise InvalidArgumentError(f"lanes={lanes!r} needs batching, and {self.path!r} has no decode_batch "
                                       "signatures; convert it again with --batch-sizes (e.g. 2,4,8)")
        self.vocab_size = self.engine.vocab_size
        self._chat_format = None

    # -- token level -------------------------------------------------------------
    def encode(self, prompt) -> list[int]:
        """Token ids the model sees for ``prompt`` (with the start token if the family adds one)."""
        ids = self.tokenizer.encode(_prompt_text(prompt))
        return ([self.bos_id] if self.add_bos and self.bos_id is not None else []) + ids

    def decode(self, token_ids) -> str:
        """Text of ``token_ids`` (special tokens decode to nothing)."""
        return self.tokenizer.decode(token_ids)

    def sequence(self, observer=None):
        """A fresh ``Sequence`` (its own KV caches and position) on this runner's engine.

        ``observer(signature_name, inputs)``, if given, sees every signature call's inputs.
        """
        return self.engine.sequence(observer)

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

    def generate_ids(self, prompt_ids, max_new_tokens=DEFAULT_MAX_NEW_TOKENS, sampler="greedy", *,
                     stop_token_ids=None, **sampler_args) -> Iterator[int]:
        """Yield new token ids after ``prompt_ids``, with any sampler or search ``complete`` takes.

        Stops at ``stop_token_ids`` (default: the model's end token; ``[]``: never), after
        ``max_new_tokens``, or when the context is full. ``sampler_args``: ``seed`` and the
        sampler's settings, as for ``complete``.
        """
        self.engine.require_sequences("generate_ids")
        prompt_ids = self._token_ids(prompt_ids)
        _check_max_new_tokens(max_new_tokens)
        if not prompt_ids:
            raise DataError("the prompt is empty and the model adds no start token; pass some text")
        if len(prompt_ids) >= self.context_length:
            raise ContextLengthError(f"the prompt is {len(prompt_ids)} tokens but the model's context holds "
                                     f"{self.context_length}; shorten it or convert with a larger --context-length")
        seed = sampler_args.pop("seed", None)
        request = self._request(max_new_tokens, sampler, seed, None, stop_token_ids, "error", None, sampler_args)
        steps = self.engine.tokens(request, prompt_ids, max_new_tokens, None, seed)
        return (token for token, _ in steps if token is not None)

    # -- text level --------------------------------------------------------------
    def _request(self, max_new_tokens, sampler, seed, stop, stop_token_ids, context_overflow, text_filter,
                 settings, json_schema=None, default_stops=None) -> Request:
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
        if stop_token_ids is not None:
            ids = set(self._token_ids(stop_token_ids))
        else:
            ids = set(default_stops) if default_stops is not None else {self.eos_id} - {None}
        given = {k: v for k, v in settings.items() if v is not None}
        self.engine.check(sampler, given, seed, ids)  # what this engine cannot run fails now, not mid-stream
        request = Request(max_new_tokens, sampler, given, seed, stop, ids, context_overflow, resolve_filter(text_filter))
        if json_schema is not None:
            from llm_tflite.runtime.constraints import JSONConstraint

            self.engine.require_sequences("json_schema")
            if sampler in ("beam", "contrastive"):
                raise InvalidArgumentError(f"json_schema needs a per-token sampler, not {sampler} search")
            request.constraint = JSONConstraint(self, json_schema, ids)
        return request

    def _fit_prompt(self, ids: list[int], request: Request, budget: int) -> tuple[list[int], int, bool]:
        """``(prompt ids, new-token limit, truncated)`` within ``budget`` tokens (the context)."""
        bos = ids[:1] if self.add_bos and ids and ids[0] == self.bos_id else []
        body = ids[len(bos):]
        wanted = request.max_new_tokens
        room = budget - len(ids)
        if wanted is None and room >= 1:
            return ids, room if self.engine.fills_context else min(DEFAULT_MAX_NEW_TOKENS, room), False
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

    def _prepare(self, text: str, request: Request) -> tuple[list[int], int, str, str]:
        """``(prompt ids, new-token limit, prompt text, reason at the limit)`` after the context rule;
        raises before any work."""
        ids = self.encode(text)
        if not ids:
            raise DataError("the prompt is empty and the model adds no start token; pass some text")
        ids, limit, truncated = self._fit_prompt(ids, request, self.engine.token_budget)
        # Reaching the limit ends with "length" when the caller set it, "context" when the context did.
        at_limit = "length" if request.max_new_tokens is not None and limit == request.max_new_tokens else (
            "length" if request.max_new_tokens is None and limit == DEFAULT_MAX_NEW_TOKENS else "context")
        return ids, limit, self.decode(ids) if truncated else text, at_limit

    def _generate_pieces(self, prepared, request: Request, seed, holder: list) -> Iterator[str]:
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
        steps = self.engine.tokens(request, ids, limit, prompt, seed)
        try:
            for token, end in steps:
                if isinstance(token, Chunk):  # text the engine decoded itself
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
        finally:
            steps.close()  # an engine's session (LiteRT-LM) ends with its steps
        tail = pipeline.finish()
        if tail:
            yield tail
        if pipeline.filtered:
            reason = "filtered"
        elif pipeline.stopped:
            reason = "stop"
        text_out = "" if pipeline.filtered else pipeline.shown
        holder.append(GenerationResult(text_out, tokens, reason, len(ids), len(tokens), prompt, pipeline.filtered))

    def _attempts(self, prepared, request: Request) -> Iterator:
        """The retry rule, one home for ``complete`` and ``autocomplete`` (and the server's stream): a
        generation whose output the filter rejects is made again with a new seed (``seed + attempt``,
        or a fresh one), up to ``FILTER_TRIES`` in all; a deterministic sampler gets one try, since a
        retry would give the same text. Yields ``("piece", text)`` events, and ``("retry", n)`` when
        the ``n``-th try was filtered and dropped; returns the last ``GenerationResult``."""
        deterministic = self.engine.deterministic(request.sampler)
        tries = FILTER_TRIES if request.filter is not None and not deterministic else 1
        result = None
        for attempt in range(tries):
            seed = None if request.seed is None else request.seed + attempt
            if request.seed is None and attempt:
                seed = int(np.random.default_rng().integers(2**62))
            holder: list = []
            for piece in self._generate_pieces(prepared, request, seed, holder):
                yield AutocompleteEvent("piece", piece)
            result = holder[0]
            result.attempts = attempt + 1
            if result.finish_reason != "filtered" or not result.token_ids:  # done, or the prompt was rejected
                break
            yield AutocompleteEvent("retry", attempt + 1)  # this try is dropped: clear what it showed
        return result

    def stream(self, prompt, max_new_tokens: int | None = None, sampler: str | None = None, *, seed: int | None = None,
               stop=None, stop_token_ids=None, context_overflow: str = "error", filter=None, json_schema=None,
               **settings) -> TextStream:
        """The continuation of ``prompt`` piece by piece, as it is generated (whole UTF-8 characters).

        Arguments as for ``complete``; the returned ``TextStream`` holds the ``GenerationResult``
        in ``.result`` once exhausted. A filtered word is never shown: the stream ends before it
        (``finish_reason == "filtered"``); a stop string is never shown, even split over tokens.
        """
        text = _prompt_text(prompt)
        request = self._request(max_new_tokens, sampler, seed, stop, stop_token_ids, context_overflow, filter,
                                settings, json_schema)
        holder: list = []
        return TextStream(self._generate_pieces(self._prepare(text, request), request, seed, holder), holder)

    def complete(self, prompt, max_new_tokens: int | None = None, sampler: str | None = None, *, seed: int | None = None,
                 stop=None, stop_token_ids=None, context_overflow: str = "error", filter=None, json_schema=None,
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
            json_schema: a JSON schema (dict or JSON text): the output is JSON that validates against
                it, unless ``max_new_tokens`` ends it first (``finish_reason == "length"``);
                ``{"type": "object"}`` for any JSON object (``llm_tflite.runtime.constraints``).
            **settings: ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``repetition_penalty``,
                ``frequency_penalty``, ``presence_penalty``; ``num_beams`` and ``length_penalty``
                (beam); ``top_k`` and ``penalty_alpha`` (contrastive). ``None`` means the default.

        Example:
            >>> runner.complete("ROMEO:", 16, "top_k", top_p=0.9, seed=1, stop=["\n\n"]).finish_reason  # doctest: +SKIP
            'stop'
        """
        text = _prompt_text(prompt)
        request = self._request(max_new_tokens, sampler, seed, stop, stop_token_ids, context_overflow, filter,
                                settings, json_schema)
        return self._complete(text, request)

    def _complete(self, text: str, request: Request) -> GenerationResult:
        events = self._attempts(self._prepare(text, request), request)
        while True:
            try:
                next(events)
            except StopIteration as done:
                return done.value

    def generate(self, prompt, max_new_tokens: int | None = None, sampler: str | None = None, **kwargs) -> str:
        """The continuation of ``prompt`` as a string (``complete(...).text``); arguments as for ``complete``."""
        return self.complete(prompt, max_new_tokens, sampler, **kwargs).text

    # -- chat -------------------------------------------------------------------
    @property
    def chat_format(self):
        """The file's chat format (``llm_tflite.runtime.chat.ChatFormat``: template and end-of-turn tokens);
        ``InvalidArgumentError`` for a file without a chat template."""
        if self._chat_format is None:
            from llm_tflite.runtime.chat import ChatFormat

            chat = self.metadata.get("chat")
            if chat is None:
                raise InvalidArgumentError(
                    f"{self.path!r} carries no chat template; convert an instruction-tuned model (Gemma 3, Qwen 3, "
                    "Llama 3.x: their template comes along), or give one: llm-tflite convert --chat-template FILE")
            self._chat_format = ChatFormat(chat, self.tokenizer)
        return self._chat_format

    def chat_prompt(self, messages, *, add_generation_prompt: bool = True, **template_variables) -> str:
        """The prompt text the file's chat template makes of ``messages`` (OpenAI-style dicts)."""
        return self.chat_format.render(messages, add_generation_prompt, **template_variables)

    def chat(self, messages, max_new_tokens: int | None = None, sampler: str | None = None, **options) -> GenerationResult:
        """The assistant's reply to ``messages`` (``[{"role": "system" | "user" | "assistant", "content": str}]``).

        The prompt is the file's chat template applied to the messages (``chat_prompt``); the reply
        ends at the model's end-of-turn tokens. Options as ``chat_stream``. For a conversation that
        keeps its cache between turns, use ``conversation``.

        Example:
            >>> runner.chat([{"role": "user", "content": "Hi!"}], 32).text  # doctest: +SKIP
        """
        stream = self.chat_stream(messages, max_new_tokens, sampler, **options)
        for _ in stream:
            pass
        return stream.result

    def chat_stream(self, messages, max_new_tokens: int | None = None, sampler: str | None = None, *,
                    seed: int | None = None, stop=None, stop_token_ids=None, filter=None, json_schema=None,
                    cache=None, template_variables: dict | None = None, **settings) -> TextStream:
        """``chat`` piece by piece (a ``TextStream``; ``.result`` once exhausted).

        Args:
            messages: OpenAI-style message dicts; system messages first. When they outgrow the
                context (with room for ``max_new_tokens``, default 64), the oldest turns are left out,
                system messages kept (``llm_tflite.runtime.chat.fit_messages``).
            max_new_tokens: most reply tokens (default: until an end-of-turn token or the context is full).
            sampler, seed, stop, filter, json_schema, **settings: as for ``complete``.
            stop_token_ids: tokens that end the reply (default: the file's end-of-turn and end tokens).
            cache: a ``llm_tflite.runtime.chat.PrefixCache``: the reply continues the cached sequence
                sharing the longest prefix with the prompt, and leaves its own there.
            template_variables: more variables for the template (``enable_thinking``, ``date_string``, ...).

        ``result.cached_tokens`` counts the prompt tokens that came from ``cache`` (not prefilled).
        """
        from llm_tflite.runtime.chat import fit_messages
        from llm_tflite.tokenizers.chat_template import check_messages

        self.engine.require_sequences("chat")  # a turn continues a sequence (its KV caches)
        fmt = self.chat_format
        request = self._request(max_new_tokens, sampler, seed, stop, stop_token_ids, "error", filter, settings,
                                json_schema, default_stops=fmt.stop_token_ids | ({self.eos_id} - {None}))
        budget = self.engine.token_budget
        reserve = min(max_new_tokens or DEFAULT_MAX_NEW_TOKENS, budget - 1)
        rendered: dict = {}

        def fits(candidate) -> bool:
            text = fmt.render(candidate, True, **(template_variables or {}))
            rendered.update(text=text, ids=fmt.encode(text))
            return 0 < len(rendered["ids"]) and len(rendered["ids"]) + reserve <= budget

        fit_messages(check_messages(messages), fits)
        ids, text = rendered["ids"], rendered["text"]
        limit = max_new_tokens or budget - len(ids)
        at_limit = "length" if max_new_tokens is not None else "context"
        sequence = (cache.take(ids) if cache is not None else None) or self.sequence()
        request.sequence = sequence
        cached = sequence.position
        holder: list = []

        def pieces():
            yield from self._generate_pieces((ids, limit, text, at_limit), request, seed, holder)
            result = holder[0]
            result.cached_tokens = cached
            if cache is not None:
                cache.put(sequence, (ids + list(result.token_ids))[: sequence.position])

        return TextStream(pieces(), holder)

    def conversation(self, messages=(), *, system: str | None = None):
        """A ``llm_tflite.runtime.chat.Conversation``: send messages one at a time; each turn prefills
        only its new tokens, and it can be saved and loaded again.

        Example:
            >>> chat = runner.conversation(system="You are terse.")  # doctest: +SKIP
            >>> chat.send("Hello!", max_new_tokens=32).text  # doctest: +SKIP
        """
        from llm_tflite.runtime.chat import Conversation

        return Conversation(self, messages, system=system)

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
        stream = self.autocomplete_stream(text, window_words, max_new_tokens, sampler, seed=seed, filter=filter,
                                          context_overflow=context_overflow, stop=stop, **settings)
        for _ in stream:
            pass
        return stream.result

    def autocomplete_stream(self, text, window_words: int = 20, max_new_tokens: int | None = 32, sampler="top_k", *,
                            seed: int | None = None, filter=True, context_overflow: str = "truncate", stop=None,
                            **settings) -> AutocompleteStream:
        """``autocomplete`` as it happens, for apps that show the suggestion while it is written.

        Arguments as for ``autocomplete``, checked (and the context rule applied) before this
        returns. Yields ``AutocompleteEvent``s: ``("piece", text)`` as the suggestion grows,
        ``("retry", n)`` when the ``n``-th try was filtered and dropped (clear what was shown),
        and last ``("result", AutocompleteResult)``, which is also ``.result`` once the stream is done.

        Example:
            >>> for kind, value in runner.autocomplete_stream("ROMEO: But soft", seed=1):  # doctest: +SKIP
            ...     print(kind, value)
        """
        from llm_tflite.runtime.autocomplete import window_text

        if not _is_int(window_words) or window_words < 1:
            raise InvalidArgumentError(f"window_words must be a positive integer, got {window_words!r}")
        window = window_text(_prompt_text(text), window_words)
        request = self._request(max_new_tokens, sampler, seed, stop, None, context_overflow, filter, settings)
        try:
            prepared = self._prepare(window, request)
        except ContextLengthError:
            prepared = None
        holder: list = []
        return AutocompleteStream(self._autocomplete_events(window, prepared, request, holder), holder)

    def _autocomplete_events(self, window: str, prepared, request: Request, holder: list) -> Iterator[AutocompleteEvent]:
        if prepared is None:  # the window does not fit the context
            suggestion = AutocompleteResult(None, "context", [], None, window, 0)
        else:
            suggestion = _suggestion((yield from self._attempts(prepared, request)))
        holder.append(suggestion)
        yield AutocompleteEvent("result", suggestion)


def _suggestion(result: GenerationResult) -> AutocompleteResult:
    """What the app shows for a finished generation: a suggestion, or why there is none."""
    if result.finish_reason == "filtered":
        reason = "bad_language" if not result.token_ids else "no_suggestion"
        return AutocompleteResult(None, reason, [], "filtered", result.prompt,
                                  result.attempts if result.token_ids else 0, result.filtered)
    if not result.text.strip():
        return AutocompleteResult(None, "no_suggestion", [], result.finish_reason, result.prompt, result.attempts)
    return AutocompleteResult(result.text, None, result.text.split(), result.finish_reason, result.prompt,
                              result.attempts)
