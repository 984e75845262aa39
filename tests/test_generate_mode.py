"""The generate export mode: the whole loop in one graph, the tutorial's snippet, missing Flex."""

import subprocess
import sys
import textwrap

import pytest

from llm_tflite import Converter, InterpreterRunner, read_metadata
from llm_tflite.errors import UnsupportedRuntimeError




def test_metadata(tiny_generate_file):
    meta = read_metadata(tiny_generate_file)
    assert meta["export_mode"] == "generate" and meta["max_length"] == 40 and meta["default_sampler"] == "greedy"


def test_matches_keras_generate_and_prefill_decode(tiny_gpt2, tiny_generate_file, tiny_tflite):
    prompt = "First Citizen:"
    tiny_gpt2.compile(sampler="greedy")
    expected = tiny_gpt2.generate(prompt, max_length=40)
    got = InterpreterRunner(tiny_generate_file).generate(prompt)
    assert prompt + got == expected
    n_prompt = len(InterpreterRunner(tiny_tflite).encode(prompt))
    assert got == InterpreterRunner(tiny_tflite).generate(prompt, max_new_tokens=40 - n_prompt)


def test_tutorial_snippet_runs_our_file(tiny_generate_file):
    """The published recipe's interpreter code, unchanged but for the path."""
    script = textwrap.dedent(f"""
        import numpy as np
        import tensorflow_text as tf_text
        from tensorflow.lite.python import interpreter as interpreter_lib

        interpreter = interpreter_lib.InterpreterWithCustomOps(
            model_path={str(tiny_generate_file)!r},
            custom_op_registerers=tf_text.tflite_registrar.SELECT_TFTEXT_OPS,
        )
        interpreter.get_signature_list()
        generator = interpreter.get_signature_runner("serving_default")
        output = generator(prompt=np.array(["First Citizen:"]))
        print("\\nGenerated with TFLite:\\n", output["output_0"])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Generated with TFLite:\n b'First Citizen:" in out.stdout


def test_runtime_without_flex_raises_a_typed_error(tiny_generate_file):
    """ai_edge_litert alone (TensorFlow unimportable) is a runtime without Flex."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["tensorflow"] = None
        from llm_tflite import InterpreterRunner
        from llm_tflite.errors import UnsupportedRuntimeError
        try:
            InterpreterRunner({str(tiny_generate_file)!r})
        except UnsupportedRuntimeError as e:
            print("TYPED", e)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "TYPED" in out.stdout and "prefill_decode" in out.stdout, out.stdout + out.stderr


def test_tensorflow_2_20_is_refused_before_the_interpreter(tiny_generate_file, monkeypatch):
    import tensorflow as tf

    monkeypatch.setattr(tf, "__version__", "2.20.0")
    with pytest.raises(UnsupportedRuntimeError, match="2.20.0 wheels ship no Flex delegate"):
        InterpreterRunner(tiny_generate_file)


def test_unknown_generate_sampler_fails_before_conversion(tiny_gpt2_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown generate-mode sampler 'beam'"):
        Converter(mode="generate", sampler="beam").convert(str(tiny_gpt2_dir), str(tmp_path / "x.tflite"))
    assert not (tmp_path / "x.tflite").exists()


def test_seeded_top_k_is_reproducible(tiny_gpt2_dir, tiny_generate_file, tmp_path):
    """The seed fixed at export decides the text: the same in a fresh interpreter, another with another
    seed, and neither is the greedy file's (so the sampler in the graph is not ignored)."""
    texts = {}
    for seed in (3, 4):
        path = tmp_path / f"topk_{seed}.tflite"
        Converter(mode="generate", max_length=30, sampler="top_k", seed=seed).convert(str(tiny_gpt2_dir), str(path))
        texts[seed] = InterpreterRunner(path).generate("KING:")
        assert InterpreterRunner(path).generate("KING:") == texts[seed]  # a second interpreter, same text
    greedy = InterpreterRunner(tiny_generate_file).generate("KING:")  # max_length 40: longer than these
    assert texts[3] != texts[4] and not any(greedy.startswith(text) for text in texts.values())


def test_sampler_settings_are_fixed_at_export(tiny_gpt2_dir, tiny_generate_file, tmp_path):
    """--sampler top_k --top-k 1 samples the most likely token only: the greedy file's text."""
    path = tmp_path / "top_k_1.tflite"
    Converter(mode="generate", max_length=40, sampler="top_k", top_k=1, temperature=0.7, seed=3).convert(
        str(tiny_gpt2_dir), str(path))
    meta = read_metadata(path)
    assert meta["default_sampler"] == "top_k" and meta["sampler_settings"]["top_k"] == 1
    assert meta["sampler_settings"]["temperature"] == 0.7 and meta["seed"] == 3
    runner = InterpreterRunner(path)
    assert runner.generate("KING:") == InterpreterRunner(tiny_generate_file).generate("KING:")
    assert runner.generate("KING:", seed=3) == runner.generate("KING:")  # its own seed is accepted
    with pytest.raises(ValueError, match="top_k must be an integer >= 1"):
        Converter(mode="generate", sampler="top_k", top_k=0)
