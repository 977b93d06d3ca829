"""The planner against measurement on this CPU: peak RSS growth of real training steps.

    python bench/planner_check.py                  # the full sweep, a table on stdout
    python bench/planner_check.py --write          # ... and into bench/RESULTS.md ("Planner: predicted vs measured")
    python bench/planner_check.py --cases lora-b2-t128 full-b2-t128 --json   # chosen cases, JSON (the test uses it)

Each case trains the built-in model (SmolLM2-135M) for a few real steps through the trainer's own
functions (config, tokenizer, data with packing, `models.load_model`, `train.make_trainer`) on the
bundled pre-training corpus, so every micro-batch is per_device_train_batch_size x cutoff_len
tokens. What is measured is what a step adds to the process once the model is loaded and the
Trainer built: the peak resident set (VmHWM, reset through /proc/self/clear_refs just before
`trainer.train()`) minus the resident set at that moment. The planner's figure for the same
config is `Plan.step_growth` (optimizer states, gradients and activations at the peak).

This process imports torch once and forks one child per case, so cases do not share an allocator.
Two settings make the figure the planner's, not the machine's:
- --allocator mmap (the default) fixes glibc's mmap threshold at 64 KiB (MALLOC_MMAP_THRESHOLD_), so
  a freed tensor leaves the resident set at once and the peak RSS is the peak of live memory. With
  glibc's own dynamic threshold (--allocator glibc) freed activations stay in the heap and later
  steps' peaks climb over them; jobs run on tcmalloc (--allocator tcmalloc), which keeps freed
  pages too. Both are shown in bench/RESULTS.md beside the mmap figures.
- --threads 1 (the default): on a loaded 2-core machine two OpenMP threads wait on each other and a
  step runs five times slower; memory is the same either way.
The weights are read once before the baseline: they are memory-mapped from the safetensors file
and would otherwise become resident during the first forward pass and count as the step's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MIB = 2**20
STEPS = 2  # the first step makes the optimizer states; the second step's peaks hold them
# name -> config overrides. Pre-training with packing: every row is exactly cutoff_len tokens.
CASES: dict[str, dict] = {
    "lora-b2-t128": {"finetuning_type": "lora", "per_device_train_batch_size": 2, "cutoff_len": 128},
    "lora-b2-t128-gc": {"finetuning_type": "lora", "per_device_train_batch_size": 2, "cutoff_len": 128,
                        "gradient_checkpointing": True},
    "lora-b4-t64": {"finetuning_type": "lora", "per_device_train_batch_size": 4, "cutoff_len": 64},
    "full-b2-t64": {"finetuning_type": "full", "per_device_train_batch_size": 2, "cutoff_len": 64},
    "qlora-b2-t128": {"finetuning_type": "qlora", "per_device_train_batch_size": 2, "cutoff_len": 128},
    "full-b2-t64-gc": {"finetuning_type": "full", "per_device_train_batch_size": 2, "cutoff_len": 64,
                       "gradient_checkpointing": True},
    "lora-b4-t256": {"finetuning_type": "lora", "per_device_train_batch_size": 4, "cutoff_len": 256},
    "lora-b4-t256-gc": {"finetuning_type": "lora", "per_device_train_batch_size": 4, "cutoff_len": 256,
                        "gradient_checkpointing": True},
    "lora-b4-t256-bf16": {"finetuning_type": "lora", "per_device_train_batch_size": 4, "cutoff_len": 256,
                          "bf16": True},
    "lora-r64-b4-t256": {"finetuning_type": "lora", "per_device_train_batch_size": 4, "cutoff_len": 256,
                         "lora_rank": 64, "lora_alpha": 128},
    "full-b2-t128": {"finetuning_type": "full", "per_device_train_batch_size": 2, "cutoff_len": 128},
    "full-b2-t128-gc": {"finetuning_type": "full", "per_device_train_batch_size": 2, "cutoff_len": 128,
                        "gradient_checkpointing": True},
    "full-b4-t256": {"finetuning_type": "full", "per_device_train_batch_size": 4, "cutoff_len": 256},
    "full-b4-t256-bf16": {"finetuning_type": "full", "per_device_train_batch_size": 4, "cutoff_len": 256,
                          "bf16": True},
}
# The test's cases: LoRA and full, with and without checkpointing, two batch x cutoff sizes.
TEST_CASES = ("lora-b2-t128", "lora-b2-t128-gc", "lora-b4-t64", "full-b2-t64", "full-b2-t64-gc")
BASE = {"stage": "pt", "dataset": "tcm_corpus", "dataset_dir": str(REPO / "data"), "packing": True,
        "learning_rate": 1e-4, "lr_scheduler_type": "constant", "logging_steps": 1, "save_steps": 100000,
        "seed": 42, "num_gpus": 0, "report_to": "none", "max_steps": STEPS}


def case_config(name: str, extra: dict | None = None):
    from trainer_core.config import load_config

    return load_config(None, {**BASE, **CASES[name], **(extra or {})})


def _status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {key: int(re.search(key + r":\s+(\d+)", text).group(1)) * 1024 for key in ("VmRSS", "VmHWM")}


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current RSS


THREADS = [1]
ALLOCATORS = ("mmap", "glibc", "tcmalloc")
MMAP_THRESHOLD = 65536


def allocator_env(allocator: str) -> dict[str, str]:
    """The environment a process needs for `allocator` (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "LD_PRELOAD")}
    if allocator == "mmap":
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    elif allocator == "tcmalloc":
        from trainer_core.jobs import TCMALLOC_PATHS

        found = [p for p in TCMALLOC_PATHS if Path(p).is_file()]
        if not found:
            raise SystemExit("tcmalloc is not installed (apt-get install libgoogle-perftools4)")
        env["LD_PRELOAD"] = found[0]
    env["QIHUANG_PLANNER_ALLOCATOR"] = allocator
    return env


