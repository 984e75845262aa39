"""Batched decode (``decode_batch_{B}`` signatures) and continuous batching (``BatchingEngine``):
the same logits and tokens as decoding each sequence alone."""

import threading

import numpy as np
import pytest

from llm_tflite import Converter, InterpreterRunner
from llm_tflite.errors import InvalidArgumentError, ModelFileError
from llm_tflite.litert.metadata import add_metadata, read_metadata_from_bytes, validate_record

PROMPTS = ["ROMEO:", "JULIET: O Romeo", "First Citizen:\nBefore we proceed any further, hear me speak.",
           "KING:", "Thou", "My lord, I", "MENENIUS:"]


def alone(runner, ids, steps):
    """Greedy tokens and each step's logits of one sequence decoded by itself."""
    sequence = runner.sequence()
    logits = sequence.feed(ids)[-1]
    tokens, all_logits = [], []
    for _ in range(steps):
        all_logits.append(logits)
        tokens.append(int(logits.argmax()))
        logits = sequence.feed([tokens[-1]])[-1]
    return tokens, all_logits


def test_record_and_signatures(batched_file):
    runner = InterpreterRunner(batched_file)
    assert runner.metadata["decode_batch_sizes"] == [2, 4]
    names = set(runner.engine.input_details)
    assert {"decode_batch_2", "decode_batch_2_window_32", "decode_batch_4_window_64"} <= names
    inputs = runner.engine.input_details["decode_batch_4"]
    assert list(inputs["tokens"]["shape"]) == [4, 1] and list(inputs["input_pos"]["shape"]) == [4]
    assert list(inputs["kv_cache_k_1_row3"]["shape"]) == list(inputs["kv_cache_k_1_row0"]["shape"])


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_rows_decode_the_logits_of_each_sequence_alone(batched_file, count):
    """Rows at different positions (one crossing from window 32 to 64 to the full decode), padded
    rows (1 in a batch of 2, 1 in a batch of 4): every row's logits equal its sequence's alone,
    bit for bit."""
    runner = InterpreterRunner(batched_file, weight_cache="memory")
    engine = runner.engine
    prompts = [runner.encode(p) for p in PROMPTS[:count]]
    prompts[-1] = (prompts[-1] * 8)[:26]  # this one passes positions 32 and 64 within 48 steps
    expected = [alone(runner, ids, 48) for ids in prompts]
    sequences = [runner.sequence() for _ in prompts]
    logits = [s.feed(ids)[-1] for s, ids in zip(sequences, prompts)]
    pad = engine.new_state()
    for step in range(48):
        for row, (tokens, step_logits) in enumerate(expected):
            np.testing.assert_array_equal(logits[row], step_logits[step])
        tokens = [tokens[step] for tokens, _ in expected]
        logits = list(engine.decode_rows([s.caches for s in sequences], tokens, [s.position for s in sequences], pad))
        for sequence in sequences:
            sequence.position += 1
    assert max(s.position for s in sequences) > 64


def test_concurrent_generations_decode_together_with_unbatched_outputs(batched_file):
    """Seven threads (more than the largest batch): greedy and seeded random texts equal the
    unbatched runner's, and the steps carried several rows."""
    plain = InterpreterRunner(batched_file)
    batched = InterpreterRunner(batched_file, batching=True)
    expected = [(plain.complete(p, 40, "greedy").text, plain.complete(p, 40, "random", temperature=0.9, seed=i).text)
                for i, p in enumerate(PROMPTS)]
    got = [None] * len(PROMPTS)
    barrier = threading.Barrier(len(PROMPTS))

    def run(i):
        barrier.wait()
        got[i] = (batched.complete(PROMPTS[i], 40, "greedy").text,
                  batched.complete(PROMPTS[i], 40, "random", temperature=0.9, seed=i).text)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert got == expected
    engine = batched.engine
    assert engine.steps > 0 and engine.rows / engine.steps > 2


def test_chat_stream_and_stop_rules_work_per_request(batched_file):
    plain = InterpreterRunner(batched_file)
    batched = InterpreterRunner(batched_file, batching=True)
    options = [dict(stop=["e"]), dict(max_new_tokens=5), dict(sampler="top_k", seed=3)]
    expected = [plain.complete("ROMEO:", **{"max_new_tokens": 30, **o}).text for o in options]
    got = [None] * len(options)

    def run(i):
        got[i] = "".join(batched.stream("ROMEO:", **{"max_new_tokens": 30, **options[i]}))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(options))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert got == expected


def test_batching_needs_a_file_with_batch_signatures(tiny_tflite):
    with pytest.raises(InvalidArgumentError, match="--batch-sizes"):
        InterpreterRunner(tiny_tflite, batching=True)


def test_batch_size_options_are_checked():
    with pytest.raises(InvalidArgumentError, match="batch_sizes must be integers 2..32"):
        Converter(batch_sizes=(1, 4))
    with pytest.raises(InvalidArgumentError, match="prefill_decode option"):
        Converter(mode="generate", batch_sizes=(4,))


def test_a_record_with_bad_batch_sizes_is_refused(batched_file, tmp_path):
    record = read_metadata_from_bytes(batched_file.read_bytes())
    for bad in ([1], [64], ["4"], 4):
        with pytest.raises(ModelFileError, match="decode_batch_sizes"):
            validate_record({**record, "decode_batch_sizes": bad}, "f")


def test_a_record_listing_missing_batch_signatures_is_refused(tiny_tflite, tmp_path):
    data = tiny_tflite.read_bytes()
    record = read_metadata_from_bytes(data)
    record.pop("sha256", None)
    path = tmp_path / "lying.tflite"
    path.write_bytes(add_metadata(data, {**record, "decode_batch_sizes": [4]}))
    with pytest.raises(ModelFileError, match="lacks signatures.*decode_batch_4"):
        InterpreterRunner(path)
