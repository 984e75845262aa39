"""The runtime BPE (Hugging Face ``tokenizers``) matches KerasHub's GPT2Tokenizer token for token."""

import json
import pathlib

import numpy as np
import pytest

from conftest import TANG_DIR, shakespeare_text
from llm_tflite.evaluation.metrics import keras_tokenize
from llm_tflite.tokenizers.bpe import BPETokenizer
from llm_tflite.tokenizers.bpe_training import hf_tokenizer, train_bpe, write_tokenizer_json

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizers(tiny_gpt2):
    keras_tokenizer = tiny_gpt2.preprocessor.tokenizer
    ours = BPETokenizer(dict(keras_tokenizer.vocabulary), list(keras_tokenizer.merges))
    return ours, keras_tokenizer


def samples():
    text = shakespeare_text()
    poem = json.loads((TANG_DIR / "poet.tang.0.json").read_text(encoding="utf-8"))[0]
    return [text[-3000:], text[500000:501500], "".join(poem["paragraphs"]),
            "  leading spaces\n\n\ttabs  and trailing   ", "don't I'll we've 1234 £5 — ‘quotes’ 😀"]


@pytest.mark.parametrize("index", range(5))
def test_encode_matches_keras_hub(tokenizers, index):
    ours, keras_tokenizer = tokenizers
    text = samples()[index]
    assert ours.encode(text) == keras_tokenize(keras_tokenizer, text).tolist()


def test_keras_hub_eager_path_skips_pre_tokenization(tokenizers):
    """Documents a KerasHub 0.30 bug we work around (see ``keras_tokenize``); fails once fixed upstream."""
    from llm_tflite.tokenizers.bpe import bytes_to_unicode

    ours, keras_tokenizer = tokenizers
    text = "speak'st"
    whole_word = [t.id for t in ours.tokenizer.model.tokenize("".join(bytes_to_unicode()[b] for b in text.encode()))]
    assert np.asarray(keras_tokenizer(text)).tolist() == whole_word != ours.encode(text)


@pytest.mark.parametrize("index", range(5))
def test_round_trip(tokenizers, index):
    ours, _ = tokenizers
    text = samples()[index]
    assert ours.decode(ours.encode(text)) == text


def test_trainer_is_deterministic_and_learns_merges():
    text = shakespeare_text()[:5000]
    first = train_bpe(text, 280)
    assert first == train_bpe(text, 280)
    vocab, merges = first
    assert len(vocab) == 280 and vocab["<|endoftext|>"] == 279 and len(merges) == 280 - 256 - 1
    assert [vocab[m.replace(" ", "")] for m in merges] == list(range(256, 279)), "GPT-2 layout: one token per merge"
    assert len(BPETokenizer(vocab, merges).encode(text)) < len(text.encode("utf-8")) * 0.85


@pytest.fixture(scope="module")
def shipped_config_tokenizer():
    """The shipped GPT-2's tokenizer configuration: vocab 2,048 on the first 90% of tiny Shakespeare."""
    text = shakespeare_text()
    cut = int(len(text) * 0.9)
    return train_bpe(text[:cut], 2048), text[cut:]


def test_runtime_encoder_matches_a_tokenizer_json_on_heldout_text(shipped_config_tokenizer):
    (vocab, merges), heldout = shipped_config_tokenizer
    assert len(vocab) == 2048 and vocab["<|endoftext|>"] == 2047
    ours, hf = BPETokenizer(vocab, merges), hf_tokenizer(vocab, merges)
    for text in [heldout] + samples()[2:]:
        ids = ours.encode(text)
        assert ids == hf.encode(text).ids
        assert hf.decode(ids) == ours.decode(ids) == text


def test_trained_vocabulary_works_in_keras_hub_and_tokenizer_json(shipped_config_tokenizer, tmp_path):
    import keras_hub
    from tokenizers import Tokenizer

    (vocab, merges), heldout = shipped_config_tokenizer
    keras_tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocab, merges=merges)
    text = heldout[:4000]
    assert keras_tokenize(keras_tokenizer, text).tolist() == BPETokenizer(vocab, merges).encode(text)
    write_tokenizer_json(vocab, merges, tmp_path / "tokenizer.json")
    loaded = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert loaded.encode(text).ids == BPETokenizer(vocab, merges).encode(text)
    assert loaded.token_to_id("<|endoftext|>") == 2047


