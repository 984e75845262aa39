"""The shipped PaLM-style model: quality, parity, greedy decoding, a Flex-free generate file (slow)."""

import os
import re

import pytest

from conftest import shakespeare_text
from llm_tflite import Converter, InterpreterRunner, load_model
from llm_tflite.litert import flatbuffer
from llm_tflite.testing import run_greedy_test, run_parity_test, run_prefill_decode_file_test

pytestmark = pytest.mark.slow
PRESET = "palm_tiny_shakespeare"


@pytest.fixture(scope="module")
def shipped():
    family, lm = load_model(PRESET)
    assert family.name == "palm"
    return lm


@pytest.fixture(scope="module")
def float_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("palm") / "float.tflite"
    Converter().convert(PRESET, str(path))
    return path


def test_preset_is_small_and_palm_shaped(shipped):
    from llm_tflite.families.presets import PALM_PRESET_DIR

    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(PALM_PRESET_DIR) for f in files)
    assert size <= 20e6, size
    backbone = shipped.backbone
    assert backbone.num_key_value_heads == 1 and backbone.num_query_heads > 1  # multi-query attention
    assert not any("bias" in w.path for w in backbone.weights)  # no biases


def test_heldout_loss_at_most_1_85_nats_per_char(shipped, float_file):
    from llm_tflite.evaluation.metrics import keras_heldout_loss, tflite_heldout_loss
    from llm_tflite.training.data import split_heldout

    _, heldout = split_heldout(shakespeare_text(), 0.1)
    keras_loss = keras_heldout_loss(shipped, heldout)
    assert keras_loss["nats_per_char"] <= 1.85, keras_loss
    tflite_loss = tflite_heldout_loss(InterpreterRunner(float_file), heldout)
    assert abs(tflite_loss["nats_per_char"] - keras_loss["nats_per_char"]) < 1e-4, (keras_loss, tflite_loss)


def test_prefill_decode_contract_and_parity(shipped, float_file):
    meta = run_prefill_decode_file_test(float_file, num_layers=shipped.backbone.num_layers)
    assert meta["kv_cache"]["num_kv_heads"] == 1
    run_parity_test(shipped, float_file)


@pytest.mark.parametrize("prompt", ["ROMEO:\n", "First Citizen:\nBefore we proceed any further, hear me speak."])
def test_greedy_64_tokens_match_keras(shipped, float_file, prompt):
    run_greedy_test(shipped, float_file, prompt, max_new_tokens=64)


def test_generates_shakespeare_like_text(float_file):
    text = InterpreterRunner(float_file).generate("ROMEO:\n", max_new_tokens=120, sampler="top_k", top_k=40,
                                                  temperature=0.8, seed=1)
    assert re.search(r"\n[A-Z][A-Za-z ]+:\n", "\n" + text), text
    words = re.findall(r"[a-z]+", text.lower())
    assert sum(w in {"the", "and", "i", "to", "of", "my", "you", "that", "a", "is", "not", "me"} for w in words) >= 5, text


def test_generate_file_without_flex_matches_keras(shipped, float_file, tmp_path):
    prompt = "KING RICHARD III:\n"
    path = tmp_path / "autocomplete.tflite"
    Converter(mode="generate", max_length=100, quantize="none").convert(PRESET, str(path))
    assert not any(op.startswith("CUSTOM:Flex") for op in flatbuffer.operator_names(path.read_bytes()))
    got = InterpreterRunner(path).generate(prompt)
    shipped.compile(sampler="greedy")
    assert prompt + got == shipped.generate(prompt, max_length=100)
    runner = InterpreterRunner(float_file)
    assert got == runner.generate(prompt, max_new_tokens=100 - len(runner.encode(prompt)))
