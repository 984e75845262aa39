"""The child process that converts for a process whose Keras runs on JAX or PyTorch.

Keras picks its backend once per process, and the converter traces TensorFlow graphs, so a
notebook that set ``KERAS_BACKEND=jax`` (as the KerasHub tutorials do) converts in a child
process: a model object is saved to a temporary preset first (``families.loading.save_preset``, LoRA
merged into the weights in float32), the child loads it on TensorFlow in float32 and runs the
same ``Converter``. The file is the one converting the same weights from a TensorFlow process
writes. The child reports back in a JSON file: the result, or the typed error to raise there
(``Converter._convert_in_child`` is the parent's side).

    python -m llm_tflite.export.on_tensorflow SPEC.json

``SPEC.json``: ``{"settings": Converter arguments, "model": preset or directory, "output": PATH,
"family": NAME | null, "random_weights": bool, "result": PATH.json}``.
"""

from __future__ import annotations

import json
import sys

from llm_tflite.errors import LLMTFLiteError


def main(argv: list[str]) -> int:
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    from llm_tflite.export.converter import Converter

    try:
        result = Converter(**spec["settings"]).convert(spec["model"], spec["output"], family=spec["family"],
                                                       random_weights=spec["random_weights"])
        answer = {"path": result.path, "size_bytes": result.size_bytes, "metadata": result.metadata}
    except (LLMTFLiteError, ValueError) as e:
        kind = type(e).__name__ if isinstance(e, LLMTFLiteError) else "InvalidArgumentError"
        answer = {"error": kind, "message": str(e)}
    with open(spec["result"], "w", encoding="utf-8") as f:
        json.dump(answer, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
