"""Keras as the tutorials use it (issue 27): JAX, mixed precision, LoRA, several devices.

JAX runs in child processes: Keras picks its backend once per process, and the suite's is TensorFlow.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest

from conftest import TANG_DIR
from llm_tflite import Converter
from llm_tflite.errors import InvalidArgumentError, UnsupportedRuntimeError

SHIPPED = "gpt2_tiny_shakespeare"
ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_jax(script: str, *, devices: int = 1, timeout: int = 900) -> dict:
    """Run ``script`` in a process whose Keras runs on JAX; it prints one JSON line last, returned."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "LLM_TFLITE_NO_PROGRESS": "1",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    env.pop("NPROC", None)  # what XLA's CPU client gets is the library's doing
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_jax_process_finetunes_with_lora_in_mixed_precision_and_converts_the_object(tmp_path):
    """The tutorial's notebook: KERAS_BACKEND=jax, mixed_float16, LoRA rank 4 on Tang poems; the model
    object converts from that process (a TensorFlow child), to the bytes its saved preset converts to
    from TensorFlow; a preset name converts from it to the bytes a TensorFlow process writes."""
    out = run_jax(f"""
        import json, keras
        from llm_tflite import Converter, finetune
        r = finetune({SHIPPED!r}, {str(TANG_DIR / "poet.tang.0.json")!r}, {str(tmp_path / "preset")!r},
                     text_field="paragraphs", heldout={str(TANG_DIR / "poet.tang.4000.json")!r}, max_steps=40,
                     batch_size=8, sequence_length=64, learning_rate=5e-3, eval_max_tokens=4000,
                     precision="mixed_float16", lora_rank=4)
        Converter().convert(r.model, {str(tmp_path / "object.tflite")!r})
        Converter().convert({SHIPPED!r}, {str(tmp_path / "shipped_jax.tflite")!r})
        print(json.dumps({{"backend": keras.backend.backend(), "policy": r.model.dtype_policy.name,
                          "before": r.before["nats_per_char"], "after": r.after["nats_per_char"],
                          "trainable": r.trainable_fraction}}))
    """)
    assert out["backend"] == "jax" and out["policy"] == "mixed_float16"
    assert out["after"] < out["before"], out
    assert 0 < out["trainable"] < 0.05, out
    config = json.loads((tmp_path / "preset" / "config.json").read_text())
    assert config["config"]["dtype"]["config"]["name"] == "float32"  # KerasHub loads it back
    Converter().convert(str(tmp_path / "preset"), tmp_path / "preset.tflite")
    assert (tmp_path / "object.tflite").read_bytes() == (tmp_path / "preset.tflite").read_bytes()
    Converter().convert(SHIPPED, tmp_path / "shipped_tf.tflite")
    assert (tmp_path / "shipped_jax.tflite").read_bytes() == (tmp_path / "shipped_tf.tflite").read_bytes()


@pytest.mark.slow
def test_a_jax_process_gets_typed_errors_from_the_tensorflow_child(tmp_path):
    out = run_jax(f"""
        import json
        from llm_tflite import Converter
        from llm_tflite.errors import ModelSourceError
        try:
            Converter().convert({str(tmp_path / "nowhere")!r}, {str(tmp_path / "x.tflite")!r}, family="gpt2")
        except ModelSourceError as e:
            print(json.dumps({{"error": type(e).__name__, "message": str(e)}}))
    """)
    assert out["error"] == "ModelSourceError" and "no such preset directory" in out["message"]
    assert not (tmp_path / "x.tflite").exists()


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_a_mixed_precision_model_converts_to_its_float32_file(policy, tmp_path):
    """A model under a mixed policy (computing in 16 bits) converts to the float32 model's file; a preset
    saved under it by KerasHub itself (which KerasHub 0.30 cannot load back) converts to the same."""
    import keras

    from llm_tflite.families.loading import load_model

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        _, mixed = load_model(SHIPPED)
    finally:
        keras.config.set_dtype_policy(previous)
    assert mixed.backbone.transformer_layers[0].compute_dtype == policy.split("_")[1]
    mixed.save_to_preset(str(tmp_path / "mixed_preset"))
    Converter().convert(mixed, tmp_path / "object.tflite")
    Converter().convert(str(tmp_path / "mixed_preset"), tmp_path / "preset.tflite")
    Converter().convert(SHIPPED, tmp_path / "float32.tflite")
    expected = (tmp_path / "float32.tflite").read_bytes()
    assert (tmp_path / "object.tflite").read_bytes() == expected
    assert (tmp_path / "preset.tflite").read_bytes() == expected


