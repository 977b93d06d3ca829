"""Published memory figures beside our planner's, cell by cell.

    python bench/planner_published.py            # the tables on stdout
    python bench/planner_published.py --write    # ... and into bench/RESULTS.md ("Planner: published figures vs ours")

Two published tables of fine-tuning memory by method and model size:
- LLaMA-Factory's README, "Hardware Requirement" (hiyouga/LLaMA-Factory, README.md at commit
  00409ff28a30f48d13b808029d37861423673a4a), marked "estimated", in GB, with a rule per row for `x`B
  parameters: 18x (full, bf16/fp16 mixed precision), 8x (full, pure_bf16), 2x (freeze/LoRA/GaLore/
  APOLLO/BAdam), x, x/2 and x/4 (QLoRA 8/4/2-bit).
- Unsloth's requirements page (unsloth.ai/docs/get-started/fine-tuning-for-beginners/unsloth-requirements),
  "Fine-tuning VRAM requirements": QLoRA (4-bit) and LoRA (16-bit) by model size, "the absolute
  minimum".

Neither states a batch size, a sequence length or whether gradient checkpointing is on. We plan each
cell with batch 1 and cutoff_len 1024 (LLaMA-Factory measures its own benchmark's memory at bs=1,
cutoff_len=1024, README "Benchmark"), and again at 2048; gradient checkpointing on, as both tools
default (LLaMA-Factory: `disable_gradient_checkpointing: false`; Unsloth's notebooks:
`use_gradient_checkpointing = "unsloth"`); LoRA rank 8 on every linear layer (LLaMA-Factory's
default; Unsloth's notebooks use 16); bf16; one GPU (the figure is one process's total whether or not
a card that large exists). Sizes map to shipped configs (presets/models/): 7B Qwen2.5-7B, 8B Qwen3-8B,
14B Qwen2.5-14B, 30B and 32B Qwen2.5-32B, 70B Llama-3.1-70B, 3B Qwen2.5-3B; a size without a shipped
config is left out. Our figures are in GB (10^9 bytes) as the published ones are (x billion
parameters x bytes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GB = 1e9
SIZES = {"3B": "qwen2.5-3b", "7B": "qwen2.5-7b", "8B": "qwen3-8b", "14B": "qwen2.5-14b", "30B": "qwen2.5-32b",
         "32B": "qwen2.5-32b", "70B": "llama-3.1-70b"}
BATCH, CUTOFFS = 1, (1024, 2048)
BASE = {"stage": "sft", "per_device_train_batch_size": BATCH, "gradient_checkpointing": True, "bf16": True,
        "lora_rank": 8, "lora_alpha": 16, "lora_target": "all", "packing": False, "num_gpus": 1}

LLAMA_FACTORY_SOURCE = ("hiyouga/LLaMA-Factory README.md, \"Hardware Requirement\" (estimated), "
                        "commit 00409ff28a30f48d13b808029d37861423673a4a")
# (method, bits, bytes per parameter of its `x`B rule, our config or None, what ours is, {size: GB})
LLAMA_FACTORY: list[tuple[str, int, float, dict | None, str, dict[str, float]]] = [
    ("Full (bf16 or fp16)", 32, 18, {"finetuning_type": "full"}, "full, bf16 (fp32 weights, autocast)",
     {"7B": 120, "14B": 240, "30B": 600, "70B": 1200}),
    ("Full (pure_bf16)", 16, 8, {"finetuning_type": "full", "deepspeed": "z2"},
     "no pure-bf16 mode; nearest: full, deepspeed=z2 on 1 GPU (bf16 weights, fp32 master + AdamW)",
     {"7B": 60, "14B": 120, "30B": 300, "70B": 600}),
    ("Freeze/LoRA/GaLore/APOLLO/BAdam", 16, 2, {"finetuning_type": "lora"}, "lora r8 all, bf16 (fp32 base weights)",
     {"7B": 16, "14B": 32, "30B": 64, "70B": 160}),
    ("QLoRA", 8, 1, {"finetuning_type": "qlora", "quantization_bit": 8}, "qlora 8-bit (LLM.int8), r8 all",
     {"7B": 10, "14B": 20, "30B": 40, "70B": 80}),
    ("QLoRA", 4, 0.5, {"finetuning_type": "qlora", "quantization_bit": 4}, "qlora 4-bit (NF4, double quant), r8 all",
     {"7B": 6, "14B": 12, "30B": 24, "70B": 48}),
    ("QLoRA", 2, 0.25, None, "not offered (bitsandbytes 4 and 8 bit only)",
     {"7B": 4, "14B": 8, "30B": 16, "70B": 24}),
]

UNSLOTH_SOURCE = ("unsloth.ai/docs/get-started/fine-tuning-for-beginners/unsloth-requirements, "
                  "\"Fine-tuning VRAM requirements\" (the absolute minimum)")
# size: (QLoRA 4-bit GB, LoRA 16-bit GB), as published
UNSLOTH: dict[str, tuple[float, float]] = {
    "3B": (3.5, 8), "7B": (5, 19), "8B": (6, 22), "9B": (6.5, 24), "11B": (7.5, 29), "14B": (8.5, 33),
    "27B": (22, 64), "32B": (26, 76), "40B": (30, 96), "70B": (41, 164), "81B": (48, 192), "90B": (53, 212),
    "405B": (237, 950)}
UNSLOTH_METHODS = ({"finetuning_type": "qlora", "quantization_bit": 4}, {"finetuning_type": "lora"})


def ours(size: str, overrides: dict, cutoff: int = CUTOFFS[0]) -> dict[str, Any]:
    """Our planner's figure for one published cell: the per-GPU total and its parts, in bytes."""
    from trainer_core.config import load_config
    from trainer_core.planner import gpu_hardware, load_model_shape, plan

    name = SIZES[size]
    cfg = load_config(None, {**BASE, **overrides, "cutoff_len": cutoff, "model_name_or_path": name})
    p = plan(cfg, gpu_hardware("H100-80GB"), shape=load_model_shape(name, light=True), with_fixes=False)
    parts = p.parts
    return {"model": name, "parameters": p.parameters, "total": p.total,
            "weights": parts["weights"] + parts["adapters"],
            "states": parts["optimizer"] + parts["gradients"] + parts["buffers"] - p.overlap,
            "activations": parts["activations"], "overhead": parts["overhead"]}


