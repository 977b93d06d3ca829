"""The planner against a real GPU: peak CUDA memory and step time of real training steps.

    python bench/planner_gpu.py --model DIR [--cases lora-b4-t512 ...] [--out DIR] [--budget S]
    python bench/planner_gpu.py --model DIR --cpu      # one tiny case on this CPU: checks this script

scripts/gpu_check.py runs it on its random Qwen2 of the Qwen2.5-0.5B shape (presets/models/qwen2.5-0.5b)
and puts the table into its report. Each case trains a few real steps through the trainer's own path
(`trainer_core.train.build_trainer`: the config, the model's tokenizer, the data with packing,
`models.load_model`, `train.make_trainer` with its trained-rows loss), on the bundled pre-training
corpus, so every micro-batch is per_device_train_batch_size x cutoff_len tokens, as the planner plans
it. The cases run one after another in this process; before each, the CUDA caching allocator is
emptied and its peak statistics reset.

Like with like. The plan's per-GPU total is the tensors (weights, adapters, optimizer, gradients,
activations, buffers, less the activations freed as gradients are made) plus an `overhead` of a CUDA
context (CUDA_CONTEXT_BYTES) and the caching allocator's slack (ALLOCATOR_SLACK x activations). So:
- plan tensors = total - overhead, against torch.cuda.max_memory_allocated (the live tensors' peak);
- plan tensors + slack = total - the context, against torch.cuda.max_memory_reserved (what the
  allocator holds: the tensors and its fragmentation);
- plan total, against max_memory_reserved + the measured context (device memory used by this process
  before its first tensor, after cuBLAS is loaded: what nvidia-smi shows beyond the allocator).

Time: the plan's FLOPs per step (`Plan.flops_per_step`, the planner's own count) over the measured
seconds per step (median after the first step, CUDA synchronised at each step's end) over the kind's
datasheet peak is the measured MFU. `python -m trainer_core plan ... --mfu planner_gpu.json` then
plans with it (per finetuning_type: the median of its cases).

Writes planner_gpu.json and planner_gpu.md into --out (default: $OUT, else the current folder).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MIB = 2**20
GIB = 2**30
STEPS = 8  # the first is a warm-up (cuBLAS handles, optimizer states); the median of the other seven
# LoRA and full, with and without gradient checkpointing, two batch x cutoff sizes; all bf16.
CASES: dict[str, dict] = {}
for _method in ("lora", "full"):
    for _batch, _cutoff in ((4, 512), (8, 1024)):
        for _gc in (False, True):
            CASES[f"{_method}-b{_batch}-t{_cutoff}" + ("-gc" if _gc else "")] = {
                "finetuning_type": _method, "per_device_train_batch_size": _batch, "cutoff_len": _cutoff,
                "gradient_checkpointing": _gc}
# The CPU mode's one case (a tiny model, two steps: the script's flow, not a measurement).
CPU_CASE = "lora-b2-t64"
CPU_STEPS = 2
CASES[CPU_CASE] = {"finetuning_type": "lora", "per_device_train_batch_size": 2, "cutoff_len": 64}
GPU_CASES = [name for name in CASES if name != CPU_CASE]
BASE = {"stage": "pt", "dataset": "tcm_corpus", "dataset_dir": str(REPO / "data"), "packing": True, "bf16": True,
        "learning_rate": 1e-4, "lr_scheduler_type": "constant", "logging_steps": 1, "save_steps": 100000,
        "seed": 42, "report_to": "none", "resume_from_checkpoint": "none", "val_size": 0}
COLUMNS = ("case", "plan total", "plan tensors", "max allocated", "error", "plan - context", "max reserved",
           "error", "measured context", "s/step", "plan s/step (assumed MFU)", "MFU")


def case_config(name: str, model: str, output_dir: str, steps: int, cpu: bool) -> Any:
    from trainer_core.config import load_config

    return load_config(None, {**BASE, **CASES[name], "model_name_or_path": model, "output_dir": output_dir,
                              "max_steps": steps, "num_gpus": 0 if cpu else 1})


def measure_context() -> int | None:
    """Device memory this process holds beyond the caching allocator once CUDA and cuBLAS are up."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.ones(256, 256, device="cuda", dtype=torch.bfloat16)
    (a @ a).sum().item()  # loads cuBLAS and its workspace
    del a
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    return int(total - free - torch.cuda.memory_reserved())


