"""``.litertlm`` bundles, the files LiteRT-LM's engine loads (Android, iOS, desktop, Python).

A bundle is a container: an 8-byte magic ``LITERTLM``, a version, a flatbuffer header
listing sections (``schema/core/litertlm_header_schema.fbs`` in LiteRT-LM), then the
sections: our ``prefill_decode`` ``.tflite`` (record and checksum included; where the
tokenizer section holds the record's own tokenizer, the record points at it instead of
carrying a second copy: ``tokenizer_reference``), the tokenizer (an HF ``tokenizer.json`` or a
SentencePiece model; the family's ``litertlm_tokenizer`` decides) and an ``LlmMetadata`` protobuf (start/stop tokens,
context, default sampler).

This module reads them: ``tflite_section`` takes the model back out of a bundle (no
builder, no protobuf; the header is untrusted data and is bounds-checked), so
``InterpreterRunner`` runs bundles, and ``check_engine_sections`` checks what LiteRT-LM's
engine reads besides the model. ``llm_tflite.export.bundle`` writes them.
"""

from __future__ import annotations

import dataclasses
import json
import struct

from llm_tflite.errors import ModelFileError

MAGIC = b"LITERTLM"
_HEADER_END_AT = 24  # uint64: where the header flatbuffer ends
_HEADER_BEGIN = 32
#: ``AnySectionDataType`` values of the header schema.
SECTION_TYPES = {0: "none", 1: "generic", 2: "deprecated", 3: "tflite_model", 4: "sentencepiece_tokenizer",
                 5: "llm_metadata", 6: "hf_tokenizer_zlib"}


@dataclasses.dataclass(frozen=True)
class Section:
    kind: str
    begin: int
    end: int


def bundle_stop_ids(record: dict) -> list[int]:
    """The stop tokens a bundle of a file with this record lists in its ``LlmMetadata``, in order: the
    end token, then the chat template's end-of-turn tokens (LiteRT-LM's engine stops at every one)."""
    stops = [] if record.get("eos_id") is None else [int(record["eos_id"])]
    stops += [int(i) for i in (record.get("chat") or {}).get("stop_token_ids", []) if int(i) not in stops]
    return stops


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
    found = sections(data, where)
    tokenizers = [s for s in found if s.kind in ("hf_tokenizer_zlib", "sentencepiece_tokenizer")]
    metadata = [s for s in found if s.kind == "llm_metadata"]
    if len(tokenizers) != 1 or len(metadata) != 1:
        raise ModelFileError(f"{where} needs one tokenizer and one LlmMetadata section for LiteRT-LM; it has "
                             f"{len(tokenizers)} and {len(metadata)}: bundle the model again with `llm-tflite bundle`")
    section = tokenizers[0]
    part = section.kind
    try:
        blob = _unpacked(section.kind, bytes(data[section.begin:section.end]))
        if section.kind == "hf_tokenizer_zlib":
            if not isinstance(json.loads(blob).get("model"), dict):
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


#: The tokenizer section each ``litertlm_tokenizer`` kind is written to.
TOKENIZER_SECTIONS = {"hf": "hf_tokenizer_zlib", "sentencepiece": "sentencepiece_tokenizer"}
#: The field of a tokenizer spec that holds its data: tokenizer.json text, a base64 SentencePiece model.
_SPEC_DATA = {"hf_tokenizer": "json", "sentencepiece": "model"}


def _unpacked(section_kind: str, blob: bytes) -> bytes:
    """A tokenizer section's bytes as the tokenizer's own (an ``hf_tokenizer_zlib`` section is an 8-byte
    size and zlib data); ``ValueError`` or ``zlib.error`` when it does not unpack to that size."""
    import zlib

    if section_kind != "hf_tokenizer_zlib":
        return blob
    size = int.from_bytes(blob[:8], "little")
    if len(blob) < 8 or size > MAX_TOKENIZER_BYTES:
        raise ValueError(f"unpacked size {size}")
    text = zlib.decompressobj().decompress(blob[8:], size + 1)
    if len(text) != size:
        raise ValueError(f"unpacks to {len(text)} bytes, not {size}")
    return text


def tokenizer_reference(spec: dict, kind: str, tokenizer: bytes) -> dict | None:
    """The record entry that stands for ``spec`` inside a bundle whose tokenizer section holds
    ``tokenizer`` (``kind``: ``hf`` or ``sentencepiece``): the spec without its data, the section's
    name and the data's sha256. None when the section's bytes are not the spec's own data (a
    family's variant of it, GPT-2's BPE rewritten as ``tokenizer.json``): the record keeps it then."""
    import base64
    import hashlib

    field = _SPEC_DATA.get(spec.get("type"))
    if field is None or TOKENIZER_SECTIONS.get(kind) is None:
        return None
    own = spec[field].encode("utf-8") if field == "json" else base64.b64decode(spec[field])
    if own != tokenizer:
        return None
    return {**{k: v for k, v in spec.items() if k != field}, "section": TOKENIZER_SECTIONS[kind],
            "sha256": hashlib.sha256(tokenizer).hexdigest()}


def bundled_tokenizer(data, spec: dict, where: str = "this file") -> dict:
    """``spec`` whole again: a record's reference to its bundle's tokenizer section (``tokenizer_reference``)
    filled from that section, checked against the record's sha256. Other specs as they are."""
    import base64
    import hashlib
    import zlib

    if "section" not in spec:
        return spec
    if not is_litertlm(data):
        raise ModelFileError(f"{where}: its tokenizer is in the .litertlm bundle the model came from; run the bundle")
    found = [s for s in sections(data, where) if s.kind == spec["section"]]
    if len(found) != 1 or spec["section"] not in TOKENIZER_SECTIONS.values() or spec.get("type") not in _SPEC_DATA:
        raise ModelFileError(f"{where} is a damaged .litertlm bundle (its record's tokenizer section "
                             f"{spec['section']!r} is not there); copy it again or bundle the model again")
    try:
        blob = _unpacked(spec["section"], bytes(data[found[0].begin:found[0].end]))
        text = blob.decode("utf-8") if spec["section"] == "hf_tokenizer_zlib" else None
    except (ValueError, zlib.error) as e:  # UnicodeDecodeError is a ValueError
        raise ModelFileError(f"{where} is a damaged .litertlm bundle (its tokenizer section: {e}); copy it again "
                             "or bundle the model again") from e
    if hashlib.sha256(blob).hexdigest() != spec.get("sha256"):
        raise ModelFileError(f"{where} is a damaged .litertlm bundle (its tokenizer section is not the one its "
                             "model was bundled with); copy it again or bundle the model again")
    whole = {k: v for k, v in spec.items() if k not in ("section", "sha256")}
    return {**whole, _SPEC_DATA[whole["type"]]: text if text is not None else base64.b64encode(blob).decode("ascii")}


def model_bytes(data, where: str = "this file") -> bytes:
    """The ``.tflite`` bytes of a file's contents: the model section of a bundle, else the data itself."""
    return bytes(tflite_section(data, where)) if is_litertlm(data) else data
