"""Reading text corpora: plain-text files, folders of them, JSON / JSON Lines records."""

from __future__ import annotations

import json
import os

from llm_tflite.console import logger
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


def _record_text(record, field: str, where: str) -> str | None:
    """The text of one record's ``field``; None when the field is null (the record is skipped)."""
    if not isinstance(record, dict):
        raise DataError(f"{where} is a {type(record).__name__}, expected a JSON object")
    if field not in record:
        raise DataError(
            f"{where} has no field {field!r} (it has: {', '.join(sorted(record)) or 'none'}); "
            "choose one with --text-field"
        )
    value = record[field]
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):  # e.g. a poem's "paragraphs"
        return "".join(value)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} holds a {type(value).__name__}, not text (a string or a list of "
                        "strings); choose the field with the text (--text-field)")
    return value


def _file_texts(path: str, text_field: str | None) -> list[str]:
    content = _read_utf8(path)
    if path.endswith(".txt"):
        return [content]
    if text_field is None:
        raise DataError(f"{path!r} holds JSON records; name the field with the text (--text-field, e.g. paragraphs)")
    if path.endswith(".jsonl"):
        records = []  # (where, record): errors name the file's line
        for number, line in enumerate(content.splitlines(), start=1):
            if line.strip():
                try:
                    records.append((f"{path}:{number}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from e
    else:
        try:
            loaded = json.loads(content)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from e
        loaded = [loaded] if isinstance(loaded, dict) else loaded
        if not isinstance(loaded, list):
            raise DataError(f"{path!r} holds a JSON {type(loaded).__name__}; expected records (objects)")
        records = [(f"{path!r}: record {i}", r) for i, r in enumerate(loaded)]
    texts = [_record_text(r, text_field, where) for where, r in records]
    skipped = sum(t is None for t in texts)
    if skipped:
        logger.warning("%s: skipped %d record(s) whose %r is null", path, skipped, text_field)
    return [t for t in texts if t is not None]


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
    """Documents from files and folders (``.txt`` whole, ``.json``/``.jsonl`` one per record), or from
    datasets: ``tfds:NAME[:SPLIT]`` (TensorFlow Datasets) and ``hf:NAME[:SPLIT]`` (Hugging Face
    ``datasets``, streamed), one document per record (``llm_tflite.training.datasets``).

    Args:
        paths: a path or dataset, or a list of them; folders contribute their text files, sorted.
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
    from llm_tflite.training.datasets import dataset_texts, is_dataset

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    sources: list[str] = []
    for path in map(os.fspath, paths):
        if is_dataset(path):
            sources.append(path)
        elif os.path.isdir(path):
            found = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(TEXT_SUFFIXES))
            if not found:
                raise DataError(f"folder {path!r} holds no {', '.join(TEXT_SUFFIXES)} files")
            sources += found
        elif os.path.isfile(path):
            sources.append(path)
        else:
            raise DataError(f"no such file or folder: {path!r} (datasets are written tfds:NAME or hf:NAME)")
    texts = [t for source in sources
             for t in (dataset_texts(source, text_field) if is_dataset(source) else _file_texts(source, text_field))
             if t.strip()]
    if not texts:
        raise DataError(f"no text found in {', '.join(sources)}: the corpus is empty")
    return texts
