"""``.litertlm`` bundles, the files LiteRT-LM's engine loads (Android, iOS, desktop, Python).

A bundle is a container: an 8-byte magic ``LITERTLM``, a version, a flatbuffer header
listing sections (``schema/core/litertlm_header_schema.fbs`` in LiteRT-LM), then the
sections: our ``prefill_decode`` ``.tflite`` (unchanged, record and checksum included),
the tokenizer (an HF ``tokenizer.json`` or a SentencePiece model; the family's
``litertlm_tokenizer`` decides) and an ``LlmMetadata`` protobuf (start/stop tokens,
context, default sampler).

* ``tflite_section`` reads the model back out of a bundle (no builder, no protobuf; the
  header is untrusted data and is bounds-checked), so ``InterpreterRunner`` runs bundles.
* ``build_bundle`` writes one with the official builder (``litert-lm-builder``), in this
  process when it imports here, otherwise in the small environment that
  ``scripts/setup.sh`` creates for it (its protobuf >= 6.31 cannot share an environment
  with TensorFlow 2.19's protobuf < 6).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
import sys
import tempfile

from llm_tflite.errors import ModelFileError, RuntimeFailure, UnsupportedRuntimeError

MAGIC = b"LITERTLM"
_HEADER_END_AT = 24  # uint64: where the header flatbuffer ends
_HEADER_BEGIN = 32
#: ``AnySectionDataType`` values of the header schema.
SECTION_TYPES = {0: "none", 1: "generic", 2: "deprecated", 3: "tflite_model", 4: "sentencepiece_tokenizer",
                 5: "llm_metadata", 6: "hf_tokenizer_zlib"}
LITERTLM_EXTRA = "pip install 'llm-tflite[litertlm]'"
#: Where ``scripts/setup.sh`` puts the builder's own environment, inside the main one.
HELPER_ENV = "litertlm"
HELPER_VARIABLE = "LLM_TFLITE_LITERTLM_PYTHON"


@dataclasses.dataclass(frozen=True)
class Section:
    kind: str
    begin: int
    end: int


def is_litertlm(data) -> bool:
    return bytes(data[:8]) == MAGIC


class _Header:
    """Just enough of a flatbuffer reader for the bundle header, every offset bounds-checked."""

    def __init__(self, buf: bytes):
        self.buf = buf

    def _u(self, fmt: str, at: int) -> int:
        size = struct.calcsize(fmt)
        if not 0 <= at <= len(self.buf) - size:
            raise ValueError(f"offset {at} outside the header")
        return struct.unpack_from(fmt, self.buf, at)[0]

    def indirect(self, at: int) -> int:
        return at + self._u("<I", at)

    def field(self, table: int, slot: int) -> int | None:
        """Absolute position of field ``slot`` of the table at ``table``, or None when absent."""
        vtable = table - self._u("<i", table)
        vtable_size = self._u("<H", vtable)
        entry = 4 + 2 * slot
        if entry + 2 > vtable_size:
            return None
        offset = self._u("<H", vtable + entry)
        return table + offset if offset else None

    def scalar(self, table: int, slot: int, fmt: str, default: int = 0) -> int:
        at = self.field(table, slot)
        return default if at is None else self._u(fmt, at)

    def tables(self, table: int, slot: int) -> list[int]:
        at = self.field(table, slot)
        if at is None:
            return []
        vector = self.indirect(at)
        count = self._u("<I", vector)
        if count > len(self.buf) // 4:
            raise ValueError("vector longer than the header")
        return [self.indirect(vector + 4 + 4 * i) for i in range(count)]


def sections(data, where: str = "this file") -> list[Section]:
    """The sections a bundle's header lists; ``ModelFileError`` if the header is damaged."""
    damaged = f"{where} is a damaged .litertlm bundle"
    if len(data) < _HEADER_BEGIN or not is_litertlm(data):
        raise ModelFileError(f"{where} is not a .litertlm bundle (no LITERTLM magic)")
    major = struct.unpack_from("<I", data, 8)[0]
    if major != 1:
        raise ModelFileError(f"{where} is a .litertlm bundle of format {major}.x; this version reads 1.x: "
                             "upgrade llm-tflite")
    header_end = struct.unpack_from("<Q", data, _HEADER_END_AT)[0]
    if not _HEADER_BEGIN + 8 <= header_end <= len(data):
        raise ModelFileError(f"{damaged} (header end {header_end} outside the file of {len(data)} bytes)")
    header = _Header(bytes(data[_HEADER_BEGIN:header_end]))
    try:
        root = header.indirect(0)
        section_metadata = header.field(root, 1)
        if section_metadata is None:
            raise ValueError("no section list")
        found = []
        for obj in header.tables(header.indirect(section_metadata), 0):
            begin, end = header.scalar(obj, 1, "<Q"), header.scalar(obj, 2, "<Q")
            kind = SECTION_TYPES.get(header.scalar(obj, 3, "<B"), "unknown")
            if not header_end <= begin <= end <= len(data):
                raise ValueError(f"section {begin}..{end} outside the file")
            found.append(Section(kind, begin, end))
    except (ValueError, struct.error) as e:
        raise ModelFileError(f"{damaged} ({e}); copy it again or bundle the model again") from e
    return found