#: Ids of the shipped tokenizer's old-format spec (``gpt2_bpe`` without special or added tokens),
#: written by the pure-Python encoder llm-tflite ran before it moved to ``tokenizers`` (commit dc80264):
#: old files must read text exactly as before, a literal ``<|endoftext|>`` included (not parsed).
OLD_ENCODER_IDS = {
    "ROMEO: But soft! It's 1234567 apples;\n\n  x = f(3.14)  # code\n\t你好，世界 🙂👍🏽 مرحبا café": [
        812, 58, 1550, 365, 1067, 33, 291, 116, 319, 32, 49, 50, 51, 52, 53, 54, 55, 900, 926, 59, 10, 10, 32, 32,
        120, 32, 61, 271, 40, 51, 46, 49, 52, 41, 32, 32, 35, 277, 477, 101, 10, 9, 228, 189, 160, 229, 165, 189, 239,
        188, 140, 228, 184, 150, 231, 149, 140, 32, 240, 159, 153, 130, 240, 159, 145, 141, 240, 159, 143, 189, 32,
        217, 133, 216, 177, 216, 173, 216, 168, 216, 167, 1826, 102, 195, 169],
    "To be<|endoftext|>or not<|endoftext|>": [
        396, 304, 60, 124, 458, 111, 1067, 101, 1833, 124, 62, 270, 321, 60, 124, 458, 111, 1067, 101, 1833, 124, 62],
}


def test_old_files_encode_exactly_as_before():
    from llm_tflite.tokenizers import tokenizer_from_spec

    preset = ROOT / "llm_tflite" / "presets" / "gpt2_tiny_shakespeare" / "assets" / "tokenizer"
    vocab = json.loads((preset / "vocabulary.json").read_text(encoding="utf-8"))
    merges = [m for m in (preset / "merges.txt").read_text(encoding="utf-8").split("\n") if m and not m.startswith("#")]
    tokenizer = tokenizer_from_spec({"type": "gpt2_bpe", "vocab": vocab, "merges": merges})
    for text, ids in OLD_ENCODER_IDS.items():
        assert tokenizer.encode(text) == ids
        assert tokenizer.decode(ids) == text  # the literal special token is text, as it was


def _tokenizer_json(**changes):
    from llm_tflite.tokenizers.bpe import hf_tokenizer

    spec = json.loads(hf_tokenizer({"a": 0, "b": 1, "ab": 2, "<s>": 3}, ["a b"], ("<s>",)).to_str())
    spec.update(changes)
    return json.dumps(spec)


@pytest.mark.parametrize("changes, message", [
    ({"truncation": {"direction": "Right", "max_length": 3, "strategy": "LongestFirst", "stride": 0}}, None),
    ({"padding": {"strategy": {"Fixed": 10}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0,
                  "pad_type_id": 0, "pad_token": "a"}}, None),
    ({"decoder": {"type": "Sequence", "decoders": [{"type": "ByteLevel"}, {"type": "Strip", "content": " ",
                                                                           "start": 1, "stop": 0}]}}, "not byte-level"),
    ({"normalizer": {"type": "Precompiled", "precompiled_charsmap": "!!!"}}, "normalizer"),
    ({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}},
     "pre-tokenizer"),
    ({"added_tokens": [{"id": 4_000_000_000, "content": "<x>", "single_word": False, "lstrip": False,
                        "rstrip": False, "normalized": False, "special": True}]}, "token ids outside"),
    ({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}, "not a BPE model"),
    ({"normalizer": ["NFC"]}, "not usable"),  # a list where an object belongs
    ({"pre_tokenizer": {"type": "Sequence", "pretokenizers": ["ByteLevel"]}}, "not usable"),
])
def test_a_files_tokenizer_json_is_checked_before_it_runs(changes, message):
    """tokenizer.json is untrusted: settings that would change what text reads as are dropped, parts
    llm-tflite does not run (or that crash ``tokenizers`` natively) are refused with ModelFileError."""
    from llm_tflite.errors import ModelFileError
    from llm_tflite.tokenizers import tokenizer_from_spec

    spec = {"type": "hf_tokenizer", "json": _tokenizer_json(**changes)}
    if message is None:  # truncation and padding: ignored
        assert tokenizer_from_spec(spec).encode("ab" * 8) == [2] * 8
        return
    with pytest.raises(ModelFileError, match=message):
        tokenizer_from_spec(spec)


def test_bpe_dropout_and_damaged_merges_are_refused():
    from llm_tflite.errors import ModelFileError
    from llm_tflite.tokenizers import tokenizer_from_spec

    spec = json.loads(_tokenizer_json())
    spec["model"]["dropout"] = 0.5
    with pytest.raises(ModelFileError, match="dropout"):
        tokenizer_from_spec({"type": "hf_tokenizer", "json": json.dumps(spec)})
    with pytest.raises(ModelFileError, match="damaged"):
        tokenizer_from_spec({"type": "gpt2_bpe", "vocab": {"a": 0, "b": 1}, "merges": ["a z"]})