def measure_here(name: str, workdir: Path) -> dict:
    """Train case `name` in this process and return its figures (run in a fresh child)."""
    import torch

    from trainer_core.models import default_model_dir, load_model, load_tokenizer
    from trainer_core.tokenization import SupervisedCollator
    from trainer_core.train import build_training_arguments, load_training_data, make_trainer

    run_dir = workdir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = case_config(name, {"output_dir": str(run_dir)})
    quiet = lambda *a: None  # noqa: E731
    model_path = str(default_model_dir())
    tokenizer = load_tokenizer(model_path)
    samples, _ = load_training_data(cfg, tokenizer, quiet)
    torch.manual_seed(cfg.seed)
    before_model = _status()["VmRSS"]
    model = load_model(cfg, model_path, tokenizer, quiet)
    with torch.no_grad():  # page the memory-mapped weights in: they are the weights', not the step's
        for param in model.parameters():
            param.sum()
    after_model = _status()["VmRSS"]
    args = build_training_arguments(cfg, run_dir, has_eval=False)
    args.save_strategy = "no"  # a checkpoint's serialisation is not a training step
    collator = SupervisedCollator(tokenizer.pad_token_id)
    first = collator(samples[: cfg.micro_batch()])
    restarts = int((first["position_ids"][:, 1:] == 0).sum()) if "position_ids" in first else 0
    trainer = make_trainer(model=model, args=args, train_dataset=samples, processing_class=tokenizer,
                           data_collator=collator)
    trainer.remove_callback(__import__("transformers").trainer_callback.PrinterCallback)
    start = _status()["VmRSS"]
    _reset_peak()
    began = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - began
    peak = _status()["VmHWM"]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"case": name, "growth": peak - start, "rss_before_step": start, "model_rss": after_model - before_model,
            "weights": weights, "seconds": seconds, "steps": STEPS, "batch_shape": list(first["input_ids"].shape),
            "packed_samples_in_first_batch": restarts + int(first["input_ids"].shape[0])}


def measure(names: list[str]) -> list[dict]:
    """Each case in a child forked from this process (torch imported, no tensor made yet)."""
    import torch
    import transformers  # noqa: F401

    torch.set_num_threads(THREADS[0])
    import trainer_core.train  # noqa: F401

    results = []
    with tempfile.TemporaryDirectory(prefix="qihuang-planner-") as tmp:
        for name in names:
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: measure, report through the pipe, leave without cleanup
                os.close(read)
                try:
                    payload = json.dumps(measure_here(name, Path(tmp)))
                except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
                    payload = json.dumps({"case": name, "error": f"{type(exc).__name__}: {exc}"})
                with os.fdopen(write, "w") as fh:
                    fh.write(payload)
                os._exit(0)
            os.close(write)
            with os.fdopen(read) as fh:
                text = fh.read()
            os.waitpid(pid, 0)
            result = json.loads(text) if text else {"case": name, "error": "the child died without a result"}
            if "error" in result:
                raise RuntimeError(f"{name}: {result['error']}")
            results.append(result)
    return results


def predict(name: str) -> dict:
    """The planner's figures for the case on this CPU."""
    from trainer_core.planner import cpu_hardware, plan

    p = plan(case_config(name), cpu_hardware())
    return {"growth": p.step_growth, "weights": p.parts["weights"] + p.parts["adapters"],
            "activations": p.parts["activations"], "gradients": p.parts["gradients"],
            "optimizer": p.parts["optimizer"], "overlap": p.overlap, "step_seconds": p.step_seconds,
            "flops_per_step": p.flops_per_step}


