"""``InterpreterRunner(path, backend="litert-lm")``: generation in LiteRT-LM's engine (``litert-lm-api``).

The runner keeps its own duties (prompt checks, context rule, stop strings, filters,
results); the engine tokenizes the prompt, prefills, samples and decodes. It runs
``.litertlm`` bundles (``llm-tflite bundle``). Its samplers are top-k/top-p with a
temperature and a seed (the CPU engine has no other); the same seed gives the engine's
own sequence, not the one of our loop.
"""

from __future__ import annotations

import threading
from typing import Iterator

from llm_tflite.errors import InvalidArgumentError, ModelFileError, RuntimeFailure, UnsupportedRuntimeError
from llm_tflite.litert.litertlm import bundle_stop_ids
from llm_tflite.runtime import sampling
from llm_tflite.runtime.engine import Chunk, Engine, ModelFile, Request

#: Samplers the engine can run, and the settings each takes.
SAMPLERS = {"greedy": set(), "random": {"temperature"}, "top_k": {"top_k", "temperature"},
            "top_p": {"top_p", "top_k", "temperature"}}


def import_litert_lm(what: str = "backend='litert-lm'"):
    """``litert_lm``, its native logging down to errors unless ``-v``; ``UnsupportedRuntimeError`` if absent."""
    from llm_tflite.console import verbose

    try:
        import litert_lm
    except ImportError as e:
        raise UnsupportedRuntimeError(f"{what} needs LiteRT-LM's Python API: pip install "
                                      "'llm-tflite[litertlm]' (or pip install litert-lm-api)") from e
    litert_lm.set_min_log_severity(litert_lm.LogSeverity.INFO if verbose() else litert_lm.LogSeverity.ERROR)
    return litert_lm


