"""The llm-tflite command line, run as a user runs it."""

import json
import os
import subprocess
import sys

import pytest


def cli(*args, timeout=600):
    env = {**os.environ, "LLM_TFLITE_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "llm_tflite", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_plugins_lists_families_strategies_and_distributions():
    out = cli("plugins")
    assert out.returncode == 0, out.stderr
    assert "gpt2" in out.stdout and "dynamic_int8" in out.stdout and "llm-tflite" in out.stdout
    rows = json.loads(cli("plugins", "--json").stdout)
    assert {"kind": "family", "name": "gpt2"}.items() <= next(r for r in rows if r["name"] == "gpt2").items()


def test_convert_and_generate(tiny_gpt2_dir, tmp_path):
    out_file = tmp_path / "cli.tflite"
    out = cli("convert", tiny_gpt2_dir, "--prefill-lengths", "4,16", "--quantize", "dynamic_int8", "-o", out_file)
    assert out.returncode == 0, out.stderr
    assert f"wrote {out_file}" in out.stdout and "dynamic_int8" in out.stdout
    gen = cli("generate", out_file, "ROMEO:", "--max-new-tokens", "12")
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith("ROMEO:")
    streamed = cli("generate", out_file, "ROMEO:", "--max-new-tokens", "12", "--stream")
    assert streamed.stdout == gen.stdout


@pytest.mark.parametrize("args, message", [
    (["convert", "gpt2_tiny_shakespeare", "--quantize", "int1", "-o", "x.tflite"], "unknown quantization strategy 'int1'"),
    (["convert", "some_model", "--family", "llama9", "-o", "x.tflite"], "unknown model family 'llama9'"),
    (["convert", "./no/such/dir", "--family", "gpt2", "-o", "x.tflite"], "no such preset directory"),
    (["generate", "missing.tflite", "hi"], "no such model file"),
    (["generate", __file__, "hi"], "not a TensorFlow Lite model"),
])
def test_errors_are_clear_and_traceback_free(args, message, tmp_path):
    out = cli(*args)
    assert out.returncode == 1
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "x.tflite").exists()


def test_offline_handle_fails_clearly(tmp_path):
    """Without network a KerasHub handle cannot download: the error says what to do instead."""
    out = cli("convert", "kaggle://keras/gpt2/keras/gpt2_base_en", "-o", tmp_path / "x.tflite", timeout=900)
    assert out.returncode == 1
    assert "could not load preset" in out.stderr and "--random-weights" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "x.tflite").exists()


def test_random_weights_from_a_local_preset(tiny_gpt2_dir, tmp_path):
    """--random-weights keeps the architecture and tokenizer of a local preset, not its weights."""
    from llm_tflite import InterpreterRunner

    trained, random = tmp_path / "trained.tflite", tmp_path / "random.tflite"
    assert cli("convert", tiny_gpt2_dir, "--prefill-lengths", "4", "-o", trained).returncode == 0
    out = cli("convert", tiny_gpt2_dir, "--random-weights", "--prefill-lengths", "4", "-o", random)
    assert out.returncode == 0, out.stderr
    a, b = InterpreterRunner(trained), InterpreterRunner(random)
    assert a.metadata["model"] == b.metadata["model"] and a.metadata["tokenizer"] == b.metadata["tokenizer"]
    ids = a.encode("ROMEO:")
    assert abs(a.logits(ids) - b.logits(ids)).max() > 1e-3


def test_eval_against_a_float_reference(tiny_gpt2_dir, tiny_tflite, tmp_path):
    """eval --reference: a file against itself has zero KL; int8 against float has some, and top-1 mostly agrees."""
    from conftest import SHAKESPEARE

    same = json.loads(cli("eval", tiny_tflite, "--data", SHAKESPEARE, "--max-tokens", "600",
                          "--reference", tiny_tflite, "--json").stdout)
    assert abs(same["kl_divergence"]) < 1e-9 and same["top1_agreement"] == 1.0
    assert same["file_bytes"] == tiny_tflite.stat().st_size
    int8 = tmp_path / "int8.tflite"
    assert cli("convert", tiny_gpt2_dir, "--quantize", "dynamic_int8", "--prefill-lengths", "4,16", "-o", int8).returncode == 0
    quantized = json.loads(cli("eval", int8, "--data", SHAKESPEARE, "--max-tokens", "600",
                               "--reference", tiny_gpt2_dir, "--json").stdout)
    assert quantized["kl_divergence"] > 0 and quantized["top1_agreement"] > 0.5
