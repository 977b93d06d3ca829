#!/usr/bin/env bash
# 数智岐黄 (ShuZhiQiHuang) LoRA SFT with the seed's settings, on our CLI.
# Every setting can be overridden from the environment, e.g. a 5-step smoke test on CPU:
#   BASE_MODEL_PATH=default NUM_GPUS=0 MAX_STEPS=5 bash scripts/run_sft_shuzhiqihuang.sh
set -euo pipefail
cd "$(dirname "$0")/.."

STAGE=sft
BASE_MODEL_PATH=${BASE_MODEL_PATH:-/path/to/Qwen2.5-14B-Instruct}   # or 'default' for the built-in model
DATASET=${DATASET:-tcm_qa,tcm_dialog,medical_instruction}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/shuzhiqihuang-sft-lora}
LORA_RANK=${LORA_RANK:-64}
LORA_ALPHA=${LORA_ALPHA:-128}
LEARNING_RATE=${LEARNING_RATE:-1e-4}
NUM_EPOCHS=${NUM_EPOCHS:-3}
source scripts/shuzhiqihuang_common.sh
