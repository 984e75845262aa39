"""``.tflite`` files without TensorFlow: flatbuffer I/O, checked rewrites, the metadata record,
reading ``.litertlm`` bundles. Imports nothing of llm-tflite but ``llm_tflite.errors``."""
