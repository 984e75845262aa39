"""Time byte-level BPE training in the shipped GPT-2's configuration (vocab 2,048, the first 90%
of tiny Shakespeare) with ``llm_tflite.tokenizers.bpe_training.train_bpe`` (HF ``tokenizers``).

    .venv/bin/python benchmarks/tokenizer_training.py [--old PATH_TO_OLD_BPE_MODULE]

``--old`` also times a previous trainer module (for instance the pure-Python one that
llm-tflite used before, extracted with ``git show 63bb76a:llm_tflite/tokenizers/bpe.py``)
on the same text, in the same process, and prints the ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import time

from llm_tflite.training.data import split_heldout
from llm_tflite.tokenizers.bpe_training import train_bpe

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", help="a module file with an older train_bpe(text, vocab_size) to compare with")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of the new trainer (median)")
    args = parser.parse_args()
    train_text, _ = split_heldout(SHAKESPEARE.read_text(encoding="utf-8"), 0.1)
    new = sorted(timed(train_bpe, train_text, 2048) for _ in range(args.rounds))[args.rounds // 2]
    print(f"train_bpe (HF tokenizers), vocab 2048 on {len(train_text):,} characters: {new:.2f} s")
    if args.old:
        spec = importlib.util.spec_from_file_location("old_bpe", args.old)
        old_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old_module)
        old = timed(old_module.train_bpe, train_text, 2048)
        print(f"old train_bpe: {old:.1f} s; the new one takes {new / old:.1%} of its time")


if __name__ == "__main__":
    main()
