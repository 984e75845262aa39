"""Conversion from a process whose Keras runs on JAX or PyTorch: a child process on TensorFlow.

Keras picks its backend once per process, and the converter traces TensorFlow graphs, so a
notebook that set ``KERAS_BACKEND=jax`` (as the KerasHub tutorials do) converts in a child
process: a model object is saved to a temporary preset first (``save_to_preset``, LoRA merged
into the weights in float32), the child loads it on TensorFlow in float32 and runs the
same ``Converter``. The file is the one converting the same weights from a TensorFlow process
writes. The child reports back in a JSON file: the result, or the typed error to raise here.

    python -m llm_tflite.export.on_tensorflow SPEC.json

``SPEC.json``: ``{"settings": Converter arguments, "model": preset or directory, "output": PATH,
"family": NAME | null, "random_weights": bool, "result": PATH.json}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from llm_tflite import errors
from llm_tflite.errors import ConversionError, LLMTFLiteError, ModelSourceError
from llm_tflite.families.loading import save_preset


def convert_in_child(settings: dict, model, output, *, family, random_weights, backend: str, stage):
    """Convert ``model`` in a TensorFlow child process; returns what ``Converter.convert`` returns.

    ``stage(text)`` shows what happens (the progress bar's stage, or a log line).
    """
    from llm_tflite.export.converter import ConversionResult

    with tempfile.TemporaryDirectory(prefix="llm_tflite_convert_") as tmp:
        if isinstance(model, (str, os.PathLike)):
            source = os.fspath(model)
        else:
            stage(f"Keras runs on {backend} here: saving the model to a temporary preset for TensorFlow")
            source = os.path.join(tmp, "preset")
            if not hasattr(model, "save_to_preset"):
                raise ModelSourceError(f"a {type(model).__name__} from a {backend} process converts through a preset, "
                                       "and it has no save_to_preset: pass a KerasHub CausalLM, or a preset directory")
            save_preset(model, source)
        stage(f"Keras runs on {backend} here: converting on TensorFlow in a child process")
        spec = {"settings": settings, "model": source, "output": os.fspath(output), "family": family,
                "random_weights": bool(random_weights), "result": os.path.join(tmp, "result.json")}
        spec_path = os.path.join(tmp, "spec.json")
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        done = subprocess.run([sys.executable, "-m", __name__, spec_path], env=env)
        try:
            with open(spec["result"], encoding="utf-8") as f:
                result = json.load(f)
        except (OSError, ValueError):
            raise ConversionError(f"the TensorFlow child process that converts for this {backend} process ended "
                                  f"with exit code {done.returncode} and no result (its output is above); "
                                  "convert from a shell with `llm-tflite convert`, which runs on TensorFlow") from None
    if "error" in result:
        kind = getattr(errors, result["error"], None)
        if not (isinstance(kind, type) and issubclass(kind, LLMTFLiteError)):
            kind = ConversionError
        raise kind(result["message"])
    return ConversionResult(result["path"], result["size_bytes"], result["metadata"])


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
