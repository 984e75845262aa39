"""What travels inside a ``.tflite`` file: a JSON record in the flatbuffer's metadata.

The record lives in ``Model.metadata`` under the name ``llm_tflite`` (TFLite's own
mechanism, which stock tools preserve). It needs neither TensorFlow nor Keras to read:
the flatbuffer schema comes with ``ai_edge_litert`` (or TensorFlow as a fallback).

Fields: ``format`` (version), ``family``, ``export_mode``, ``quantization``,
``context_length``, ``prefill_lengths``, ``score_lengths`` (format 3: ``prefill_{L}`` outputs no
logits, ``score_{L}`` does; before, ``prefill_{L}`` did), ``kv_cache`` (``num_layers``, ``num_kv_heads``, ``head_dim``; with
local layers ``sliding_windows`` and each layer's cache ``lengths``; format 4: ``dtype`` ``int8``, the
caches int8 with ``kv_cache_{k|v}_{i}_scale`` beside them), ``kv_cache_layout`` (``"transposed"``:
values ``[1, heads, head_dim, C]``; format 5 ``"bnth"``: values ``[1, heads, C, head_dim]`` as keys are;
none: both ``[1, C, heads, head_dim]``), ``tokenizer`` (its own type and data),
``bos_id``, ``eos_id``, ``add_bos``, ``default_sampler``, ``model`` (sizes), ``kv_cache``,
``chat`` (optional: ``template``, ``bos_token``, ``eos_token``, ``stop_token_ids``),
and (format 2) ``sha256``: the checksum of the whole file with this field's value zeroed,
so a damaged copy is refused before any byte of it reaches the native runtime.

Files are untrusted data: ``read_verified_metadata`` checks the checksum and the record's
schema (keys, types, ranges, format version) and returns nothing it did not check.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from llm_tflite.errors import ModelFileError
from llm_tflite.litert.flatbuffer import (check_flatbuffer, pack_into_bytearray, read_model_file, release_pages, tflite_schema,
                                         unpack_model)
from llm_tflite.litert.litertlm import model_bytes

METADATA_NAME = "llm_tflite"
#: Written for generate-mode files; 1 (no checksum) and 2 (logits from ``prefill_{L}``, no ``score_{L}``)
#: are still read.
FORMAT_VERSION = 3
#: int8 caches (``kv_cache.dtype``), which a format-3 reader cannot run.
QUANTIZED_CACHE_FORMAT = 4
#: Written for prefill_decode files: caches in the ``"bnth"`` layout, which a format-4 reader would
#: refuse as damaged (it expects values ``[1, heads, head_dim, C]``).
BNTH_LAYOUT_FORMAT = 5
#: Ring caches stored in context-length-shaped buffers (``kv_cache.rings_as_context``,
#: ``stored_cache_shape``), which a format-5 reader would refuse as damaged.
RINGS_AS_CONTEXT_FORMAT = 6
READABLE_FORMATS = (1, 2, 3, 4, 5, 6)
#: The axes of a key and of a value cache in each layout a record may name (``kv_cache_layout``).
CACHE_AXES = {
    "bnth": (("batch", "heads", "slots", "dim"),) * 2,  # what llm_tflite.families.ops writes
    "transposed": (("batch", "heads", "slots", "dim"), ("batch", "heads", "dim", "slots")),  # litert-torch's
    None: (("batch", "slots", "heads", "dim"),) * 2,  # files written before the layout was recorded
}
KV_CACHE_LAYOUTS = tuple(layout for layout in CACHE_AXES if layout)


def stored_cache_shape(shape, context_length: int, rings_as_context: bool) -> list[int]:
    """How a cache of ``shape`` (``[1, heads, slots, dim]``) is stored in a file: as it is, or, for a ring
    (fewer slots than the context) of a file with ``kv_cache.rings_as_context``, as
    ``[1, 1, context, heads * slots * dim / context]``, the same bytes in the same order (the graph
    reshapes them). LiteRT-LM 0.18 takes the smallest axis 2 of the caches for the file's token
    limit, so a ring stored as it is would stop it at the local layers' window; stored so, it runs
    the file to its context. The converter makes each ring's size a multiple of the context."""
    shape = [int(n) for n in shape]
    if not rings_as_context or shape[2] >= context_length:
        return shape
    size = int(np.prod(shape))
    if size % context_length:
        raise ModelFileError(f"a ring cache of shape {shape} cannot be stored in [1, 1, {context_length}, n]: "
                             "the file is damaged or inconsistent, re-convert it")
    return [1, 1, context_length, size // context_length]


#: The caches' types (``Converter(kv_cache=...)``, the record's ``kv_cache.dtype``).
KV_CACHE_TYPES = ("float32", "int8")
CHECKSUM_KEY = "sha256"
_UNSET_CHECKSUM = "0" * 64
#: Longest chat template a record may carry (``llm_tflite.tokenizers.chat_template`` renders it).
MAX_CHAT_TEMPLATE_CHARS = 256 * 1024
#: The most sequences a ``decode_batch_{B}`` signature decodes in one call.
MAX_BATCH_SIZE = 32


def _checksum_field(value: str) -> bytes:
    return f'"{CHECKSUM_KEY}": "{value}"'.encode()


def _digest(data: bytes, field_at: int) -> str:
    """sha256 of ``data`` with the checksum value at ``field_at`` read as zeros."""
    start = field_at + len(_checksum_field("")) - 1
    end = start + len(_UNSET_CHECKSUM)
    digest = hashlib.sha256()
    _hash_range(digest, data, 0, start)
    digest.update(_UNSET_CHECKSUM.encode())
    _hash_range(digest, data, end, len(data))
    return digest.hexdigest()


def _hash_range(digest, data, start: int, end: int, chunk: int = 32 << 20) -> None:
    """Hash ``data[start:end]`` in chunks; a mapped file's pages are released as they are read."""
    with memoryview(data) as view:
        for at in range(start, end, chunk):
            stop = min(at + chunk, end)
            digest.update(view[at:stop])
            release_pages(data, at, stop)


def add_metadata(tflite_model: bytes, record: dict, *, as_bytes: bool = True) -> bytes | bytearray:
    """Return ``tflite_model`` with ``record`` stored as its ``llm_tflite`` metadata, checksummed
    (``as_bytes=False``: the bytearray it was packed in, without a copy of the file)."""
    check_flatbuffer(tflite_model, "the converter output")
    return pack_with_metadata(unpack_model(tflite_model), record, as_bytes=as_bytes)


def pack_with_metadata(model, record: dict, *, as_bytes: bool = True) -> bytes | bytearray:
    """Serialize the ``ModelT`` ``model`` with ``record`` as its ``llm_tflite`` metadata, checksummed."""
    schema = tflite_schema()
    buffer = schema.BufferT()
    record = {k: v for k, v in record.items() if k != CHECKSUM_KEY}
    record = {"format": FORMAT_VERSION, **record, CHECKSUM_KEY: _UNSET_CHECKSUM}  # the checksum last
    buffer.data = np.frombuffer(json.dumps(record, ensure_ascii=False).encode("utf-8"), np.uint8)
    existing = [m for m in (model.metadata or []) if m.name == METADATA_NAME.encode()]
    if existing and _only_the_record_reads(model, existing[0].buffer):
        model.buffers[existing[0].buffer] = buffer  # a record written again replaces the old one's buffer
        return _pack_checksummed(model, as_bytes)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_NAME.encode()] + [entry]
    return _pack_checksummed(model, as_bytes)


