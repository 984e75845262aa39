""".litertlm bundles: LiteRT-LM's engine runs our files token for token like our loop; our runner
reads bundles; backend="litert-lm"; damaged bundles end in typed errors."""

import json
import os
import random
import subprocess
import sys

import pytest

from llm_tflite import InterpreterRunner
from llm_tflite.errors import InvalidArgumentError, ModelFileError, UnsupportedRuntimeError
from llm_tflite.export.bundle import HELPER_VARIABLE, build_bundle
from llm_tflite.litert.litertlm import sections

import litert_lm  # noqa: E402  (llm-tflite[all] and [litertlm] install it)

PROMPTS = ["ROMEO:", "ROMEO:\nWhat say you", "First Citizen:\nBefore we proceed any further, hear me speak."]


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "llm_tflite", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def tiny_bundle(tiny_tflite, tmp_path_factory):
    return build_bundle(tiny_tflite, tmp_path_factory.mktemp("bundle") / "tiny.litertlm")


@pytest.fixture(scope="module")
def shipped_bundle(tmp_path_factory):
    """The shipped GPT-2 (dynamic_int8) as a bundle: a model that writes text (a random one writes stray
    bytes, which the engine shows as U+FFFD per step where our loop waits for whole characters)."""
    from llm_tflite import Converter

    work = tmp_path_factory.mktemp("shipped")
    Converter(quantize="dynamic_int8").convert("gpt2_tiny_shakespeare", str(work / "model.tflite"))
    return build_bundle(work / "model.tflite", work / "model.litertlm")


def _engine_steps(path, prompt, new_tokens):
    """The engine's greedy continuation, one text piece per decode step."""
    engine = litert_lm.Engine(str(path))
    try:
        tokens = engine.tokenize(prompt)
        with engine.create_session(apply_prompt_template=False, max_output_tokens=new_tokens,
                                   sampler_config=litert_lm.SamplerConfig(top_k=1)) as session:
            session.run_prefill([prompt])
            return tokens, [r.texts[0] for r in session.run_decode_async()]
    finally:
        engine.close()


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["gpt2_tiny_shakespeare", "palm_tiny_shakespeare"])
@pytest.mark.parametrize("strategy", ["none", "dynamic_int8"])
def test_litert_lm_engine_decodes_the_shipped_models_token_for_token_like_our_runner(preset, strategy,
                                                                                      tmp_path_factory):
    from llm_tflite import Converter

    work = tmp_path_factory.mktemp("shipped_bundle")
    tflite = work / "model.tflite"
    Converter(quantize=strategy).convert(preset, str(tflite))
    bundle = build_bundle(tflite, work / "model.litertlm")
    runner = InterpreterRunner(bundle)
    sentencepiece = runner.metadata["tokenizer"]["type"] == "sentencepiece"
    for prompt in PROMPTS:
        ours = list(runner.generate_ids(runner.encode(prompt), 32))
        engine_prompt, steps = _engine_steps(bundle, prompt, 32)
        start = [runner.bos_id] if runner.add_bos else []
        assert start + engine_prompt == runner.encode(prompt)
        expected = [runner.tokenizer.decode_bytes([t]).decode("utf-8") for t in ours]
        if sentencepiece:  # SentencePiece drops the space that opens a text (the engine streams no empty step)
            expected[0] = expected[0].removeprefix(" ")
            expected = expected[1:] if not expected[0] else expected
        assert len(ours) == 32 and steps == expected, (prompt, steps, expected)


def test_bundle_holds_the_file_its_tokenizer_and_metadata_and_our_runner_reads_it(tiny_tflite, tiny_bundle):
    kinds = sorted(s.kind for s in sections(open(tiny_bundle, "rb").read()))
    assert kinds == ["hf_tokenizer_zlib", "llm_metadata", "tflite_model"]
    plain, bundled = InterpreterRunner(tiny_tflite), InterpreterRunner(tiny_bundle)
    assert bundled.metadata == plain.metadata
    for prompt in PROMPTS:
        assert bundled.complete(prompt, 24) == plain.complete(prompt, 24)


