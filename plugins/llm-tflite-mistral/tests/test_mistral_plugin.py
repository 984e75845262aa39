"""The Mistral plugin, installed as a distribution (pip install ./plugins/llm-tflite-mistral)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llm_tflite import Converter, InterpreterRunner, load_model
from llm_tflite.testing import run_cached_parity_test, run_greedy_test, run_parity_test, run_prefill_decode_file_test

CLI = [sys.executable, "-m", "llm_tflite"]


@pytest.fixture(scope="module")
def tiny_mistral():
    family, lm = load_model("mistral_tiny_random")
    assert family.name == "mistral"
    return lm


@pytest.fixture(scope="module")
def tiny_mistral_tflite(tiny_mistral, tmp_path_factory):
    path = tmp_path_factory.mktemp("mistral") / "mistral.tflite"
    Converter(prefill_lengths=(4, 16)).convert(tiny_mistral, str(path))
    return path


def test_prefill_decode_file_has_grouped_query_cache(tiny_mistral_tflite):
    meta = run_prefill_decode_file_test(tiny_mistral_tflite, num_layers=2)
    assert meta["family"] == "mistral" and meta["kv_cache"]["num_kv_heads"] == 2


def test_logits_match_keras(tiny_mistral, tiny_mistral_tflite):
    run_parity_test(tiny_mistral, tiny_mistral_tflite)


def test_cached_steps_past_the_window_match_keras(tiny_mistral, tiny_mistral_tflite):
    """40 prompt tokens, then 24 cached steps: every query sees its 16-token window only, as in KerasHub."""
    ids = list(range(100, 164))
    assert run_cached_parity_test(tiny_mistral, tiny_mistral_tflite, ids[:40], ids[40:]) < 1e-4


def test_greedy_matches_keras(tiny_mistral, tiny_mistral_tflite):
    run_greedy_test(tiny_mistral, tiny_mistral_tflite, "ROMEO:\nI will", max_new_tokens=32)


def test_byte_fallback_text_round_trips(tiny_mistral_tflite):
    tokenizer = InterpreterRunner(tiny_mistral_tflite).tokenizer
    text = "First Citizen:\nWe are accounted poor citizens — ½ of us, the patricians good.\n"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert b"".join(tokenizer.decode_bytes([i]) for i in tokenizer.encode(text)).decode().lstrip(" ") == text


def _cli(*args):
    env = {**os.environ, "LLM_TFLITE_NO_PROGRESS": "1"}
    env.pop("LLM_TFLITE_PLUGINS", None)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=600)


def test_core_cli_lists_converts_and_generates(tmp_path):
    listing = _cli("plugins")
    assert listing.returncode == 0, listing.stderr
    line = next(l for l in listing.stdout.splitlines() if l.strip().startswith("mistral "))
    assert "llm-tflite-mistral" in line
    out = tmp_path / "mistral.tflite"
    convert = _cli("convert", "mistral_tiny_random", "-o", str(out), "--quantize", "dynamic_int8")
    assert convert.returncode == 0, convert.stderr
    generate = _cli("generate", str(out), "ROMEO:", "--max-new-tokens", "8")
    assert generate.returncode == 0, generate.stderr
    assert generate.stdout.startswith("ROMEO:")


def test_generate_mode_comes_with_the_kit(tmp_path):
    """DecoderFamily gives a kit family the one-graph generate mode too (tokenizer and loop in the graph)."""
    out = tmp_path / "mistral_generate.tflite"
    convert = _cli("convert", "mistral_tiny_random", "--mode", "generate", "--max-length", "24", "-o", str(out))
    assert convert.returncode == 0, convert.stderr
    generate = _cli("generate", str(out), "ROMEO:")
    assert generate.returncode == 0 and generate.stdout.startswith("ROMEO:"), generate.stderr