def test_lora_merges_in_float32_under_a_mixed_policy(tmp_path):
    """Keras merges LoRA in the layer's compute dtype (16 bits under a mixed policy); save_preset merges
    in float32: the saved kernel is the float32 sum, not its bfloat16 rounding."""
    import keras

    from llm_tflite.families.loading import load_model, save_preset

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        _, lm = load_model(SHIPPED)
    finally:
        keras.config.set_dtype_policy(previous)
    lm.backbone.enable_lora(4)
    query = lm.backbone.transformer_layers[0]._self_attention_layer._query_dense
    rng = np.random.default_rng(0)
    query.lora_kernel_b.assign(rng.normal(0, 0.05, query.lora_kernel_b.shape).astype("float32"))
    a, b = np.asarray(query.lora_kernel_a), np.asarray(query.lora_kernel_b)
    expected = np.asarray(query._kernel) + (query.lora_alpha / query.lora_rank) * np.matmul(a, b)
    save_preset(lm, str(tmp_path / "merged"))
    _, merged = load_model(str(tmp_path / "merged"))
    kernel = np.asarray(merged.backbone.transformer_layers[0]._self_attention_layer._query_dense.kernel)
    np.testing.assert_allclose(kernel, expected, rtol=0, atol=1e-6)
    rounded = expected.astype(ml_dtypes.bfloat16).astype(np.float32)  # what Keras' own merge saves
    assert np.abs(kernel - rounded).max() > 1e-4


@pytest.mark.slow
def test_data_parallel_on_two_devices_equals_one_and_model_parallel_lowers_loss():
    """Keras' distribution API on 2 virtual CPU devices: DataParallel gives one device's weights (same
    batches, 5 steps) within 1e-5; ModelParallel on a 1x2 mesh shards the embedding and lowers loss."""
    out = run_jax(f"""
        import json
        import keras, numpy as np
        from llm_tflite import finetune
        kw = dict(text_field="paragraphs", max_steps=5, batch_size=4, sequence_length=32, eval_max_tokens=500,
                  learning_rate=1e-3)
        data = {str(TANG_DIR / "poet.tang.0.json")!r}
        one = finetune({SHIPPED!r}, data, **kw).model.get_weights()
        two_model = finetune({SHIPPED!r}, data, distribution="data", **kw).model
        two = two_model.get_weights()
        on = len(two_model.backbone.token_embedding.embeddings.value.sharding.device_set)
        r = finetune({SHIPPED!r}, data, distribution="model", mesh="1x2", **kw)
        import os
        print(json.dumps({{"devices": keras.distribution.list_devices(), "data_parallel_on": on,
                          "nproc": os.environ.get("NPROC"),
                          "diff": max(float(np.abs(a - b).max()) for a, b in zip(one, two)),
                          "before": r.before["nats_per_token"], "after": r.after["nats_per_token"],
                          "sharding": str(r.model.backbone.token_embedding.embeddings.value.sharding.spec)}}))
    """, devices=2)
    assert out["devices"] == ["cpu:0", "cpu:1"] and out["data_parallel_on"] == 2  # replicated on both
    # XLA's CPU client got threads enough for two devices' collectives (on 2 cores it aborted 1 run in 5)
    assert out["nproc"] == ("8" if (os.cpu_count() or 1) < 8 else None), out
    assert out["diff"] < 1e-5, out
    assert out["after"] < out["before"], out
    assert "model" in out["sharding"], out


