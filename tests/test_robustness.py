"""A runner nothing can break (issue 12): shared across threads, fed damaged files and hostile
arguments, it answers correctly or raises a documented typed error."""

import concurrent.futures
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz
from llm_tflite import InterpreterRunner
from llm_tflite.errors import (ContextLengthError, DataError, InvalidArgumentError, LLMTFLiteError, ModelFileError)
from llm_tflite.litert.metadata import add_metadata, read_metadata_from_bytes

PROMPTS = ["ROMEO:", "KING:", "First Citizen:\nBefore", "O", "What light", "my lord", "JULIET:\nAy me", "Thou"]


def _requests(n):
    return [(PROMPTS[i % len(PROMPTS)], 4 + i % 9) for i in range(n)]


@pytest.mark.parametrize("file_fixture", ["tiny_tflite", "tiny_generate_file"])
def test_one_runner_shared_by_8_threads_answers_as_sequential(file_fixture, request):
    """8 threads x 50 greedy requests on one runner: exactly the answers of the same requests one by one."""
    runner = InterpreterRunner(request.getfixturevalue(file_fixture))
    requests = _requests(400)
    sequential = [runner.generate(prompt, max_new_tokens=n) for prompt, n in requests]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        shared = list(pool.map(lambda r: runner.generate(r[0], max_new_tokens=r[1]), requests))
    assert shared == sequential
    assert len(set(sequential)) >= 5  # the requests differ, so a mix-up would show


def test_interleaved_streams_of_one_runner_are_each_correct(tiny_tflite):
    runner = InterpreterRunner(tiny_tflite)
    expected = [runner.generate(p, max_new_tokens=20) for p in PROMPTS[:3]]
    streams = [runner.stream(p, max_new_tokens=20) for p in PROMPTS[:3]]
    pieces = [[] for _ in streams]
    active = True
    while active:
        active = False
        for i, stream in enumerate(streams):
            piece = next(stream, None)
            if piece is not None:
                pieces[i].append(piece)
                active = True
    assert ["".join(p) for p in pieces] == expected


# -- damaged files ------------------------------------------------------------------
def _fuzz(path, tmp_path, count, seed, mode):
    data = path.read_bytes()
    reference = InterpreterRunner(path).generate("ROMEO:", max_new_tokens=8)
    cases, kinds = [], []
    for i, (kind, damaged) in enumerate(fuzz.mutations(data, count, seed, mode)):
        case = tmp_path / f"case_{i}.tflite"
        case.write_bytes(damaged)
        cases.append(str(case))
        kinds.append(kind)
    results = fuzz.run_cases(cases, "ROMEO:", reference, timeout=120, memory_limit=8 << 30)
    defects = [(kinds[r["id"]], r) for r in results if r["outcome"] in fuzz.DEFECTS]
    assert defects == [], defects[:5]
    assert {r["outcome"] for r in results} <= {"typed", "same"}
    assert fuzz.summarize(results)["typed"] >= count * 0.8
    return results


def test_fuzzed_prefill_decode_files_end_in_typed_errors(tiny_tflite, tmp_path):
    """A fixed-seed subset of scripts/fuzz_model_files.py (the full run's figures: docs/runner.md)."""
    _fuzz(tiny_tflite, tmp_path, 84, seed=0, mode="prefill_decode")


def test_fuzzed_generate_files_end_in_typed_errors(tiny_generate_file, tmp_path):
    _fuzz(tiny_generate_file, tmp_path, 42, seed=0, mode="generate")


def _resigned(path, tmp_path, change, name="bad.tflite"):
    out = tmp_path / name
    out.write_bytes(fuzz.resigned(path.read_bytes(), change))
    return out


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("tokenizer"), "'tokenizer' must be an object"),
    (lambda r: r.__setitem__("format", 99), "file format 99.*upgrade llm-tflite"),
    (lambda r: r.__setitem__("context_length", r["context_length"] * 2), "does not match the file's record"),
    (lambda r: r["kv_cache"].__setitem__("num_layers", 3), "does not match the file's record"),
    (lambda r: r.__setitem__("eos_id", 5000), "eos_id 5000 is outside the vocabulary"),
    (lambda r: r.__setitem__("export_mode", "beam"), "unknown export mode 'beam'"),
])
def test_records_are_checked_against_schema_and_graph(tiny_tflite, tmp_path, change, message):
    """A record with a valid checksum but wrong contents (a buggy writer) is refused, not trusted."""
    with pytest.raises(ModelFileError, match=message):
        InterpreterRunner(_resigned(tiny_tflite, tmp_path, change))