def compare(names: list[str]) -> list[dict]:
    rows = []
    for measured in measure(names):
        predicted = predict(measured["case"])
        rows.append({"case": measured["case"], "predicted": predicted, "measured": measured,
                     "error": predicted["growth"] / measured["growth"] - 1,
                     "achieved_flops": predicted["flops_per_step"] * measured["steps"] / measured["seconds"]})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| case | config | predicted step growth | measured (peak RSS growth) | error | of which activations "
             "(predicted) | weights (planner / tensors) | s/step | achieved GFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        p, m = row["predicted"], row["measured"]
        conf = ", ".join(f"{k}={v}" for k, v in CASES[row["case"]].items())
        lines.append(f"| {row['case']} | {conf} | {p['growth'] / MIB:,.0f} MiB | {m['growth'] / MIB:,.0f} MiB | "
                     f"{row['error']:+.1%} | {p['activations'] / MIB:,.0f} MiB | {p['weights'] / MIB:,.0f} / "
                     f"{m['weights'] / MIB:,.0f} MiB | {m['seconds'] / m['steps']:.2f} | "
                     f"{row['achieved_flops'] / 1e9:.0f} |")
    return "\n".join(lines)


SECTION = "## Planner: predicted vs measured"


ALLOCATOR_CASES = ("lora-b4-t256", "full-b2-t64")


def other_allocators() -> list[tuple[str, list[dict]]]:
    """ALLOCATOR_CASES under glibc's own dynamic mmap threshold and under tcmalloc (as jobs run),
    each in a process of its own."""
    import subprocess

    out = []
    for allocator in ("glibc", "tcmalloc"):
        result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--json", "--allocator", allocator,
                                 "--threads", str(THREADS[0]), "--cases", *ALLOCATOR_CASES],
                                capture_output=True, text=True, check=True)
        out.append((allocator, json.loads(result.stdout.strip().splitlines()[-1])))
    return out


def write_results(rows: list[dict], allocators: list[tuple[str, list[dict]]]) -> None:
    """Replace (or append) the section of bench/RESULTS.md."""
    import platform

    from trainer_core.planner import CPU_MFU, cpu_hardware

    hardware = cpu_hardware()
    achieved = [row["achieved_flops"] / hardware.peak_flops for row in rows]
    body = (f"{SECTION}\n\n`python bench/planner_check.py --write` ({time.strftime('%Y-%m-%d')}, "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, the built-in SmolLM2-135M, "
            f"pre-training with packing on data/tcm_corpus.txt, {STEPS} steps per case, fp32 unless bf16 is named). "
            "Predicted: `trainer_core.planner.plan(...).step_growth` (optimizer states + gradients + activations - "
            "the overlap of activations and gradients). Measured: peak RSS during `trainer.train()` minus RSS just "
            "before it (VmHWM reset through /proc/self/clear_refs), one forked process per case, glibc malloc with its "
            "mmap threshold fixed at 64 KiB (so freed tensors leave the resident set at once: the peak of live "
            "memory).\n\n"
            + table(rows) + "\n\n"
            f"Utilisation of the planner's CPU peak ({hardware.peak_flops / 1e9:.0f} GFLOP/s): "
            f"{min(achieved):.0%}-{max(achieved):.0%} (the planner assumes {CPU_MFU:.0%}; one torch thread per case "
            "against a peak that counts both cores, on a machine shared with other jobs: the time figures are a "
            "floor, not a calibration).\n")
    mmap = {row["case"]: row for row in rows}
    if allocators:
        body += ("\nThe same steps under the allocators that keep freed memory: glibc with its own dynamic mmap "
                 "threshold, and tcmalloc (what jobs run with). Their peak RSS is the live peak plus what the "
                 "allocator kept of earlier steps' freed memory; in brackets the planner's error against each:\n\n"
                 "| case | predicted | mmap (live) | "
                 + " | ".join(name for name, _ in allocators) + " |\n|---|---|---|" + "---|" * len(allocators) + "\n")
        for case in ALLOCATOR_CASES:
            live = mmap.get(case)
            cells = [f"{r['measured']['growth'] / MIB:,.0f} MiB ({r['error']:+.0%})"
                     for _, results in allocators for r in results if r["case"] == case]
            body += (f"| {case} | {predict(case)['growth'] / MIB:,.0f} MiB | "
                     + (f"{live['measured']['growth'] / MIB:,.0f} MiB ({live['error']:+.0%})" if live else "-")
                     + " | " + " | ".join(cells) + " |\n")
    write_section(SECTION, body)


def write_section(heading: str, body: str) -> None:
    """bench/RESULTS.md with the section that starts at `heading` replaced by `body` (up to the next
    '## ' heading), or `body` appended when there is none yet."""
    path = REPO / "bench" / "RESULTS.md"
    text = path.read_text(encoding="utf-8")
    if heading in text:
        start = text.index(heading)
        rest = text[start + len(heading):]
        end = rest.find("\n## ")
        text = text[:start] + body + (rest[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    parser.add_argument("--allocator", choices=ALLOCATORS, default="mmap")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case")
    opts = parser.parse_args(argv)
    if os.environ.get("QIHUANG_PLANNER_ALLOCATOR") != opts.allocator:  # the allocator is chosen at exec
        env = allocator_env(opts.allocator)
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], env)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    THREADS[0] = opts.threads
    rows = compare(opts.cases)
    print(json.dumps(rows) if opts.json else table(rows), flush=True)
    if opts.write:
        write_results(rows, other_allocators() if opts.allocator == "mmap" else [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