def step_timer() -> Any:
    """A callback that notes when each optimizer step ends (after the GPU has finished it)."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.began = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

        def seconds_per_step(self) -> float | None:
            times = [b - a for a, b in zip([self.began, *self.ends], self.ends)]
            later = times[1:] or times  # the first step warms up
            return statistics.median(later) if later else None

    return StepTimer()


def measure_case(name: str, model: str, work: Path, steps: int, cpu: bool) -> dict:
    """Train case `name` for `steps` steps through the trainer's own path; its peak memory and step time."""
    import torch

    from trainer_core.train import _StopFlag, build_trainer

    run_dir = work / name
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = case_config(name, model, str(run_dir), steps, cpu)
    gpu = torch.cuda.is_available() and not cpu
    if gpu:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if gpu else 0
    out: dict[str, Any] = {"case": name, "steps": steps}
    trainer = None
    try:
        trainer, _ = build_trainer(cfg, run_dir, _StopFlag(), lambda *a: None)
        trainer.args.save_strategy = "no"  # a checkpoint's serialisation is not a training step
        timer = step_timer()
        trainer.add_callback(timer)
        trainer.train()
        out["seconds_per_step"] = timer.seconds_per_step()
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        out["loss_first"], out["loss_last"] = (losses[0], losses[-1]) if losses else (None, None)
        out["state"] = "finished"
    except torch.cuda.OutOfMemoryError as exc:  # a figure too: the plan said it fits
        out["state"], out["error"] = "out of memory", str(exc).splitlines()[0][:200]
    except Exception as exc:  # noqa: BLE001 - one failing case is reported; the others still run
        first_line = (str(exc).splitlines() or [""])[0][:200]
        out["state"], out["error"] = "failed", f"{type(exc).__name__}: {first_line}"
    if gpu:
        out["max_allocated"] = torch.cuda.max_memory_allocated() - before
        out["max_reserved"] = torch.cuda.max_memory_reserved()
        out["allocated_before"] = before
    del trainer
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
    return out


def planned(name: str, model: str, steps: int, cpu: bool) -> dict:
    """The planner's figures for the case on this machine's hardware (a GPU of the table, or the CPU)."""
    from trainer_core.planner import CUDA_CONTEXT_BYTES, cpu_hardware, detect_hardware, plan

    hardware = cpu_hardware() if cpu else detect_hardware(1)
    p = plan(case_config(name, model, "", steps, cpu), hardware)
    peak = hardware.peak_flops if hardware.gpu is None else hardware.gpu.peak_half_flops
    context = 0 if hardware.gpu is None else CUDA_CONTEXT_BYTES
    return {"kind": hardware.kind, "total": p.total, "tensors": p.total - p.parts["overhead"],
            "total_without_context": p.total - context, "parts": p.parts, "overlap": p.overlap,
            "flops_per_step": p.flops_per_step, "step_seconds": p.step_seconds, "peak_flops": peak,
            "fits": p.fits}