def gb(n: float) -> str:
    return f"{n / GB:,.1f}" if n < 100 * GB else f"{n / GB:,.0f}"


def llama_factory_table() -> str:
    sizes = ["7B", "14B", "30B", "70B"]
    lines = ["| method | bits | ours as | " + " | ".join(f"{s}: published / ours (at 2048)" for s in sizes) + " |",
             "|---|---|---|" + "---|" * len(sizes)]
    for method, bits, _, overrides, label, published in LLAMA_FACTORY:
        cells = []
        for size in sizes:
            if overrides is None:
                cells.append(f"{published[size]:g} / n/a")
                continue
            at_1024, at_2048 = ours(size, overrides), ours(size, overrides, CUTOFFS[1])
            cells.append(f"{published[size]:g} / **{gb(at_1024['total'])}** ({gb(at_2048['total'])})")
        lines.append(f"| {method} | {bits} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def breakdown_table(size: str = "7B") -> str:
    """Where our figure for one size goes, beside the published figure and its own rule on our count."""
    lines = [f"| {size} ({SIZES[size]}), method | published | their rule on our parameter count | ours: weights "
             "(+ adapters) | optimizer + gradients (- overlap) | activations | overhead | total |",
             "|---|---|---|---|---|---|---|---|"]
    for method, bits, per_param, overrides, _, published in LLAMA_FACTORY:
        if overrides is None:
            continue
        o = ours(size, overrides)
        lines.append(f"| {method} {bits}-bit | {published[size]:g} | {gb(per_param * o['parameters'])} | "
                     f"{gb(o['weights'])} | {gb(o['states'])} | {gb(o['activations'])} | {gb(o['overhead'])} | "
                     f"**{gb(o['total'])}** |")
    return "\n".join(lines)


def unsloth_table() -> str:
    lines = ["| size | our config | QLoRA 4-bit: published | ours (at 2048) | weights of ours | LoRA 16-bit: published "
             "| ours (at 2048) | weights of ours |", "|---|---|---|---|---|---|---|---|"]
    for size, (qlora, lora) in UNSLOTH.items():
        if size not in SIZES:
            continue
        cells = [size, f"{SIZES[size]} ({ours(size, UNSLOTH_METHODS[1])['parameters'] / 1e9:.2f}B)"]
        for published, overrides in zip((qlora, lora), UNSLOTH_METHODS):
            at_1024, at_2048 = ours(size, overrides), ours(size, overrides, CUTOFFS[1])
            cells += [f"{published:g}", f"**{gb(at_1024['total'])}** ({gb(at_2048['total'])})", gb(at_1024["weights"])]
        lines.append("| " + " | ".join(cells) + " |")
    left_out = [s for s in UNSLOTH if s not in SIZES]
    return "\n".join(lines) + f"\n\nLeft out (no shipped config of that size): {', '.join(left_out)}."


SECTION = "## Planner: published figures vs ours"


def section() -> str:
    return (f"{SECTION}\n\n`python bench/planner_published.py --write` ({time.strftime('%Y-%m-%d')}). "
            "What each tool publishes as the memory a fine-tuning needs, beside what our planner "
            "(`trainer_core/planner.py`) says this trainer needs for the same method and size. The published "
            "tables give no batch, sequence length or checkpointing; ours are planned at batch 1, cutoff_len 1024 "
            "(and 2048 in brackets), gradient checkpointing on (both tools' default), LoRA rank 8 on every "
            "linear layer, bf16, one GPU, with the shipped configs of presets/models/ (see the script's docstring "
            "for why each). GB = 10^9 bytes on both sides.\n\n"
            f"LLaMA-Factory ({LLAMA_FACTORY_SOURCE}):\n\n{llama_factory_table()}\n\n"
            f"Where ours goes, at 7B (cutoff 1024), beside LLaMA-Factory's own rule (18x, 8x, 2x, x, x/2 GB for "
            f"x billion parameters) applied to our parameter count:\n\n{breakdown_table()}\n\n"
            f"Unsloth ({UNSLOTH_SOURCE}):\n\n{unsloth_table()}\n\n"
            + DIFFERENCES)


DIFFERENCES = """Why they differ:

- **The weights' bytes.** LLaMA-Factory's rules are weights x bytes and little else: 2 bytes a
  parameter for LoRA, 1 and 0.5 for 8- and 4-bit QLoRA; Unsloth's LoRA (16-bit) column is 2.2-2.7
  bytes a parameter. This trainer loads LoRA (and full) models in fp32 and autocasts the matmuls
  (`models.load_model`), so its LoRA holds 4 bytes a parameter: 1.7-2.1 times their LoRA figures,
  almost all of it weights. A LoRA over bf16 base weights would halve it; that is a change to the
  trainer, not to the planner.
- **QLoRA's unquantized parameters.** bitsandbytes quantizes the decoder's linear layers only; peft's
  `prepare_model_for_kbit_training` (which this trainer calls) upcasts the rest, embeddings, head and
  norms, to fp32. Qwen's vocabulary is 152k rows: for Qwen2.5-7B the embedding and the head are 1.09B
  parameters, 4.4 GB in fp32, more than its 4-bit decoder (3.4 GB). The published 4-bit figures are
  0.5 (LLaMA-Factory's x/2) and 0.6-0.8 (Unsloth, above 3B) bytes a parameter, about the decoder at
  4 bits and nothing in fp32. So our QLoRA is 1.5-2.2 times theirs at 7-14B, and 1.1-1.3 times at 70B,
  where the decoder dominates.
- **Full tuning.** fp32 weights, gradients and AdamW's two states are 16 bytes a parameter (mixed
  precision), which LLaMA-Factory's 18x rounds up; ours adds the activations (autocast's bf16 copy of
  every weight among them) less what the backward pass frees, and the overhead, so the two agree
  within 5 % at 7B, 14B and 70B; at 30B their 600 GB is 20 bytes a parameter. Their pure-bf16 row
  (8 bytes: bf16 weights, gradients and states) has no counterpart here: under DeepSpeed this trainer
  keeps fp32 master weights and AdamW states (ZeRO's 2 + 2 + 12 bytes, plus the partition's fp32
  gradient), which on one GPU is more than plain mixed precision, not less.
- **What ours adds.** Activations (with checkpointing: each layer's input, one layer's working set and
  the loss's slice of logits; 2 GB for LoRA at 7B, batch 1 x 1024, growing with batch x cutoff, which
  the published tables leave out), and 1 GiB of CUDA context plus 10 % of the activations for the
  allocator. Unsloth's "unsloth" checkpointing moves the kept layer inputs to host memory and its
  fused kernels keep less per layer, so its activations are smaller than ours at any length.
- **Sizes.** Published columns are nominal sizes; ours are real configs (Qwen2.5-32B for LLaMA-Factory's
  30B: 32.8B parameters, 9 % more than 30B).
"""


def write_results() -> None:
    from planner_check import write_section  # bench/ is on sys.path when a bench script runs

    write_section(SECTION, section())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="write the section into bench/RESULTS.md")
    opts = parser.parse_args(argv)
    print(section())
    if opts.write:
        write_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
