"""XNNPACK's packed weights in a cache file per model (``InterpreterRunner(weight_cache=...)``)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest

from llm_tflite import InterpreterRunner
from llm_tflite.errors import InvalidArgumentError
from llm_tflite.litert.metadata import read_metadata

PROMPT = "ROMEO: "


def _greedy(runner) -> list[int]:
    return runner.complete(PROMPT, max_new_tokens=40).token_ids


def _cache_files(directory) -> list[str]:
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def test_first_load_writes_one_file_later_loads_map_it(tiny_tflite, tmp_path):
    expected = _greedy(InterpreterRunner(tiny_tflite, weight_cache="memory"))
    first = InterpreterRunner(tiny_tflite, weight_cache=tmp_path)
    files = _cache_files(tmp_path)
    assert len(files) == 1 and files[0].endswith(".xnnpack"), files  # no temporary file left
    assert files[0].startswith(read_metadata(tiny_tflite)["sha256"][:32])
    assert first.engine.weight_cache_path == str(tmp_path / files[0])
    assert _greedy(first) == expected
    written = os.stat(tmp_path / files[0])
    second = InterpreterRunner(tiny_tflite, weight_cache=tmp_path)
    assert _greedy(second) == expected
    # every signature (prefill, windows, decode) was packed before the file was kept: a long
    # prompt and a long generation in a later load find everything in it
    long = second.complete(PROMPT * 8, max_new_tokens=60).token_ids
    assert long == InterpreterRunner(tiny_tflite, weight_cache="memory").complete(PROMPT * 8, max_new_tokens=60).token_ids
    assert os.stat(tmp_path / files[0]).st_mtime_ns == written.st_mtime_ns
    assert _cache_files(tmp_path) == files


def test_memory_writes_nothing(tiny_tflite, weight_cache_dir):
    before = _cache_files(weight_cache_dir / "xnnpack")
    runner = InterpreterRunner(tiny_tflite, weight_cache="memory")
    assert runner.engine.weight_cache_path == ":memory:"
    assert _cache_files(weight_cache_dir / "xnnpack") == before


def test_auto_uses_the_cache_directory_setting(tiny_tflite, weight_cache_dir):
    runner = InterpreterRunner(tiny_tflite)  # weight_cache="auto": $LLM_TFLITE_CACHE_DIR/xnnpack
    assert os.path.dirname(runner.engine.weight_cache_path) == str(weight_cache_dir / "xnnpack")
    assert os.path.isfile(runner.engine.weight_cache_path)


@pytest.fixture(scope="module")
def same_shape_other_weights(tiny_gpt2_dir, tmp_path_factory):
    """The tiny GPT-2 with every weight scaled: same graph, same tensor positions, other values."""
    import keras_hub

    from llm_tflite import Converter

    lm = keras_hub.models.GPT2CausalLM.from_preset(str(tiny_gpt2_dir))
    for variable in lm.backbone.weights:
        variable.assign(variable * 1.7)
    preset = tmp_path_factory.mktemp("scaled") / "preset"
    lm.save_to_preset(str(preset))
    path = preset.parent / "scaled.tflite"
    Converter(prefill_lengths=(4, 16), decode_windows=(32, 64)).convert(str(preset), str(path))
    return path


@pytest.mark.slow
def test_a_file_replaced_at_the_same_path_never_uses_the_old_packed_weights(
        tiny_tflite, same_shape_other_weights, tmp_path):
    # XNNPACK finds packed weights by tensor position, not content: a cache keyed by path would
    # give the new file the old weights. Ours is keyed by the file's checksum.
    model = tmp_path / "model.tflite"
    cache = tmp_path / "cache"
    shutil.copy(tiny_tflite, model)
    old = _greedy(InterpreterRunner(model, weight_cache=cache))
    shutil.copy(same_shape_other_weights, model)
    expected = _greedy(InterpreterRunner(same_shape_other_weights, weight_cache="memory"))
    assert expected != old  # the two models really differ
    assert _greedy(InterpreterRunner(model, weight_cache=cache)) == expected
    assert len(_cache_files(cache)) == 2


def test_unwritable_directory_falls_back_to_memory_with_a_warning(tiny_tflite, tmp_path, caplog):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    with caplog.at_level(logging.WARNING, logger="llm_tflite"):
        runner = InterpreterRunner(tiny_tflite, weight_cache=blocked / "sub")
    assert runner.engine.weight_cache_path == ":memory:"
    assert "cannot write the weight cache" in caplog.text and "LLM_TFLITE_CACHE_DIR" in caplog.text
    assert _greedy(runner) == _greedy(InterpreterRunner(tiny_tflite, weight_cache="memory"))


@pytest.mark.parametrize("damage", ["truncate", "zeros", "empty"])
def test_a_damaged_cache_file_is_rebuilt(tiny_tflite, tmp_path, damage):
    # In a subprocess: the runtime reads this file natively.
    expected = _greedy(InterpreterRunner(tiny_tflite, weight_cache="memory"))
    InterpreterRunner(tiny_tflite, weight_cache=tmp_path)
    (name,) = _cache_files(tmp_path)
    path = tmp_path / name
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "zeros": bytes(len(data)), "empty": b""}[damage])
    code = (f"from llm_tflite import InterpreterRunner\n"
            f"r = InterpreterRunner({str(tiny_tflite)!r}, weight_cache={str(tmp_path)!r})\n"
            f"print(r.complete({PROMPT!r}, max_new_tokens=40).token_ids)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str(expected)
    assert _greedy(InterpreterRunner(tiny_tflite, weight_cache=tmp_path)) == expected  # and it was rebuilt


def test_runners_in_threads_building_the_same_cache(tiny_tflite, tmp_path):
    import concurrent.futures

    expected = _greedy(InterpreterRunner(tiny_tflite, weight_cache="memory"))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: _greedy(InterpreterRunner(tiny_tflite, weight_cache=tmp_path)), range(4)))
    assert results == [expected] * 4
    assert len(_cache_files(tmp_path)) == 1


@pytest.mark.parametrize("value", ["", None, 3])
def test_bad_setting(tiny_tflite, value):
    with pytest.raises(InvalidArgumentError, match="weight_cache must be"):
        InterpreterRunner(tiny_tflite, weight_cache=value)


def test_release_mapped_file_keeps_the_data(tmp_path):
    import mmap

    from llm_tflite.litert.flatbuffer import release_mapped_file

    path = tmp_path / "data.bin"
    payload = bytes(range(256)) * 4096  # 1 MiB
    path.write_bytes(payload)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert bytes(mapped[:]) == payload  # every page touched
        released = release_mapped_file(str(path))
        if sys.platform.startswith("linux"):
            assert released >= len(payload)
        assert bytes(mapped[:]) == payload  # read back from the page cache, unchanged
    assert release_mapped_file(str(tmp_path / "not-mapped.bin")) == 0


# -- weights behind a constant DEQUANTIZE (weight_only_int8): expanded once, not once per signature --

@pytest.fixture(scope="module")
def tiny_weight_only_int8(tiny_gpt2_dir, tmp_path_factory):
    from llm_tflite import Converter

    path = tmp_path_factory.mktemp("w8") / "tiny_w8.tflite"
    Converter(quantize="weight_only_int8", prefill_lengths=(4, 16), decode_windows=(32,)).convert(
        str(tiny_gpt2_dir), str(path))
    return path


def _logits(runner):
    from conftest import shakespeare_text

    return runner.logits(runner.encode(shakespeare_text()[:300])[:50])


def _as_the_runtime_expands_it(path, monkeypatch):
    """The runner without our expansion: LiteRT dequantizes the weights itself, per signature."""
    with monkeypatch.context() as patch:
        patch.setattr("llm_tflite.litert.expand.expansion_bytes", lambda data, where: 0)
        return InterpreterRunner(path, weight_cache="memory")


def test_weights_behind_dequantize_are_expanded_once_into_the_cache(tiny_weight_only_int8, tmp_path, monkeypatch,
                                                                    caplog):
    import numpy as np

    from llm_tflite.litert.expand import expansion_bytes
    from llm_tflite.litert.flatbuffer import map_model_file
    from llm_tflite.litert.metadata import read_verified_metadata

    assert expansion_bytes(map_model_file(str(tiny_weight_only_int8))) > 0
    reference = _as_the_runtime_expands_it(tiny_weight_only_int8, monkeypatch)
    with caplog.at_level(logging.INFO, logger="llm_tflite"):
        runner = InterpreterRunner(tiny_weight_only_int8, weight_cache=tmp_path)
    assert "expanding them to float32 once" in caplog.text
    sha = read_metadata(tiny_weight_only_int8)["sha256"]
    expanded = tmp_path / f"{sha[:32]}-float32.tflite"  # weight_cache=DIR: every cache file in DIR
    assert sorted(f for f in _cache_files(tmp_path) if f.endswith(".tflite")) == [expanded.name]  # no temporary left
    record = read_verified_metadata(map_model_file(str(expanded)), "expanded")
    assert expansion_bytes(map_model_file(str(expanded))) == 0
    assert {k: v for k, v in record.items() if k != "sha256"} == \
        {k: v for k, v in read_metadata(tiny_weight_only_int8).items() if k != "sha256"}
    assert runner.metadata["sha256"] == sha  # the runner still describes the user's file
    # exactly the values LiteRT's DEQUANTIZE gives: logits bit for bit, and the same text
    assert np.array_equal(_logits(runner), _logits(reference))
    assert _greedy(runner) == _greedy(reference)
    written = os.stat(expanded).st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="llm_tflite"):
        again = InterpreterRunner(tiny_weight_only_int8, weight_cache=tmp_path)
    assert "expanding" not in caplog.text and os.stat(expanded).st_mtime_ns == written
    assert _greedy(again) == _greedy(reference)
    before = _cache_files(tmp_path)
    assert np.array_equal(_logits(InterpreterRunner(tiny_weight_only_int8, weight_cache="memory")), _logits(reference))
    assert _cache_files(tmp_path) == before


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_expanded_model_is_rebuilt(tiny_weight_only_int8, tmp_path, damage):
    expected = _greedy(InterpreterRunner(tiny_weight_only_int8, weight_cache="memory"))
    InterpreterRunner(tiny_weight_only_int8, weight_cache=tmp_path)
    (name,) = [f for f in _cache_files(tmp_path) if f.endswith(".tflite")]
    path = tmp_path / name
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF  # inside a weight: only the checksum can tell
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else data)
    code = (f"from llm_tflite import InterpreterRunner\n"
            f"r = InterpreterRunner({str(tiny_weight_only_int8)!r}, weight_cache={str(tmp_path)!r})\n"
            f"print(r.complete({PROMPT!r}, max_new_tokens=40).token_ids)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rebuilding it" in result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(expected)
    assert _greedy(InterpreterRunner(tiny_weight_only_int8, weight_cache=tmp_path)) == expected


@pytest.mark.parametrize("damage", ["scales", "bytes"])
def test_expanding_a_hostile_file_is_a_typed_error(tiny_weight_only_int8, damage):
    # a file whose checksum is right but whose weights do not match their quantization or shape
    import numpy as np

    from llm_tflite.errors import ModelFileError
    from llm_tflite.litert.expand import expand_dequantized
    from llm_tflite.litert.flatbuffer import tflite_schema, unpack_model
    from llm_tflite.litert.metadata import pack_with_metadata

    schema = tflite_schema()
    data = tiny_weight_only_int8.read_bytes()
    model = unpack_model(data)
    tensor = next(t for t in model.subgraphs[0].tensors
                  if t.type == schema.TensorType.INT8 and t.quantization is not None and len(t.quantization.scale) > 1)
    if damage == "scales":
        tensor.quantization.scale = np.asarray(tensor.quantization.scale[:-1])
        tensor.quantization.zeroPoint = np.asarray(tensor.quantization.zeroPoint[:-1])
    else:
        model.buffers[tensor.buffer].data = model.buffers[tensor.buffer].data[:-3]
    hostile = pack_with_metadata(model, read_metadata(tiny_weight_only_int8))
    with pytest.raises(ModelFileError, match="damaged, re-convert it"):
        expand_dequantized(hostile)


def test_float16_tables_dequantized_whole_are_expanded_once(tiny_gpt2_dir, tmp_path, monkeypatch):
    # TensorFlow's converter (frozen weights: generate-mode and older files) dequantizes a float16
    # embedding table whole before gathering from it: that table is expanded once, while the
    # float16 matrices only FULLY_CONNECTED reads stay float16 (XNNPACK packs them from the file).
    import numpy as np

    from llm_tflite import Converter
    from llm_tflite.litert.expand import expansion_bytes
    from llm_tflite.litert.flatbuffer import map_model_file, operator_names
    from llm_tflite.quantize.strategies import Float16

    class FrozenFloat16(Float16):
        name = "test_frozen_float16"
        bind_format = "float32"  # converter options only: the weights are frozen into the graph

    path = tmp_path / "frozen_f16.tflite"
    Converter(quantize=FrozenFloat16(), prefill_lengths=(4, 16), decode_windows=(32,)).convert(
        str(tiny_gpt2_dir), str(path))
    added = expansion_bytes(map_model_file(str(path)))
    assert added > 0
    reference = _as_the_runtime_expands_it(path, monkeypatch)
    runner = InterpreterRunner(path, weight_cache=tmp_path / "cache")
    assert np.array_equal(_logits(runner), _logits(reference))
    assert _greedy(runner) == _greedy(reference)
    expanded = tmp_path / "cache" / f"{read_metadata(path)['sha256'][:32]}-float32.tflite"
    data = expanded.read_bytes()
    assert expansion_bytes(data) == 0 and "DEQUANTIZE" in operator_names(data)  # FC weights still float16
