"""The runtime BPE (Hugging Face ``tokenizers``) matches KerasHub's GPT2Tokenizer token for token."""

import json

import numpy as np
import pytest

from conftest import TANG_DIR, shakespeare_text
from llm_tflite.evaluation.metrics import keras_tokenize
from llm_tflite.tokenizers.bpe import BPETokenizer
from llm_tflite.tokenizers.bpe_training import hf_tokenizer, train_bpe, write_tokenizer_json


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
