"""Quantization: the strategy interface (``base``), built-in strategies, calibration data."""
