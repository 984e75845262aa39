"""Running files: ``InterpreterRunner``, its engines (``engine.py``), samplers and searches. Never imports
TensorFlow for ``prefill_decode`` files (a test enforces it)."""
