"""Driving a ``prefill_decode`` file: the ``prefill_{L}`` / ``decode`` signatures and the KV caches.

The twin of ``llm_tflite.export.prefill_decode``, which writes these signatures.
"""

from __future__ import annotations

import numpy as np

from llm_tflite.errors import ModelFileError


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - environments with TensorFlow only
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter



class PrefillDecodeEngine:
    """Drives the ``prefill_{L}`` / ``decode`` signatures and owns the KV caches."""

    def __init__(self, data: bytes, metadata: dict, num_threads, path):
        Interpreter = _interpreter_class()
        try:
            self.interpreter = Interpreter(model_content=data, num_threads=num_threads)
            signatures = self.interpreter.get_signature_list()
        except (ValueError, RuntimeError) as e:
            raise ModelFileError(f"the runtime cannot load {path!r}: {e}; re-convert it") from e
        self.context_length = int(metadata["context_length"])
        self.prefill_lengths = sorted(int(n) for n in metadata.get("prefill_lengths", []))
        missing = [s for s in ["decode"] + [f"prefill_{n}" for n in self.prefill_lengths] if s not in signatures]
        if missing:
            raise ModelFileError(f"{path!r} lacks signatures {missing}; re-convert it")
        self.runners = {name: self.interpreter.get_signature_runner(name) for name in signatures}
        inputs = signatures["decode"]["inputs"]
        details = self.runners["decode"].get_input_details()
        self.caches = {
            name: np.zeros(details[name]["shape"], details[name]["dtype"])
            for name in inputs if name.startswith("kv_cache_")
        }

    def _chunk_length(self, remaining: int, position: int) -> int:
        fitting = [n for n in self.prefill_lengths if position + n <= self.context_length]
        if not fitting or remaining == 1:
            return 1
        covering = [n for n in fitting if n >= remaining]
        return min(covering) if covering else max(fitting)

    def forward(self, token_ids: list[int], position: int) -> np.ndarray:
        """Run ``token_ids`` from ``position``; return their logits ``[n, vocab]``."""
        outputs = []
        i = 0
        while i < len(token_ids):
            length = self._chunk_length(len(token_ids) - i, position)
            chunk = token_ids[i : i + length]
            tokens = np.zeros((1, length), np.int32)
            tokens[0, : len(chunk)] = chunk
            input_pos = np.arange(position, position + length, dtype=np.int32)
            name = "decode" if length == 1 else f"prefill_{length}"
            result = self.runners[name](tokens=tokens, input_pos=input_pos, **self.caches)
            for cache_name in self.caches:
                self.caches[cache_name] = result[cache_name]
            outputs.append(result["logits"].reshape(length, -1)[: len(chunk)])
            i += len(chunk)
            position += len(chunk)
        return np.concatenate(outputs, axis=0)