def test_a_vocabulary_larger_than_the_logits_is_refused(tiny_tflite, tmp_path):
    def grow(record):
        record["tokenizer"]["vocab"]["extra"] = 100_000

    with pytest.raises(ModelFileError, match="tokenizer has 100001 tokens but the model scores"):
        InterpreterRunner(_resigned(tiny_tflite, tmp_path, grow))


def test_a_damaged_copy_is_refused_before_the_runtime_sees_it(tiny_tflite, tmp_path):
    data = bytearray(tiny_tflite.read_bytes())
    data[len(data) // 3] ^= 0x10
    bad = tmp_path / "flipped.tflite"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="damaged: its bytes do not match the checksum"):
        InterpreterRunner(bad)


def test_a_huge_tensor_shape_is_refused_before_allocation(tiny_tflite, tmp_path):
    """256 -> 771,915,622 in a shape (the OOM-killer case), even with a valid checksum."""
    data = bytearray(tiny_tflite.read_bytes())
    offset = max(fuzz._shape_offsets(bytes(data)), key=lambda o: int.from_bytes(data[o:o + 4], "little"))
    data[offset:offset + 4] = (771_915_622).to_bytes(4, "little")
    record = read_metadata_from_bytes(bytes(data))
    bad = tmp_path / "huge.tflite"
    bad.write_bytes(add_metadata(bytes(data), record))
    with pytest.raises(ModelFileError, match="would need more than"):
        InterpreterRunner(bad)


def test_files_without_a_checksum_from_format_1_still_run(tmp_path):
    """Files written before checksums existed (format 1) keep working: every other check still applies.
    (A format-3 file in the layout of those days, relabelled.)"""
    import json
    import pathlib

    tiny_tflite = pathlib.Path(__file__).resolve().parent / "data" / "tiny_gpt2_transposed_float32.tflite"
    data = tiny_tflite.read_bytes()
    record = read_metadata_from_bytes(data)
    good = record["sha256"]
    old = data.replace(b'"format": 3', b'"format": 1').replace(f'"sha256": "{good}"'.encode(),
                                                             b'"unused": "' + b"0" * 64 + b'"')  # same length
    assert json.loads(old[old.rfind(b'{"format"'):old.find(b"}", old.rfind(b'"unused"')) + 1])["format"] == 1
    path = tmp_path / "v1.tflite"
    path.write_bytes(old)
    assert InterpreterRunner(path).generate("ROMEO:", 8) == InterpreterRunner(tiny_tflite).generate("ROMEO:", 8)


# -- arguments ----------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=0), "max_new_tokens must be a positive integer"),
    (dict(max_new_tokens=-3), "max_new_tokens must be a positive integer"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be a positive integer"),
    (dict(max_new_tokens=True), "max_new_tokens must be a positive integer"),
    (dict(sampler="top_k", temperature=math.nan), "temperature must be a finite number >= 1e-06"),
    (dict(sampler="top_k", temperature=-1.0), "temperature must be a finite number >= 1e-06"),
    (dict(sampler="top_k", top_k=0), "top_k must be an integer >= 1"),
    (dict(sampler="top_k", top_k=2.5), "top_k must be an integer >= 1"),
    (dict(sampler="top_p", top_p=0.0), r"top_p must be a number in \(0, 1\]"),
    (dict(sampler="top_p", top_p=math.nan), r"top_p must be a number in \(0, 1\]"),
    (dict(sampler="top_p", top_p=1.5), r"top_p must be a number in \(0, 1\]"),
    (dict(sampler="nucleus"), "unknown sampler 'nucleus'"),
    (dict(sampler="beam", top_p=0.5), "sampler='beam' takes"),
    (dict(sampler="greedy", num_beams=3), "apply to sampler='beam' or 'contrastive'"),
    (dict(context_overflow="wrap"), "context_overflow must be one of"),
    (dict(stop=5), "stop must be a string or a list of strings"),
    (dict(sampler="top_k", seed=-1), "seed must be None or an integer"),
    (dict(sampler="top_k", seed="7"), "seed must be None or an integer"),
])
def test_bad_arguments_raise_typed_errors(tiny_tflite, kwargs, message):
    runner = InterpreterRunner(tiny_tflite)
    with pytest.raises(InvalidArgumentError, match=message):
        runner.generate("ROMEO:", **kwargs)
    with pytest.raises(InvalidArgumentError, match=message):
        runner.stream("ROMEO:", **kwargs)  # raised when called, not at the first piece


