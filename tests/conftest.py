"""Shared fixtures: a tiny random GPT-2 (real tokenizer, random weights) and its .tflite file."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("LLM_TFLITE_NO_PROGRESS", "1")

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("LLM_TFLITE_DATA", ROOT.parent / "shared" / "data"))
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
TANG_DIR = SHARED_DATA / "chinese-poetry" / "quan_tang_shi"


def shakespeare_text() -> str:
    return SHAKESPEARE.read_text(encoding="utf-8")


def _dequantized(state: dict) -> dict:
    """An int8 state's caches as float32 (values times their per-slot scales), and their scales."""
    import numpy as np

    return {name: (state[name].astype(np.float32) * state[f"{name}_scale"], state[f"{name}_scale"])
            for name in state if not name.endswith("_scale")}


def assert_int8_caches_within_half_a_step(int8_state: dict, float_state: dict, slots: int) -> None:
    """Each written slot of the first layer's int8 caches (whose keys and values depend on the tokens
    alone, not on earlier layers' attention) is the float32 file's vector rounded to 127 steps of its
    largest magnitude: its scale that magnitude / 127, each element within half a step."""
    import numpy as np

    for name, (values, scales) in _dequantized(int8_state).items():
        if not name.endswith("_0"):
            continue
        axis = 2  # slots (llm_tflite.families.ops: keys and values [1, heads, C, head_dim])
        used = [slice(None)] * 4
        used[axis] = slice(0, slots)
        got, want, step = values[tuple(used)], float_state[name][tuple(used)], scales[tuple(used)]
        assert np.all(np.abs(got - want) <= step / 2 * 1.001 + 1e-7), name
        np.testing.assert_allclose(step.squeeze(), (np.abs(want).max(axis=5 - axis) / 127).squeeze(), rtol=1e-5,
                                   atol=1e-9)