class LiteRTLMEngine(Engine):
    """One ``litert_lm.Engine`` on a bundle; generations take turns (one session at a time).

    Args:
        path: a ``.litertlm`` bundle.
        num_threads: CPU threads (default: the engine's).
        vocab_size: the model's vocabulary (the ``random`` sampler's k).
        start_id, stop_id: the start token the engine must add (None: none) and its stop token.
        tokenizer, context_length: the bundle's tokenizer (ours) and context, from its record.
    """

    kind = "litert-lm"

    @classmethod
    def check_container(cls, path: str, container, is_bundle: bool) -> None:
        from llm_tflite.litert.litertlm import check_engine_sections

        if not is_bundle:
            raise ModelFileError(f"backend='litert-lm' runs .litertlm bundles; {path!r} is not one: "
                                 f"llm-tflite bundle {path} -o MODEL.litertlm")
        check_engine_sections(container, repr(path))

    @classmethod
    def open(cls, model: ModelFile, *, num_threads: int, weight_cache: str) -> "LiteRTLMEngine":
        record = model.metadata
        start = record.get("bos_id") if record.get("add_bos", False) else None
        return cls(model.path, num_threads, model.tokenizer.vocab_size, start, record.get("eos_id"),
                   tokenizer=model.tokenizer, context_length=int(record["context_length"]),
                   sentencepiece=record["tokenizer"]["type"] == "sentencepiece", stop_ids=bundle_stop_ids(record))

    def __init__(self, path: str, num_threads: int | None, vocab_size: int, start_id: int | None = None,
                 stop_id: int | None = None, *, tokenizer=None, context_length: int | None = None,
                 sentencepiece: bool = False, stop_ids: list[int] | None = None):
        """``stop_ids``: every stop token the bundle lists (default: ``stop_id``; with a chat template, its
        end-of-turn tokens too: ``llm_tflite.litert.litertlm.bundle_stop_ids``)."""
        from llm_tflite.console import quiet_native

        litert_lm = import_litert_lm()
        self._litert_lm, self.vocab_size = litert_lm, vocab_size
        self.tokenizer, self.token_budget = tokenizer, context_length
        stop_ids = list(stop_ids) if stop_ids is not None else ([stop_id] if stop_id is not None else [])
        self._stops = set(stop_ids)
        #: plain completions ask for the end token alone: the engine stops at every bundle stop token regardless
        self._default_stops = {stop_id} - {None}
        self._piece_ids = None  # a piece's bytes -> its id
        #: LiteRT-LM's SentencePiece detokenizer drops the first piece's leading space (see ``tokens``)
        self.sentencepiece = sentencepiece
        self._lock = threading.Lock()
        try:
            with quiet_native():
                self._engine = litert_lm.Engine(path, backend=litert_lm.Backend.CPU(thread_count=num_threads))
        except RuntimeError as e:
            raise ModelFileError(f"LiteRT-LM's engine cannot load {path!r} ({e}); bundle the model again with "
                                 "`llm-tflite bundle`") from e
        # The bundle's LlmMetadata must say what our record says, or the engine would answer otherwise.
        stops = [ids for ids in self._engine.eos_token_ids]
        if self._engine.bos_token_id != start_id or stops != [[i] for i in stop_ids]:
            self._engine.close()
            raise ModelFileError(f"{path!r}: its LiteRT-LM metadata (start {self._engine.bos_token_id}, stop {stops}) "
                                 f"disagrees with the model's record (start {start_id}, stop {stop_ids}); the bundle "
                                 "is damaged: bundle the model again with `llm-tflite bundle`")

    def check(self, sampler, settings: dict, seed, stop_token_ids: set) -> None:
        """``InvalidArgumentError`` now for what the engine cannot do."""
        sampling.check_known(settings)
        if not isinstance(sampler, str) or sampler not in SAMPLERS:
            raise InvalidArgumentError(f"backend='litert-lm' samples with {', '.join(SAMPLERS)}; sampler={sampler!r} "
                                       "runs in our loop: use backend='interpreter'")
        extra = set(settings) - SAMPLERS[sampler]
        if extra:
            raise InvalidArgumentError(f"backend='litert-lm' with sampler={sampler!r} takes {sorted(SAMPLERS[sampler])}, "
                                       f"not {sorted(extra)}; use backend='interpreter' for them")
        if stop_token_ids not in (self._stops, self._default_stops):
            raise InvalidArgumentError("backend='litert-lm' stops at the bundle's stop tokens; stop_token_ids "
                                       "needs backend='interpreter'")
        sampling.make_sampler(sampler, seed=seed, **settings)  # the same value checks as our loop

    def unsupported(self, what: str) -> Exception:
        return InvalidArgumentError(f"{what} runs in our own loop; this runner uses backend='litert-lm', "
                                    "which offers generate, complete, stream and autocomplete (chat with the "
                                    "bundle in LiteRT-LM's engine goes through its Conversation API, docs/chat.md)")

    def tokens(self, request: Request, ids: list[int], limit: int, prompt: str | None, seed):
        """LiteRT-LM's decode steps as ``Chunk``s of the token each one decoded.

        The engine streams text, one step at a time; a step's text is looked up among our
        tokenizer's pieces, so results carry token ids and the text reads as our loop's (a
        SentencePiece engine drops the leading space of the first piece). A step that is not
        one piece (bytes of a character split over tokens) keeps the engine's text and our
        tokenizer's reading of it. The engine's first SentencePiece step is ambiguous when both
        ``X`` and ``▁X`` are pieces: it is read as ``▁X``, the piece that follows a word.
        """
        tokenizer = self.tokenizer
        if self._piece_ids is None:
            self._piece_ids = {}
            for i in range(tokenizer.vocab_size):
                piece = tokenizer.decode_bytes([i])
                if piece:
                    self._piece_ids.setdefault(piece, i)
        count = 0
        pieces = self.pieces(prompt, limit, request.sampler, request.settings, seed)
        try:
            for text in pieces:
                count += 1
                data = text.encode("utf-8")
                token = self._piece_ids.get(data)
                if count == 1 and self.sentencepiece:  # "▁I" reached us as "I"; "I" and "▁I" may both exist
                    token = self._piece_ids.get(b" " + data, token)
                chunk = (Chunk(tokenizer.decode_bytes([token]).decode("utf-8"), [token]) if token is not None
                         else Chunk(text, tokenizer.encode(text) if text else []))
                yield chunk, "length" if count == limit else None
                if count == limit:
                    return
            yield None, "stop"
        finally:
            pieces.close()

    def sampler_config(self, sampler: str, settings: dict, seed: int | None):
        temperature = float(settings.get("temperature", sampling.TEMPERATURE))
        if sampler == "greedy":
            top_k, top_p, temperature = 1, 1.0, 1.0
        elif sampler == "random":
            top_k, top_p = self.vocab_size, 1.0
        elif sampler == "top_k":
            top_k, top_p = int(settings.get("top_k", sampling.TOP_K)), 1.0
        else:
            top_k, top_p = int(settings.get("top_k", self.vocab_size)), float(settings.get("top_p", sampling.TOP_P))
        return self._litert_lm.SamplerConfig(top_k=top_k, top_p=top_p, temperature=temperature,
                                             seed=0 if seed is None else int(seed) % (1 << 31))

    def pieces(self, prompt: str, max_new_tokens: int, sampler: str, settings: dict, seed) -> Iterator[str]:
        """Text of each decode step; the generator ends at a stop token or after ``max_new_tokens``.

        The engine adds the bundle's start token itself. Closing the generator cancels the
        generation and frees the session.
        """
        config = self.sampler_config(sampler, settings, seed)
        with self._lock:
            session = self._engine.create_session(apply_prompt_template=False, sampler_config=config,
                                                  max_output_tokens=max_new_tokens)
            try:
                session.run_prefill([prompt])
                yield from (response.texts[0] if response.texts else "" for response in session.run_decode_async())
            except RuntimeError as e:
                raise RuntimeFailure(f"LiteRT-LM's engine failed: {e}") from e
            finally:
                session.cancel_process()
                session.close()

    def close(self) -> None:
        self._engine.close()
