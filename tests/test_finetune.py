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


def test_tfds_source_reads_records_offline_with_mock_data():
    """tfds:NAME[:SPLIT] reads records through tfds.load; TFDS's own mock data stands in for the download."""
    import numpy as np
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        texts = load_texts("tfds:reddit_tifu/short:train", text_field="documents")
        direct = [r["documents"].decode() for r in tfds.as_numpy(tfds.load("reddit_tifu/short", split="train"))]
        first = load_texts("tfds:reddit_tifu/short:train[:2]", text_field="documents")
        with pytest.raises(DataError, match=r"no field 'document' \(they have: .*documents"):
            load_texts("tfds:reddit_tifu/short", text_field="document")
    assert texts == [t for t in direct if t.strip()] and len(texts) >= 5 and first == direct[:2]
    assert np.mean([len(t) for t in texts]) > 0
    with pytest.raises(DataError, match="TensorFlow Datasets has no dataset 'no_such_dataset_xyz'"):
        load_texts("tfds:no_such_dataset_xyz", text_field="text")
    with pytest.raises(DataError, match="name the field with the text"):
        load_texts("tfds:reddit_tifu/short")


def test_hf_source_streams_a_local_dataset(tmp_path):
    """hf:NAME[:SPLIT] streams through datasets.load_dataset; a local folder of data files is a dataset."""
    folder = tmp_path / "poems"
    folder.mkdir()
    records = [{"text": f"第{i}首：床前明月光", "id": i} for i in range(5)] + [{"text": "  ", "id": 5}]
    (folder / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                        encoding="utf-8")
    assert load_texts(f"hf:{folder}:train", text_field="text") == [r["text"] for r in records[:5]]
    assert load_texts(f"hf:{folder}:train[:2]", text_field="text") == [r["text"] for r in records[:2]]
    with pytest.raises(DataError, match=r"no field 'document' \(they have: id, text\)"):
        load_texts(f"hf:{folder}", text_field="document")
    with pytest.raises(DataError, match="could not read .*split 'validation'"):
        load_texts(f"hf:{folder}:validation", text_field="text")
    with pytest.raises(DataError, match="write hf:NAME"):
        load_texts("hf::train", text_field="text")


def test_unreachable_hf_dataset_is_a_data_error_saying_what_to_do():
    """No network (HF_HUB_OFFLINE=1 here, to be quick): a DataError that says how to get the data in."""
    import subprocess
    import sys

    code = ("from llm_tflite.training.data import load_texts\nfrom llm_tflite.errors import DataError\n"
            "try:\n    load_texts('hf:no-such-org/no-such-dataset:train', text_field='text')\n"
            "except DataError as e:\n    print('DataError:', e)")
    import os

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert "DataError: Hugging Face datasets could not read 'no-such-org/no-such-dataset'" in done.stdout, \
        done.stdout + done.stderr[-2000:]
    assert "without network, save it where there is one" in done.stdout


@pytest.mark.slow
def test_finetune_command_takes_a_tfds_source(tmp_path):
    """`llm-tflite finetune --data tfds:reddit_tifu/short:train --text-field documents`, on TFDS mock data."""
    import subprocess
    import sys

    code = ("import sys, tensorflow_datasets as tfds\nfrom llm_tflite.cli import main\n"
            "with tfds.testing.mock_data(num_examples=40):\n"
            f"    sys.exit(main(['finetune', 'gpt2_tiny_shakespeare', '--data', 'tfds:reddit_tifu/short:train',"
            f" '--text-field', 'documents', '--max-steps', '3', '--batch-size', '4', '-o', {str(tmp_path / 'p')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "LLM_TFLITE_NO_PROGRESS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "held-out after" in done.stdout and (tmp_path / "p" / "config.json").exists()


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_run(tiny_gpt2_dir, tmp_path):
    """Checkpoints every 4 steps of 10: resuming from the one after step 8 trains steps 9-10 on the same
    batches and schedule, and ends on the weights of the run that never stopped (dropout seeds included)."""
    import numpy as np

    from llm_tflite.errors import InvalidArgumentError

    kw = dict(text_field="paragraphs", max_steps=10, batch_size=4, sequence_length=32, eval_max_tokens=200,
              learning_rate=1e-3, checkpoint_dir=str(tmp_path / "ckpt"))
    data = TANG_DIR / "poet.tang.0.json"
    whole = finetune(str(tiny_gpt2_dir), data, checkpoint_every=4, **kw)
    assert json.loads((tmp_path / "ckpt" / "step.json").read_text())["step"] == 8
    resumed = finetune(str(tiny_gpt2_dir), data, resume=True, **kw)
    assert resumed.steps == 10
    for a, b in zip(whole.model.variables, resumed.model.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6, err_msg=a.path)
    with pytest.raises(DataError, match="comes from another run .*batch_size: 4 there, 8 now"):
        finetune(str(tiny_gpt2_dir), data, resume=True, **{**kw, "batch_size": 8})
    with pytest.raises(DataError, match="comes from another run .*data_sha256"):  # other text, same sizes
        finetune(str(tiny_gpt2_dir), TANG_DIR / "poet.tang.1000.json", resume=True, **kw)
    # a time limit stops after step 1 and keeps a checkpoint there; resuming finishes the run as if whole
    stopped = finetune(str(tiny_gpt2_dir), data, checkpoint_every=4, max_minutes=1e-6, output_dir=str(tmp_path / "p"),
                       **kw)
    assert stopped.steps == 1 and json.loads((tmp_path / "ckpt" / "step.json").read_text())["step"] == 1
    finished = finetune(str(tiny_gpt2_dir), data, checkpoint_every=4, resume=True, output_dir=str(tmp_path / "p"),
                        **kw)
    assert finished.steps == 10 and not (tmp_path / "ckpt").exists()  # done: nothing left to resume
    for a, b in zip(whole.model.variables, finished.model.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6, err_msg=a.path)
    with pytest.raises(DataError, match="no checkpoint in .* to resume from"):
        finetune(str(tiny_gpt2_dir), data, resume=True, **{**kw, "checkpoint_dir": str(tmp_path / "none")})
    with pytest.raises(InvalidArgumentError, match="need checkpoint_dir"):
        finetune(str(tiny_gpt2_dir), data, text_field="paragraphs", resume=True)
