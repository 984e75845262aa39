"""Sizes beyond the shipped models: PaLM-style presets, full-size tokenizers for random weights,
and the flatbuffer size limit checked before converting."""

from __future__ import annotations

import json
import random

import pytest

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
    for strategy in ("none", "float16", "weight_only_int8"):
        with pytest.raises(ModelTooLargeError) as error:
            Converter(quantize=strategy).convert("gpt2_tiny_shakespeare", str(output))
        message = str(error.value)
        assert f"--quantize {strategy}" in message
        # int4 weights are bound into the graph: no float32 file of the model is built first
        assert "Strategies that fit: dynamic_int8 (~4 MB), int4_blockwise (~2 MB), int4_blockwise_128" in message
        assert "float16" not in message.split("fit:")[1] and "weight_only" not in message.split("fit:")[1]
        assert not output.exists()
    assert "the float32 file it quantizes" in message  # ai-edge-quantizer's int8 starts from a float32 file


def test_too_large_without_a_known_size_is_refused_after_loading(tiny_gpt2, tmp_path, monkeypatch):
    from llm_tflite import Converter
    from llm_tflite.export import converter as converter_module
    from llm_tflite.litert import flatbuffer

    # a Keras model object: its size is known only once it is loaded
    monkeypatch.setattr(flatbuffer, "FLATBUFFER_LIMIT", 10_000)
    monkeypatch.setattr(converter_module.Converter, "_convert",
                        lambda *a, **k: pytest.fail("conversion started for a model that cannot fit"))
    with pytest.raises(ModelTooLargeError, match=r"this model has 0\.\d million weights: with --quantize none"):
        Converter().convert(tiny_gpt2, str(tmp_path / "big.tflite"))


@pytest.mark.parametrize("name", ["gpt2_base_en", "gpt2_extra_large_en", "palm_400m", "palm_1b5"])
def test_families_count_weights_from_a_config(name):
    from llm_tflite.plugins.registry import get_family

    preset = presets()[name].item
    weights = get_family(preset.family).count_weights(preset.config)
    expected = {"gpt2_base_en": 124_439_808, "gpt2_extra_large_en": 1_557_611_200,  # KerasHub's counts
                "palm_400m": 444_609_536}.get(name) or _palm_weights(preset.config)
    assert weights == expected
