#!/usr/bin/env bash
# Create .venv with every dependency (llm-tflite[all,test]; tested versions pinned in constraints.txt)
# and .venv/litertlm with LiteRT-LM's builder,
# llm-tflite itself (editable) and the example plugins under plugins/, installed the way a
# user installs a third-party plugin (pip install ./plugins/NAME).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 12), "llm-tflite needs Python 3.10-3.12 (TensorFlow 2.19)"'
"$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[all,test]"
for plugin in plugins/*/; do
  if [ -f "$plugin/pyproject.toml" ]; then
    .venv/bin/python -m pip install --quiet -c constraints.txt "$plugin"
  fi
done
# LiteRT-LM's builder (`llm-tflite bundle`, `convert --format litertlm`) needs protobuf >= 6.31, which
# TensorFlow 2.19 cannot share an environment with: it gets its own, where llm-tflite looks for it.
"$PYTHON" -m venv .venv/litertlm
.venv/litertlm/bin/python -m pip install --quiet -c constraints.txt litert-lm-builder
.venv/bin/llm-tflite plugins
if ! command -v chromium >/dev/null; then
  echo "note: the browser tests need Debian's Chromium (Playwright drives it; it cannot download its own here):"
  echo "      apt-get install chromium   (.ci/run installs it)"
fi
echo "ready: .venv/bin/llm-tflite"
