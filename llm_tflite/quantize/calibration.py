"""Calibration data for strategies that quantize activations (``full_int8``).

Calibration text goes through the model's own tokenizer and the float ``.tflite`` file:
every ``prefill_{L}`` and ``decode`` call the runner makes is recorded with its inputs
(tokens, positions and the real KV caches at that point), so each signature is
calibrated on the activations it will see.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np

from llm_tflite.errors import DataError

#: Greedy decode steps after each calibration prompt.
DECODE_STEPS = 8


@dataclasses.dataclass
class TextCalibration:
    """Calibration samples cut from text.

    Args:
        texts: the samples (each is cut to a prompt of every prefill length).
        source: where they came from (for messages).
    """

    texts: list[str]
    source: str = "text"

    def signature_inputs(self, float_model: bytes):
        """Per sample, ``{signature: [input dict, ...]}``: the calls the float file makes on it.

        A generator: one sample's calls (a prompt of every prefill length, each followed by
        a few greedy decode steps, with the real KV caches) are held at a time, so memory
        stays bounded for big models (GPT-2 base: 75 MB of caches per call).
        """
        from llm_tflite.console import progress
        from llm_tflite.runtime.runner import InterpreterRunner

        with tempfile.TemporaryDirectory(prefix="llm_tflite_calibration_") as tmp:
            path = os.path.join(tmp, "float.tflite")
            with open(path, "wb") as f:
                f.write(float_model)
            runner = InterpreterRunner(path)
        calls: dict[str, list[dict[str, np.ndarray]]] = {}

        def record(name, inputs):
            calls.setdefault(name, []).append({k: np.array(v) for k, v in inputs.items()})

        # L tokens run as one chunk of L: prefilled, prefill_L (then decode); for their last token's logits,
        # prompt_L; scored, score_L. So every prefill, prompt and score signature is calibrated.
        engine = runner.engine
        fits = [n for n in sorted({*engine.prefill_lengths, *engine.score_lengths})
                if n + 1 + DECODE_STEPS <= runner.context_length]
        bar = progress(total=len(self.texts), desc="calibrate", unit="sample")
        try:
            for text in self.texts:
                ids = runner.encode(text)
                for length in fits or [1]:
                    if length in engine.score_lengths and not engine.prefill_logits:
                        runner.sequence(observer=record).feed(ids[:length])
                    if length in engine.prompt_lengths:
                        runner.sequence(observer=record).feed_last(ids[:length])
                    sequence = runner.sequence(observer=record)
                    sequence.prefill(ids[:length])
                    logits = sequence.feed_last(ids[length : length + 1])
                    for _ in range(DECODE_STEPS):  # greedy steps: the decode signature's real inputs
                        logits = sequence.feed_last([int(np.argmax(logits))])
                yield _every_signature_that_could_run_it(calls, engine)
                calls.clear()
                bar.update()
        finally:
            bar.close()


def text_calibration(paths, num_samples: int = 64, text_field: str | None = None) -> TextCalibration:
    """Calibration samples from text files or folders (see ``calibration_from_text``).

    Raises ``DataError`` for a missing path, unreadable text, or a set with no usable sample,
    so a bad ``--calibration`` fails before any conversion starts.

    Example:
        >>> cal = text_calibration("../shared/data/tinyshakespeare/input.txt", num_samples=32)  # doctest: +SKIP
    """
    from llm_tflite.training.data import load_texts

    source = ", ".join(map(os.fspath, paths)) if isinstance(paths, (list, tuple)) else os.fspath(paths)
    return calibration_from_text("\n\n".join(load_texts(paths, text_field=text_field)), num_samples, source)


def calibration_from_text(text: str, num_samples: int = 64, source: str = "text") -> TextCalibration:
    """``num_samples`` evenly spaced pieces of ``text``, about 600 characters each."""
    if num_samples < 1:
        raise DataError(f"the calibration sample count must be at least 1, got {num_samples}")
    piece = 600  # enough for a 128-token prompt at ~3 characters per token
    if len(text.strip()) < 20:
        raise DataError(
            f"calibration set {source!r} is empty or too short ({len(text.strip())} characters); "
            "give a text file or folder with a few thousand characters of the kind of text the model will see"
        )
    starts = np.linspace(0, max(len(text) - piece, 0), num=num_samples).astype(int)
    samples = [text[s : s + piece] for s in dict.fromkeys(starts.tolist())]
    return TextCalibration([s for s in samples if s.strip()], source=source)


def _every_signature_that_could_run_it(calls: dict, engine) -> dict:
    """``calls`` with each decode step and prompt chunk also given to every signature that could
    have run it.

    A step at position ``p`` computes the same in ``decode`` and in any ``decode_window_{W}``
    with ``W > p``; a chunk of ``L`` tokens ending at ``e`` the same in ``prefill_{L}`` and in any
    ``window_{W}_prefill_{L}`` with ``e <= W`` (a prompt's last, in ``prompt_{L}`` and
    ``window_{W}_prompt_{L}``). The runner used the smallest window, so the larger ones (and the
    whole-cache signatures) would otherwise see no calibration data.
    """
    from llm_tflite.runtime.prefill_decode import prefill_window_name, prompt_name

    groups = [{"decode": engine.context_length, **{f"decode_window_{w}": w for w in engine.decode_windows}}]
    groups += [{f"prefill_{n}": engine.context_length,
                **{prefill_window_name(n, w): w for w in engine.prefill_windows if n < w}}
               for n in engine.prefill_lengths]
    groups += [{prompt_name(n): engine.context_length,
                **{prompt_name(n, w): w for w in engine.prefill_windows if n < w}} for n in engine.prompt_lengths]
    pooled = dict(calls)
    for windows in groups:  # signature -> the slots it sees: a call fits when its last position is within
        steps = [call for name in windows for call in calls.get(name, [])]
        pooled.update({name: [c for c in steps if int(c["input_pos"][-1]) < w] for name, w in windows.items()})
    return pooled