def _only_the_record_reads(model, index) -> bool:
    """Whether buffer ``index`` exists and no tensor or other metadata entry reads it."""
    if not isinstance(index, int) or not 0 < index < len(model.buffers):
        return False
    readers = [t.buffer for g in model.subgraphs or [] for t in g.tensors or []]
    readers += [m.buffer for m in model.metadata or [] if m.name != METADATA_NAME.encode()]
    return index not in readers


def _pack_checksummed(model, as_bytes: bool) -> bytes | bytearray:
    packed = pack_into_bytearray(model)
    field_at = packed.rfind(_checksum_field(_UNSET_CHECKSUM), *_record_span(packed, "the converted model"))
    value_at = field_at + len(_checksum_field("")) - 1
    packed[value_at : value_at + 64] = _digest(packed, field_at).encode()
    return bytes(packed) if as_bytes else packed


def _record_span(buf, where: str) -> tuple[int, int]:
    """Where the ``llm_tflite`` record's bytes lie in the flatbuffer ``buf``: ``(start, end)``."""
    check_flatbuffer(buf, where)
    schema = tflite_schema()
    try:
        model = schema.Model.GetRootAs(buf, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == METADATA_NAME.encode():
                table = model.Buffers(entry.Buffer())._tab
                field = table.Offset(4)  # Buffer.data
                start = table.Vector(field) if field else 0
                end = start + (table.VectorLen(field) if field else 0)
                if not 0 <= start <= end <= len(buf):
                    raise IndexError(f"record bytes {start}..{end} outside the file")
                return start, end
    except Exception as e:
        raise ModelFileError(f"{where} is a corrupt TensorFlow Lite file ({type(e).__name__}: {e}); re-convert it") from e
    raise ModelFileError(
        f"{where} is a TensorFlow Lite model but was not made by llm-tflite (no {METADATA_NAME!r} "
        "metadata); convert it with `llm-tflite convert`"
    )


def read_metadata_from_bytes(buf: bytes, where: str = "this file") -> dict:
    """The ``llm_tflite`` record of a ``.tflite`` flatbuffer held in memory (or mapped)."""
    start, end = _record_span(buf, where)
    try:
        return json.loads(bytes(buf[start:end]).decode("utf-8"))
    except Exception as e:
        raise ModelFileError(f"{where} is a corrupt TensorFlow Lite file ({type(e).__name__}: {e}); re-convert it") from e


def read_metadata(path: str) -> dict:
    """The ``llm_tflite`` record of the ``.tflite`` file (or ``.litertlm`` bundle of one) at ``path``.

    Example:
        >>> read_metadata("model.tflite")["export_mode"]  # doctest: +SKIP
        'prefill_decode'
    """
    where = repr(os.fspath(path))
    return read_metadata_from_bytes(model_bytes(read_model_file(path), where), where)


def verify_checksum(buf: bytes, record: dict, where: str = "this file") -> None:
    """``ModelFileError`` unless the file's bytes match the checksum its record carries."""
    expected = record.get(CHECKSUM_KEY)
    if record.get("format") == 1 and expected is None:
        return  # written before checksums existed
    damaged = (f"{where} is damaged: its bytes do not match the checksum written at conversion (truncated or "
               "corrupted copy?); copy the file again or re-convert it")
    if not isinstance(expected, str) or len(expected) != 64:
        raise ModelFileError(damaged)
    # Searched for in the record only: a scan of a mapped file would read every page of it.
    field_at = buf.rfind(_checksum_field(expected), *_record_span(buf, where))
    if field_at < 0 or _digest(buf, field_at) != expected:
        raise ModelFileError(damaged)


def _require(condition: bool, where: str, what: str) -> None:
    if not condition:
        raise ModelFileError(f"{where} has an invalid llm_tflite record: {what}; re-convert it with this version")


def _is_int(value, low=None, high=None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            and (low is None or value >= low) and (high is None or value <= high))


def validate_record(record, where: str = "this file") -> dict:
    """The record if it has every key the runtime reads, with the right types and ranges.

    Raises ``ModelFileError`` naming the first problem (a newer format: "upgrade llm-tflite").
    """
    _require(isinstance(record, dict), where, "not a JSON object")
    fmt = record.get("format")
    if _is_int(fmt) and fmt > max(READABLE_FORMATS):
        raise ModelFileError(f"{where} was written in llm-tflite file format {fmt}; this version reads "
                             f"{', '.join(map(str, READABLE_FORMATS))}: upgrade llm-tflite")
    _require(fmt in READABLE_FORMATS, where, f"format {fmt!r} is not one of {READABLE_FORMATS}")
    for key in ("family", "quantization"):
        _require(isinstance(record.get(key), str), where, f"{key!r} must be a string")
    mode = record.get("export_mode")
    _require(mode in ("prefill_decode", "generate"), where, f"unknown export mode {mode!r}")
    tokenizer = record.get("tokenizer")
    _require(isinstance(tokenizer, dict) and isinstance(tokenizer.get("type"), str), where,
             "'tokenizer' must be an object with a 'type'")
    for key in ("bos_id", "eos_id"):
        _require(record.get(key) is None or _is_int(record.get(key), 0), where, f"{key!r} must be a token id or null")
    _require(isinstance(record.get("add_bos", False), bool), where, "'add_bos' must be true or false")
    _require(_is_int(record.get("context_length"), 1, 1 << 20), where, "'context_length' must be 1..1048576")
    chat = record.get("chat")
    if chat is not None:
        _require(isinstance(chat, dict) and isinstance(chat.get("template"), str)
                 and 0 < len(chat["template"]) <= MAX_CHAT_TEMPLATE_CHARS, where,
                 f"'chat' must give a 'template' of 1..{MAX_CHAT_TEMPLATE_CHARS} characters")
        _require(all(chat.get(k) is None or (isinstance(chat[k], str) and len(chat[k]) <= 256)
                     for k in ("bos_token", "eos_token")), where, "'chat' bos_token/eos_token must be short strings or null")
        stops = chat.get("stop_token_ids", [])
        _require(isinstance(stops, list) and len(stops) <= 64 and all(_is_int(i, 0, (1 << 24) - 1) for i in stops),
                 where, "'chat' stop_token_ids must be a list of token ids")
    if mode == "prefill_decode":
        lengths = record.get("prefill_lengths")
        _require(isinstance(lengths, list) and all(_is_int(n, 1, record["context_length"]) for n in lengths), where,
                 "'prefill_lengths' must be a list of lengths 1..context_length")
        scores = record.get("score_lengths", [] if fmt < 3 else None)
        _require(isinstance(scores, list) and all(_is_int(n, 1, record["context_length"]) for n in scores), where,
                 "'score_lengths' must be a list of lengths 1..context_length")
        for key in ("decode_windows", "prefill_windows", "decode_batch_windows"):
            windows = record.get(key, [])
            _require(isinstance(windows, list) and all(_is_int(w, 1, record["context_length"] - 1) for w in windows),
                     where, f"'{key}' must be a list of windows 1..context_length-1")
        prompts = record.get("prompt_lengths", [])
        _require(isinstance(prompts, list) and all(n in lengths for n in prompts), where,
                 "'prompt_lengths' must be a list of prefill lengths")
        batches = record.get("decode_batch_sizes", [])
        _require(isinstance(batches, list) and all(_is_int(b, 2, MAX_BATCH_SIZE) for b in batches),
                 where, f"'decode_batch_sizes' must be a list of sizes 2..{MAX_BATCH_SIZE}")
        cache = record.get("kv_cache")
        _require(isinstance(cache, dict) and all(_is_int(cache.get(k), 1, 1 << 16)
                                                 for k in ("num_layers", "num_kv_heads", "head_dim")),
                 where, "'kv_cache' must give num_layers, num_kv_heads and head_dim")
        layers = cache["num_layers"]
        lengths = cache.get("lengths", [record["context_length"]] * layers)
        _require(isinstance(lengths, list) and len(lengths) == layers
                 and all(_is_int(n, 1, record["context_length"]) for n in lengths), where,
                 "'kv_cache' lengths must give each layer's cache length, 1..context_length")
        windows = cache.get("sliding_windows", [None] * layers)
        _require(isinstance(windows, list) and len(windows) == layers
                 and all(w is None or _is_int(w, 1, 1 << 20) for w in windows), where,
                 "'kv_cache' sliding_windows must give each layer's window or null")
        _require(all(n == record["context_length"] or w is not None for n, w in zip(lengths, windows)), where,
                 "'kv_cache': only a layer with a sliding window may keep fewer slots than the context")
        _require(cache.get("dtype", "float32") in KV_CACHE_TYPES and (cache.get("dtype", "float32") == "float32"
                                                                      or fmt >= QUANTIZED_CACHE_FORMAT), where,
                 f"'kv_cache' dtype must be one of {', '.join(KV_CACHE_TYPES)} (int8 from format "
                 f"{QUANTIZED_CACHE_FORMAT})")
        _require(record.get("kv_cache_layout") in (None, *KV_CACHE_LAYOUTS), where,
                 f"'kv_cache_layout' must be one of {', '.join(KV_CACHE_LAYOUTS)}")
        context, as_context = record["context_length"], cache.get("rings_as_context", False)
        rings = [n * cache["num_kv_heads"] * cache["head_dim"] for n in lengths if n < context]
        _require(as_context is False or (as_context is True and fmt >= RINGS_AS_CONTEXT_FORMAT and rings
                                         and all(size % context == 0 for size in rings)
                                         and record.get("kv_cache_layout") == "bnth"
                                         and cache.get("dtype", "float32") == "float32"), where,
                 "'kv_cache' rings_as_context must be true or false; true (from format "
                 f"{RINGS_AS_CONTEXT_FORMAT}) for float32 'bnth' caches with rings whose size the context divides")
    else:
        _require(_is_int(record.get("max_length"), 1, 1 << 20), where, "'max_length' must be a positive integer")
    return record


def read_verified_metadata(buf: bytes, where: str = "this file") -> dict:
    """The record of a file about to run: checksum verified, schema validated."""
    record = validate_record(read_metadata_from_bytes(buf, where), where)
    verify_checksum(buf, record, where)
    return record