def compare(names: list[str], model: str, steps: int, cpu: bool, deadline: float, write) -> dict:
    """Measure each case, set the plan beside it, and `write` the result after each case (a check cut
    short still leaves what it measured)."""
    import platform

    import torch

    from trainer_core.planner import detect_hardware

    context = None if cpu else measure_context()
    card = (torch.cuda.get_device_name(0) if torch.cuda.is_available() and not cpu
            else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    kind = "CPU" if cpu else detect_hardware(1).kind
    model_config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    result: dict[str, Any] = {"card": card, "kind": kind, "measured_context": context, "steps": steps,
                              "model": model_config, "cases": [], "skipped": [], "mfu": {}}
    with tempfile.TemporaryDirectory(prefix="planner-gpu-") as tmp:
        for name in names:
            if time.time() > deadline:
                result["skipped"].append(name)
                continue
            started = time.time()
            row = {"case": name, "config": {**BASE, **CASES[name], "max_steps": steps},
                   "planned": planned(name, model, steps, cpu), "measured": measure_case(name, model, Path(tmp), steps,
                                                                                        cpu)}
            row["wall_seconds"] = round(time.time() - started, 1)
            _derive(row, context)
            result["cases"].append(row)
            result["mfu"] = measured_mfu_by_method(result["cases"])
            write(result)
            print(f"{name}: {row['measured']['state']} in {row['wall_seconds']} s", flush=True)
    write(result)
    return result


def _derive(row: dict, context: int | None) -> None:
    """Errors of the plan against each measurement, and the measured MFU."""
    p, m = row["planned"], row["measured"]
    if m.get("max_allocated"):
        row["error_allocated"] = p["tensors"] / m["max_allocated"] - 1
        row["error_reserved"] = p["total_without_context"] / m["max_reserved"] - 1
        if context is not None:
            row["error_total"] = p["total"] / (m["max_reserved"] + context) - 1
    if m.get("seconds_per_step"):
        row["mfu"] = p["flops_per_step"] / m["seconds_per_step"] / p["peak_flops"]


def measured_mfu_by_method(rows: list[dict]) -> dict[str, float]:
    """Per finetuning_type, the median measured MFU of its finished cases."""
    by_method: dict[str, list[float]] = {}
    for row in rows:
        if row.get("mfu"):
            by_method.setdefault(row["config"]["finetuning_type"], []).append(row["mfu"])
    return {method: statistics.median(values) for method, values in sorted(by_method.items())}


def markdown(result: dict) -> str:
    def gib(n: float | None) -> str:
        return "n/a" if n is None else f"{n / GIB:.2f}"

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:+.1%}"

    lines = [f"Card: {result['card']} (planned as {result['kind']}); {result['steps']} steps per case; "
             f"measured CUDA context {gib(result['measured_context'])} GiB (the plan assumes 1.00)", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in result["cases"]:
        p, m = row["planned"], row["measured"]
        step = m.get("seconds_per_step")
        reserved_total = (m["max_reserved"] + result["measured_context"]
                          if m.get("max_reserved") is not None and result["measured_context"] is not None else None)
        cells = [row["case"] if m["state"] == "finished" else f"{row['case']} ({m['state']})",
                 gib(p["total"]), gib(p["tensors"]), gib(m.get("max_allocated")), pct(row.get("error_allocated")),
                 gib(p["total_without_context"]), gib(m.get("max_reserved")), pct(row.get("error_reserved")),
                 gib(reserved_total), "n/a" if step is None else f"{step:.3f}", f"{p['step_seconds']:.3f}",
                 "n/a" if row.get("mfu") is None else f"{row['mfu']:.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    leftover = [f"{row['case']} {row['measured']['allocated_before'] / MIB:,.0f} MiB" for row in result["cases"]
                if row["measured"].get("allocated_before", 0) > MIB]
    if leftover:
        lines.append(f"\nAllocated before the case (left by earlier cases; max allocated is counted above it, "
                     f"max reserved is not): {', '.join(leftover)}")
    errors = [f"{row['case']}: {row['measured']['error']}" for row in result["cases"] if row["measured"].get("error")]
    if errors:
        lines.append("\nErrors: " + "; ".join(errors))
    if result["skipped"]:
        lines.append(f"\nSkipped (time budget spent): {', '.join(result['skipped'])}")
    if result["mfu"]:
        lines.append("\nMeasured MFU per finetuning_type (median of its cases; `plan --mfu planner_gpu.json` uses "
                     "it): " + ", ".join(f"{k} {v:.1%}" for k, v in result["mfu"].items()))
    lines.append("\nplan total: the planner's per-GPU total; plan tensors: the total less its overhead (context and "
                 "allocator slack), against `torch.cuda.max_memory_allocated`; plan - context: against "
                 "`max_memory_reserved`; measured context + max reserved: the process's device memory at its peak, "
                 "against the plan total. MFU: the planner's FLOPs per step / measured s/step / the kind's dense "
                 "bf16 peak.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model folder (config.json, weights, tokenizer)")
    parser.add_argument("--cases", nargs="*", choices=list(CASES), default=None)
    parser.add_argument("--cpu", action="store_true", help=f"on this CPU: case {CPU_CASE}, {CPU_STEPS} steps")
    parser.add_argument("--steps", type=int, default=None, help=f"steps per case (default {STEPS})")
    parser.add_argument("--budget", type=float, default=600, help="seconds; cases that would start later are skipped")
    parser.add_argument("--out", default=None, help="folder for planner_gpu.json and planner_gpu.md (default $OUT)")
    opts = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if not opts.cpu and not torch.cuda.is_available():
        print("error: no CUDA device; use --cpu for the CPU mode", file=sys.stderr)
        return 2
    names = opts.cases or ([CPU_CASE] if opts.cpu else GPU_CASES)
    steps = opts.steps or (CPU_STEPS if opts.cpu else STEPS)
    out = Path(opts.out or os.environ.get("OUT") or ".")
    out.mkdir(parents=True, exist_ok=True)

    def write(result: dict) -> None:
        (out / "planner_gpu.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        (out / "planner_gpu.md").write_text(markdown(result), encoding="utf-8")

    result = compare(names, opts.model, steps, opts.cpu, time.time() + opts.budget, write)
    print(markdown(result), flush=True)
    return 0 if result["cases"] and all(r["measured"]["state"] == "finished" for r in result["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
