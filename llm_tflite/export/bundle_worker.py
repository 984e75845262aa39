"""Write a ``.litertlm`` bundle with LiteRT-LM's official builder (``litert-lm-builder``).

This module imports nothing from llm-tflite, so it also runs as a script in an environment
that has only the builder: ``litert-lm-builder`` needs protobuf >= 6.31 and TensorFlow
2.19 needs protobuf < 6, so next to TensorFlow the builder lives in its own small virtual
environment (``scripts/setup.sh`` makes ``.venv/litertlm``) and ``llm_tflite.export.bundle``
runs this file there::

    PYTHON_WITH_BUILDER bundle_worker.py SPEC.json

``SPEC.json``: ``{"model": PATH.tflite, "tokenizer": PATH, "tokenizer_kind": "hf" |
"sentencepiece", "llm_metadata": PATH.textproto, "output": PATH.litertlm}``.
"""

from __future__ import annotations

import json
import sys


def build(spec: dict) -> None:
    from litert_lm_builder import litertlm_builder, litertlm_core

    builder = litertlm_builder.LitertLmFileBuilder()
    builder.add_tflite_model(spec["model"], litertlm_builder.TfLiteModelType.PREFILL_DECODE)
    if spec["tokenizer_kind"] == "hf":
        builder.add_hf_tokenizer(spec["tokenizer"])
    else:
        builder.add_sentencepiece_tokenizer(spec["tokenizer"])
    builder.add_llm_metadata(spec["llm_metadata"])
    with litertlm_core.open_file(spec["output"], "wb") as f:
        builder.build(f)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: bundle_worker.py SPEC.json", file=sys.stderr)
        return 2
    try:
        import litert_lm_builder  # noqa: F401
    except ImportError:
        print("litert-lm-builder is not installed in this environment", file=sys.stderr)
        return 3
    with open(argv[0], encoding="utf-8") as f:
        build(json.load(f))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
