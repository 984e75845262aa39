"""Driving a ``prefill_decode`` file: the ``prefill_{L}`` / ``decode`` signatures and the KV caches.

The twin of ``llm_tflite.export.prefill_decode``, which writes these signatures.

Threading model: one engine (one native interpreter) per runner, shared by every
``Sequence``; each ``Sequence`` owns its KV caches and position, and every signature call
runs under the engine's lock, so the interpreter is never driven from two threads at once
and concurrent or interleaved generations never see each other's caches.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from llm_tflite.console import quiet_native
from llm_tflite.errors import ContextLengthError, ModelFileError, RuntimeFailure

#: ``observer(signature_name, inputs)`` sees every signature call's inputs (calibration records them).
Observer = Callable[[str, dict], None]


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - environments with TensorFlow only
        from llm_tflite.console import import_tensorflow

        Interpreter = import_tensorflow().lite.Interpreter
    return Interpreter


class PrefillDecodeEngine:
    """The interpreter of a ``prefill_decode`` file and its signatures; stateless between calls."""

    def __init__(self, data: bytes, metadata: dict, num_threads, path):
        Interpreter = _interpreter_class()
        try:
            with quiet_native():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
                self.interpreter = Interpreter(model_content=data, num_threads=num_threads)
                signatures = self.interpreter.get_signature_list()
                self.runners = {name: self.interpreter.get_signature_runner(name) for name in signatures}
        except (ValueError, RuntimeError) as e:
            raise ModelFileError(f"the runtime cannot load {path!r}: {e}; re-convert it") from e
        self.context_length = int(metadata["context_length"])
        self.prefill_lengths = sorted(int(n) for n in metadata.get("prefill_lengths", []))
        missing = [s for s in ["decode"] + [f"prefill_{n}" for n in self.prefill_lengths] if s not in signatures]
        if missing:
            raise ModelFileError(f"{path!r} lacks signatures {missing}; re-convert it")
        self.has_hidden_states = bool(metadata.get("hidden_states", False))
        self._check_graph(metadata, signatures, path)
        details = self.runners["decode"].get_input_details()
        self.cache_specs = {
            name: (tuple(details[name]["shape"]), details[name]["dtype"])
            for name in signatures["decode"]["inputs"] if name.startswith("kv_cache_")
        }
        self.vocab_size = int(self.runners["decode"].get_output_details()["logits"]["shape"][-1])
        self._lock = threading.Lock()
        # LiteRT applies its XNNPACK delegate at the first invoke (and announces it on stderr):
        # do that here, quietly, so a graph the runtime cannot run fails in the constructor.
        try:
            with quiet_native():
                self.call("decode", dict(tokens=np.zeros((1, 1), np.int32), input_pos=np.zeros(1, np.int32),
                                         **self.new_caches()))
        except RuntimeFailure as e:
            raise ModelFileError(f"the runtime cannot run {path!r}: {e.__cause__}; re-convert it") from e

    def _check_graph(self, metadata: dict, signatures: dict, path) -> None:
        """The signatures' tensors must be what the record says: a mismatch would generate garbage."""
        spec = metadata["kv_cache"]
        caches = [f"kv_cache_{kind}_{i}" for i in range(spec["num_layers"]) for kind in "kv"]
        heads, dim, context = spec["num_kv_heads"], spec["head_dim"], self.context_length
        if metadata.get("kv_cache_layout") == "transposed":  # LiteRT-LM's (llm_tflite.families.ops)
            shapes = {"k": [1, heads, context, dim], "v": [1, heads, dim, context]}
        else:  # files written before the layout was recorded
            shapes = {"k": [1, context, heads, dim], "v": [1, context, heads, dim]}
        cache_shape = shapes["k"]
        for name, length in [("decode", 1)] + [(f"prefill_{n}", n) for n in self.prefill_lengths]:
            inputs = self.runners[name].get_input_details()
            outputs = self.runners[name].get_output_details()
            expected = {"tokens": [1, length], "input_pos": [length],
                        **{c: shapes[c.split("_")[2]] for c in caches}}
            found = {key: list(value["shape"]) for key, value in inputs.items()}
            hidden = {"hidden_states"} if self.has_hidden_states else set()
            if found != expected or set(outputs) != {"logits", *caches, *hidden} or \
                    list(outputs["logits"]["shape"][:2]) != [1, length]:
                raise ModelFileError(
                    f"{path!r}: signature {name!r} does not match the file's record (context {self.context_length}, "
                    f"cache {cache_shape}, {len(caches)} caches); the file is damaged or inconsistent, re-convert it"
                )

    def new_caches(self) -> dict[str, np.ndarray]:
        return {name: np.zeros(shape, dtype) for name, (shape, dtype) in self.cache_specs.items()}

    def chunk_length(self, remaining: int, position: int) -> int:
        """Tokens the next call takes: the smallest prefill covering ``remaining``, else the largest that fits."""
        fitting = [n for n in self.prefill_lengths if position + n <= self.context_length]
        if not fitting or remaining == 1:
            return 1
        covering = [n for n in fitting if n >= remaining]
        return min(covering) if covering else max(fitting)

    def call(self, name: str, inputs: dict) -> dict:
        """Run one signature; serialised, so threads may share the engine."""
        try:
            with self._lock:
                return self.runners[name](**inputs)
        except (RuntimeError, ValueError) as e:
            raise RuntimeFailure(f"the interpreter failed running {name!r}: {e}; if the file was copied, check "
                                 "the copy, or re-convert it") from e


