"""Sizes beyond the shipped models: PaLM-style presets, full-size tokenizers for random weights,
and the flatbuffer size limit checked before converting."""

from __future__ import annotations

import json
import random

import pytest

from conftest import SHAKESPEARE
from llm_tflite.errors import ModelSourceError, ModelTooLargeError
from llm_tflite.families.presets import DEFAULT_PRESET_DIR, PALM_PRESET_DIR, PALM_SIZES
from llm_tflite.plugins.registry import presets
from llm_tflite.tokenizers.bpe import BPETokenizer
from llm_tflite.tokenizers.bpe_training import extend_bpe


def _palm_weights(config) -> int:
    """Parameters of a PaLM-style decoder, from its published structure: tied embedding, per layer
    query/out projections, one key and one value head, a SwiGLU MLP (3 matrices), a norm."""
    d, h, hd, ff = config["hidden_dim"], config["num_query_heads"], config["head_dim"], config["intermediate_dim"]
    per_layer = 2 * d * h * hd + 2 * d * config["num_key_value_heads"] * hd + 3 * d * ff + d
    return config["vocabulary_size"] * d + config["num_layers"] * per_layer + d


def test_palm_sizes_are_registered_with_palms_ratios():
    registered = presets()
    for name, (_, config) in PALM_SIZES.items():
        preset = registered[name].item
        assert preset.family == "palm" and preset.config == config
        assert config["head_dim"] == 256 and config["num_query_heads"] * 256 == config["hidden_dim"]
        assert config["num_key_value_heads"] == 1 and config["intermediate_dim"] == 4 * config["hidden_dim"]
        assert config["vocabulary_size"] == 256000
    assert 1.4e9 < _palm_weights(PALM_SIZES["palm_1b5"][1]) < 1.6e9


def test_palm_size_without_random_weights_says_what_to_do():
    from llm_tflite.families.loading import load_model

    with pytest.raises(ModelSourceError, match="--random-weights"):
        load_model("palm_1b5")


@pytest.mark.slow
def test_palm_400m_builds_with_a_full_size_tokenizer():
    from llm_tflite.families.loading import load_model

    fam, lm = load_model("palm_400m", random_weights=True)
    assert lm.count_params() == _palm_weights(PALM_SIZES["palm_400m"][1])
    tokenizer = lm.preprocessor.tokenizer
    assert tokenizer.vocabulary_size() == 256000
    spec = fam.tokenizer_spec(lm)
    from llm_tflite.tokenizers import tokenizer_from_spec

    runtime = tokenizer_from_spec(spec)
    rng = random.Random(0)
    ids = [rng.randrange(4, 256000) for _ in range(200)]
    assert all(runtime.decode([i]).strip() for i in ids)  # every id is visible text
    # the shipped tokenizer's ids are kept for text it knows
    import sentencepiece as spm

    shipped = spm.SentencePieceProcessor(model_file=str(f"{PALM_PRESET_DIR}/assets/tokenizer/vocabulary.spm"))
    assert runtime.encode("What say you?") == shipped.encode("What say you?")


def _shipped_bpe():
    directory = f"{DEFAULT_PRESET_DIR}/assets/tokenizer"
    vocab = json.load(open(f"{directory}/vocabulary.json", encoding="utf-8"))
    merges = [line for line in open(f"{directory}/merges.txt", encoding="utf-8").read().splitlines()
              if line and not line.startswith("#")]
    return vocab, merges


def test_extend_bpe_to_gpt2_size():
    vocab, merges = _shipped_bpe()
    grown, grown_merges = extend_bpe(vocab, merges, 50257)
    assert len(grown) == 50257 and grown["<|endoftext|>"] == 50256  # where GPT-2 has it
    assert extend_bpe(vocab, merges, 50257) == (grown, grown_merges)  # deterministic
    small, big = BPETokenizer(vocab, merges), BPETokenizer(grown, grown_merges)
    text = "ROMEO: What say you to the king of Denmark?"
    assert big.encode(text) == small.encode(text)
    assert big.decode(big.encode(text)) == text
    invisible = [i for i in range(50256) if not big.decode([i]).strip()]
    assert len(invisible) < 20, invisible  # byte tokens of spaces and control characters only
    assert extend_bpe(vocab, merges, 100) == (vocab, merges)  # never shrinks


