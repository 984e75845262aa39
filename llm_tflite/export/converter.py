"""Keras causal LM -> ``.tflite`` with llm-tflite metadata."""

from __future__ import annotations

import dataclasses
import os
import tempfile

from llm_tflite.litert.flatbuffer import check_writable, non_builtin_ops, write_atomic
from llm_tflite.litert.metadata import FORMAT_VERSION, add_metadata
from llm_tflite.errors import ConversionError, LLMTFLiteError
from llm_tflite.console import import_tensorflow, logger, progress, quiet_native
from llm_tflite.quantize.base import Quantizer
from llm_tflite.runtime import sampling
from llm_tflite.runtime.sampling import GENERATE_SAMPLERS
from llm_tflite.plugins.registry import load_model

EXPORT_MODES = ("prefill_decode", "generate")


def _stage(steps, text: str) -> None:
    """Show a conversion stage: on the progress bar, or as a log line where there is no bar."""
    steps.set_postfix_str(text)
    if steps.disable:
        logger.info("convert: %s", text)
DEFAULT_PREFILL_LENGTHS = (8, 32, 128)


def default_decode_windows(context_length: int) -> list[int]:
    """Decode windows by default: powers of two from 128 below the context (128, 256, 512 for
    1,024; none up to 128)."""
    windows, window = [], 128
    while window < context_length:
        windows.append(window)
        window *= 2
    return windows


@dataclasses.dataclass
class ConversionResult:
    """Where a conversion wrote its file, how big it is, and the metadata inside."""

    path: str
    size_bytes: int
    metadata: dict


