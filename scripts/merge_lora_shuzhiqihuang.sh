#!/usr/bin/env bash
# 数智岐黄 (ShuZhiQiHuang): merge a LoRA adapter into its base model and export it, on our CLI:
# merged safetensors, a model card with the loss curve, optional GGUF files and an Ollama Modelfile.
# Every setting comes from the environment, e.g.:
#   RUN_DIR=outputs/shuzhiqihuang-sft-lora bash scripts/merge_lora_shuzhiqihuang.sh
#   BASE_MODEL_PATH=/path/to/Qwen2.5-14B-Instruct ADAPTER_PATH=outputs/shuzhiqihuang-sft-lora/adapter \
#     OUTPUT_DIR=outputs/shuzhiqihuang-merged GGUF=f16,q8_0 bash scripts/merge_lora_shuzhiqihuang.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DIR=${RUN_DIR:-}                    # a training run's folder (its base + adapter/, or model/)
BASE_MODEL_PATH=${BASE_MODEL_PATH:-}    # or: the base model ('default', a folder or a hub id) ...
ADAPTER_PATH=${ADAPTER_PATH:-}          # ... and the LoRA adapter folder to merge into it
OUTPUT_DIR=${OUTPUT_DIR:-}              # default RUN_DIR/export, or outputs/export-<adapter folder name>
DTYPE=${DTYPE:-bfloat16}                # float32 | bfloat16 | float16
MAX_SHARD_SIZE=${MAX_SHARD_SIZE:-2GB}
GGUF=${GGUF:-none}                      # none | f16 | q8_0 | f16,q8_0 (Llama and Qwen2 models)
OVERWRITE=${OVERWRITE:-false}           # true: replace an existing export in OUTPUT_DIR

args=()
if [ -n "$RUN_DIR" ]; then
  args+=(--run "$RUN_DIR")
elif [ -n "$BASE_MODEL_PATH" ] || [ -n "$ADAPTER_PATH" ]; then
  if [ -n "$BASE_MODEL_PATH" ]; then args+=(--model "$BASE_MODEL_PATH"); fi
  if [ -n "$ADAPTER_PATH" ]; then args+=(--adapter "$ADAPTER_PATH"); fi
else
  echo "error: set RUN_DIR (a training run's folder), or BASE_MODEL_PATH and ADAPTER_PATH" >&2
  exit 2
fi
if [ -n "$OUTPUT_DIR" ]; then
  args+=(--output_dir "$OUTPUT_DIR")
fi
args+=(--dtype "$DTYPE" --max_shard_size "$MAX_SHARD_SIZE" --gguf "$GGUF")
if [ "$OVERWRITE" = true ]; then
  args+=(--overwrite)
fi
exec python -m trainer_core export "${args[@]}"
