"""Built-in quantization strategies."""

from __future__ import annotations

import contextlib
import io
import os

from llm_tflite.console import quiet_native
from llm_tflite.plugins.hookspecs import hookimpl
from llm_tflite.quantize.base import QuantizationStrategy


class NoQuantization(QuantizationStrategy):
    name = "none"
    description = "float32 weights and activations"


class DynamicInt8(QuantizationStrategy):
    name = "dynamic_int8"
    description = "post-training dynamic range: int8 weights, float activations (Optimize.DEFAULT)"
    weight_bytes = 1.0
    bind_format = "int8"

    def configure(self, converter, calibration=None):  # generate mode: TensorFlow's quantizer
        import tensorflow as tf

        converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def postprocess(self, tflite_model: bytes) -> bytes:
        from llm_tflite.litert.rewrite import compact, share_tied_embeddings

        return compact(share_tied_embeddings(tflite_model))


class Float16(QuantizationStrategy):
    name = "float16"
    description = "float16 weights, dequantized to float32 at load"
    memory_expansion = 2.0
    weight_bytes = 2.0
    bind_format = "float16"

    def configure(self, converter, calibration=None):
        import tensorflow as tf

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]


@hookimpl
def register_quantizers(register):
    for strategy in (NoQuantization(), DynamicInt8(), Float16()):
        register(strategy)


class AIEdgeQuantizerStrategy(QuantizationStrategy):
    """A strategy applied to the float ``.tflite`` by ai-edge-quantizer (``pip install ai-edge-quantizer``)."""

    kind = "weight_only"  # "dynamic" (int8 activations on the fly) or "static" (calibrated)
    quantizes_float_file = True
    weight_bytes = 1.0
    num_bits = 8
    granularity = "CHANNELWISE"
    min_weight_elements = 0

    def postprocess(self, tflite_model: bytes, calibration=None) -> bytes:
        from llm_tflite.errors import ConversionError
        from llm_tflite.litert.rewrite import compact, gathers_to_embedding_lookups

        try:
            from ai_edge_quantizer import qtyping, quantizer
        except ImportError as e:
            raise ConversionError(
                f"strategy {self.name!r} needs ai-edge-quantizer: pip install 'llm-tflite[quantizer]' ({e})"
            ) from e
        qt = quantizer.Quantizer(bytearray(gathers_to_embedding_lookups(tflite_model)))
        granularity = getattr(qtyping.QuantGranularity, self.granularity)
        if self.kind == "static":
            # Matmuls and lookups in int8; attention scores, softmax, norms and GELU stay float
            # (see FullInt8 for why).
            ops = qtyping.TFLOperationName
            qt.add_static_config(regex=".*", operation_name=ops.FULLY_CONNECTED, activation_num_bits=8,
                                 weight_num_bits=self.num_bits, weight_granularity=granularity)
            qt.add_weight_only_config(regex=".*", operation_name=ops.EMBEDDING_LOOKUP, num_bits=self.num_bits,
                                      granularity=granularity)
        else:
            add = qt.add_weight_only_config if self.kind == "weight_only" else qt.add_dynamic_config
            add(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=self.num_bits,
                granularity=granularity)
        recipe = qt.get_quantization_recipe()
        for entry in recipe:
            entry["op_config"]["min_weight_elements"] = self.min_weight_elements
        qt.load_quantization_recipe(recipe)
        try:
            ranges = None
            if self.kind == "static":
                for sample in calibration:  # one sample at a time: bounded memory; ranges accumulate
                    with _quiet():
                        ranges = qt.calibrate(sample, previous_calibration_result=ranges,
                                              num_threads=os.cpu_count() or 1)
                ranges = _shared_ranges(ranges)
            with _quiet():
                quantized = qt.quantize(ranges).quantized_model
        except ValueError as e:
            hint = ""
            if "divisible by block size" in str(e):
                hint = (" The model has weights whose width is not a multiple of the block size; "
                        "use int4_blockwise (blocks of 32) or an int8 strategy.")
            raise ConversionError(f"{self.name}: ai-edge-quantizer failed: {e}.{hint}") from e
        return compact(bytes(quantized))