class Converter:
    """Converts a Keras causal LM to a self-contained ``.tflite`` file.

    Args:
        mode: ``"prefill_decode"`` (builtin ops, external KV cache) or ``"generate"``
            (whole loop in one graph, needs Flex + TF Text ops).
        quantize: a registered strategy name or a ``Quantizer``.
        context_length: KV-cache length (default: the model's, at most 1024).
        prefill_lengths: prompt lengths with a ``prefill_{L}`` signature.
        decode_windows: ``decode_window_{W}`` signatures, which attend over the first ``W`` cache
            slots only, used while the position is below ``W`` (default ``"auto"``: 128, 256, ...
            below the context; ``()`` for none).
        max_length: ``generate`` mode: total tokens (prompt + continuation).
        sampler: ``generate`` mode: ``greedy``, ``top_k`` or ``top_p``.
        seed: ``generate`` mode: seed of a random sampler.
        temperature, top_k, top_p: ``generate`` mode: the random sampler's settings, fixed in the graph.
        hidden_states: ``prefill_decode`` mode: also output the last hidden states (contrastive search).
        calibration: for strategies that need it (``full_int8``): a text file or folder, or a
            ``llm_tflite.quantize.calibration.TextCalibration``.

    Example:
        >>> Converter(quantize="dynamic_int8").convert("gpt2_tiny_shakespeare", "model.tflite")  # doctest: +SKIP
    """

    def __init__(self, mode="prefill_decode", quantize="none", *, context_length=None,
                 prefill_lengths=DEFAULT_PREFILL_LENGTHS, decode_windows="auto", max_length=100, sampler="greedy",
                 seed=None,
                 temperature=sampling.TEMPERATURE, top_k=sampling.TOP_K, top_p=sampling.TOP_P,
                 calibration=None, hidden_states=False):
        if mode not in EXPORT_MODES:
            raise ValueError(f"unknown export mode {mode!r}; choose one of {', '.join(EXPORT_MODES)}")
        self.mode = mode
        if mode == "generate":
            if sampler not in GENERATE_SAMPLERS:
                raise ValueError(f"unknown generate-mode sampler {sampler!r}; choose one of "
                                 f"{', '.join(GENERATE_SAMPLERS)}")
            sampling.Sampler(sampler, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)  # validates
            if hidden_states:
                raise ValueError("hidden_states is a prefill_decode option (contrastive search runs in the runner)")
        self.sampler_settings = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        self.hidden_states = bool(hidden_states)
        self.quantizer = quantize if isinstance(quantize, Quantizer) else Quantizer(quantize)
        if mode not in self.quantizer.strategy.export_modes:
            raise ValueError(
                f"quantization strategy {self.quantizer.name!r} supports export modes "
                f"{', '.join(self.quantizer.strategy.export_modes)}, not {mode!r}; pick another strategy "
                "(llm-tflite plugins lists them) or another --mode"
            )
        if self.quantizer.strategy.needs_calibration:
            from llm_tflite.errors import DataError

            if calibration is None:
                raise DataError(
                    f"quantization strategy {self.quantizer.name!r} needs calibration text; "
                    "pass calibration=PATH (--calibration PATH): a text file or folder"
                )
            if isinstance(calibration, (str, os.PathLike, list)):
                from llm_tflite.quantize.calibration import text_calibration

                calibration = text_calibration(calibration)
        self.context_length = context_length
        self.prefill_lengths = tuple(sorted(set(int(n) for n in prefill_lengths)))
        if decode_windows != "auto" and not all(isinstance(w, int) and w >= 1 for w in decode_windows):
            from llm_tflite.errors import InvalidArgumentError

            raise InvalidArgumentError(f"decode_windows must be 'auto' or positive integers, got {decode_windows!r}")
        self.decode_windows = decode_windows if decode_windows == "auto" else tuple(sorted(set(decode_windows)))
        self.max_length = max_length
        self.sampler = sampler
        self.seed = seed
        self.calibration = calibration

    def convert(self, model, output, *, family=None, random_weights=False) -> ConversionResult:
        """Load ``model``, convert it, quantize it and write ``output`` atomically.

        Args:
            model: preset name, handle, local preset directory or Keras model object.
            output: path of the ``.tflite`` file to write.
            family: family name when it cannot be told from ``model``.
            random_weights: use the architecture with random weights (benchmarks, offline).

        Returns:
            A ``ConversionResult``.
        """
        check_writable(output)  # before minutes of work, not after
        steps = progress(total=4, desc="convert", unit="step")
        try:
            _stage(steps, "loading model")
            fam, lm = load_model(model, family=family, random_weights=random_weights)
            steps.update()
            _stage(steps, "tracing")
            try:
                metadata = self._metadata(fam, lm)
                tflite_model = self._convert(fam, lm, metadata, steps)
            except (LLMTFLiteError, ValueError, KeyboardInterrupt):
                raise
            except Exception as e:  # family code (possibly a plugin's) failed while tracing
                raise ConversionError(
                    f"family {fam.name!r} failed while building the {self.mode} graph: {type(e).__name__}: "
                    f"{str(e)[:500]}. If the family comes from a plugin (llm-tflite plugins shows which), "
                    "report it there; --mode prefill_decode works for every family."
                ) from e
            steps.update()
            _stage(steps, "quantizing")
            tflite_model = self._quantize(tflite_model, metadata)
            _stage(steps, "writing")
            tflite_model = add_metadata(tflite_model, metadata)
            write_atomic(output, tflite_model)
            steps.update()
        finally:
            steps.close()
        return ConversionResult(os.fspath(output), len(tflite_model), metadata)

    @staticmethod
    def _run_converter(converter) -> bytes:
        try:
            with quiet_native():  # the converter's C++ logs statistics and sessions to stderr
                return converter.convert()
        except Exception as e:
            raise ConversionError(f"TensorFlow Lite conversion failed: {type(e).__name__}: {str(e)[:2000]}") from e

    def _metadata(self, fam, lm) -> dict:
        context_length = min(self.context_length or min(fam.max_context_length(lm), 1024), fam.max_context_length(lm))
        record = {
            "format": FORMAT_VERSION,
            "family": fam.name,
            "export_mode": self.mode,
            "quantization": self.quantizer.name,
            "tokenizer": fam.tokenizer_spec(lm),
            **fam.special_tokens(lm),
            "model": fam.model_config(lm),
        }
        if self.mode == "prefill_decode":
            spec = fam.kv_cache_spec(lm)
            record.update(
                context_length=context_length,
                prefill_lengths=[n for n in self.prefill_lengths if n <= context_length],
                decode_windows=[w for w in (default_decode_windows(context_length) if self.decode_windows == "auto"
                                            else self.decode_windows) if w < context_length],
                kv_cache=dataclasses.asdict(spec),
                kv_cache_layout="transposed",  # families.ops: LiteRT-LM's layout
                default_sampler="greedy",
                hidden_states=self.hidden_states,
            )
        else:
            record.update(context_length=self.max_length, max_length=self.max_length,
                          default_sampler=self.sampler, seed=self.seed, sampler_settings=self.sampler_settings)
        return record

    def _quantize(self, tflite_model: bytes, metadata: dict) -> bytes:
        strategy = self.quantizer.strategy
        try:
            if strategy.needs_calibration:
                samples = self.calibration.signature_inputs(add_metadata(tflite_model, metadata))
                return self.quantizer.postprocess(tflite_model, samples)
            return self.quantizer.postprocess(tflite_model)
        except (LLMTFLiteError, KeyboardInterrupt):
            raise
        except Exception as e:  # a strategy (possibly a plugin's) failed
            raise ConversionError(
                f"quantization strategy {strategy.name!r} failed: {type(e).__name__}: {str(e)[:500]}. "
                "Try another strategy (llm-tflite plugins lists them); if it comes from a plugin, report it there."
            ) from e

    def _convert(self, fam, lm, metadata, steps) -> bytes:
        tf = import_tensorflow()

        if self.mode == "prefill_decode":
            # One frozen function and conversion per signature, merged afterwards: a SavedModel
            # holding every signature's frozen weights would pass protobuf's 2 GB limit for
            # GPT-2 base, and building them one at a time bounds peak memory.
            from llm_tflite.litert.rewrite import SignatureMerger
            from llm_tflite.export.prefill_decode import input_names, output_names, signature_function, signatures

            spec = fam.kv_cache_spec(lm)
            steps.update()
            _stage(steps, "converting")
            merger = SignatureMerger()  # each signature merged as it comes: shared weights are held once
            for key, (length, window) in signatures(metadata["prefill_lengths"], metadata["decode_windows"]).items():
                logger.debug("convert: signature %s", key)
                with quiet_native():  # freezing runs Grappler, which logs its sessions
                    fn = signature_function(fam, lm, spec, metadata["context_length"], length, self.hidden_states,
                                            window)
                converter = tf.lite.TFLiteConverter.from_concrete_functions([fn])
                self.quantizer.configure(converter, self.calibration)
                merger.add(key, self._run_converter(converter), input_names(spec),
                           output_names(spec, self.hidden_states))
                del fn, converter
            tflite_model = merger.result()
        else:
            fn = fam.generate_function(lm, max_length=self.max_length, sampler=self.sampler, seed=self.seed,
                                       **self.sampler_settings)
            signatures = {"serving_default": fn}
            steps.update()
            _stage(steps, "converting")
            with tempfile.TemporaryDirectory(prefix="llm_tflite_") as saved_model_dir:
                module = tf.Module()
                module.tokenizer = lm.preprocessor.tokenizer  # the lookup tables the graph reads
                with quiet_native():
                    tf.saved_model.save(module, saved_model_dir, signatures=signatures)
                    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir,
                                                                         signature_keys=list(signatures))
                from llm_tflite.export.generate import configure_generate_converter

                configure_generate_converter(converter)
                self.quantizer.configure(converter, self.calibration)
                tflite_model = self._run_converter(converter)
        if self.mode == "prefill_decode":
            bad = non_builtin_ops(tflite_model)
            if bad:
                raise ConversionError(
                    f"the prefill_decode graph needs non-builtin ops {sorted(bad)}; family "
                    f"{fam.name!r} must express its forward pass with builtin TFLite ops"
                )
        return tflite_model