@pytest.mark.slow
def test_gpt2_base_random_weights_decode_to_visible_text():
    from llm_tflite.families.loading import load_model

    fam, lm = load_model("gpt2_base_en", random_weights=True)
    spec = fam.tokenizer_spec(lm)
    assert len(spec["vocab"]) == 50257 and fam.special_tokens(lm)["eos_id"] == 50256
    from llm_tflite.tokenizers import tokenizer_from_spec

    runtime = tokenizer_from_spec(spec)
    rng = random.Random(0)
    assert sum(bool(runtime.decode([rng.randrange(50256)]).strip()) for _ in range(500)) >= 495


def test_too_large_for_a_flatbuffer_is_refused_before_converting(tmp_path, monkeypatch):
    from llm_tflite import Converter
    from llm_tflite.export import converter as converter_module
    from llm_tflite.litert import flatbuffer

    # The shipped GPT-2 has 3.7M weights: 15 MB as float32, 4 MB as int8. A 6 MB limit stands in for 2 GiB.
    monkeypatch.setattr(flatbuffer, "FLATBUFFER_LIMIT", 6_000_000)
    monkeypatch.setattr(converter_module, "load_model",  # counted from its config.json, not loaded
                        lambda *a, **k: pytest.fail("the model was loaded although its size is known"))
    output = tmp_path / "big.tflite"
    # ai-edge-quantizer's strategies start from a float32 file, which must be one flatbuffer; weights
    # bound into a prefill_decode graph go after the flatbuffer when they pass 1.5 GiB (any size fits)
    for strategy in ("weight_only_int8", "full_int8"):
        with pytest.raises(ModelTooLargeError) as error:
            calibration = str(SHAKESPEARE) if strategy == "full_int8" else None
            Converter(quantize=strategy, calibration=calibration).convert("gpt2_tiny_shakespeare", str(output))
        message = str(error.value)
        assert f"--quantize {strategy}" in message and "the float32 file it quantizes" in message
        assert "Strategies that fit: none (~15 MB), dynamic_int8 (~4 MB), float16 (~7 MB), int4_blockwise (~2 MB)" \
            in message
        assert "weight_only" not in message.split("fit:")[1] and "full_int8" not in message.split("fit:")[1]
        assert not output.exists()
    # a generate graph's weights are frozen in by TensorFlow's converter: one flatbuffer
    with pytest.raises(ModelTooLargeError, match=r"with --quantize none, its file would need about 17 MB.*"
                                                 r"Strategies that fit: dynamic_int8 \(~4 MB\)\.$"):  # not int4: prefill_decode only
        Converter(mode="generate", quantize="none").convert("gpt2_tiny_shakespeare", str(output))


def test_too_large_without_a_known_size_is_refused_after_loading(tiny_gpt2, tmp_path, monkeypatch):
    from llm_tflite import Converter
    from llm_tflite.export import converter as converter_module
    from llm_tflite.litert import flatbuffer

    # a Keras model object: its size is known only once it is loaded
    monkeypatch.setattr(flatbuffer, "FLATBUFFER_LIMIT", 10_000)
    monkeypatch.setattr(converter_module.Converter, "_convert",
                        lambda *a, **k: pytest.fail("conversion started for a model that cannot fit"))
    with pytest.raises(ModelTooLargeError, match=r"this model has 0\.\d million weights: with --quantize "
                                                 "weight_only_int8"):
        Converter(quantize="weight_only_int8").convert(tiny_gpt2, str(tmp_path / "big.tflite"))


