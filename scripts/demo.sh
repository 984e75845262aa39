#!/usr/bin/env bash
# The main job on the shipped model: convert to a dynamic-range int8 .tflite, then generate.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
.venv/bin/llm-tflite convert gpt2_tiny_shakespeare --quantize dynamic_int8 -o build/gpt2_tiny_shakespeare.tflite
.venv/bin/llm-tflite generate build/gpt2_tiny_shakespeare.tflite "ROMEO:" --max-new-tokens 80 --sampler top_k --temperature 0.8 --seed 1 --stream