def tflite_section(data, where: str = "this file") -> memoryview:
    """The ``.tflite`` model inside a bundle (a view, no copy)."""
    models = [s for s in sections(data, where) if s.kind == "tflite_model"]
    if len(models) != 1:
        raise ModelFileError(f"{where} holds {len(models)} TFLite models; llm-tflite runs bundles with one "
                             "prefill_decode model (made by `llm-tflite bundle`). Run other bundles with "
                             "backend='litert-lm'")
    return memoryview(data)[models[0].begin:models[0].end]


def _check_protobuf(data: bytes) -> None:
    """Well-formed protobuf wire format (field keys, varints, lengths inside the data)."""
    at = 0

    def varint() -> int:
        nonlocal at
        value = shift = 0
        while True:
            if at >= len(data) or shift > 63:
                raise ValueError("truncated varint")
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while at < len(data):
        key = varint()
        wire = key & 7
        if key >> 3 == 0 or wire not in (0, 1, 2, 5):
            raise ValueError(f"bad field key {key}")
        if wire == 0:
            varint()
        else:
            length = {1: 8, 5: 4}.get(wire) or varint()
            if at + length > len(data):
                raise ValueError("field longer than the message")
            at += length


#: Largest tokenizer a bundle may unpack to (a 256k-token tokenizer.json is ~20 MB).
MAX_TOKENIZER_BYTES = 1 << 28


def check_engine_sections(data, where: str = "this file") -> None:
    """What LiteRT-LM's engine reads besides the model, checked before it does (it would not
    always fail cleanly): one tokenizer that unpacks and parses, one well-formed ``LlmMetadata``."""
    import zlib

    found = sections(data, where)
    tokenizers = [s for s in found if s.kind in ("hf_tokenizer_zlib", "sentencepiece_tokenizer")]
    metadata = [s for s in found if s.kind == "llm_metadata"]
    if len(tokenizers) != 1 or len(metadata) != 1:
        raise ModelFileError(f"{where} needs one tokenizer and one LlmMetadata section for LiteRT-LM; it has "
                             f"{len(tokenizers)} and {len(metadata)}: bundle the model again with `llm-tflite bundle`")
    section = tokenizers[0]
    blob = bytes(data[section.begin:section.end])
    part = section.kind
    try:
        if section.kind == "hf_tokenizer_zlib":
            size = int.from_bytes(blob[:8], "little")
            if len(blob) < 8 or size > MAX_TOKENIZER_BYTES:
                raise ValueError(f"unpacked size {size}")
            text = zlib.decompressobj().decompress(blob[8:], size + 1)
            if len(text) != size or not isinstance(json.loads(text).get("model"), dict):
                raise ValueError("not an HF tokenizer.json")
        else:
            import sentencepiece

            if sentencepiece.SentencePieceProcessor(model_proto=blob).get_piece_size() < 1:
                raise ValueError("empty SentencePiece model")
        part = "llm_metadata"
        _check_protobuf(bytes(data[metadata[0].begin:metadata[0].end]))
    except Exception as e:  # zlib.error, JSON, sentencepiece's RuntimeError, ValueError
        raise ModelFileError(f"{where} is a damaged .litertlm bundle (its {part} section: {type(e).__name__}: {e}); "
                             "copy it again or bundle the model again") from e


def model_bytes(data, where: str = "this file") -> bytes:
    """The ``.tflite`` bytes of a file's contents: the model section of a bundle, else the data itself."""
    return bytes(tflite_section(data, where)) if is_litertlm(data) else data


# -- writing -------------------------------------------------------------------
def llm_metadata_textproto(record: dict, *, max_num_tokens: int | None = None) -> str:
    """LiteRT-LM's ``LlmMetadata`` for one of our files: start/stop tokens, context, greedy by default
    (what ``InterpreterRunner.generate`` does without a sampler)."""
    lines = []
    if record.get("add_bos") and record.get("bos_id") is not None:
        lines.append(f"start_token {{ token_ids {{ ids: {int(record['bos_id'])} }} }}")
    if record.get("eos_id") is not None:
        lines.append(f"stop_tokens {{ token_ids {{ ids: {int(record['eos_id'])} }} }}")
    lines.append(f"max_num_tokens: {int(max_num_tokens or record['context_length'])}")
    # k = 1 is greedy; the CPU engine implements only the TOP_P type (runtime/components/sampler_factory.cc)
    lines.append("sampler_params { type: TOP_P k: 1 p: 1.0 temperature: 1.0 }")
    lines.append("llm_model_type { generic_model {} }")
    return "\n".join(lines) + "\n"


