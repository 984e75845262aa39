"""Keras models llm-tflite defines itself (KerasHub has no class for them)."""
