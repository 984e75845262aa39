"""The Llama plugin, installed as a distribution (pip install ./plugins/llm-tflite-llama)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llm_tflite import Converter, InterpreterRunner, load_model
from llm_tflite.testing import run_greedy_test, run_parity_test, run_prefill_decode_file_test

CLI = [sys.executable, "-m", "llm_tflite"]


@pytest.fixture(scope="module")
def tiny_llama():
    family, lm = load_model("llama_tiny_random")
    assert family.name == "llama"
    return lm


@pytest.fixture(scope="module")
def tiny_llama_tflite(tiny_llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("llama") / "llama.tflite"
    Converter(prefill_lengths=(4, 16)).convert(tiny_llama, str(path))
    return path


def test_prefill_decode_file_has_grouped_query_cache(tiny_llama_tflite):
    meta = run_prefill_decode_file_test(tiny_llama_tflite, num_layers=2)
    assert meta["family"] == "llama" and meta["kv_cache"]["num_kv_heads"] == 2


def test_logits_match_keras(tiny_llama, tiny_llama_tflite):
    run_parity_test(tiny_llama, tiny_llama_tflite)


def test_greedy_matches_keras(tiny_llama, tiny_llama_tflite):
    run_greedy_test(tiny_llama, tiny_llama_tflite, "ROMEO:\nI will", max_new_tokens=32)


def test_byte_fallback_text_round_trips(tiny_llama_tflite):
    tokenizer = InterpreterRunner(tiny_llama_tflite).tokenizer
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
    line = next(l for l in listing.stdout.splitlines() if l.strip().startswith("llama "))
    assert "llm-tflite-llama" in line
    out = tmp_path / "llama.tflite"
    convert = _cli("convert", "llama_tiny_random", "-o", str(out), "--quantize", "dynamic_int8")
    assert convert.returncode == 0, convert.stderr
    generate = _cli("generate", str(out), "ROMEO:", "--max-new-tokens", "8")
    assert generate.returncode == 0, generate.stderr
    assert generate.stdout.startswith("ROMEO:")


def test_generate_mode_is_refused_clearly(tmp_path):
    out = _cli("convert", "llama_tiny_random", "--mode", "generate", "-o", str(tmp_path / "x.tflite"))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "does not support the 'generate' export mode; use --mode prefill_decode" in out.stderr
    assert not (tmp_path / "x.tflite").exists()