@contextlib.contextmanager
def _quiet():
    """ai-edge-quantizer prints per-op progress bars and size summaries, and logs every op it overrides."""
    with contextlib.redirect_stdout(io.StringIO()), quiet_native():
        yield


def _shared_ranges(ranges: dict) -> dict:
    """One activation range per tensor across signatures (``prefill_8/x`` and ``decode/x`` share).

    The signatures run the same layers, so a union of their ranges is as valid for each;
    identical ranges mean identical int32 biases and scales, stored once instead of per
    signature (about 0.4 MB of a 4 MB GPT-2).
    """
    import numpy as np

    groups: dict[str, list[str]] = {}
    for name in ranges:
        groups.setdefault(name.split("/", 1)[-1], []).append(name)
    shared = dict(ranges)
    for names in groups.values():
        values = [ranges[n] for n in names if ranges[n] and "min" in ranges[n] and "max" in ranges[n]]
        if len(values) < 2 or len({np.shape(v["min"]) for v in values}) != 1:
            continue
        low = np.minimum.reduce([np.asarray(v["min"]) for v in values])
        high = np.maximum.reduce([np.asarray(v["max"]) for v in values])
        for n in names:
            if ranges[n] and "min" in ranges[n]:
                shared[n] = {**ranges[n], "min": low, "max": high}
    return shared


class FullInt8(AIEdgeQuantizerStrategy):
    """Static int8: weights and activations, ranges from calibration text (``--calibration``).

    Inputs and outputs of the file stay float32/int32 (the runner and apps feed the same
    tensors as for the float file); ai-edge-quantizer inserts QUANTIZE/DEQUANTIZE where an
    op has no int8 kernel (see docs/quantization.md for which ones stay float).
    """

    name = "full_int8"
    description = "int8 weights and activations, calibrated on text (--calibration PATH); prefill_decode only"
    kind = "static"
    needs_calibration = True
    export_modes = ("prefill_decode",)  # calibration runs the prefill/decode signatures


class WeightOnlyInt8(AIEdgeQuantizerStrategy):
    name = "weight_only_int8"
    description = "int8 per-channel weights (embeddings too), dequantized to float for float compute"
    memory_expansion = 4.0


class Int4Blockwise32(AIEdgeQuantizerStrategy):
    """int4 weights bound straight into the converted graph (``llm_tflite.litert.bind``), in the layout
    ai-edge-quantizer writes, so no float32 file of the model is built: models whose float32 file
    would pass the 2 GB flatbuffer limit convert. ai-edge-quantizer runs only for a graph whose
    weights could not be bound (a family whose forward pass reads captured tensors)."""

    name = "int4_blockwise"
    description = "int4 weights in blocks of 32 (embeddings too), dynamic int8 activations on XNNPACK"
    kind = "dynamic"
    num_bits = 4
    granularity = "BLOCKWISE_32"
    bind_format = "int4_blockwise_32"
    quantizes_float_file = False
    weight_bytes = 0.625  # half a byte, and a float16 scale per 32 (float32 norms and biases: the margin)
    min_weight_elements = 256  # tiny constants (e.g. a [D/2, 1] outer-product factor) cannot form blocks
    # In a generate graph (WHILE loop) ai-edge-quantizer 0.10's int4 output decodes to <unk>
    # only; refuse rather than write a silently wrong file.
    export_modes = ("prefill_decode",)

    def postprocess(self, tflite_model: bytes, calibration=None) -> bytes:
        from llm_tflite.litert.flatbuffer import has_tensor_type
        from llm_tflite.litert.rewrite import compact

        if has_tensor_type(tflite_model, "INT4"):  # bound as int4
            return compact(tflite_model)
        return super().postprocess(tflite_model, calibration)


class Int4Blockwise128(Int4Blockwise32):
    name = "int4_blockwise_128"
    description = "int4 weights in blocks of 128 (embeddings too), dynamic int8 activations on XNNPACK"
    granularity = "BLOCKWISE_128"
    bind_format = "int4_blockwise_128"
    weight_bytes = 0.53


@hookimpl(specname="register_quantizers")
def register_ai_edge_quantizers(register):
    for strategy in (WeightOnlyInt8(), FullInt8(), Int4Blockwise32(), Int4Blockwise128()):
        register(strategy)
