"""Running files: ``InterpreterRunner``, its engines, samplers and tokenizers. Never imports TensorFlow
for ``prefill_decode`` files (a test enforces it)."""
