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
