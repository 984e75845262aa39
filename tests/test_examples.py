"""The examples/ scripts that take minutes, each in a test of its own file, so the suite's two
workers (pytest-xdist, ``--dist loadfile``) start them early and side by side with the rest."""

import json
import pathlib
import subprocess
import sys

import pytest
from conftest import TANG_DIR

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_tang_example_quick(tmp_path):
    """examples/tang_poems.py --quick as a user runs it (a process of its own, nothing left over from
    other tests): the tutorial flow end to end, figures printed."""
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "tang_poems.py"), "--quick", "--out", str(tmp_path),
                           "--data-dir", str(TANG_DIR)],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout[done.stdout.rindex("\n{") + 1:])
    assert figures["heldout_drop"] >= 0.30, done.stdout
    assert figures["cjk_fraction_tflite"] >= 0.5, done.stdout


@pytest.mark.parametrize("flow", ["reddit", "tang"])
def test_tutorial_jax_lora_example(flow, tmp_path):
    """examples/tutorial_jax_lora.py: JAX, mixed_float16, LoRA rank 4 on the shipped model, converted from
    the JAX process; Reddit-style records written here from docs/ (the default reads Reddit TIFU through tfds)."""
    command = [sys.executable, str(ROOT / "examples" / "tutorial_jax_lora.py"), "--flow", flow, "--max-steps", "30",
               "--out", str(tmp_path)]
    if flow == "reddit":
        # posts the shipped model has not read (it knows Shakespeare): this project's docs, a paragraph each
        paragraphs = [p for doc in sorted((ROOT / "docs").glob("*.md"))
                      for p in doc.read_text(encoding="utf-8").split("\n\n") if len(p) > 80]
        records = tmp_path / "tifu.jsonl"
        records.write_text("".join(json.dumps({"title": f"tifu {i}", "documents": p, "tldr": p[:40]}) + "\n"
                                   for i, p in enumerate(paragraphs)), encoding="utf-8")
        command += ["--data", str(records)]
    else:
        command += ["--data", str(TANG_DIR / "poet.tang.0.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=ROOT,
                          env={**__import__("os").environ, "LLM_TFLITE_NO_PROGRESS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout[done.stdout.rindex("\n{") + 1:])
    assert figures["backend"] == "jax" and 0 < figures["trainable_fraction"] < 0.05, figures
    assert figures["after_nats_per_char"] < figures["before_nats_per_char"], figures
    assert pathlib.Path(figures["tflite"]).exists() and len(figures["tflite_text"]) > len("昨夜雨疏风骤")
