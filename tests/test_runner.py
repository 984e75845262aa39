"""InterpreterRunner behaviour: samplers, streaming, limits, errors."""

import numpy as np
import pytest

from llm_tflite import InterpreterRunner, Sampler
from llm_tflite.errors import ContextLengthError, DataError, ModelFileError


def test_stream_pieces_join_to_generate(tiny_tflite):
    runner = InterpreterRunner(tiny_tflite)
    pieces = list(runner.stream("KING:", max_new_tokens=20))
    assert "".join(pieces) == runner.generate("KING:", max_new_tokens=20)


@pytest.mark.parametrize("sampler", ["random", "temperature", "top_k", "top_p"])
def test_random_samplers_repeat_with_a_seed(tiny_tflite, sampler):
    runner = InterpreterRunner(tiny_tflite)
    first = runner.generate("KING:", 24, sampler, seed=7)
    assert first == runner.generate("KING:", 24, sampler, seed=7)
    others = {runner.generate("KING:", 24, sampler, seed=s) for s in range(8, 12)}
    assert len(others | {first}) > 1  # different seeds give different text


def test_sampler_rules():
    logits = np.array([0.0, 5.0, 4.9, -3.0])
    assert Sampler("greedy")(logits) == 1
    assert {Sampler("top_k", top_k=2, seed=s)(logits) for s in range(50)} == {1, 2}
    assert {Sampler("top_p", top_p=0.01, seed=s)(logits) for s in range(20)} == {1}
    with pytest.raises(ValueError, match="unknown sampler"):
        Sampler("nucleus")


def test_prompt_over_the_context_is_a_clear_error(tiny_tflite):
    runner = InterpreterRunner(tiny_tflite)
    with pytest.raises(ContextLengthError, match="context holds 128.*context_overflow='truncate'"):
        runner.generate("word " * 400)
    with pytest.raises(ContextLengthError, match="100 new ones were asked for"):
        runner.generate("word " * 60, max_new_tokens=100)


def test_truncation_keeps_the_most_recent_tokens(tiny_tflite):
    runner = InterpreterRunner(tiny_tflite)
    text = " ".join(f"w{i}" for i in range(300))
    result = runner.complete(text, max_new_tokens=8, context_overflow="truncate")
    assert result.prompt_tokens + 8 <= 128 and text.endswith(result.prompt.strip())
    assert "w299" in result.prompt and "w0 " not in result.prompt
    assert result.text == runner.decode(result.token_ids) and result.completion_tokens == 8


def test_generation_stops_at_the_context(tiny_tflite):
    runner = InterpreterRunner(tiny_tflite)
    prompt_ids = runner.encode("word")[:2] * 50
    new = list(runner.generate_ids(prompt_ids, max_new_tokens=500))
    assert len(prompt_ids) + len(new) == 128 + 1  # the last token is chosen from a full context, never fed
    prompt = " ".join(f"w{i}" for i in range(100))
    while len(runner.encode(prompt)) > 110:
        prompt = prompt[:-4]
    assert 90 <= len(runner.encode(prompt)) <= 110
    result = runner.complete(prompt)  # no max_new_tokens: what the context still holds
    assert result.finish_reason in ("context", "stop") and result.prompt_tokens + result.completion_tokens <= 128


def test_bad_utf8_prompt(tiny_tflite):
    runner = InterpreterRunner(tiny_tflite)
    with pytest.raises(DataError, match="UTF-8"):
        runner.generate(b"\xff\xfe bad")
    with pytest.raises(DataError, match="UTF-8"):
        runner.generate("\udcff surrogate")


def test_missing_and_non_tflite_files(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        InterpreterRunner(tmp_path / "missing.tflite")
    text = tmp_path / "notes.tflite"
    text.write_text("hello, not a model")
    with pytest.raises(ModelFileError, match="not a TensorFlow Lite model"):
        InterpreterRunner(text)


def test_truncated_file(tiny_tflite, tmp_path):
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(tiny_tflite.read_bytes()[: 4000])
    with pytest.raises(ModelFileError):
        InterpreterRunner(broken)
