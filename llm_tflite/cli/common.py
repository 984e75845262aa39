"""Helpers the command modules share: sizes, JSON output, registry choices."""

from __future__ import annotations

import argparse
import json


def size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e5 else f"{n_bytes / 1e3:.1f} kB"


def print_json(value) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def strategy_names() -> list[str]:
    from llm_tflite.plugins.registry import strategies

    return sorted(strategies())


def family_names() -> list[str]:
    from llm_tflite.plugins.registry import families

    return sorted(families())


def add_family(parser) -> None:
    parser.add_argument("--family", choices=family_names(), help="model family, when it cannot be told from MODEL")


def add_data(parser, what: str) -> None:
    parser.add_argument("--data", required=True, action="append", help=f"{what}: text file, folder, JSON/JSONL "
                        "records, or a dataset: tfds:NAME[:SPLIT] (TensorFlow Datasets), hf:NAME[:SPLIT] (Hugging Face "
                        "datasets, streamed) (repeatable)")
    parser.add_argument("--text-field", help="the JSON or dataset field that holds the text (e.g. paragraphs, document)")


def add_json(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
