"""llm-tflite: take a Keras language model to TensorFlow Lite and run it on-device.

Importing this package is cheap: TensorFlow and Keras load only when a conversion,
fine-tuning or ``generate``-mode file needs them.

Example:
    >>> import llm_tflite
    >>> llm_tflite.Converter(quantize="dynamic_int8").convert("gpt2_tiny_shakespeare", "m.tflite")  # doctest: +SKIP
    >>> llm_tflite.InterpreterRunner("m.tflite").generate("ROMEO:", max_new_tokens=40)  # doctest: +SKIP
"""

from llm_tflite import errors
from llm_tflite.families.base import KVCacheSpec, ModelFamily, Preset
from llm_tflite.plugins.hookspecs import hookimpl
from llm_tflite.runtime.runner import InterpreterRunner
from llm_tflite.runtime.sampling import Sampler

__version__ = "0.1.0"

_LAZY = {
    "Converter": "llm_tflite.export.converter",
    "ConversionResult": "llm_tflite.export.converter",
    "Quantizer": "llm_tflite.quantize.base",
    "QuantizationStrategy": "llm_tflite.quantize.base",
    "load_model": "llm_tflite.families.loading",
    "finetune": "llm_tflite.training.finetune",
    "read_metadata": "llm_tflite.litert.metadata",
}

__all__ = [
    "Converter", "ConversionResult", "InterpreterRunner", "KVCacheSpec", "ModelFamily", "Preset",
    "Quantizer", "QuantizationStrategy", "Sampler", "errors", "finetune", "hookimpl", "load_model",
    "read_metadata",
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llm_tflite' has no attribute {name!r}")
