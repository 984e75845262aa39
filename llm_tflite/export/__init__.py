"""Keras causal LM -> ``.tflite``: the ``Converter``, the two export modes, ``.litertlm`` bundles."""
