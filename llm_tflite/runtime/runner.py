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

from llm_tflite.litert.flatbuffer import read_model_file
from llm_tflite.litert.metadata import read_metadata_from_bytes
from llm_tflite.errors import ContextLengthError, DataError, ModelFileError
from llm_tflite.runtime import sampling
from llm_tflite.runtime.sampling import Sampler
from llm_tflite.runtime.tokenizers import tokenizer_from_spec


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
        data = read_model_file(self.path)
        self.metadata = read_metadata_from_bytes(data, repr(self.path))
        self.export_mode = self.metadata.get("export_mode")
        self.tokenizer = tokenizer_from_spec(self.metadata["tokenizer"])
        self.context_length = int(self.metadata["context_length"])
        self.prefill_lengths = sorted(int(n) for n in self.metadata.get("prefill_lengths", []))
        self.bos_id = self.metadata.get("bos_id")
        self.eos_id = self.metadata.get("eos_id")
        self.add_bos = bool(self.metadata.get("add_bos", False))
        if self.export_mode == "prefill_decode":
            from llm_tflite.runtime.prefill_decode import PrefillDecodeEngine

            self._engine = PrefillDecodeEngine(data, self.metadata, num_threads, self.path)
        elif self.export_mode == "generate":
            from llm_tflite.runtime.generate import GenerateEngine

            self._engine = GenerateEngine(data, self.metadata, num_threads, self.path)
        else:
            raise ModelFileError(f"{self.path!r} has export mode {self.export_mode!r}, unknown to this version")

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
        return self.sequence().feed(token_ids)

    def generate_ids(self, prompt_ids, max_new_tokens=64, sampler="greedy", **sampler_args) -> Iterator[int]:
        """Yield generated token ids after ``prompt_ids`` until the end token or ``max_new_tokens``."""
        self._require_prefill_decode("generate_ids")
        prompt_ids = [int(t) for t in prompt_ids]
        if not prompt_ids:
            raise DataError("the prompt is empty and the model adds no start token; pass some text")
        if len(prompt_ids) >= self.context_length:
            raise ContextLengthError(
                f"the prompt is {len(prompt_ids)} tokens but the model's context holds {self.context_length} "
                f"(including room for at least one new token); shorten the prompt or convert with a "
                f"larger --context-length"
            )
        choose = sampler if callable(sampler) else Sampler(sampler, **sampler_args)
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
        if self.export_mode == "generate":  # loop and sampler were fixed at export
            yield self._engine.generate(_prompt_text(prompt))
            return
        sampler_args = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for token in self.generate_ids(self.encode(prompt), max_new_tokens, sampler, **sampler_args):
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