@pytest.mark.parametrize("name", ["gpt2_base_en", "gpt2_extra_large_en", "palm_400m", "palm_1b5"])
def test_families_count_weights_from_a_config(name):
    from llm_tflite.plugins.registry import get_family

    preset = presets()[name].item
    weights = get_family(preset.family).count_weights(preset.config)
    expected = {"gpt2_base_en": 124_439_808, "gpt2_extra_large_en": 1_557_611_200,  # KerasHub's counts
                "palm_400m": 444_609_536}.get(name) or _palm_weights(preset.config)
    assert weights == expected


def test_weights_past_the_flatbuffer_limit_go_after_it(tiny_gpt2_dir, tmp_path, monkeypatch):
    """Past ``OUTSIDE_FROM`` bytes of weights (1.5 GiB), a file keeps them after the flatbuffer
    (``Buffer.offset``/``size``: TensorFlow's buffer_offset mode), so a float32 Qwen 3 0.6B (2.4 GB)
    or Llama 3.2 1B (4.9 GB) converts. Here the threshold is 0, so the tiny model's weights go there:
    the runtime gives the inline file's logits, the checksum covers the weights, a bundle runs."""
    import numpy as np

    from llm_tflite import Converter, InterpreterRunner
    from llm_tflite.errors import ModelFileError
    from llm_tflite.export.bundle import build_bundle
    from llm_tflite.litert import flatbuffer

    def convert(path):
        Converter(prefill_lengths=(4, 16), decode_windows=(32,)).convert(str(tiny_gpt2_dir), str(path))
        return path

    inline = convert(tmp_path / "inline.tflite")
    monkeypatch.setattr(flatbuffer, "OUTSIDE_FROM", 0)
    outside = convert(tmp_path / "outside.tflite")
    data = outside.read_bytes()
    model = flatbuffer.tflite_schema().Model.GetRootAs(data, 0)
    offsets = [model.Buffers(i).Offset() for i in range(model.BuffersLength()) if model.Buffers(i).Offset() > 1]
    assert len(offsets) > 50 and all(o % flatbuffer.OUTSIDE_ALIGNMENT == 0 for o in offsets)
    assert b"buffer_location" in [model.Metadata(i).Name() for i in range(model.MetadataLength())]
    assert flatbuffer.weight_bytes(data) == flatbuffer.weight_bytes(inline.read_bytes())

    ours, reference = InterpreterRunner(outside), InterpreterRunner(inline)
    ids = ours.encode("ROMEO: what light through yonder window breaks?")
    np.testing.assert_array_equal(ours.logits(ids), reference.logits(ids))
    assert ours.complete("ROMEO:", 24).token_ids == reference.complete("ROMEO:", 24).token_ids
    bundle = build_bundle(outside, tmp_path / "outside.litertlm")
    assert InterpreterRunner(bundle).complete("ROMEO:", 24).token_ids == reference.complete("ROMEO:", 24).token_ids
    import litert_lm  # LiteRT-LM's engine reads the weights after the flatbuffer too

    engine = litert_lm.Engine(str(bundle), backend=litert_lm.Backend.CPU(thread_count=2))
    try:
        with engine.create_session(apply_prompt_template=False, max_output_tokens=16,
                                   sampler_config=litert_lm.SamplerConfig(top_k=1)) as session:
            session.run_prefill(["ROMEO:"])
            text = "".join(r.texts[0] for r in session.run_decode_async())
    finally:
        engine.close()
    assert text == reference.complete("ROMEO:", 16, stop_token_ids=[]).text

    damaged = bytearray(data)
    damaged[-3] ^= 1  # in the last weight, after the flatbuffer
    (tmp_path / "damaged.tflite").write_bytes(damaged)
    with pytest.raises(ModelFileError, match="do not match the checksum"):
        InterpreterRunner(tmp_path / "damaged.tflite")
