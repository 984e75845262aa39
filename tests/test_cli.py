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
    out = cli("convert", tiny_gpt2_dir, "--prefill-lengths", "4,16", "--quantize", "dynamic_int8", "--batch-sizes", "2",
              "-o", out_file)
    assert out.returncode == 0, out.stderr
    assert f"wrote {out_file}" in out.stdout and "dynamic_int8" in out.stdout
    from llm_tflite.litert.metadata import read_metadata

    record = read_metadata(str(out_file))
    assert record["decode_batch_sizes"] == [2]
    # a file with batch sizes gets decode windows from 32 (a batched step reads every row's window)
    assert record["decode_windows"] == [w for w in (32, 64, 128, 256, 512) if w < record["context_length"]]
    assert record["decode_windows"][:1] == [32]
    gen = cli("generate", out_file, "ROMEO:", "--max-new-tokens", "12")
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith("ROMEO:")
    streamed = cli("generate", out_file, "ROMEO:", "--max-new-tokens", "12", "--stream")
    assert streamed.stdout == gen.stdout


@pytest.mark.parametrize("args, message", [
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


@pytest.mark.parametrize("args, choice", [
    (["convert", "gpt2_tiny_shakespeare", "--quantize", "int1", "-o", "x.tflite"], "int1"),
    (["convert", "some_model", "--family", "llama9", "-o", "x.tflite"], "llama9"),
    (["convert", "gpt2_tiny_shakespeare", "--mode", "generate", "--sampler", "beam9", "-o", "x.tflite"], "beam9"),
    (["generate", "missing.tflite", "hi", "--sampler", "nucleus"], "nucleus"),
])
def test_bad_choices_fail_before_any_work_and_list_the_registered_ones(args, choice, tmp_path):
    """Choices come from the registry: a typo is a usage error (exit 2) that names what exists."""
    out = cli(*args)
    assert out.returncode == 2
    assert f"invalid choice: '{choice}'" in out.stderr and "choose from" in out.stderr
    assert "Traceback" not in out.stderr and "tensorflow" not in out.stderr.lower()
    assert not (tmp_path / "x.tflite").exists()


def _options(parser, path=()):
    """``(command path, action)`` for every argument of every (sub)command."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, path + (name,))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, action


def test_every_option_of_every_command_has_help_and_shows_its_default():
    import argparse

    from llm_tflite.cli import build_parser
    from llm_tflite.cli.main import HelpFormatter

    parser = build_parser()
    commands = {path[0] for path, _ in _options(parser) if path}
    assert {"convert", "generate", "plugins", "train", "finetune", "eval", "compare", "bench"} <= commands
    options = list(_options(parser))
    for path, action in options:
        where = f"llm-tflite {' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
        assert action.help, f"{where} has no help"
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            assert "default" in HelpFormatter("x")._get_help_string(action), f"{where} hides its default"
    assert len(options) > 80
    for command in commands:  # and argparse renders each page
        out = cli(command, "--help")
        assert out.returncode == 0 and "usage: llm-tflite " + command in out.stdout


def test_version_and_json_flags():
    from llm_tflite import __version__

    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"llm-tflite {__version__}"
    for command in ("convert", "generate", "compare", "plugins", "eval", "bench"):
        assert "--json" in cli(command, "--help").stdout


def test_convert_and_generate_json(tiny_gpt2_dir, tmp_path):
    out_file = tmp_path / "j.tflite"
    out = cli("convert", tiny_gpt2_dir, "--prefill-lengths", "4", "-o", out_file, "--json", "-q")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["path"] == str(out_file) and result["size_bytes"] == out_file.stat().st_size
    assert result["metadata"]["export_mode"] == "prefill_decode"
    assert out.stderr == "", "-q leaves only warnings and errors"
    gen = json.loads(cli("generate", out_file, "ROMEO:", "--max-new-tokens", "8", "--json").stdout)
    import dataclasses

    from llm_tflite import InterpreterRunner

    expected = dataclasses.asdict(InterpreterRunner(out_file).complete("ROMEO:", max_new_tokens=8))
    assert gen == {"file": str(out_file), "prompt": "ROMEO:", **expected} and gen["finish_reason"] == "length"


def test_commands_convert_on_tensorflow_whatever_keras_backend_says(tmp_path):
    """The KerasHub tutorials set KERAS_BACKEND=jax: a command converts on TensorFlow all the same, to
    the same bytes; in a process whose Keras already runs on another backend, the library says so."""
    files = {}
    for backend in ("jax", "tensorflow"):
        env = {**os.environ, "KERAS_BACKEND": backend, "LLM_TFLITE_NO_PROGRESS": "1"}
        files[backend] = tmp_path / f"{backend}.tflite"
        out = subprocess.run([sys.executable, "-m", "llm_tflite", "convert", "gpt2_tiny_shakespeare", "-o",
                              files[backend]], capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
    assert files["jax"].read_bytes() == files["tensorflow"].read_bytes()
    script = ("import os, sys, types; sys.modules['keras'] = types.SimpleNamespace(backend=types.SimpleNamespace("
              "backend=lambda: 'jax'))\nfrom llm_tflite.console import import_keras\n"
              "from llm_tflite.errors import UnsupportedRuntimeError\ntry:\n    import_keras()\n"
              "except UnsupportedRuntimeError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "KERAS_BACKEND=tensorflow" in out.stdout, out.stderr[-2000:]


def test_bench_on_a_generate_file_says_why_not(tiny_tflite, tmp_path):
    """bench on a file kind it cannot measure: a typed error, not an AttributeError."""
    from llm_tflite.errors import UnsupportedRuntimeError
    from llm_tflite.evaluation.bench import bench_file
    from llm_tflite.litert.metadata import add_metadata, read_metadata_from_bytes

    data = tiny_tflite.read_bytes()
    path = tmp_path / "generate_kind.tflite"  # relabelled: bench must look before it runs anything
    path.write_bytes(add_metadata(data, {**read_metadata_from_bytes(data), "export_mode": "generate"}))
    with pytest.raises(UnsupportedRuntimeError, match="needs a prefill_decode file.*llm-tflite generate"):
        bench_file(path)
    out = cli("bench", path)
    assert out.returncode == 1 and "needs a prefill_decode file" in out.stderr and "Traceback" not in out.stderr


def test_bench_flags_a_rate_above_its_bound_as_a_mis_measurement(tiny_tflite, monkeypatch, capsys):
    """Decoding faster than bandwidth / bytes read cannot happen: it means a bandwidth sample was taken
    while the machine was busy (or the bytes were miscounted), so it is flagged, not reported as reached."""
    from llm_tflite.cli.main import main
    from llm_tflite.evaluation import bench

    samples = iter([2e3, 1e3, 1.5e3])  # bytes/s: far below what any decode step needs
    monkeypatch.setattr(bench, "read_bandwidth_apart", lambda threads: next(samples))
    assert main(["bench", str(tiny_tflite), "--new-tokens", "8", "--prompt-tokens", "4", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "read bandwidth: 0.0 GB/s, the highest of 3 samples" in out and "spread 67%" in out
    assert out.count("above the bound, so a mis-measurement") == 2 and "reached" not in out


def test_bench_reports_every_field(tiny_tflite):
    out = cli("bench", tiny_tflite, "--new-tokens", "8", "--prompt-tokens", "4,16", "--runs", "2", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert {"file", "file_bytes", "quantization", "context_length", "load_s", "prefill", "new_tokens",
            "decode_tokens_per_s", "decode_early", "decode_late", "peak_rss_bytes", "bytes_read_per_token",
            "read_bandwidth_bytes_per_s", "decode_bound_tokens_per_s", "decode_fraction_of_bound",
            "generate_decode_tokens_per_s", "decode_over_generate"} <= set(result)
    assert sorted(result["prefill"]) == ["16", "4"] and all(
        figures["time_to_first_token_s"] > 0 and figures["tokens_per_s"] > 0 for figures in result["prefill"].values())
    for phase in ("decode_early", "decode_late"):
        figures = result[phase]
        assert 0 < figures["min"] <= figures["median"] <= figures["max"], figures
    assert result["decode_early"]["positions"] == [4, 12] and result["decode_late"]["positions"] == [120, 128]
    read = result["bytes_read_per_token"]
    assert read["total"] == read["weights"] + read["kv_cache"] and 0 < read["weights"] < result["file_bytes"]
    assert read["kv_cache"] == 2 * 2 * 32 * 32 * 4  # layers x (k, v) x window 32 x hidden x float32 (positions 4-11)
    late = result["decode_late"]
    assert late["bytes_read_per_token"]["kv_cache"] == 2 * 2 * 128 * 32 * 4  # the whole context
    assert late["fraction_of_bound"] == pytest.approx(late["median"] / late["bound_tokens_per_s"])
    assert result["read_bandwidth_bytes_per_s"] > 1e8 and result["peak_rss_bytes"] > result["file_bytes"]
    bandwidth = result["read_bandwidth"]  # sampled before, between and after the runs; the bound uses the highest
    assert len(bandwidth["samples_bytes_per_s"]) == 3
    assert result["read_bandwidth_bytes_per_s"] == bandwidth["max_bytes_per_s"] == max(bandwidth["samples_bytes_per_s"])
    assert bandwidth["min_bytes_per_s"] <= bandwidth["median_bytes_per_s"] <= bandwidth["max_bytes_per_s"]
    assert set(result["bound_exceeded"]) <= {"early", "late"}  # flagged: test_bench_flags_a_rate_above_its_bound...
    assert result["decode_fraction_of_bound"] == pytest.approx(
        result["decode_tokens_per_s"] / result["decode_bound_tokens_per_s"])
    assert result["generate_decode_tokens_per_s"] > 0 and result["decode_over_generate"] == pytest.approx(
        result["decode_tokens_per_s"] / result["generate_decode_tokens_per_s"])
    out = cli("bench", tiny_tflite, "--new-tokens", "8", "--prompt-tokens", "4", "--runs", "1")
    assert out.returncode == 0 and "bound late:" in out.stdout and "decode at positions 4-12" in out.stdout, out.stderr
    assert "plain generations" in out.stdout


def test_generate_options_on_the_command_line(tiny_tflite):
    from llm_tflite import InterpreterRunner

    runner = InterpreterRunner(tiny_tflite)
    free = runner.generate("ROMEO:", 20)
    stop = free[5:8]
    out = cli("generate", tiny_tflite, "ROMEO:", "--max-new-tokens", "20", "--stop", stop)
    assert out.returncode == 0 and out.stdout == "ROMEO:" + free[: free.index(stop)] + "\n"
    sampled = cli("generate", tiny_tflite, "ROMEO:", "--max-new-tokens", "12", "--sampler", "top_k", "--top-k", "5",
                  "--top-p", "0.8", "--seed", "4", "--repetition-penalty", "1.2")
    assert sampled.stdout == "ROMEO:" + runner.generate("ROMEO:", 12, "top_k", top_k=5, top_p=0.8, seed=4,
                                                      repetition_penalty=1.2) + "\n"
    beam = cli("generate", tiny_tflite, "ROMEO:", "--max-new-tokens", "8", "--sampler", "beam", "--num-beams", "3")
    assert beam.stdout == "ROMEO:" + runner.generate("ROMEO:", 8, "beam", num_beams=3) + "\n"
    bad = cli("generate", tiny_tflite, "ROMEO:", "--sampler", "greedy", "--num-beams", "3")
    assert bad.returncode == 1 and "apply to sampler='beam'" in bad.stderr


def test_autocomplete_command(tiny_tflite):
    from llm_tflite import InterpreterRunner

    text = "one two three four five six seven"
    out = cli("autocomplete", tiny_tflite, text, "--window-words", "3", "--seed", "2", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["prompt"] == "five six seven" and result["reason"] is None
    assert result["suggestion"] == InterpreterRunner(tiny_tflite).autocomplete(text, 3, seed=2).suggestion
    rejected = cli("autocomplete", tiny_tflite, "what the fuck")
    assert rejected.returncode == 0 and rejected.stdout == "" and "no suggestion (bad_language)" in rejected.stderr
    unfiltered = cli("autocomplete", tiny_tflite, "what the fuck", "--no-filter", "--json")
    assert json.loads(unfiltered.stdout)["reason"] in (None, "no_suggestion")


def test_every_sampler_setting_has_an_option():
    """The one list of sampler settings (sampling.SETTINGS) is what generate and autocomplete take."""
    from llm_tflite.cli.main import build_parser
    from llm_tflite.runtime import sampling

    parser = build_parser()
    for command in ("generate", "autocomplete"):
        args = parser.parse_args([command, "m.tflite", "text"])
        assert set(sampling.SETTINGS) <= set(vars(args)), command


def test_log_lines_go_to_stderr_as_it_is_when_they_are_logged(monkeypatch):
    """A server thread logging after the stderr it started with was closed (a test's capture, a
    notebook cell) writes to the current one, not to the closed file."""
    import io
    import logging

    from llm_tflite.cli.main import configure_logging

    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging(0)
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("llm_tflite").info("request 1 -> 200")
    assert second.getvalue() == "llm-tflite: request 1 -> 200\n"
