#!/usr/bin/env bash
# 数智岐黄 (ShuZhiQiHuang) LoRA continued pre-training with the seed's settings, on our CLI.
# Every setting can be overridden from the environment, e.g. a 5-step smoke test on CPU:
#   BASE_MODEL_PATH=default NUM_GPUS=0 MAX_STEPS=5 bash scripts/run_pt_shuzhiqihuang.sh
set -euo pipefail
cd "$(dirname "$0")/.."

STAGE=pt
BASE_MODEL_PATH=${BASE_MODEL_PATH:-/path/to/Qwen2.5-14B-Instruct}   # or 'default' for the built-in model
DATASET=${DATASET:-tcm_corpus,medical_textbook,clinical_notes}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/shuzhiqihuang-pt-lora}
LORA_RANK=${LORA_RANK:-128}
LORA_ALPHA=${LORA_ALPHA:-256}
LEARNING_RATE=${LEARNING_RATE:-5e-5}
NUM_EPOCHS=${NUM_EPOCHS:-1}
source scripts/shuzhiqihuang_common.sh
