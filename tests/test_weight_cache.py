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
    assert first._engine.weight_cache_path == str(tmp_path / files[0])
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
    assert runner._engine.weight_cache_path == ":memory:"
    assert _cache_files(weight_cache_dir / "xnnpack") == before


def test_auto_uses_the_cache_directory_setting(tiny_tflite, weight_cache_dir):
    runner = InterpreterRunner(tiny_tflite)  # weight_cache="auto": $LLM_TFLITE_CACHE_DIR/xnnpack
    assert os.path.dirname(runner._engine.weight_cache_path) == str(weight_cache_dir / "xnnpack")
    assert os.path.isfile(runner._engine.weight_cache_path)


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
    assert runner._engine.weight_cache_path == ":memory:"
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
