"""Built-in quantization strategies."""

from __future__ import annotations

from llm_tflite.hookspecs import hookimpl
from llm_tflite.quantizer import QuantizationStrategy


class NoQuantization(QuantizationStrategy):
    name = "none"
    description = "float32 weights and activations"


class DynamicInt8(QuantizationStrategy):
    name = "dynamic_int8"
    description = "post-training dynamic range: int8 weights, float activations (Optimize.DEFAULT)"

    def configure(self, converter, calibration=None):
        import tensorflow as tf

        converter.optimizations = [tf.lite.Optimize.DEFAULT]


class Float16(QuantizationStrategy):
    name = "float16"
    description = "float16 weights, dequantized to float32 at load"

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

    kind = "weight_only"  # or "dynamic"
    num_bits = 8
    granularity = "CHANNELWISE"
    min_weight_elements = 256

    def postprocess(self, tflite_model: bytes) -> bytes:
        from llm_tflite.errors import ConversionError
        from llm_tflite.flatbuffer_rewrite import dedupe_buffers, gathers_to_embedding_lookups

        try:
            from ai_edge_quantizer import qtyping, quantizer
        except ImportError as e:
            raise ConversionError(
                f"strategy {self.name!r} needs ai-edge-quantizer: pip install 'llm-tflite[quantizer]' ({e})"
            ) from e
        qt = quantizer.Quantizer(bytearray(gathers_to_embedding_lookups(tflite_model)))
        add = qt.add_weight_only_config if self.kind == "weight_only" else qt.add_dynamic_config
        add(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=self.num_bits,
            granularity=getattr(qtyping.QuantGranularity, self.granularity))
        recipe = qt.get_quantization_recipe()
        for entry in recipe:  # tiny constants (e.g. RoPE frequencies, [D/2, 1]) stay float: nothing to gain
            entry["op_config"]["min_weight_elements"] = self.min_weight_elements
        qt.load_quantization_recipe(recipe)
        try:
            quantized = qt.quantize().quantized_model
        except ValueError as e:
            raise ConversionError(f"{self.name}: ai-edge-quantizer failed: {e}") from e
        return dedupe_buffers(bytes(quantized))


class WeightOnlyInt8(AIEdgeQuantizerStrategy):
    name = "weight_only_int8"
    description = "int8 per-channel weights (embeddings too), dequantized to float for float compute"


class Int4Blockwise32(AIEdgeQuantizerStrategy):
    name = "int4_blockwise"
    description = "int4 weights in blocks of 32 (embeddings too), dynamic int8 activations on XNNPACK"
    kind = "dynamic"
    num_bits = 4
    granularity = "BLOCKWISE_32"


class Int4Blockwise128(Int4Blockwise32):
    name = "int4_blockwise_128"
    description = "int4 weights in blocks of 128 (embeddings too), dynamic int8 activations on XNNPACK"
    granularity = "BLOCKWISE_128"


@hookimpl(specname="register_quantizers")
def register_ai_edge_quantizers(register):
    for strategy in (WeightOnlyInt8(), Int4Blockwise32(), Int4Blockwise128()):
        register(strategy)
