# Shared by run_sft_shuzhiqihuang.sh and run_pt_shuzhiqihuang.sh (sourced, not run): the settings
# both stages share, and the launch. The caller sets STAGE and its own defaults first.
# shellcheck shell=bash
DATASET_DIR=${DATASET_DIR:-data}
NUM_GPUS=${NUM_GPUS:-4}                 # 0 = one process, no DeepSpeed launcher (CPU or one GPU)
DEEPSPEED=${DEEPSPEED:-z3}              # z0 | z2 | z3 | z3_offload | a JSON path
LORA_DROPOUT=${LORA_DROPOUT:-0.05}
LORA_TARGET=${LORA_TARGET:-all}
CUTOFF_LEN=${CUTOFF_LEN:-2048}
BATCH_SIZE=${BATCH_SIZE:-2}
GRAD_ACCUM=${GRAD_ACCUM:-8}
MAX_STEPS=${MAX_STEPS:--1}
LR_SCHEDULER=${LR_SCHEDULER:-cosine}
WARMUP_RATIO=${WARMUP_RATIO:-0.03}
VAL_SIZE=${VAL_SIZE:-0.02}
LOGGING_STEPS=${LOGGING_STEPS:-10}
SAVE_STEPS=${SAVE_STEPS:-500}
BF16=${BF16:-true}
GRADIENT_CHECKPOINTING=${GRADIENT_CHECKPOINTING:-true}
REPORT_TO=${REPORT_TO:-wandb}
export WANDB_MODE=${WANDB_MODE:-offline}

args=(
  "stage=$STAGE"
  "model_name_or_path=$BASE_MODEL_PATH"
  "dataset=$DATASET" "dataset_dir=$DATASET_DIR"
  "output_dir=$OUTPUT_DIR"
  finetuning_type=lora "lora_rank=$LORA_RANK" "lora_alpha=$LORA_ALPHA"
  "lora_dropout=$LORA_DROPOUT" "lora_target=$LORA_TARGET"
  "cutoff_len=$CUTOFF_LEN"
  "per_device_train_batch_size=$BATCH_SIZE" "gradient_accumulation_steps=$GRAD_ACCUM"
  "learning_rate=$LEARNING_RATE" "num_train_epochs=$NUM_EPOCHS" "max_steps=$MAX_STEPS"
  "lr_scheduler_type=$LR_SCHEDULER" "warmup_ratio=$WARMUP_RATIO" "val_size=$VAL_SIZE"
  "logging_steps=$LOGGING_STEPS" "save_steps=$SAVE_STEPS"
  "bf16=$BF16" "gradient_checkpointing=$GRADIENT_CHECKPOINTING"
  "report_to=$REPORT_TO" resume_from_checkpoint=auto
)

# Our launcher picks the DeepSpeed launcher (deepspeed set) or one plain process (NUM_GPUS=0).
if [ "$NUM_GPUS" -eq 0 ]; then
  DEEPSPEED=
fi
# DRY_RUN=1 prints the exact launcher command instead of running it.
exec python -m trainer_core train "${args[@]}" "deepspeed=$DEEPSPEED" "num_gpus=$NUM_GPUS" ${DRY_RUN:+--dry-run}