def test_virtual_cpu_devices_get_threads_enough_for_their_collectives(monkeypatch):
    """XLA_FLAGS asking for several CPU devices on few cores: NPROC (XLA's CPU thread count) becomes 4 per
    device, unless the user set it or the cores suffice; a process whose JAX started first is warned."""
    from llm_tflite.console import make_room_for_cpu_devices, virtual_cpu_devices

    flags = "--xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count=2"
    assert virtual_cpu_devices({"XLA_FLAGS": flags}) == 2 and virtual_cpu_devices({}) == 0
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    environ = {"XLA_FLAGS": flags}
    make_room_for_cpu_devices(environ)
    assert environ["NPROC"] == "8"
    for untouched in ({"XLA_FLAGS": flags, "NPROC": "3"}, {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
                      {}):
        before = dict(untouched)
        make_room_for_cpu_devices(untouched)
        assert untouched == before
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    environ = {"XLA_FLAGS": flags}
    make_room_for_cpu_devices(environ)
    assert "NPROC" not in environ

    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": flags}
    env.pop("NPROC", None)
    script = """
        import jax, keras
        jax.devices()  # JAX's CPU client exists before llm-tflite sees the process
        from llm_tflite.console import import_keras
        from llm_tflite.training.distribution import make_distribution
        make_distribution(import_keras(("jax",)), "data")
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    if (os.cpu_count() or 1) < 8:
        assert "2 CPU devices on" in done.stderr and "set NPROC=8 before JAX starts" in done.stderr, done.stderr


def test_training_options_are_checked_before_the_model_loads(tmp_path):
    from llm_tflite import finetune

    data = TANG_DIR / "poet.tang.0.json"
    with pytest.raises(InvalidArgumentError, match="precision must be one of float32, mixed_float16"):
        finetune(SHIPPED, data, text_field="paragraphs", precision="float16")
    with pytest.raises(InvalidArgumentError, match="lora_rank must be a positive integer"):
        finetune(SHIPPED, data, text_field="paragraphs", lora_rank=0)
    with pytest.raises(UnsupportedRuntimeError, match="--backend jax"):  # this process' Keras runs on TensorFlow
        finetune(SHIPPED, data, text_field="paragraphs", distribution="data")
    with pytest.raises(InvalidArgumentError, match="mesh goes with distribution='model'"):
        finetune(SHIPPED, data, text_field="paragraphs", mesh="1x2")
    from llm_tflite.training.distribution import parse_mesh

    assert parse_mesh("2x4") == (2, 4)
    for bad in ("2", "0x2", "axb"):
        with pytest.raises(InvalidArgumentError, match="mesh"):
            parse_mesh(bad)


def _training_doc_block(language: str, marker: str) -> str:
    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    return next(b for b in re.findall(rf"```{language}\n(.*?)```", text, re.S) if marker in b)


@pytest.mark.slow
def test_training_doc_commands_run(tmp_path):
    """docs/training.md's first commands as written (output paths in tmp): JAX, mixed_float16, LoRA rank 4
    on Tang poems lowers held-out loss, says what share of the weights it trained, and converts."""
    block = _training_doc_block("bash", "--lora-rank 4")
    block = block.replace(".venv/bin/", os.path.dirname(sys.executable) + "/")
    block = block.replace("-o tang_lora", f"-o {tmp_path / 'tang_lora'}").replace("convert tang_lora", f"convert {tmp_path / 'tang_lora'}")
    block = block.replace("build/tang_lora.tflite", str(tmp_path / "tang_lora.tflite"))
    env = {**os.environ, "LLM_TFLITE_NO_PROGRESS": "1"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    trained = re.search(r"LoRA rank 4: trained ([\d.]+)% of the weights", done.stdout)
    assert trained and 0 < float(trained.group(1)) < 5, done.stdout
    before = float(re.search(r"held-out before: ([\d.]+) nats/char", done.stdout).group(1))
    after = float(re.search(r"held-out after : ([\d.]+) nats/char", done.stdout).group(1))
    assert after < before, done.stdout
    from llm_tflite import InterpreterRunner

    assert InterpreterRunner(tmp_path / "tang_lora.tflite").generate("昨夜", max_new_tokens=8)


@pytest.mark.slow
def test_training_doc_notebook_runs(tmp_path):
    """docs/training.md's JAX notebook snippet, in a fresh process (it sets KERAS_BACKEND itself)."""
    snippet = _training_doc_block("python", "KERAS_BACKEND").replace("build/notebook.tflite",
                                                                     str(tmp_path / "notebook.tflite"))
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    done = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=ROOT,
                          env={**env, "LLM_TFLITE_NO_PROGRESS": "1"}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    from llm_tflite import InterpreterRunner

    assert InterpreterRunner(tmp_path / "notebook.tflite").metadata["quantization"] == "dynamic_int8"


def test_only_finetune_backend_chooses_keras_backend():
    """finetune --backend picks Keras' backend; generate's --backend picks the runtime and leaves Keras alone."""
    from llm_tflite.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["finetune", "m", "--data", "d", "-o", "o", "--backend", "jax"]).keras_backend == "jax"
    assert parser.parse_args(["finetune", "m", "--data", "d", "-o", "o"]).keras_backend == "tensorflow"
    generate = parser.parse_args(["generate", "f.tflite", "hi", "--backend", "interpreter"])
    assert not hasattr(generate, "keras_backend") and generate.backend == "interpreter"


def test_a_child_conversion_gets_every_converter_setting():
    """The TensorFlow child rebuilds the Converter from ``_settings``: every argument must be in it."""
    import inspect

    assert set(Converter()._settings) == set(inspect.signature(Converter.__init__).parameters) - {"self"}


def test_a_preset_keeps_what_a_hugging_face_checkpoint_brought(tmp_path):
    """A model from a Hugging Face checkpoint carries its own tokenizer.json and chat template; a preset
    save_preset writes (finetune's, a JAX process' temporary one) keeps both, so its file tokenizes the same."""
    from llm_tflite.families.loading import HF_CHAT_ATTRIBUTE, HF_TOKENIZER_ATTRIBUTE, load_model, save_preset
    from llm_tflite.testing import write_hf_checkpoint

    _, lm = load_model(write_hf_checkpoint(tmp_path / "ckpt", "qwen3"))
    tokenizer = lm.preprocessor.tokenizer
    assert getattr(tokenizer, HF_TOKENIZER_ATTRIBUTE) and getattr(tokenizer, HF_CHAT_ATTRIBUTE)["template"]
    save_preset(lm, tmp_path / "preset")
    _, again = load_model(str(tmp_path / "preset"))
    for attribute in (HF_TOKENIZER_ATTRIBUTE, HF_CHAT_ATTRIBUTE):
        assert getattr(again.preprocessor.tokenizer, attribute) == getattr(tokenizer, attribute)
