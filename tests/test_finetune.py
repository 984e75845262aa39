"""finetune and the corpus loader: real training steps, and clear errors before any training."""

import json

import pytest

from conftest import TANG_DIR
from llm_tflite import Converter, InterpreterRunner, finetune
from llm_tflite.training.data import load_texts
from llm_tflite.errors import DataError


def test_tang_records_join_paragraphs():
    poems = load_texts(TANG_DIR / "poet.tang.4000.json", text_field="paragraphs")
    raw = json.loads((TANG_DIR / "poet.tang.4000.json").read_text(encoding="utf-8"))
    assert len(poems) == len(raw) and poems[0] == "".join(raw[0]["paragraphs"])


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.txt", "no such file or folder"),
    (lambda d: (d / "empty.txt").write_text("  \n") and d / "empty.txt", "corpus is empty"),
    (lambda d: (d / "r.json").write_text('[{"title": "x"}]') and d / "r.json", "has no field 'paragraphs'.*title"),
    (lambda d: (d / "bad.txt").write_bytes(b"caf\xe9 latin-1") and d / "bad.txt", "not UTF-8.*0xe9 at offset 3"),
    (lambda d: (d / "b.json").write_text("[{") and d / "b.json", "not valid JSON"),
    (lambda d: (d / "sub").mkdir() or d / "sub", "holds no .txt"),
])
def test_bad_inputs_fail_before_training(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(DataError, match=message):
        # a model that does not exist: the data error must come first
        finetune("no_such_model_anywhere", path, text_field="paragraphs")


def test_finetune_lowers_heldout_loss_and_converts(tiny_gpt2_dir, tmp_path):
    out_dir = tmp_path / "tang"
    result = finetune(str(tiny_gpt2_dir), TANG_DIR / "poet.tang.0.json", str(out_dir), text_field="paragraphs",
                      heldout=TANG_DIR / "poet.tang.4000.json", max_steps=30, batch_size=8,
                      sequence_length=64, learning_rate=3e-3, eval_max_tokens=3000)
    assert result.steps == 30
    assert result.after["nats_per_char"] < result.before["nats_per_char"]
    tflite = tmp_path / "tang.tflite"
    Converter(prefill_lengths=(16,)).convert(str(out_dir), str(tflite))
    assert isinstance(InterpreterRunner(tflite).generate("昨夜", max_new_tokens=5), str)


def test_time_limit_stops_training(tiny_gpt2_dir):
    result = finetune(str(tiny_gpt2_dir), TANG_DIR / "poet.tang.0.json", text_field="paragraphs",
                      heldout_fraction=0, max_minutes=0.001, batch_size=4, sequence_length=32)
    assert 1 <= result.steps < 50 and result.before is None


@pytest.mark.parametrize("architecture", ["gemma3", "qwen3", "llama3"])
def test_train_a_small_model_of_a_kit_family(architecture, tmp_path):
    """``llm-tflite train --architecture gemma3|qwen3|llama3``: a tokenizer of the family's kind, a
    model of its shape that learns, a preset that loads as that family, and a float32 file whose
    held-out loss is the Keras model's."""
    import math

    from conftest import shakespeare_text
    from llm_tflite import load_model
    from llm_tflite.evaluation.metrics import tflite_heldout_loss
    from llm_tflite.training.data import split_heldout
    from llm_tflite.training.train import TrainConfig, train

    data = tmp_path / "input.txt"
    data.write_text(shakespeare_text()[:60000], encoding="utf-8")
    config = TrainConfig.for_architecture(architecture, vocab_size=512, num_layers=2, num_heads=4, hidden_dim=64,
                                          intermediate_dim=128, sequence_length=64, batch_size=8, steps=60,
                                          warmup_steps=5, learning_rate=1e-2, min_learning_rate=1e-3)
    record = train(str(data), str(tmp_path / "preset"), config)
    assert record["steps_done"] == 60 and record["config"]["architecture"] == architecture
    # uniform over the vocabulary would be ln(512) = 6.24 nats per token; 60 steps learn the letters
    assert record["heldout"]["nats_per_token"] < math.log(512) - 1.0
    family, lm = load_model(str(tmp_path / "preset"))
    assert family.name == architecture and lm.backbone.count_params() == record["parameters"]
    assert lm.preprocessor.tokenizer.vocabulary_size() == 512
    path = tmp_path / "model.tflite"
    Converter(context_length=64, prefill_lengths=(16, 64)).convert(str(tmp_path / "preset"), str(path))
    heldout = split_heldout(data.read_text(encoding="utf-8"), 1 - config.train_fraction)[1]
    figures = tflite_heldout_loss(InterpreterRunner(path), heldout, window=64)
    assert figures["tokens"] == record["heldout"]["tokens"]
    assert abs(figures["nats_per_token"] - record["heldout"]["nats_per_token"]) < 1e-4
