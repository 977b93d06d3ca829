#!/usr/bin/env bash
# GPU check: the model-zoo parity tests on the GPU (pytest -m zoo, QIHUANG_TEST_DEVICE=cuda, one PASS/FAIL line
# per case), then the planner against measured peak CUDA memory and MFU (bench/planner_gpu.py, eight cases;
# planner_gpu.json for `plan --mfu`), then a random ~0.5B Qwen2 trained through our CLI in five modes (LoRA bf16,
# QLoRA 4-bit, full with DeepSpeed ZeRO-2 / ZeRO-3 / ZeRO-3 offload), printing s/step, tokens/s, peak GPU memory
# and loss. About 6-8 minutes (a 480 s budget).
# All the logic is in scripts/gpu_check.py; see bench/GPU.md.
#
#   bash scripts/gpu_check.sh                     # one NVIDIA GPU; report in $OUT/gpu_check.md or bench/GPU-<card>.md
#   bash scripts/gpu_check.sh --cpu-smoke         # tiny model on this CPU (or GPU_CHECK_CPU_SMOKE=1)
#   bash scripts/gpu_check.sh --download-wheels   # with network: deepspeed/bitsandbytes wheels into WHEELS_DIR
#
# WHEELS_DIR (default .wheels in the repository root): where missing deepspeed/bitsandbytes are installed from.
# PYTHON: the interpreter (default python3, the one holding torch on the GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -u scripts/gpu_check.py "$@"