def test_bad_token_ids_and_thread_counts(tiny_tflite):
    runner = InterpreterRunner(tiny_tflite)
    for ids in ([1, runner.vocab_size], [-1], [1.5], ["a"]):
        with pytest.raises(InvalidArgumentError, match="token ids must be"):
            runner.logits(ids)
    with pytest.raises(InvalidArgumentError, match="num_threads"):
        InterpreterRunner(tiny_tflite, num_threads=0)


EXPECTED = (InvalidArgumentError, DataError, ContextLengthError)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=st.one_of(st.text(max_size=300), st.binary(max_size=100)),
       max_new_tokens=st.one_of(st.integers(-5, 12), st.floats(allow_nan=True), st.none()),
       sampler=st.sampled_from(["greedy", "random", "temperature", "top_k", "top_p", "nucleus", ""]),
       temperature=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 3)),
       top_k=st.one_of(st.integers(-3, 3000), st.floats(allow_nan=True)),
       top_p=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-1, 2)),
       seed=st.one_of(st.none(), st.integers(-10, 2**64), st.text(max_size=3)))
def test_any_prompt_and_arguments_give_text_or_a_documented_error(tiny_runner, prompt, max_new_tokens, sampler,
                                                                   temperature, top_k, top_p, seed):
    try:
        text = tiny_runner.generate(prompt, max_new_tokens, sampler, temperature=temperature, top_k=top_k,
                                    top_p=top_p, seed=seed)
    except EXPECTED:
        return
    assert isinstance(text, str)


@pytest.fixture(scope="module")
def tiny_runner(tiny_tflite):
    return InterpreterRunner(tiny_tflite)


def test_documented_errors_are_llm_tflite_errors():
    assert all(issubclass(e, LLMTFLiteError) for e in EXPECTED)


