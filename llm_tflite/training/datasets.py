"""Training text from dataset libraries: ``tfds:NAME[:SPLIT]`` and ``hf:NAME[:SPLIT]``.

- ``tfds:reddit_tifu/short:train`` -- TensorFlow Datasets (``tfds.load``: it downloads and prepares
  the dataset once, into ``TFDS_DATA_DIR`` or ``~/tensorflow_datasets``), read record by record.
- ``hf:ORG/NAME:train`` -- Hugging Face ``datasets``, streamed (``load_dataset(..., streaming=True)``:
  nothing is written to disk first); ``NAME`` may be a local folder of data files.

``SPLIT`` defaults to ``train`` and may end in ``[:N]`` (the first ``N`` records), as both libraries
write it. ``--text-field`` names the field with the text, as for JSON records. Records are read as
data: text fields only, bytes decoded as UTF-8.
"""

from __future__ import annotations

import re

from llm_tflite.errors import DataError

SOURCES = ("tfds:", "hf:")
_SPLIT = re.compile(r"^(?P<name>[^\[\]]+?)(?:\[:(?P<count>\d+)\])?$")


def is_dataset(source) -> bool:
    return isinstance(source, str) and source.startswith(SOURCES)


def parse(source: str) -> tuple[str, str, str, int | None]:
    """``"hf:org/name:train[:100]"`` -> ``("hf", "org/name", "train", 100)``."""
    kind, rest = source.split(":", 1)
    name, _, split = rest.partition(":")
    match = _SPLIT.match(split or "train")
    if not name or match is None:
        raise DataError(f"{source!r}: write {kind}:NAME[:SPLIT], such as {kind}:reddit_tifu:train or "
                        f"{kind}:NAME:train[:1000]")
    count = match.group("count")
    return kind, name, match.group("name"), int(count) if count is not None else None


def dataset_texts(source: str, text_field: str | None) -> list[str]:
    """The text of every record of ``source`` (``tfds:`` or ``hf:``), empty ones left out."""
    kind, name, split, count = parse(source)
    if not text_field:
        raise DataError(f"{source!r}: name the field with the text (--text-field, e.g. document or text)")
    records = _tfds_records(name, split, count) if kind == "tfds" else _hf_records(name, split, count)
    texts = []
    for i, record in enumerate(records):
        if count is not None and i >= count:
            break
        if not isinstance(record, dict) or text_field not in record:
            fields = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{source!r}: records have no field {text_field!r} (they have: {fields}); choose one "
                            "with --text-field")
        value = record[text_field]
        if value is None:  # a record without text, as a JSON record's null
            continue
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{source!r}: record {i}'s {text_field!r} is not UTF-8 text ({e})") from None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = "".join(value)
        if not isinstance(value, str):
            raise DataError(f"{source!r}: field {text_field!r} holds {type(value).__name__}, not text; choose the "
                            "field with the text (--text-field)")
        if value.strip():
            texts.append(value)
    if not texts:
        raise DataError(f"{source!r}: no text in field {text_field!r} of split {split!r}")
    return texts


def _library(module: str, source: str):
    """``module`` (a dataset library), or a ``DataError`` naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{source} needs {module}: pip install 'llm-tflite[data]'") from None


def _tfds_records(name: str, split: str, count: int | None):
    tfds = _library("tensorflow_datasets", f"tfds:{name}")
    from llm_tflite.console import quiet_native

    try:
        with quiet_native():
            dataset = tfds.load(name, split=split if count is None else f"{split}[:{count}]")
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"TensorFlow Datasets has no dataset {name!r}; its catalog: "
                        "https://www.tensorflow.org/datasets/catalog/overview") from None
    except Exception as e:  # download and preparation fail in many ways: network, disk, a changed source
        raise DataError(
            f"TensorFlow Datasets could not load {name!r} (split {split!r}): {type(e).__name__}: {str(e)[:300]}. "
            f"Without network, prepare it where there is one (`tfds build {name}`) and copy the data folder "
            "here, then point TFDS_DATA_DIR at it."
        ) from e
    yield from tfds.as_numpy(dataset)


def _hf_records(name: str, split: str, count: int | None):
    datasets = _library("datasets", f"hf:{name}")
    try:  # opening and reading alike: hub, network, file, split errors, a stream that breaks off
        yield from datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:
        raise DataError(
            f"Hugging Face datasets could not read {name!r} (split {split!r}): {type(e).__name__}: {str(e)[:300]}. "
            "Check the name and split on huggingface.co/datasets; without network, save it where there is one "
            "(dataset.to_json / to_parquet) and pass the folder: hf:PATH:SPLIT. Gated datasets need HF_TOKEN."
        ) from e