class Sequence:
    """One token sequence's state (KV caches, position) on a shared engine.

    Feed it tokens in order and get each one's next-token logits; several sequences can
    live at once (threads, interleaved streams) without disturbing each other.

    Example:
        >>> seq = runner.sequence()  # doctest: +SKIP
        >>> logits = seq.feed(runner.encode("ROMEO:"))[-1]  # doctest: +SKIP
        >>> logits = seq.feed([int(logits.argmax())])[-1]  # doctest: +SKIP
    """

    def __init__(self, engine: PrefillDecodeEngine, observer: Observer | None = None):
        self.engine = engine
        self.observer = observer
        self.position = 0
        self.caches = engine.new_caches()

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    def fork(self) -> "Sequence":
        """A copy that continues independently (beams, candidates). Costs no copy of the caches:
        ``feed`` replaces them with new arrays rather than writing into them."""
        twin = Sequence.__new__(Sequence)
        twin.engine, twin.observer, twin.position, twin.caches = self.engine, self.observer, self.position, self.caches
        return twin

    def feed(self, token_ids) -> np.ndarray:
        """Run ``token_ids`` after what was fed before; return their logits ``[n, vocab]``."""
        return self._feed(token_ids, hidden=False)[0]

    def feed_with_hidden(self, token_ids) -> tuple[np.ndarray, np.ndarray]:
        """Logits ``[n, vocab]`` and last hidden states ``[n, hidden]`` (files converted with ``--hidden-states``)."""
        if not self.engine.has_hidden_states:
            from llm_tflite.errors import InvalidArgumentError

            raise InvalidArgumentError("this file has no hidden_states output, which contrastive search needs; "
                                       "convert the model again with --hidden-states (hidden_states=True)")
        return self._feed(token_ids, hidden=True)

    def _feed(self, token_ids, hidden: bool):
        token_ids = [int(t) for t in token_ids]
        if self.position + len(token_ids) > self.context_length:
            raise ContextLengthError(
                f"{self.position + len(token_ids)} tokens do not fit the context of {self.context_length} tokens"
            )
        outputs, hiddens = [], []
        i = 0
        while i < len(token_ids):
            length = self.engine.chunk_length(len(token_ids) - i, self.position)
            chunk = token_ids[i : i + length]
            tokens = np.zeros((1, length), np.int32)
            tokens[0, : len(chunk)] = chunk
            input_pos = np.arange(self.position, self.position + length, dtype=np.int32)
            name = "decode" if length == 1 else f"prefill_{length}"
            inputs = dict(tokens=tokens, input_pos=input_pos, **self.caches)
            if self.observer is not None:
                self.observer(name, inputs)
            result = self.engine.call(name, inputs)
            self.caches = {cache_name: result[cache_name] for cache_name in self.caches}
            outputs.append(result["logits"].reshape(length, -1)[: len(chunk)])
            if hidden:
                hiddens.append(result["hidden_states"].reshape(length, -1)[: len(chunk)])
            i += len(chunk)
            self.position += len(chunk)
        return np.concatenate(outputs, axis=0), (np.concatenate(hiddens, axis=0) if hidden else None)
