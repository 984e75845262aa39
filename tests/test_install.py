"""`pip install llm-tflite` alone: what running files needs, and no TensorFlow, Keras or KerasHub."""

import os
import pathlib
import subprocess
import sys

import pytest

from llm_tflite import InterpreterRunner

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_runtime_only_install_runs_files_and_names_the_convert_extra(tmp_path):
    from llm_tflite import Converter
    from llm_tflite.export.bundle import build_bundle

    shipped = tmp_path / "shipped.tflite"
    Converter(quantize="dynamic_int8").convert("gpt2_tiny_shakespeare", str(shipped))
    bundle = build_bundle(shipped, tmp_path / "shipped.litertlm")  # with the builder of this setup
    venv = tmp_path / "runtime-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python, cli = venv / "bin" / "python", venv / "bin" / "llm-tflite"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt"),
                              str(ROOT)], capture_output=True, text=True, timeout=1200)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = subprocess.run([str(python), "-c", "import importlib.util as u; print([m for m in ('tensorflow', "
                            "'keras', 'keras_hub', 'tensorflow_text') if u.find_spec(m)])"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert found.stdout.strip() == "[]", found.stdout + found.stderr

    expected = "ROMEO:" + InterpreterRunner(shipped).generate("ROMEO:", 24) + "\n"
    generated = subprocess.run([str(cli), "generate", str(shipped), "ROMEO:", "--max-new-tokens", "24"],
                               capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout == expected

    generated = subprocess.run([str(cli), "generate", str(bundle), "ROMEO:", "--max-new-tokens", "24"],
                               capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout == expected

    bundled = subprocess.run([str(cli), "bundle", str(shipped), "-o", str(tmp_path / "y.litertlm")],
                             capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert bundled.returncode == 1 and "pip install 'llm-tflite[litertlm]'" in bundled.stderr, bundled.stderr
    assert "Traceback" not in bundled.stderr

    output = tmp_path / "x.tflite"
    converted = subprocess.run([str(cli), "convert", "gpt2_tiny_shakespeare", "-o", str(output)],
                               capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert converted.returncode == 1 and "pip install 'llm-tflite[convert]'" in converted.stderr
    assert "Traceback" not in converted.stderr and not output.exists()


@pytest.mark.slow
def test_litertlm_extra_bundles_and_runs_in_litert_lm_without_tensorflow(tmp_path):
    """Without TensorFlow the builder (protobuf >= 6.31) installs beside llm-tflite: bundling runs in process."""
    from llm_tflite import Converter

    shipped = tmp_path / "shipped.tflite"
    Converter().convert("gpt2_tiny_shakespeare", str(shipped))
    venv = tmp_path / "litertlm-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python, cli = venv / "bin" / "python", venv / "bin" / "llm-tflite"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt"),
                              f"{ROOT}[litertlm]"], capture_output=True, text=True, timeout=1200)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LLM_TFLITE_LITERTLM_PYTHON")}
    bundle = tmp_path / "shipped.litertlm"
    bundled = subprocess.run([str(cli), "bundle", str(shipped), "-o", str(bundle)], capture_output=True, text=True,
                             env=env, timeout=300, cwd=tmp_path)
    assert bundled.returncode == 0, bundled.stderr
    generated = subprocess.run([str(cli), "generate", str(bundle), "ROMEO:", "--max-new-tokens", "16", "--backend",
                                "litert-lm"], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout == "ROMEO:" + InterpreterRunner(shipped).generate("ROMEO:", 16) + "\n"