def assert_signatures_compute_the_same(first: bytes, second: bytes) -> list[str]:
    """Two ``.tflite`` files have the same signatures and each gives bit-identical outputs in the TFLite
    interpreter on the same inputs (int32 inputs 3, float inputs drawn from one seed); their names."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    outputs = []
    for data in (first, second):
        interpreter = Interpreter(model_content=data, num_threads=1)
        rng, results = np.random.default_rng(0), {}
        for name in interpreter.get_signature_list():
            runner = interpreter.get_signature_runner(name)
            feed = {key: (np.full(d["shape"], 3, d["dtype"]) if d["dtype"] == np.int32 else
                          rng.standard_normal(d["shape"]).astype(d["dtype"]))
                    for key, d in runner.get_input_details().items()}
            results[name] = runner(**feed)
        outputs.append(results)
    assert outputs[0].keys() == outputs[1].keys()
    for name, result in outputs[0].items():
        assert result.keys() == outputs[1][name].keys(), name
        for key, value in result.items():
            np.testing.assert_array_equal(value, outputs[1][name][key], err_msg=f"{name} {key}")
    return list(outputs[0])


def assert_same_as_ai_edge_quantizer(bound_path, float_path, strategy: str) -> None:
    """``strategy``'s file, with int4 weights bound into the graph, is the file ai-edge-quantizer's
    blockwise recipe writes from the float32 file: the same constants (values, float16 scales,
    layout) and bit-identical logits over a prompt and cached decode steps."""
    import numpy as np

    from llm_tflite import InterpreterRunner
    from llm_tflite.litert.metadata import add_metadata, read_metadata
    from llm_tflite.litert.rewrite import _load
    from llm_tflite.plugins.registry import get_strategy
    from llm_tflite.quantize.strategies import AIEdgeQuantizerStrategy

    record = {**read_metadata(str(float_path)), "quantization": strategy}
    quantized = AIEdgeQuantizerStrategy.postprocess(get_strategy(strategy), pathlib.Path(float_path).read_bytes())
    reference = pathlib.Path(bound_path).with_name(f"ai_edge_{strategy}.tflite")
    reference.write_bytes(add_metadata(quantized, record))

    def constants(path):
        schema, model = _load(pathlib.Path(path).read_bytes())
        found = []
        for signature in model.signatureDefs:
            subgraph = model.subgraphs[signature.subgraphIndex]
            for op in subgraph.operators:
                for i in op.inputs:
                    tensor = subgraph.tensors[i] if i >= 0 else None
                    data = model.buffers[tensor.buffer].data if tensor is not None and tensor.buffer else None
                    if data is None or len(data) == 0 or tensor.type == schema.TensorType.INT32:
                        continue
                    q, scales = tensor.quantization, None
                    if q is not None and q.details is not None:
                        held = subgraph.tensors[q.details.scales]
                        scales = (q.details.blockSize, bytes(model.buffers[held.buffer].data), list(held.shape))
                    found.append((tensor.type, list(tensor.shape), bytes(data), scales))
        return found

    ours, theirs = constants(bound_path), constants(reference)
    assert len(ours) == len(theirs) and any(c[3] for c in ours)
    assert [c[:2] + c[3:] for c in ours] == [c[:2] + c[3:] for c in theirs]  # types, shapes, scales
    assert all(a[2] == b[2] for a, b in zip(ours, theirs))  # the weights' bytes
    runner, expected = InterpreterRunner(bound_path), InterpreterRunner(reference)
    ids = runner.encode(shakespeare_text()[:300])[:40]
    np.testing.assert_array_equal(runner.logits(ids), expected.logits(ids))  # prefill chunks
    prompt = shakespeare_text()[:120]
    assert runner.complete(prompt, 24, stop_token_ids=[]).token_ids == \
        expected.complete(prompt, 24, stop_token_ids=[]).token_ids  # cached decode steps


@pytest.fixture(scope="session", autouse=True)
def weight_cache_dir(tmp_path_factory):
    """XNNPACK weight caches (``InterpreterRunner(weight_cache="auto")``) go to a temporary directory,
    for this process and every command the tests run, never to the user's ``~/.cache``."""
    from llm_tflite.runtime.weight_cache import CACHE_DIR_ENV

    path = tmp_path_factory.mktemp("llm-tflite-cache")
    saved = os.environ.get(CACHE_DIR_ENV)
    os.environ[CACHE_DIR_ENV] = str(path)
    yield path
    if saved is None:
        os.environ.pop(CACHE_DIR_ENV, None)
    else:
        os.environ[CACHE_DIR_ENV] = saved


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A KerasHub preset directory: BPE trained on 20k characters, 2-layer GPT-2, random weights."""
    import keras
    import keras_hub

    from llm_tflite.tokenizers.bpe_training import train_bpe

    keras.utils.set_random_seed(1234)  # not 0: --random-weights initialises with seed 0
    vocab, merges = train_bpe(shakespeare_text()[:20000], 300)
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocab, merges=merges)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=64)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(vocab), num_layers=2, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=128,
    )
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)
    path = tmp_path_factory.mktemp("presets") / "tiny_gpt2"
    lm.save_to_preset(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_gpt2_dir):
    import keras_hub

    return keras_hub.models.GPT2CausalLM.from_preset(str(tiny_gpt2_dir))


@pytest.fixture(scope="session")
def tiny_tflite(tiny_gpt2_dir, tmp_path_factory):
    """The tiny GPT-2 as a float32 prefill_decode file with prefill (and prompt) lengths 4 and 16 and
    decode windows 32 and 64 (so every runner test crosses from window to window to the full decode)."""
    from llm_tflite import Converter

    path = tmp_path_factory.mktemp("tflite") / "tiny.tflite"
    Converter(prefill_lengths=(4, 16), prompt_lengths=(4, 16), decode_windows=(32, 64)).convert(
        str(tiny_gpt2_dir), str(path))
    return path


@pytest.fixture(scope="session")
def batched_file(tiny_gpt2_dir, tmp_path_factory):
    """``tiny_tflite`` with ``decode_batch_2`` and ``decode_batch_4`` (and their windows 32 and 64)."""
    from llm_tflite import Converter

    path = tmp_path_factory.mktemp("batched") / "tiny_batched.tflite"
    Converter(prefill_lengths=(4, 16), decode_windows=(32, 64), batch_sizes=(4, 2)).convert(str(tiny_gpt2_dir),
                                                                                           str(path))
    return path


@pytest.fixture(scope="session")
def tiny_generate_file(tiny_gpt2_dir, tmp_path_factory):
    """The tiny GPT-2 as a greedy generate-mode file (max_length 40)."""
    from llm_tflite import Converter

    path = tmp_path_factory.mktemp("generate") / "autocomplete.tflite"
    Converter(mode="generate", max_length=40).convert(str(tiny_gpt2_dir), str(path))
    return path


@pytest.fixture(scope="session")
def tiny_palm_dir(tmp_path_factory):
    """A PaLM-style preset directory: SentencePiece (unigram, 400 pieces) on 30k characters, random weights."""
    import keras

    from llm_tflite.families.palm import PaLMBackbone, PaLMCausalLM, PaLMCausalLMPreprocessor, PaLMTokenizer
    from llm_tflite.tokenizers.spm_training import train_sentencepiece

    keras.utils.set_random_seed(1234)
    text = shakespeare_text()[:30000]
    proto = train_sentencepiece([p + "\n\n" for p in text.split("\n\n")], 400)
    preprocessor = PaLMCausalLMPreprocessor(PaLMTokenizer(proto), sequence_length=64)
    backbone = PaLMBackbone(
        vocabulary_size=400, num_layers=2, num_query_heads=4, num_key_value_heads=1, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=128,
    )
    lm = PaLMCausalLM(backbone=backbone, preprocessor=preprocessor)
    path = tmp_path_factory.mktemp("presets") / "tiny_palm"
    lm.save_to_preset(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_palm(tiny_palm_dir):
    from llm_tflite.families.palm import PaLMCausalLM

    return PaLMCausalLM.from_preset(str(tiny_palm_dir))


@pytest.fixture(scope="session")
def tiny_palm_tflite(tiny_palm_dir, tmp_path_factory):
    """The tiny PaLM-style model as a float32 prefill_decode file with prefill lengths 4 and 16."""
    from llm_tflite import Converter

    path = tmp_path_factory.mktemp("tflite") / "tiny_palm.tflite"
    Converter(prefill_lengths=(4, 16)).convert(str(tiny_palm_dir), str(path))
    return path