# -- the other commands -------------------------------------------------------------
def _cli(*args, timeout=600, **kwargs):
    import os
    import subprocess
    import sys

    env = {**os.environ, "LLM_TFLITE_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "llm_tflite", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


def test_eval_refuses_zero_token_evaluations(tiny_tflite, tmp_path):
    from conftest import SHAKESPEARE

    out = _cli("eval", tiny_tflite, "--data", SHAKESPEARE, "--max-tokens", "0")
    assert out.returncode == 1 and "--max-tokens must be at least 2" in out.stderr
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n")
    out = _cli("eval", tiny_tflite, "--data", blank)
    assert out.returncode == 1 and "corpus is empty" in out.stderr and "perplexity" not in out.stdout
    from llm_tflite.evaluation.metrics import tflite_heldout_loss

    with pytest.raises(DataError, match="nothing was evaluated"):  # the library path, with no text to predict
        tflite_heldout_loss(InterpreterRunner(tiny_tflite), "", max_tokens=1)


def test_eval_refuses_a_reference_with_another_tokenizer(tiny_tflite, tiny_palm_tflite):
    from conftest import SHAKESPEARE

    out = _cli("eval", tiny_tflite, "--data", SHAKESPEARE, "--max-tokens", "100", "--reference", tiny_palm_tflite)
    assert out.returncode == 1 and "uses another tokenizer" in out.stderr
    out = _cli("eval", tiny_tflite, "--data", SHAKESPEARE, "--max-tokens", "100", "--reference", "gpt2_tiny_shakespeare")
    assert out.returncode == 1 and "tokenizes the text differently" in out.stderr


def test_null_fields_are_skipped_and_other_types_refused(tmp_path, caplog):
    from llm_tflite.training.data import load_texts

    records = tmp_path / "r.jsonl"
    records.write_text('{"text": "first"}\n{"text": null}\n\n{"text": ["a", "b"]}\n', encoding="utf-8")
    with caplog.at_level("WARNING", logger="llm_tflite"):
        assert load_texts(records, "text") == ["first", "ab"]
    assert "skipped 1 record(s) whose 'text' is null" in caplog.text
    records.write_text('{"text": "ok"}\n{"text": 5}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"r.jsonl:2: field 'text' holds a int, not text"):
        load_texts(records, "text")
    only_null = tmp_path / "n.json"
    only_null.write_text('[{"text": null}]', encoding="utf-8")
    with pytest.raises(DataError, match="corpus is empty"):
        load_texts(only_null, "text")


def test_jsonl_errors_name_the_line(tmp_path):
    from llm_tflite.training.data import load_texts

    records = tmp_path / "r.jsonl"
    records.write_text('{"text": "a"}\n{"text": "b"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"r.jsonl:3: not valid JSON"):
        load_texts(records, "text")


@pytest.mark.parametrize("command", ["convert", "finetune"])
def test_unwritable_outputs_are_refused_before_work(command, tiny_gpt2_dir, tmp_path):
    from conftest import SHAKESPEARE

    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    target = blocker / ("out.tflite" if command == "convert" else "preset")
    extra = ["--data", SHAKESPEARE] if command == "finetune" else []
    out = _cli(command, "no_such_model_anywhere", *extra, "-o", target, timeout=120)
    assert out.returncode == 1 and "cannot write" in out.stderr and "is a file, not a directory" in out.stderr
    assert "no_such_model" not in out.stderr  # refused before the model was looked up


def test_an_interrupted_conversion_exits_non_zero_and_leaves_no_file(tiny_gpt2_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    output = tmp_path / "x.tflite"
    process = subprocess.Popen([sys.executable, "-m", "llm_tflite", "convert", str(tiny_gpt2_dir), "-o", str(output)],
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "LLM_TFLITE_NO_PROGRESS": "1"})
    for line in process.stderr:
        if "convert: tracing" in line:  # seconds of tracing and converting are still to come
            break
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=300) == 130
    assert "interrupted" in process.stderr.read()
    assert not output.exists() and not list(tmp_path.glob(".*partial"))


def test_a_recorded_ctrl_c_survives_commands_run_inside_the_command_and_off_its_thread():
    """``main()`` called from a worker thread, or inside a running command, neither clears nor keeps the
    outer command's record of a Ctrl+C; releasing the outer one gives the state before it back."""
    import subprocess
    import sys

    script = """
import os, signal, threading, time
from llm_tflite import console
outer = console.catch_interrupts()
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
except KeyboardInterrupt:
    pass
worker = threading.Thread(target=lambda: console.release_interrupts(console.catch_interrupts()))
worker.start(); worker.join()
inner = console.catch_interrupts()
print(console.interrupted())
console.release_interrupts(inner)
print(console.interrupted())
console.release_interrupts(outer)
print(console.interrupted(), signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.split("\n")[:3] == ["False", "True", "False True"], out.stderr


def test_a_ctrl_c_python_drops_inside_a_destructor_still_stops_before_the_file_is_written(tmp_path):
    """A Ctrl+C whose handler runs inside ``__del__`` (TensorFlow's resources have them) raises a
    ``KeyboardInterrupt`` Python drops with "Exception ignored"; the CLI's handler remembers it and
    the next commit point stops (a conversion once went on to write its file and exit 0)."""
    import subprocess
    import sys

    output = tmp_path / "x.tflite"
    script = """
import os, signal, sys
from llm_tflite.console import catch_interrupts
from llm_tflite.litert.flatbuffer import write_atomic
catch_interrupts()
class Resource:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs here, and Python drops its KeyboardInterrupt
            pass
Resource()
print("went on", flush=True)
write_atomic(sys.argv[1], b"data")
"""
    out = subprocess.run([sys.executable, "-c", script, str(output)], capture_output=True, text=True, timeout=120)
    assert out.stdout == "went on\n"  # the exception was dropped: the code went on
    assert out.returncode != 0 and "KeyboardInterrupt" in out.stderr and "write_atomic" in out.stderr
    assert "Exception ignored" not in out.stderr  # the dropped one is not shown as a second traceback
    assert not output.exists() and not list(tmp_path.glob(".*partial"))
