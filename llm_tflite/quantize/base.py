"""Quantization: strategies are plugins; ``Quantizer`` applies one around a conversion."""

from __future__ import annotations

from llm_tflite.plugins.registry import get_strategy


class QuantizationStrategy:
    """A way to quantize a model during or after TFLite conversion.

    Subclass it and register an instance from a plugin's ``register_quantizers`` hook.
    """

    #: Name users type with ``--quantize``.
    name: str = ""
    #: One line shown by ``llm-tflite plugins``.
    description: str = ""
    #: True if ``configure`` needs ``calibration`` (a representative dataset).
    needs_calibration: bool = False
    #: Bytes the runtime holds (and reads per decode step) per weight byte in the file: float16
    #: and weight-only int8 weights are expanded to float32 when the model loads.
    memory_expansion: float = 1.0
    #: Bytes per weight in the file it writes; with ``quantizes_float_file`` the float32 file it
    #: starts from must fit too. Checked against the flatbuffer limit before converting.
    weight_bytes: float = 4.0
    #: True if it rewrites the converted float32 file (ai-edge-quantizer strategies).
    quantizes_float_file: bool = False
    #: How ``prefill_decode`` conversion stores the weights before ``postprocess``: ``float32``,
    #: ``float16`` or ``int8`` (``llm_tflite.litert.bind``). A strategy that sets converter options
    #: (``configure``) and keeps ``float32`` gets weights frozen into the converted graph instead.
    bind_format: str = "float32"
    #: Export modes the strategy is known to produce correct files for.
    export_modes: tuple = ("prefill_decode", "generate")

    def configure(self, converter, calibration=None) -> None:
        """Set options on a ``tf.lite.TFLiteConverter`` before ``convert()``.

        ``calibration`` is the ``llm_tflite.quantize.calibration.TextCalibration`` the user gave,
        passed only when ``needs_calibration`` is true.
        """

    def postprocess(self, tflite_model: bytes, calibration=None) -> bytes:
        """Rewrite the converted flatbuffer (for quantizers that work on ``.tflite`` files).

        When ``needs_calibration`` is true, ``calibration`` yields, per calibration sample,
        ``{signature: [ {input name: array}, ... ]}``: the inputs of every signature call the
        float file made on that sample (KV caches included). Strategies that do not
        calibrate may define ``postprocess(self, tflite_model)``.
        """
        return tflite_model


class Quantizer:
    """Applies one registered strategy to a TFLite conversion.

    Args:
        strategy: a registered name (``"dynamic_int8"``) or a ``QuantizationStrategy``.

    Example:
        >>> q = Quantizer("float16")  # doctest: +SKIP
        >>> q.configure(tf_lite_converter); tflite = q.postprocess(tf_lite_converter.convert())  # doctest: +SKIP
    """

    def __init__(self, strategy="none"):
        self.strategy = get_strategy(strategy) if isinstance(strategy, str) else strategy

    @property
    def name(self) -> str:
        return self.strategy.name

    def configure(self, converter, calibration=None) -> None:
        self.strategy.configure(converter, calibration if self.strategy.needs_calibration else None)

    def postprocess(self, tflite_model: bytes, calibration=None) -> bytes:
        if self.strategy.needs_calibration:
            return self.strategy.postprocess(tflite_model, calibration)
        return self.strategy.postprocess(tflite_model)
