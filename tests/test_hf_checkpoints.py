"""Hugging Face checkpoints (``config.json`` + ``model.safetensors`` + tokenizer files, as
``save_pretrained`` writes them) of each core decoder family, written here with random weights and
read through KerasHub's own Transformers loader: the family is told from ``model_type``, and the
converted file's logits equal KerasHub's loading of the same directory."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from llm_tflite import Converter, InterpreterRunner, load_model
from llm_tflite.errors import ModelSourceError
from llm_tflite.plugins.registry import resolve_family
from llm_tflite.testing import HF_TINY, run_cached_parity_test, write_hf_checkpoint

FAMILIES = sorted(HF_TINY)
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks? It is the east."


def _keras_hub_load(directory, family):
    import keras_hub

    task = {"gemma3": "Gemma3CausalLM", "qwen3": "Qwen3CausalLM", "llama3": "Llama3CausalLM"}[family]
    return getattr(keras_hub.models, task).from_preset(str(directory))


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_converts_with_keras_hubs_logits(family, tmp_path):
    directory = write_hf_checkpoint(tmp_path / "ckpt", family)
    assert sorted(os.listdir(directory)) == sorted(
        ["config.json", "model.safetensors", "tokenizer_config.json",
         "tokenizer.model" if family == "gemma3" else "tokenizer.json"])
    fam, ours = load_model(directory)
    assert fam.name == family
    path = tmp_path / f"{family}.tflite"
    result = Converter(context_length=128, prefill_lengths=(8, 32)).convert(directory, str(path))
    assert result.metadata["family"] == family
    lm = _keras_hub_load(directory, family)  # KerasHub on its own, not through llm-tflite
    assert lm.backbone.count_params() == ours.backbone.count_params()
    ids = [int(i) for i in np.random.default_rng(7).integers(10, HF_TINY[family]["vocab_size"] - 10, 96)]
    assert run_cached_parity_test(lm, path, ids[:64], ids[64:]) < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_large_weights_are_ported_by_rows_to_the_same_values(family, tmp_path, monkeypatch):
    """Weights past ``PORT_BLOCK_BYTES`` are read from the checkpoint and assigned a block of rows at a
    time (no whole copies beside the variable); here the block is 4 KB, so every matrix without a
    reshaping hook (the embedding) goes that way: the same weights as KerasHub's loader."""
    from llm_tflite.families import loading

    directory = write_hf_checkpoint(tmp_path / "ckpt", family)
    reference = [w.numpy() for w in _keras_hub_load(directory, family).weights]
    ported = []
    original = loading._safetensor_slice
    monkeypatch.setattr(loading, "_safetensor_slice", lambda *a: ported.append(a[1]) or original(*a))
    monkeypatch.setattr(loading, "PORT_BLOCK_BYTES", 4096)
    _, lm = load_model(directory)
    assert any("embed_tokens" in key for key in ported)  # the others are reshaped by hooks: KerasHub ports them
    assert len(lm.weights) == len(reference)
    for ours, theirs in zip(lm.weights, reference):
        np.testing.assert_array_equal(ours.numpy(), theirs)


#: English, code, digits, Chinese, emoji (with a skin-tone modifier), Arabic, and each family's turn markers.
MULTILINGUAL = ("ROMEO: But soft! It's 1234567 apples, x=3.14;\n\ndef f(x):\n    return x ** 2  # code\n"
                "你好，世界！今天天气很好。🙂👍🏽 مرحبا بالعالم  café ﬁ")
TURNS = {"gemma3": "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
         "qwen3": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
         "llama3": "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"}


