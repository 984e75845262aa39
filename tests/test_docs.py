"""Docs are code: every hook is documented and tested; README commands and snippets run."""

import inspect
import os
import pathlib
import re
import subprocess
import sys

import pytest

from llm_tflite.plugins import hookspecs

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("register_")]


def readme_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)


def plugin_doc_sections() -> dict[str, str]:
    doc = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    return {m.group(1): (m.group(2), m.group(3))
            for m in re.finditer(r"^### `(\w+)\((\w+)\)`\n(.*?)(?=^##)", doc, re.S | re.M)}


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    """Heading with the signature, its arguments, what it does, and an example."""
    argument = inspect.getfullargspec(getattr(hookspecs, hook)).args[0]
    found = plugin_doc_sections().get(hook)
    assert found is not None, f"docs/plugins.md has no section '### `{hook}({argument})`'"
    documented_argument, section = found
    assert documented_argument == argument, f"docs for {hook} name the argument {documented_argument!r}"
    assert "**Arguments:**" in section, f"docs for {hook} do not describe its arguments"
    assert f"def {hook}({argument})" in section and "```python" in section, f"docs for {hook} have no example"


def test_plugin_tutorial_follows_the_example_plugin():
    doc = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert "## Write a family plugin" in doc
    plugin = ROOT / "plugins" / "llm-tflite-mistral"
    assert (plugin / "pyproject.toml").read_text(encoding="utf-8").count("[project.entry-points.llm_tflite]") == 1
    assert list((plugin / "tests").glob("test_*.py")), "the example plugin has no tests"


@pytest.fixture(scope="module")
def hooks_the_plugin_tests_call(tmp_path_factory):
    """Run tests/test_plugins.py (not slow) with ``hook_monitor``: which hooks a plugin registered by a
    test answered, and whether those tests passed."""
    log = tmp_path_factory.mktemp("hooks") / "hooks.json"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "hook_monitor", "-m", "not slow",
                          "-p", "no:cacheprovider", str(ROOT / "tests" / "test_plugins.py")],
                         cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "tests"), "LLM_TFLITE_HOOK_LOG": str(log)})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    import json

    return json.loads(log.read_text(encoding="utf-8"))


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook, hooks_the_plugin_tests_call):
    """A passing test in tests/test_plugins.py registers a plugin implementing the hook, and pluggy calls it."""
    assert hooks_the_plugin_tests_call.get(hook), f"no test plugin's {hook} was called by tests/test_plugins.py"


#: stderr lines our own code may print: log lines of the CLI (progress bars are off without a terminal).
OWN_LINE = re.compile(r"^llm-tflite: ")


def assert_only_own_stderr(stderr: str) -> None:
    foreign = [line for line in stderr.splitlines() if line.strip() and not OWN_LINE.match(line)]
    assert foreign == [], "stderr has lines that are not ours:\n" + "\n".join(foreign[:20])


@pytest.mark.slow
def test_readme_python_snippet_runs_quietly(tmp_path):
    code = readme_blocks("python")[0]
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "LLM_TFLITE_NO_PROGRESS": "1"})
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip().splitlines()) >= 3
    assert_only_own_stderr(out.stderr)


@pytest.mark.slow
def test_readme_plain_steps_run(tmp_path):
    """The two commands README shows as the main job's plain steps, with this interpreter's bin dir."""
    bin_dir = os.path.dirname(sys.executable)
    block = next(b for b in readme_blocks("bash") if "llm-tflite convert" in b)
    for line in block.strip().splitlines():
        command = line.replace(".venv/bin/", bin_dir + "/")
        out = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                             env={**os.environ, "LLM_TFLITE_NO_PROGRESS": "1"})
        assert out.returncode == 0, out.stderr
        assert_only_own_stderr(out.stderr)
    assert (tmp_path / "build" / "gpt2_tiny_shakespeare.tflite").stat().st_size > 1e6
    assert out.stdout.startswith("ROMEO:") and len(out.stdout) > 60


@pytest.mark.slow
def test_demo_script_prints_only_our_lines_on_stderr():
    """scripts/demo.sh as a user runs it (it uses the repository's .venv, as setup.sh made it)."""
    if not (ROOT / ".venv" / "bin" / "llm-tflite").exists():
        pytest.fail("scripts/demo.sh needs .venv: run scripts/setup.sh first (CI does)")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "LLM_TFLITE_NO_PROGRESS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("wrote ") and "\nROMEO:" in out.stdout
    assert_only_own_stderr(out.stderr)
    assert "llm-tflite: convert: loading model" in out.stderr


@pytest.mark.slow
def test_runner_doc_examples_run(tmp_path):
    """docs/runner.md's examples, in order, as one script."""
    doc = (ROOT / "docs" / "runner.md").read_text(encoding="utf-8")
    code = "\n".join(re.findall(r"```python\n(.*?)```", doc, re.S))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "LLM_TFLITE_NO_PROGRESS": "1"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "bad_language" in lines and "filtered" in lines
    assert_only_own_stderr(out.stderr)


@pytest.mark.slow
def test_readme_deployment_paths_run(tmp_path):
    """README's "Deploying: two paths" commands, in order, in one directory: our runner, then LiteRT-LM."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Deploying: two paths", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("  #", 1)[0].strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
             for line in block.strip().splitlines()]
    assert len(lines) == 5 and any("--backend litert-lm" in line for line in lines)
    bin_dir = os.path.dirname(sys.executable)
    for line in lines:
        out = subprocess.run(f"{bin_dir}/{line}", shell=True, cwd=tmp_path, capture_output=True, text=True,
                             timeout=900, env={**os.environ, "LLM_TFLITE_NO_PROGRESS": "1"})
        assert out.returncode == 0, (line, out.stderr)
        assert_only_own_stderr(out.stderr)
        if " generate " in f" {line} ":
            assert out.stdout.startswith("ROMEO:") and len(out.stdout) > 20, out.stdout
    assert (tmp_path / "model.litertlm").stat().st_size > 1e6


def test_every_llm_tflite_name_the_docs_import_exists():
    """Snippets in docs/*.md and README import only names that exist (a renamed helper breaks them)."""
    import importlib

    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = []
    for doc in docs:
        for block in re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
            for module, names in re.findall(r"^\s*from (llm_tflite[\w.]*) import ([\w, ]+)$", block, re.M):
                found += [(doc.name, module, name.strip()) for name in names.split(",")]
    assert len(found) > 10
    missing = [f for f in found if not hasattr(importlib.import_module(f[1]), f[2])]
    assert missing == []
