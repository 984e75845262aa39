"""``.tflite`` files without TensorFlow: flatbuffer I/O, checked rewrites, the metadata record."""