def _library(directory, family):
    """``(encode, decode)`` of the real library on the checkpoint's own tokenizer file."""
    if family == "gemma3":
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(directory, "tokenizer.model"))
        return sp.encode, sp.decode
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    return (lambda text: hf.encode(text, add_special_tokens=False).ids,
            lambda ids: hf.decode(ids, skip_special_tokens=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_file_tokenizes_as_the_real_library_on_multilingual_text(family, tmp_path):
    """The file carries the checkpoint's tokenizer and runs it on the real library (``tokenizers`` /
    ``sentencepiece``): the same ids, the same text back, turn markers whole."""
    directory = write_hf_checkpoint(tmp_path / "ckpt", family)
    path = tmp_path / f"{family}.tflite"
    Converter(context_length=64, prefill_lengths=(8,)).convert(directory, str(path))
    runner = InterpreterRunner(path)
    encode, decode = _library(directory, family)
    for text in (MULTILINGUAL, TURNS[family] + MULTILINGUAL):
        ids = runner.tokenizer.encode(text)
        assert ids == encode(text)
        assert runner.tokenizer.decode(ids) == decode(ids)
    assert runner.tokenizer.decode(runner.tokenizer.encode(MULTILINGUAL)) == MULTILINGUAL
    turn = runner.tokenizer.encode(TURNS[family])
    assert len(turn) < len(TURNS[family]) // 2  # the markers are single tokens
    if family != "gemma3":
        assert runner.metadata["tokenizer"]["type"] == "hf_tokenizer"


@pytest.mark.parametrize("family", ["gemma3", "qwen3"])
def test_a_bundle_carries_one_copy_of_the_tokenizer(family, tmp_path, caplog):
    """The bundle's tokenizer section holds the checkpoint's own tokenizer (SentencePiece model,
    tokenizer.json), so the record in its model section points at it instead of a second copy; the
    runner fills it back from the section, checked by its sha256."""
    from llm_tflite import read_metadata
    from llm_tflite.errors import ModelFileError
    from llm_tflite.export.bundle import build_bundle
    from llm_tflite.litert.litertlm import sections, tflite_section

    directory = write_hf_checkpoint(tmp_path / "ckpt", family)
    tflite = tmp_path / f"{family}.tflite"
    Converter(context_length=64, prefill_lengths=(8,), ring_caches=False).convert(directory, str(tflite))
    bundle = build_bundle(tflite, tmp_path / f"{family}.litertlm")
    data = open(bundle, "rb").read()
    tokenizer = [s for s in sections(data) if s.kind in ("sentencepiece_tokenizer", "hf_tokenizer_zlib")]
    assert [s.kind for s in tokenizer] == ["sentencepiece_tokenizer" if family == "gemma3" else "hf_tokenizer_zlib"]
    stored = read_metadata(bundle)["tokenizer"]
    assert stored["section"] == tokenizer[0].kind and not {"model", "json"} & set(stored)
    own = read_metadata(tflite)["tokenizer"]
    saved = len(own["model"] if family == "gemma3" else own["json"])
    assert len(tflite_section(data)) < tflite.stat().st_size - saved + 4096
    original, bundled = InterpreterRunner(tflite), InterpreterRunner(bundle, weight_cache=tmp_path / "cache")
    assert bundled.metadata["tokenizer"] == own
    with caplog.at_level("INFO"):  # the cached model section is found again, not rebuilt
        InterpreterRunner(bundle, weight_cache=tmp_path / "cache")
    assert "rebuilding" not in caplog.text
    for text in (MULTILINGUAL, TURNS[family]):
        assert bundled.encode(text) == original.encode(text)
    assert bundled.generate(TEXT, max_new_tokens=8) == original.generate(TEXT, max_new_tokens=8)
    # another tokenizer in the section than the one the model was bundled with
    middle = (tokenizer[0].begin + tokenizer[0].end) // 2
    tampered = tmp_path / "tampered.litertlm"
    tampered.write_bytes(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :])
    with pytest.raises(ModelFileError, match="damaged .litertlm bundle"):
        InterpreterRunner(tampered)
    # the model section alone says where its tokenizer is
    alone = tmp_path / "alone.tflite"
    alone.write_bytes(bytes(tflite_section(data)))
    with pytest.raises(ModelFileError, match="run the bundle"):
        InterpreterRunner(alone)


@pytest.mark.slow
def test_litert_lm_reads_the_checkpoints_tokenizer(tmp_path):
    import litert_lm

    directory = write_hf_checkpoint(tmp_path / "ckpt", "qwen3")
    from llm_tflite.export.bundle import build_bundle

    Converter(context_length=64, prefill_lengths=(8,)).convert(directory, str(tmp_path / "qwen3.tflite"))
    bundle = build_bundle(tmp_path / "qwen3.tflite", tmp_path / "qwen3.litertlm")
    runner = InterpreterRunner(bundle)
    engine = litert_lm.Engine(str(bundle))
    try:
        for text in (MULTILINGUAL, TURNS["qwen3"]):
            assert engine.tokenize(text) == runner.tokenizer.encode(text)
    finally:
        engine.close()


def test_fine_tuned_checkpoint_with_added_tokens_and_a_resized_vocabulary(tmp_path):
    """A fine-tune that added special tokens and padded the embedding past the tokenizer (as
    ``resize_token_embeddings(pad_to_multiple_of=64)`` does): the tokens stay whole, the logits KerasHub's."""
    config = {**HF_TINY["qwen3"], "vocab_size": 2368}  # tokenizer: 2304 ids
    added = ("<tool_call>", "</tool_call>")
    directory = write_hf_checkpoint(tmp_path / "ckpt", "qwen3", config, added_tokens=added, tokenizer_size=2304)
    tokenizer_json = json.loads((tmp_path / "ckpt" / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tokenizer_json["added_tokens"]}
    assert ids["<tool_call>"] == 2302 and ids["</tool_call>"] == 2303
    path = tmp_path / "qwen3.tflite"
    Converter(context_length=64, prefill_lengths=(8,)).convert(directory, str(path))
    lm = _keras_hub_load(directory, "qwen3")
    runner = InterpreterRunner(path)
    assert runner.metadata["model"]["vocabulary_size"] == 2368
    text = "<tool_call>{\"name\": \"get_weather\"}</tool_call>"
    encoded = runner.encode(text)
    assert encoded[0] == 2302 and encoded[-1] == 2303
    encode, decode = _library(directory, "qwen3")
    assert encoded == encode(text) and runner.tokenizer.decode(encoded) == decode(encoded) == text
    assert run_cached_parity_test(lm, path, encoded, [2367, 5, 2302]) < 1e-4


def test_random_weights_keep_the_checkpoints_architecture_and_tokenizer(tmp_path):
    directory = write_hf_checkpoint(tmp_path / "ckpt", "llama3")
    _, loaded = load_model(directory)
    _, random = load_model(directory, random_weights=True)
    assert random.backbone.count_params() == loaded.backbone.count_params()
    assert random.preprocessor.tokenizer.vocabulary == loaded.preprocessor.tokenizer.vocabulary
    embedding = lambda lm: np.asarray(lm.backbone.token_embedding.embeddings)  # noqa: E731
    assert not np.allclose(embedding(random), embedding(loaded))


@pytest.mark.parametrize("handle, family", [("hf://google/gemma-3-270m-it", "gemma3"),
                                            ("hf://google/gemma-3-1b-pt", "gemma3"),
                                            ("hf://Qwen/Qwen3-0.6B", "qwen3"),
                                            ("hf://meta-llama/Llama-3.2-1B-Instruct", "llama3"),
                                            ("hf://meta-llama/Meta-Llama-3-8B", "llama3")])
def test_hub_names_pick_the_family(handle, family):
    assert resolve_family(handle).name == family


def test_unknown_model_type_and_incomplete_checkpoints_say_what_to_do(tmp_path):
    other = tmp_path / "phi"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["Phi3ForCausalLM"], "model_type": "phi3"}))
    with pytest.raises(ModelSourceError, match=r"model_type 'phi3'.*families read: .*gemma3_text \(gemma3\)"):
        load_model(str(other))
    directory = write_hf_checkpoint(tmp_path / "ckpt", "qwen3")
    os.remove(os.path.join(directory, "model.safetensors"))
    with pytest.raises(ModelSourceError, match="checkpoint is complete: config.json, model.safetensors"):
        load_model(directory)


def test_cli_converts_a_checkpoint_directory(tmp_path):
    directory = write_hf_checkpoint(tmp_path / "ckpt", "gemma3")
    out = tmp_path / "gemma3.litertlm"
    run = subprocess.run([sys.executable, "-m", "llm_tflite", "convert", directory, "--quantize", "dynamic_int8",
                          "--context-length", "64", "--prefill-lengths", "8", "-o", str(out)],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "LLM_TFLITE_NO_PROGRESS": "1"})
    assert run.returncode == 0, run.stderr
    assert "gemma3" in run.stdout and out.exists()
    runner = InterpreterRunner(out)
    assert runner.metadata["family"] == "gemma3" and len(list(runner.generate_ids(runner.encode(TEXT), 4))) >= 1


def test_example_brings_a_checkpoint_end_to_end(tmp_path):
    """examples/hf_checkpoint.py, as README shows it: convert, generate, bundle."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, os.path.join(root, "examples", "hf_checkpoint.py"), "--tiny", "llama3",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "LLM_TFLITE_NO_PROGRESS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("llama3 model: ") and lines[1].startswith("greedy: ")
    assert lines[2] == f"LiteRT-LM bundle: {tmp_path / 'model.litertlm'}" and (tmp_path / "model.litertlm").exists()
