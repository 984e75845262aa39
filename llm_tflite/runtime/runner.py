"""Run an llm-tflite ``.tflite`` file: tokenize, prefill, decode, sample, detokenize.

For ``prefill_decode`` files this module imports neither TensorFlow nor Keras: it needs
``ai_edge_litert`` (or, failing that, ``tf.lite``), numpy and the pure-Python tokenizers.
"""

from __future__ import annotations

import codecs
import os
import warnings
from typing import Iterator

import numpy as np

from llm_tflite.errors import ContextLengthError, DataError, InvalidArgumentError, ModelFileError
from llm_tflite.litert.flatbuffer import check_tensor_sizes, read_model_file
from llm_tflite.litert.metadata import read_verified_metadata
from llm_tflite.runtime import sampling
from llm_tflite.runtime.sampling import Sampler
from llm_tflite.runtime.tokenizers import tokenizer_from_spec


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_max_new_tokens(max_new_tokens) -> None:
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
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
        path: the ``.tflite`` file written by ``Converter`` / ``llm-tflite convert``.
        num_threads: interpreter threads (default: the runtime's).

    Example:
        >>> runner = InterpreterRunner("model.tflite")  # doctest: +SKIP
        >>> runner.generate("ROMEO:", max_new_tokens=32)  # doctest: +SKIP
        '\\nWhat, shall I ...'
    """

    def __init__(self, path, *, num_threads: int | None = None):
        self.path = os.fspath(path)
        if num_threads is not None and not (_is_int(num_threads) and 1 <= num_threads <= 1024):
            raise InvalidArgumentError(f"num_threads must be an integer from 1 to 1024 (or None), got {num_threads!r}")
        data = read_model_file(self.path)
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
        if self.export_mode == "prefill_decode":
            from llm_tflite.runtime.prefill_decode import PrefillDecodeEngine

            self._engine = PrefillDecodeEngine(data, self.metadata, num_threads, self.path)
            self.vocab_size = self._engine.vocab_size
            self._check_token_ids()
        else:
            from llm_tflite.runtime.generate import GenerateEngine

            self._engine = GenerateEngine(data, self.metadata, num_threads, self.path)
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

    def generate_ids(self, prompt_ids, max_new_tokens=64, sampler="greedy", **sampler_args) -> Iterator[int]:
        """Yield generated token ids after ``prompt_ids`` until the end token or ``max_new_tokens``."""
        self._require_prefill_decode("generate_ids")
        prompt_ids = self._token_ids(prompt_ids)
        _check_max_new_tokens(max_new_tokens)
        if not prompt_ids:
            raise DataError("the prompt is empty and the model adds no start token; pass some text")
        if len(prompt_ids) >= self.context_length:
            raise ContextLengthError(
                f"the prompt is {len(prompt_ids)} tokens but the model's context holds {self.context_length} "
                f"(including room for at least one new token); shorten the prompt or convert with a "
                f"larger --context-length"
            )
        choose = sampler if callable(sampler) else Sampler(sampler, **sampler_args)
        return self._generate_ids(prompt_ids, max_new_tokens, choose)

    def _generate_ids(self, prompt_ids, max_new_tokens, choose) -> Iterator[int]:
        sequence = self.sequence()
        logits = sequence.feed(prompt_ids)[-1]
        for _ in range(max_new_tokens):
            token = choose(logits)
            if token == self.eos_id:
                return
            yield token
            if sequence.position >= self.context_length:
                warnings.warn(f"generation stopped at the model's context length ({self.context_length} tokens)")
                return
            logits = sequence.feed([token])[-1]

    # -- text level --------------------------------------------------------------
    def stream(self, prompt, max_new_tokens: int = 64, sampler: str = "greedy", *,
               temperature: float = sampling.TEMPERATURE, top_k: int = sampling.TOP_K, top_p: float = sampling.TOP_P,
               seed: int | None = None) -> Iterator[str]:
        """Yield the continuation of ``prompt`` piece by piece (whole UTF-8 characters only).

        Args:
            prompt: the text to continue.
            max_new_tokens: most tokens to generate; stops earlier at the end token.
            sampler: ``greedy``, ``temperature``, ``top_k`` or ``top_p``.
            temperature, top_k, top_p, seed: sampler settings (see ``Sampler``).

        For ``generate``-mode files the length and sampler were fixed at export
        (``metadata["max_length"]``, ``metadata["default_sampler"]``); the continuation
        comes as one piece and these arguments are not used.
        """
        text = _prompt_text(prompt)
        _check_max_new_tokens(max_new_tokens)
        if self.export_mode == "generate":  # loop and sampler were fixed at export
            return iter([self._engine.generate(text)])
        sampler_args = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        return self._stream_pieces(self.generate_ids(self.encode(text), max_new_tokens, sampler, **sampler_args))

    def _stream_pieces(self, tokens: Iterator[int]) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for token in tokens:
            piece = decoder.decode(self.tokenizer.decode_bytes([token]))
            if piece:
                yield piece
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def generate(self, prompt, max_new_tokens: int = 64, sampler: str = "greedy", **kwargs) -> str:
        """The continuation of ``prompt`` (without the prompt); arguments as for ``stream``."""
        return "".join(self.stream(prompt, max_new_tokens, sampler, **kwargs))

    def _require_prefill_decode(self, what):
        if self.export_mode != "prefill_decode":
            raise ModelFileError(f"{what} needs a prefill_decode file; {self.path!r} is a {self.export_mode} file")
