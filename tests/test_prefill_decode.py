"""The prefill_decode export of GPT-2: file contract, parity with Keras, runtime without TensorFlow."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from llm_tflite.testing import run_greedy_test, run_parity_test, run_prefill_decode_file_test
from llm_tflite import InterpreterRunner, read_metadata


def test_file_contract(tiny_tflite):
    meta = run_prefill_decode_file_test(tiny_tflite, num_layers=2)
    assert meta["family"] == "gpt2"
    assert meta["export_mode"] == "prefill_decode"
    assert meta["quantization"] == "none"
    assert meta["context_length"] == 128
    assert meta["prefill_lengths"] == [4, 16]
    assert meta["decode_windows"] == [32, 64]
    assert meta["tokenizer"]["type"] == "gpt2_bpe"


def test_decode_windows_give_the_logits_of_the_full_decode(tiny_gpt2_dir, tiny_tflite, tmp_path):
    """decode_window_W attends over the first W slots only; below W that is exactly the full decode."""
    from llm_tflite import Converter

    plain = tmp_path / "plain.tflite"
    Converter(prefill_lengths=(4, 16), decode_windows=()).convert(str(tiny_gpt2_dir), str(plain))
    assert read_metadata(plain)["decode_windows"] == []
    windowed, full = InterpreterRunner(tiny_tflite), InterpreterRunner(plain)
    used = []
    windowed.engine.call = lambda name, inputs, call=windowed.engine.call: used.append(name) or call(name, inputs)
    a, b = windowed.sequence(), full.sequence()
    a.feed([5]), b.feed([5])
    for position in range(1, 127):
        token = (position * 37) % 300
        np.testing.assert_array_equal(a.feed([token]), b.feed([token]))
    assert used == ["decode_window_32"] * 32 + ["decode_window_64"] * 32 + ["decode"] * 63


def test_logits_match_keras(tiny_gpt2, tiny_tflite):
    run_parity_test(tiny_gpt2, tiny_tflite)


def test_chunked_prefill_matches_single_pass(tiny_tflite):
    """A 40-token prompt runs as prefill_16 chunks + padding; logits equal token-by-token decoding."""
    runner = InterpreterRunner(tiny_tflite)
    ids = runner.encode("Let me be that I am and seek not to alter me. Then be it so.")
    assert len(ids) > 16
    chunked = runner.logits(ids)
    sequence = runner.sequence()
    stepwise = np.concatenate([sequence.feed([t]) for t in ids])
    np.testing.assert_allclose(chunked, stepwise, atol=1e-4)


def test_greedy_64_tokens_matches_keras_generate(tiny_gpt2, tiny_tflite):
    run_greedy_test(tiny_gpt2, tiny_tflite, "First Citizen:\nBefore we proceed", max_new_tokens=64)


def test_runs_where_tensorflow_is_never_imported(tiny_tflite):
    script = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        import llm_tflite.litert, llm_tflite.runtime, llm_tflite.tokenizers
        for package in (llm_tflite.litert, llm_tflite.runtime, llm_tflite.tokenizers):  # every module of the runtime side
            for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                importlib.import_module(module.name)
        from llm_tflite import InterpreterRunner
        runner = InterpreterRunner({str(tiny_tflite)!r})
        text = runner.generate("ROMEO:", max_new_tokens=8)
        assert isinstance(text, str)
        assert "ai_edge_litert" in sys.modules
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "keras_hub"))
        print("LEAKED", leaked)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "LEAKED []" in out.stdout


def test_metadata_is_self_contained(tiny_tflite, tmp_path):
    """A copy of the file alone, elsewhere, generates the same text."""
    copy = tmp_path / "elsewhere.tflite"
    copy.write_bytes(tiny_tflite.read_bytes())
    assert read_metadata(copy) == read_metadata(tiny_tflite)
    assert InterpreterRunner(copy).generate("KING:", 10) == InterpreterRunner(tiny_tflite).generate("KING:", 10)


def test_the_seeds_keras_nlp_code_converts(tiny_gpt2_dir, tmp_path):
    """keras-nlp 0.30 (the [convert] extra) is KerasHub under its old name: its model objects convert."""
    import keras_nlp

    from llm_tflite import Converter

    lm = keras_nlp.models.GPT2CausalLM.from_preset(str(tiny_gpt2_dir))
    path = tmp_path / "keras_nlp.tflite"
    Converter(prefill_lengths=(4,)).convert(lm, str(path))
    assert read_metadata(path)["family"] == "gpt2"
    run_greedy_test(lm, path, "ROMEO:", max_new_tokens=12)


def test_prefill_outputs_no_logits_and_older_files_with_logits_in_prefill_still_run(tiny_gpt2_dir, tmp_path):
    """``prefill_{L}`` outputs the caches only (LiteRT-LM's convention): generation runs a prompt but
    its last token through it and the last through ``decode``; scoring runs ``score_{L}``. A file
    written before ``score_{L}`` existed (format 2: logits in ``prefill_{L}``, no ``score_lengths``)
    gives the same logits and the same tokens."""
    from llm_tflite import Converter
    from llm_tflite.litert.flatbuffer import pack_model, unpack_model
    from llm_tflite.litert.metadata import add_metadata

    new = tmp_path / "new.tflite"
    Converter(prefill_lengths=(4, 16), score_lengths=(4, 16), decode_windows=()).convert(str(tiny_gpt2_dir), str(new))
    record = read_metadata(new)
    assert record["score_lengths"] == [4, 16]
    # the older layout: score_{L} under the name prefill_{L}, no score_lengths
    model = unpack_model(new.read_bytes())
    model.signatureDefs = [d for d in model.signatureDefs if not d.signatureKey.startswith(b"prefill_")]
    for d in model.signatureDefs:
        d.signatureKey = d.signatureKey.replace(b"score_", b"prefill_")
    del record["score_lengths"]
    record["format"] = 2
    old = tmp_path / "old.tflite"
    old.write_bytes(add_metadata(pack_model(model), record))

    runners = {"new": InterpreterRunner(new), "old": InterpreterRunner(old)}
    assert not runners["new"].engine.prefill_logits and runners["old"].engine.prefill_logits
    ids = runners["new"].encode("ROMEO: what light through yonder window breaks? It is the east")[:21]
    for runner in runners.values():  # 16 + 4 + 1 tokens
        used = []
        runner.engine.call = lambda name, inputs, call=runner.engine.call, used=used: used.append(name) or call(name, inputs)
        runner.sequence().feed_last(ids)
        runner.used = used
    assert runners["new"].used == ["prefill_16", "prefill_4", "decode"]
    assert runners["old"].used == ["prefill_16", "prefill_4", "decode"]
    logits = {key: runner.logits(ids) for key, runner in runners.items()}
    np.testing.assert_array_equal(logits["new"], logits["old"])
    for key, runner in runners.items():
        sequence = runner.sequence()
        np.testing.assert_allclose(sequence.feed_last(ids), logits["new"][-1], atol=1e-4, rtol=0)
        # the caches prefill_{L} wrote: the next step's logits equal scoring the whole sequence
        step = int(logits["new"][-1].argmax())
        np.testing.assert_allclose(sequence.feed_last([step]), runner.logits(ids + [step])[-1], atol=1e-4, rtol=0)
    texts = {key: runner.generate("ROMEO:", max_new_tokens=12, sampler="greedy") for key, runner in runners.items()}
    assert texts["new"] == texts["old"]


def test_feed_last_refuses_nothing_and_what_does_not_fit(tiny_tflite):
    from llm_tflite.errors import ContextLengthError, InvalidArgumentError

    sequence = InterpreterRunner(tiny_tflite).sequence()
    with pytest.raises(InvalidArgumentError, match="at least one token"):
        sequence.feed_last([])
    with pytest.raises(ContextLengthError, match="129 tokens do not fit the context of 128"):
        sequence.feed_last([5] * 129)
    assert sequence.position == 0  # nothing was fed
    assert sequence.feed([]).shape == (0, sequence.engine.vocab_size)


def test_writing_the_record_again_replaces_it(tiny_tflite):
    """A record written again takes the old one's place: the same record gives the same bytes, not a
    file holding both (bundling rewrites the record of every model it carries)."""
    from llm_tflite.litert.metadata import add_metadata, read_metadata_from_bytes

    data = tiny_tflite.read_bytes()
    record = read_metadata_from_bytes(data)
    assert add_metadata(data, record) == data
    longer = add_metadata(data, {**record, "note": "x" * 1000})  # the record is ~100 KB: not kept twice
    assert 1000 <= len(longer) - len(data) < 1100 and read_metadata_from_bytes(longer)["note"] == "x" * 1000
