"""Reading text corpora: plain-text files, folders of them, JSON / JSON Lines records."""

from __future__ import annotations

import json
import os

from llm_tflite.errors import DataError

TEXT_SUFFIXES = (".txt", ".json", ".jsonl")


def _read_utf8(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path!r}: {e}") from e
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path!r} is not UTF-8 text (bad byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "convert it, e.g. iconv -f LATIN1 -t UTF-8"
        ) from e


def _record_text(record, field: str, path: str, index: int) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{path!r}: record {index} is a {type(record).__name__}, expected a JSON object")
    if field not in record:
        raise DataError(
            f"{path!r}: record {index} has no field {field!r} (it has: {', '.join(sorted(record)) or 'none'}); "
            "choose one with --text-field"
        )
    value = record[field]
    if isinstance(value, list):  # e.g. a poem's "paragraphs"
        return "".join(str(v) for v in value)
    return str(value)


def _file_texts(path: str, text_field: str | None) -> list[str]:
    content = _read_utf8(path)
    if path.endswith(".txt"):
        return [content]
    if text_field is None:
        raise DataError(f"{path!r} holds JSON records; name the field with the text (--text-field, e.g. paragraphs)")
    try:
        if path.endswith(".jsonl"):
            records = [json.loads(line) for line in content.splitlines() if line.strip()]
        else:
            records = json.loads(content)
    except json.JSONDecodeError as e:
        raise DataError(f"{path!r} is not valid JSON: {e}") from e
    if isinstance(records, dict):
        records = [records]
    return [_record_text(r, text_field, path, i) for i, r in enumerate(records)]


def split_heldout(text: str, fraction: float) -> tuple[str, str]:
    """``(before, held_out)``: the last ``fraction`` of the characters is held out.

    The rule every command uses (tiny Shakespeare's held-out split is ``fraction=0.1``).
    """
    if not 0 < fraction < 1:
        raise DataError(f"the held-out fraction must be between 0 and 1, got {fraction}")
    cut = int(len(text) * (1 - fraction))
    return text[:cut], text[cut:]


def split_documents(texts: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """``(train, held_out)`` documents: the last ``fraction`` of ten or more documents, else the
    tail of their joined text (``split_heldout``)."""
    if len(texts) >= 10:
        cut = max(1, int(len(texts) * fraction))
        return texts[:-cut], texts[-cut:]
    before, held_out = split_heldout("\n".join(texts), fraction)
    return [before], [held_out]


def load_texts(paths, text_field: str | None = None) -> list[str]:
    """Documents from files and folders (``.txt`` whole, ``.json``/``.jsonl`` one per record).

    Args:
        paths: a path or a list of paths; folders contribute their text files, sorted.
        text_field: the record field holding the text (a list of strings is joined).

    Returns:
        Non-empty documents, in order.

    Raises:
        DataError: a path is missing, a file is not UTF-8 or not valid JSON, a record lacks
            the field, or no text was found.

    Example:
        >>> load_texts(["poet.tang.0.json"], text_field="paragraphs")[0][:7]  # doctest: +SKIP
        '欲出未出光辣達'
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[str] = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            found = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(TEXT_SUFFIXES))
            if not found:
                raise DataError(f"folder {path!r} holds no {', '.join(TEXT_SUFFIXES)} files")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise DataError(f"no such file or folder: {path!r}")
    texts = [t for f in files for t in _file_texts(f, text_field) if t.strip()]
    if not texts:
        raise DataError(f"no text found in {', '.join(files)}: the corpus is empty")
    return texts
