"""How ``tiny_gpt2_transposed_{float32,int8}.tflite`` were made: files in the layout llm-tflite wrote
before format 5 (``kv_cache_layout: "transposed"``, values ``[1, heads, head_dim, C]``), kept so the
runtime is tested on them (``tests/test_prefill_decode.py``). Run at commit 39fbb5b, from the
repository's root, with ``../shared`` beside it:

    git worktree add /tmp/old 39fbb5b
    PYTHONPATH=/tmp/old .venv/bin/python tests/data/make_transposed_files.py

The model is ``tests/conftest.py``'s ``tiny_gpt2_dir`` (the same seed, tokenizer and shapes), so a
file converted from that fixture today holds the same weights.
"""

import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
#: What the files were converted with (the test converts today's files with the same).
TRANSPOSED_FILE_SETTINGS = dict(context_length=48, prefill_lengths=(4,), decode_windows=(16,))


def main() -> None:
    sys.path.insert(0, str(HERE.parent))  # tests/, for conftest's corpus
    import keras
    import keras_hub
    from conftest import shakespeare_text

    from llm_tflite import Converter
    from llm_tflite.tokenizers.bpe_training import train_bpe

    keras.utils.set_random_seed(1234)
    vocab, merges = train_bpe(shakespeare_text()[:20000], 300)
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocab, merges=merges)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=64)
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=len(vocab), num_layers=2, num_heads=2, hidden_dim=32,
                                             intermediate_dim=64, max_sequence_length=128)
    preset = pathlib.Path(tempfile.mkdtemp()) / "tiny_gpt2"
    keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor).save_to_preset(str(preset))
    for kv in ("float32", "int8"):
        Converter(**TRANSPOSED_FILE_SETTINGS, kv_cache=kv).convert(str(preset),
                                                                  str(HERE / f"tiny_gpt2_transposed_{kv}.tflite"))


if __name__ == "__main__":
    main()
