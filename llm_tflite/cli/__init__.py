"""The ``llm-tflite`` command line: one module per command group."""

from llm_tflite.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
