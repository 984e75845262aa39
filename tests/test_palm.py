"""The PaLM-style family on a tiny random model: Keras parity, greedy decoding, both export modes, tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
from llm_tflite.testing import run_greedy_test, run_parity_test, run_prefill_decode_file_test

from llm_tflite import Converter, InterpreterRunner, read_metadata
from llm_tflite.litert import flatbuffer
from llm_tflite.evaluation.metrics import keras_tokenize

NEWLINE_PROMPTS = ("ROMEO:\nI will", "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak")


def test_registered_and_detected(tiny_palm_dir, tiny_palm):
    from llm_tflite.plugins.registry import families, resolve_family

    assert "palm" in families()
    assert resolve_family(str(tiny_palm_dir)).name == "palm"
    assert resolve_family(tiny_palm).name == "palm"


def test_cached_forward_matches_full_forward(tiny_palm):
    """``call_with_cache`` (prefill then one step) gives the logits of the uncached forward pass."""
    ids = np.array([[1] + [int(t) for t in keras_tokenize(tiny_palm.preprocessor.tokenizer, "ROMEO:\nI will go")]])
    full = np.asarray(tiny_palm({"token_ids": ids, "padding_mask": np.ones_like(ids)}))
    backbone = tiny_palm.backbone
    cache = np.zeros([1, backbone.num_layers, 2, ids.shape[1], backbone.num_key_value_heads, backbone.head_dim], "float32")
    first, _, cache = tiny_palm.call_with_cache(ids[:, :-1], cache, 0)
    last, _, _ = tiny_palm.call_with_cache(ids[:, -1:], cache, ids.shape[1] - 1)
    np.testing.assert_allclose(np.asarray(first), full[:, :-1], atol=1e-5)
    np.testing.assert_allclose(np.asarray(last), full[:, -1:], atol=1e-5)


def test_prefill_decode_file(tiny_palm_tflite):
    meta = run_prefill_decode_file_test(tiny_palm_tflite, num_layers=2)
    assert meta["family"] == "palm" and meta["tokenizer"]["type"] == "sentencepiece"
    assert meta["kv_cache"] == {"num_layers": 2, "num_kv_heads": 1, "head_dim": 8}  # multi-query cache


def test_logits_match_keras(tiny_palm, tiny_palm_tflite):
    run_parity_test(tiny_palm, tiny_palm_tflite, prompts=NEWLINE_PROMPTS + ("a",))


@pytest.mark.parametrize("prompt", NEWLINE_PROMPTS)
def test_greedy_matches_keras(tiny_palm, tiny_palm_tflite, prompt):
    run_greedy_test(tiny_palm, tiny_palm_tflite, prompt, max_new_tokens=40)


def test_runtime_tokenizer_matches_keras(tiny_palm, tiny_palm_tflite):
    """The artifact's SentencePiece (no TensorFlow) gives Keras' ids and text, newlines included."""
    runner = InterpreterRunner(tiny_palm_tflite)
    text = "MENENIUS:\nNow is the winter of our discontent\n\n  Made glorious summer!"
    ids = runner.tokenizer.encode(text)
    assert ids == [int(t) for t in keras_tokenize(tiny_palm.preprocessor.tokenizer, text)]
    assert runner.tokenizer.decode(ids) == text == tiny_palm.preprocessor.tokenizer.detokenize(ids)
    streamed = b"".join(runner.tokenizer.decode_bytes([i]) for i in ids).decode()
    assert streamed.lstrip(" ") == text  # streaming keeps each piece's leading space


@pytest.fixture(scope="module")
def tiny_palm_generate_file(tiny_palm_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("generate") / "palm_generate.tflite"
    Converter(mode="generate", max_length=40).convert(str(tiny_palm_dir), str(path))
    return path


def test_generate_file_needs_no_flex(tiny_palm_generate_file):
    """TF Text's fast SentencePiece kernels are the only custom ops: no Flex delegate needed."""
    ops = flatbuffer.non_builtin_ops(tiny_palm_generate_file.read_bytes())
    assert ops == {"CUSTOM:TFText>FastSentencepieceTokenize", "CUSTOM:TFText>FastSentencepieceDetokenize"}


def test_generate_file_matches_keras_and_prefill_decode(tiny_palm, tiny_palm_generate_file, tiny_palm_tflite):
    prompt = NEWLINE_PROMPTS[0]
    tiny_palm.compile(sampler="greedy")
    got = InterpreterRunner(tiny_palm_generate_file).generate(prompt)
    assert prompt + got == tiny_palm.generate(prompt, max_length=40)
    n_prompt = len(InterpreterRunner(tiny_palm_tflite).encode(prompt))
    assert got == InterpreterRunner(tiny_palm_tflite).generate(prompt, max_new_tokens=40 - n_prompt)
    assert read_metadata(tiny_palm_generate_file)["family"] == "palm"


@pytest.mark.parametrize("strategy", ["float16", "dynamic_int8", "weight_only_int8", "full_int8", "int4_blockwise"])
def test_every_strategy_gives_a_file_close_to_float(tiny_palm_dir, tiny_palm_tflite, tmp_path, strategy):
    from conftest import SHAKESPEARE

    path = tmp_path / f"{strategy}.tflite"
    calibration = SHAKESPEARE if strategy == "full_int8" else None
    Converter(quantize=strategy, prefill_lengths=(4, 16), calibration=calibration).convert(str(tiny_palm_dir), str(path))
    runner, reference = InterpreterRunner(path), InterpreterRunner(tiny_palm_tflite)
    ids = reference.encode(NEWLINE_PROMPTS[1])
    assert (runner.logits(ids).argmax(-1) == reference.logits(ids).argmax(-1)).mean() >= 0.6
    assert isinstance(runner.generate("ROMEO:", max_new_tokens=8), str)


def test_finetune_and_eval_work_unchanged(tiny_palm_dir, tmp_path):
    from llm_tflite import finetune
    from llm_tflite.evaluation.metrics import tflite_heldout_loss

    from conftest import SHAKESPEARE

    result = finetune(str(tiny_palm_dir), SHAKESPEARE, str(tmp_path / "tuned"), max_steps=20, batch_size=8,
                      sequence_length=64, learning_rate=3e-3, eval_max_tokens=2000)
    assert result.after["nats_per_char"] < result.before["nats_per_char"]
    tflite = tmp_path / "tuned.tflite"
    Converter(prefill_lengths=(16,)).convert(str(tmp_path / "tuned"), str(tflite))
    loss = tflite_heldout_loss(InterpreterRunner(tflite), "ROMEO:\nI will go.\n" * 20)
    assert loss["nats_per_char"] > 0 and loss["tokens"] > 20


def test_int4_blocks_wider_than_the_model_fail_clearly(tiny_palm_dir, tmp_path):
    from llm_tflite.errors import ConversionError

    with pytest.raises(ConversionError, match="not divisible by block size 128.*use int4_blockwise"):
        Converter(quantize="int4_blockwise_128", prefill_lengths=(4,)).convert(str(tiny_palm_dir), str(tmp_path / "x.tflite"))
    assert not (tmp_path / "x.tflite").exists()
