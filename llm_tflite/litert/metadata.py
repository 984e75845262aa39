"""What travels inside a ``.tflite`` file: a JSON record in the flatbuffer's metadata.

The record lives in ``Model.metadata`` under the name ``llm_tflite`` (TFLite's own
mechanism, which stock tools preserve). It needs neither TensorFlow nor Keras to read:
the flatbuffer schema comes with ``ai_edge_litert`` (or TensorFlow as a fallback).

Fields: ``format`` (version), ``family``, ``export_mode``, ``quantization``,
``context_length``, ``prefill_lengths``, ``tokenizer`` (its own type and data),
``bos_id``, ``eos_id``, ``add_bos``, ``default_sampler``, ``model`` (sizes), ``kv_cache``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from llm_tflite.errors import ModelFileError
from llm_tflite.litert.flatbuffer import TFLITE_IDENTIFIER, _check_flatbuffer, _schema, pack_model, read_model_file, unpack_model

METADATA_NAME = "llm_tflite"
FORMAT_VERSION = 1


def add_metadata(tflite_model: bytes, record: dict) -> bytes:
    """Return ``tflite_model`` with ``record`` stored as its ``llm_tflite`` metadata."""
    _check_flatbuffer(tflite_model, "the converter output")
    schema = _schema()
    model = unpack_model(tflite_model)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(record, ensure_ascii=False).encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_NAME.encode()] + [entry]
    return pack_model(model)


def read_metadata_from_bytes(buf: bytes, where: str = "this file") -> dict:
    """The ``llm_tflite`` record of a ``.tflite`` flatbuffer held in memory."""
    _check_flatbuffer(buf, where)
    schema = _schema()
    try:
        model = schema.Model.GetRootAs(buf, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == METADATA_NAME.encode():
                data = model.Buffers(entry.Buffer()).DataAsNumpy()
                return json.loads(bytes(data).decode("utf-8"))
    except Exception as e:
        raise ModelFileError(f"{where} is a corrupt TensorFlow Lite file ({type(e).__name__}: {e}); re-convert it") from e
    raise ModelFileError(
        f"{where} is a TensorFlow Lite model but was not made by llm-tflite (no {METADATA_NAME!r} "
        "metadata); convert it with `llm-tflite convert`"
    )


def read_metadata(path: str) -> dict:
    """The ``llm_tflite`` record of the ``.tflite`` file at ``path``.

    Example:
        >>> read_metadata("model.tflite")["export_mode"]  # doctest: +SKIP
        'prefill_decode'
    """
    return read_metadata_from_bytes(read_model_file(path), repr(os.fspath(path)))