def find_builder() -> list[str] | None:
    """None: the builder imports in this process. Else the helper Python to run the worker with."""
    try:
        from litert_lm_builder import litertlm_builder  # noqa: F401

        return None
    except Exception:  # ImportError, or protobuf's VersionError next to TensorFlow 2.19
        pass
    configured = os.environ.get(HELPER_VARIABLE)
    if configured:
        if not os.access(configured, os.X_OK):
            raise UnsupportedRuntimeError(f"{HELPER_VARIABLE}={configured!r} is not an executable Python; point it "
                                          "at the python of an environment with litert-lm-builder")
        return [configured]
    helper = os.path.join(sys.prefix, HELPER_ENV, "bin", "python")
    if os.access(helper, os.X_OK):
        return [helper]
    raise UnsupportedRuntimeError(
        "writing .litertlm bundles needs LiteRT-LM's builder (litert-lm-builder), which needs protobuf >= 6.31 "
        "and so cannot be installed next to TensorFlow 2.19. Either run `llm-tflite bundle` in an environment "
        f"without TensorFlow ({LITERTLM_EXTRA}), or create the builder's own environment: "
        f"`python -m venv {os.path.join(sys.prefix, HELPER_ENV)} && "
        f"{helper} -m pip install litert-lm-builder` (scripts/setup.sh does this), or set {HELPER_VARIABLE}"
    )


def _run_builder(spec: dict) -> None:
    from llm_tflite.litert import litertlm_builder_worker

    command = find_builder()
    if command is None:
        try:
            litertlm_builder_worker.build(spec)
        except Exception as e:
            raise RuntimeFailure(f"LiteRT-LM's builder failed: {type(e).__name__}: {e}") from e
        return
    spec_path = os.path.join(os.path.dirname(spec["output"]), "spec.json")
    with open(spec_path, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    done = subprocess.run([*command, litertlm_builder_worker.__file__, spec_path], capture_output=True, text=True)
    if done.returncode == 3:
        raise UnsupportedRuntimeError(f"{command[0]} has no litert-lm-builder: {command[0]} -m pip install "
                                      "litert-lm-builder")
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeFailure(f"LiteRT-LM's builder failed ({command[0]}):\n{tail}")


def family_of(record: dict):
    """The family that made the file (its tokenizer hook), or the base defaults if it is not installed."""
    from llm_tflite.errors import UnknownFamilyError
    from llm_tflite.families.base import ModelFamily
    from llm_tflite.plugins.registry import get_family

    try:
        return get_family(record["family"])
    except UnknownFamilyError:
        return ModelFamily()


def build_bundle(model_path, output, *, max_num_tokens: int | None = None) -> str:
    """Bundle a ``prefill_decode`` file with its tokenizer and ``LlmMetadata`` into ``output`` (``.litertlm``).

    Args:
        model_path: a ``.tflite`` file from ``llm-tflite convert`` (``--mode prefill_decode``).
        output: the bundle to write; written through a temporary file, so a failure leaves none.
        max_num_tokens: the engine's token budget (default: the file's context length).

    Example:
        >>> build_bundle("model.tflite", "model.litertlm")  # doctest: +SKIP
        'model.litertlm'
    """
    from llm_tflite.litert.flatbuffer import check_writable, read_model_file
    from llm_tflite.litert.metadata import read_verified_metadata

    model_path, output = os.fspath(model_path), os.fspath(output)
    check_writable(output)
    data = read_model_file(model_path)
    if is_litertlm(data):
        raise ModelFileError(f"{model_path!r} is already a .litertlm bundle")
    record = read_verified_metadata(data, repr(model_path))
    if record["export_mode"] != "prefill_decode":
        raise ModelFileError(f"{model_path!r} is a generate-mode file; LiteRT-LM runs prefill_decode files: "
                             "convert with --mode prefill_decode")
    if record.get("kv_cache_layout") != "transposed":
        raise ModelFileError(f"{model_path!r} was converted before llm-tflite wrote LiteRT-LM's KV-cache "
                             "layout (its record has no kv_cache_layout); convert the model again")
    if max_num_tokens is not None and not 1 <= max_num_tokens <= record["context_length"]:
        from llm_tflite.errors import InvalidArgumentError

        raise InvalidArgumentError(f"max_num_tokens must be 1..{record['context_length']} (the file's context), "
                                   f"got {max_num_tokens}")
    kind, tokenizer = family_of(record).litertlm_tokenizer(record["tokenizer"])
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".litertlm-") as work:
        tokenizer_path = os.path.join(work, "tokenizer.json" if kind == "hf" else "tokenizer.model")
        with open(tokenizer_path, "wb") as f:
            f.write(tokenizer)
        metadata_path = os.path.join(work, "llm_metadata.textproto")
        with open(metadata_path, "w", encoding="utf-8") as f:
            f.write(llm_metadata_textproto(record, max_num_tokens=max_num_tokens))
        partial = os.path.join(work, "model.litertlm")
        _run_builder({"model": os.path.abspath(model_path), "tokenizer": tokenizer_path, "tokenizer_kind": kind,
                      "llm_metadata": metadata_path, "output": partial})
        tflite_section(read_model_file(partial), "the bundle just written")  # it reads back
        os.replace(partial, output)
    return output