def test_our_runner_maps_a_bundles_model_from_the_cache(tiny_tflite, tiny_bundle, tmp_path):
    # The runtime maps whole files (or copies the bytes it is given): the section is kept in the
    # cache once, byte for byte the bundled file, and later loads map it.
    runner = InterpreterRunner(tiny_bundle, weight_cache=tmp_path)
    name = f"{runner.metadata['sha256'][:32]}.tflite"
    assert (tmp_path / name).read_bytes() == tiny_tflite.read_bytes()
    assert runner.engine.model_data is None
    written = (tmp_path / name).stat().st_mtime_ns
    again = InterpreterRunner(tiny_bundle, weight_cache=tmp_path)
    assert (tmp_path / name).stat().st_mtime_ns == written
    assert again.complete(PROMPTS[0], 24) == InterpreterRunner(tiny_tflite).complete(PROMPTS[0], 24)
    (tmp_path / name).write_bytes(tiny_tflite.read_bytes()[:-100])  # damaged: rebuilt, never run
    code = (f"from llm_tflite import InterpreterRunner\n"
            f"print(InterpreterRunner({str(tiny_bundle)!r}, weight_cache={str(tmp_path)!r}).complete("
            f"{PROMPTS[0]!r}, 24).token_ids)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "rebuilding it" in result.stderr, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str(again.complete(PROMPTS[0], 24).token_ids)
    assert (tmp_path / name).read_bytes() == tiny_tflite.read_bytes()
    # another model with the same record but its own checksum (weights differ) is not this section
    from llm_tflite.litert.flatbuffer import unpack_model
    from llm_tflite.litert.metadata import pack_with_metadata, read_metadata

    model = unpack_model(tiny_tflite.read_bytes())
    weight = max(model.buffers, key=lambda b: 0 if b.data is None else len(b.data))
    weight.data = weight.data[::-1].copy()
    (tmp_path / name).write_bytes(pack_with_metadata(model, read_metadata(tiny_tflite)))
    assert InterpreterRunner(tiny_bundle, weight_cache=tmp_path).complete(PROMPTS[0], 24) == again.complete(PROMPTS[0], 24)
    assert (tmp_path / name).read_bytes() == tiny_tflite.read_bytes()
    in_memory = InterpreterRunner(tiny_bundle, weight_cache="memory")
    assert in_memory.engine.model_data is not None


def test_palm_bundle_carries_a_sentencepiece_model_that_encodes_like_ours_and_decodes_newlines(tiny_palm_tflite,
                                                                                               tmp_path):
    import sentencepiece

    from conftest import SHAKESPEARE

    bundle = build_bundle(tiny_palm_tflite, tmp_path / "palm.litertlm")
    data = open(bundle, "rb").read()
    (section,) = [s for s in sections(data) if s.kind == "sentencepiece_tokenizer"]
    engine_model = sentencepiece.SentencePieceProcessor(model_proto=data[section.begin:section.end])
    ours = InterpreterRunner(tiny_palm_tflite).tokenizer
    text = SHAKESPEARE.read_text(encoding="utf-8")[:20000]
    ids = ours.encode(text)
    assert engine_model.encode(text) == ids
    assert engine_model.decode(ids) == ours.decode(ids) and "\n" in engine_model.decode(ids)


def test_backend_litert_lm_generates_what_our_loop_generates(shipped_bundle):
    ours, engine = InterpreterRunner(shipped_bundle), InterpreterRunner(shipped_bundle, backend="litert-lm")
    for prompt in PROMPTS:
        a, b = ours.complete(prompt, 24), engine.complete(prompt, 24)
        assert (b.text, b.token_ids, b.finish_reason) == (a.text, a.token_ids, a.finish_reason)
    full = ours.generate(PROMPTS[0], 24)
    stop = full[5:9]
    assert engine.generate(PROMPTS[0], 24, stop=stop) == full[:full.index(stop)]
    stream = engine.stream(PROMPTS[1], 24)
    first = next(stream)
    stream.close()  # cancels the engine's generation; the engine stays usable
    assert ours.generate(PROMPTS[1], 24).startswith(first)
    assert engine.generate(PROMPTS[2], 8) == ours.generate(PROMPTS[2], 8)
    sampled = [engine.generate(PROMPTS[0], 16, "top_k", top_k=40, temperature=1.5, seed=s) for s in (1, 2)]
    assert sampled[0] == engine.generate(PROMPTS[0], 16, "top_k", top_k=40, temperature=1.5, seed=1)
    assert sampled[0] != sampled[1]


def test_backend_litert_lm_says_what_it_cannot_do(tiny_tflite, tiny_bundle):
    engine = InterpreterRunner(tiny_bundle, backend="litert-lm")
    with pytest.raises(InvalidArgumentError, match="backend='interpreter'"):
        engine.complete("ROMEO:", 4, "beam")
    with pytest.raises(InvalidArgumentError, match="repetition_penalty"):
        engine.complete("ROMEO:", 4, "top_k", repetition_penalty=1.2)
    with pytest.raises(InvalidArgumentError, match="stop_token_ids"):
        engine.complete("ROMEO:", 4, stop_token_ids=[5])
    with pytest.raises(InvalidArgumentError, match="backend='litert-lm'"):
        engine.logits([1, 2])
    with pytest.raises(ModelFileError, match="llm-tflite bundle"):
        InterpreterRunner(tiny_tflite, backend="litert-lm")
    with pytest.raises(InvalidArgumentError, match="backend must be one of"):
        InterpreterRunner(tiny_bundle, backend="tflite")


def test_bundling_refuses_what_litert_lm_cannot_run(tiny_generate_file, tiny_bundle, tiny_tflite, tmp_path):
    from llm_tflite.litert.metadata import add_metadata, read_metadata_from_bytes

    with pytest.raises(ModelFileError, match="prefill_decode"):
        build_bundle(tiny_generate_file, tmp_path / "x.litertlm")
    data = tiny_tflite.read_bytes()  # the first layout, [1, C, heads, head_dim], had no kv_cache_layout
    record = {k: v for k, v in read_metadata_from_bytes(data).items() if k != "kv_cache_layout"}
    (tmp_path / "unrecorded.tflite").write_bytes(add_metadata(data, record))
    with pytest.raises(ModelFileError, match="before llm-tflite wrote LiteRT-LM's KV-cache layout"):
        build_bundle(tmp_path / "unrecorded.tflite", tmp_path / "x.litertlm")
    with pytest.raises(ModelFileError, match="already a .litertlm bundle"):
        build_bundle(tiny_bundle, tmp_path / "x.litertlm")
    assert not (tmp_path / "x.litertlm").exists()
    out = _cli("convert", "gpt2_tiny_shakespeare", "--mode", "generate", "-o", tmp_path / "y.litertlm")
    assert out.returncode == 1 and "needs --mode prefill_decode" in out.stderr and "Traceback" not in out.stderr


def test_without_a_builder_the_error_says_how_to_get_one(tiny_tflite, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(tmp_path))  # no helper environment there
    monkeypatch.delenv(HELPER_VARIABLE, raising=False)
    monkeypatch.setitem(sys.modules, "litert_lm_builder", None)  # and none in this process
    with pytest.raises(UnsupportedRuntimeError, match=r"llm-tflite\[litertlm\]") as error:
        build_bundle(tiny_tflite, tmp_path / "x.litertlm")
    assert "protobuf" in str(error.value) and not (tmp_path / "x.litertlm").exists()


def test_cli_bundle_convert_format_generate_and_bench_side_by_side(tiny_tflite, tiny_gpt2_dir, tmp_path):
    out = _cli("bundle", tiny_tflite, "-o", tmp_path / "a.litertlm", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["metadata"]["export_mode"] == "prefill_decode"
    out = _cli("convert", tiny_gpt2_dir, "--quantize", "dynamic_int8", "-o", tmp_path / "b.litertlm")
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(tmp_path)) == ["a.litertlm", "b.litertlm"]  # no temporary file left
    expected = InterpreterRunner(tmp_path / "b.litertlm").generate("ROMEO:", 12)
    for backend in ("interpreter", "litert-lm"):
        out = _cli("generate", tmp_path / "b.litertlm", "ROMEO:", "--max-new-tokens", "12", "--backend", backend,
                   cwd=tmp_path)
        assert out.returncode == 0 and out.stdout == "ROMEO:" + expected + "\n", out.stderr
        assert out.stderr == "", out.stderr  # the engine's native logging stays quiet
    out = _cli("bench", tmp_path / "a.litertlm", "--new-tokens", "8", "--prompt-tokens", "8", "--runs", "2", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["decode_tokens_per_s"] > 0 and result["litert_lm"]["decode_tokens_per_s"] > 0
    assert set(result["litert_lm"]) == {"prompt_tokens", "new_tokens", "init_seconds", "time_to_first_token_seconds",
                                        "prefill_tokens_per_s", "decode_tokens_per_s"}


@pytest.mark.parametrize("damage", ["magic", "version", "header_end", "section_offset", "truncated"])
def test_damaged_bundle_headers_are_model_file_errors(tiny_bundle, tmp_path, damage):
    data = bytearray(open(tiny_bundle, "rb").read())
    if damage == "magic":
        data[:8] = b"LITERTLX"
    elif damage == "version":
        data[8:12] = (7).to_bytes(4, "little")
    elif damage == "header_end":
        data[24:32] = (len(data) + 1).to_bytes(8, "little")
    elif damage == "section_offset":  # the first section's end offset: 8 bytes the header holds once
        end = sections(bytes(data))[0].end.to_bytes(8, "little")
        at = data.index(end, 32)
        data[at:at + 8] = (len(data) * 2).to_bytes(8, "little")
    else:
        data = data[:len(data) // 2]
    path = tmp_path / "damaged.litertlm"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError):
        InterpreterRunner(path)


@pytest.mark.slow
def test_damaged_bundles_never_crash_litert_lm_nor_answer_wrongly(shipped_bundle, tmp_path):
    """Mutations of everything the engine reads besides our checksummed model, each loaded in a subprocess."""
    source = open(shipped_bundle, "rb").read()
    expected = InterpreterRunner(shipped_bundle, backend="litert-lm").generate("ROMEO:", 4)
    targets = [(0, 4096)] + [(s.begin, s.end) for s in sections(source) if s.kind != "tflite_model"]
    rng = random.Random(7)
    script = ("import sys\nfrom llm_tflite import InterpreterRunner\nfrom llm_tflite.errors import LLMTFLiteError\n"
              "try:\n    print('TEXT', repr(InterpreterRunner(sys.argv[1], backend='litert-lm').generate('ROMEO:', 4)))\n"
              "except LLMTFLiteError as e:\n    print('TYPED', type(e).__name__)\n")
    outcomes = []
    for case in range(18):
        data = bytearray(source)
        begin, end = targets[case % len(targets)]
        if case % 5 == 4 and begin:
            data = data[:rng.randrange(begin, end)]
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(begin, end)] = rng.randrange(256)
        path = tmp_path / f"m{case}.litertlm"
        path.write_bytes(bytes(data))
        out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (case, out.returncode, out.stderr[-2000:])
        assert out.stdout.startswith("TYPED") or out.stdout.strip() == f"TEXT {expected!r}", (case, out.stdout)
        outcomes.append(out.stdout.split()[0])
    assert outcomes.count("TYPED") >= 6, outcomes
