"""The learning-rate range test (Leslie Smith, "Cyclical Learning Rates for Training Neural
Networks", 2017; popularised by fastai's `lr_find`): train a run config for a few dozen optimizer
steps while the learning rate grows exponentially from `start_lr` to `end_lr`, and read the loss
against the learning rate.

The test trains exactly as a run would: `train.build_trainer` builds the model (LoRA, QLoRA or
full), tokenizer, template, data and Trainer from the run config, with these changes only
(`test_config`): `max_steps` = num_steps, `logging_steps` 1 (one loss per step, the Trainer's own
logged loss), no evaluation, no checkpoint, no resume, no warm-up, and fewer records
(`records_per_dataset`). The learning rate of step i (0-based) of n is
start_lr x (end_lr / start_lr) ^ (i / (n - 1)). Nothing is saved but the job folder's files; the
weights are thrown away.

The rule, `suggest` (what this module implements; it is not a copy of fastai's code):

- smoothed loss: a bias-corrected exponential moving average of the per-step losses,
  s_i = m_i / (1 - beta^(i+1)), m_i = beta m_(i-1) + (1 - beta) loss_i (fastai's Recorder smooths
  the same way, with beta 0.98 over 100 steps; 40 steps want less lag: beta 0.6 by default);
- the test stops early once the smoothed loss is more than 4 times its lowest value so far (the
  rule of fastai's LRFinder), or a loss is not a number;
- suggestion: among the segments between consecutive kept points, from the (n // 10)-th point
  (the first tenth is left out, as fastai's `lr_find` leaves it out; fastai also drops the last 5
  points, where this rule stops at the lowest smoothed loss instead) up to the point of the lowest
  smoothed loss, the one whose slope d(smoothed loss) / d(log10 lr) is the most negative; the
  suggestion is the learning rate at its start. This is the idea of fastai's `steep` suggestion,
  not of its default `valley` one;
- no suggestion, and the reason, when fewer than 3 finite losses were logged, or the lowest
  smoothed loss lies less than 1 % below the first kept one (a flat curve: nothing was learned
  at any tested rate).

A suggestion, not a guarantee: the steepest descent is usually a learning rate that trains fast
and stays stable, but the range test sees a few dozen steps only.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from pathlib import Path
from typing import Any

from trainer_core import runs
from trainer_core.config import TrainConfig, load_config
from trainer_core.jobconfig import LrFindConfig, checked

RESULT_FILE = "lr_find.json"
PLOT_FILE = "lr_find.png"
DIVERGENCE_FACTOR = 4.0  # stop once the smoothed loss is this many times its lowest value
MIN_RELATIVE_DROP = 0.01  # a smoothed loss that never falls by 1 % of its start is a flat curve
ABORTED_EXIT_CODE = 143


def rule_text(beta: float) -> str:
    """The suggestion rule in one sentence, as lr_find.json and the page state it."""
    return (f"steepest descent of the smoothed loss: the learning rate at the start of the segment with the most "
            f"negative slope of the smoothed loss (bias-corrected exponential moving average, beta {beta:g}) against "
            f"log10(learning rate), between the first tenth of the steps and the lowest smoothed loss")


def lr_schedule(start_lr: float, end_lr: float, num_steps: int) -> list[float]:
    """The learning rate of each step: exponential growth from start_lr to end_lr."""
    return [lr_at(step, start_lr, end_lr, num_steps) for step in range(num_steps)]


def lr_at(step: int, start_lr: float, end_lr: float, num_steps: int) -> float:
    return start_lr * (end_lr / start_lr) ** (step / max(num_steps - 1, 1))


def smooth(losses: list[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average (beta 0: the losses themselves). A loss that is
    not a number makes every later value not a number."""
    out, mean = [], 0.0
    for i, loss in enumerate(losses):
        mean = beta * mean + (1 - beta) * loss
        out.append(mean / (1 - beta ** (i + 1)))
    return out


def diverged(smoothed: list[float]) -> str | None:
    """Why the test should stop now, or None: the newest smoothed loss is not a number, or is more
    than DIVERGENCE_FACTOR times the lowest so far."""
    if not smoothed:
        return None
    last = smoothed[-1]
    if not math.isfinite(last):
        return "the loss is not a number"
    lowest = min(smoothed)
    if lowest > 0 and last > DIVERGENCE_FACTOR * lowest:
        return f"the smoothed loss {last:.4g} is over {DIVERGENCE_FACTOR:g}x its lowest value {lowest:.4g}"
    return None


def suggest(lrs: list[float], losses: list[float], beta: float) -> dict[str, Any]:
    """The suggestion of the module docstring's rule: {"learning_rate", "index", "loss", "reason"}
    (reason: why there is none, else None), and the smoothed losses it was read from."""
    finite = 0
    while finite < len(losses) and losses[finite] is not None and math.isfinite(losses[finite]):
        finite += 1
    kept_lrs, kept = lrs[:finite], losses[:finite]  # up to the first loss that is not a number
    smoothed = smooth(kept, beta)
    none: dict[str, Any] = {"learning_rate": None, "index": None, "loss": None, "smoothed": smoothed}
    if finite < 3:
        what = "the first step's loss was not a number" if finite == 0 else f"only {finite} finite loss(es) logged"
        return {**none, "reason": f"no suggestion: {what}; too few points to read a slope"}
    first = len(kept) // 10
    lowest = min(range(first, len(smoothed)), key=smoothed.__getitem__)
    if smoothed[lowest] > smoothed[first] * (1 - MIN_RELATIVE_DROP) or lowest == first:
        return {**none, "reason": f"no suggestion: the smoothed loss never fell {100 * MIN_RELATIVE_DROP:g}% below "
                                  f"its start ({smoothed[first]:.4g}) between {kept_lrs[first]:.1e} and "
                                  f"{kept_lrs[-1]:.1e}: a flat curve; try a wider range (end_lr) or more steps"}
    widths = [math.log10(kept_lrs[i + 1]) - math.log10(kept_lrs[i]) for i in range(first, lowest)]
    slopes = [(smoothed[i + 1] - smoothed[i]) / width if width > 0 else 0.0  # a rate that did not grow: no slope
              for i, width in zip(range(first, lowest), widths)]
    steepest = first + min(range(len(slopes)), key=slopes.__getitem__)
    return {"learning_rate": kept_lrs[steepest], "index": steepest, "loss": smoothed[steepest], "smoothed": smoothed,
            "reason": None}


# ---- the job ---------------------------------------------------------------------------------

def records_per_dataset(cfg: LrFindConfig, run: TrainConfig) -> int:
    """The test's max_samples: its own, else enough records for a new batch every step (the run's
    max_samples when that is fewer)."""
    if cfg.max_samples:
        return cfg.max_samples
    needed = cfg.num_steps * run.micro_batch() * run.gradient_accumulation_steps
    return min(needed, run.max_samples) if run.max_samples else needed


def test_config(run: TrainConfig, cfg: LrFindConfig, job_dir: Path) -> TrainConfig:
    """The run config as the test trains it (module docstring): everything that shapes a step kept."""
    return dataclasses.replace(
        run, output_dir=str(job_dir), max_steps=cfg.num_steps, learning_rate=cfg.start_lr,
        lr_scheduler_type="constant", warmup_steps=0, warmup_ratio=0.0, logging_steps=1, val_size=0.0,
        eval_dataset="", eval_steps=None, resume_from_checkpoint="none", report_to="none",
        save_steps=cfg.num_steps + 1, max_samples=records_per_dataset(cfg, run))


def run_lr_find(cfg: LrFindConfig, log=print) -> dict[str, Any]:
    """Run the test in this process (the job's body): train, write lr_find.json and lr_find.png into
    cfg.job_dir, return the result. SIGTERM stops it after the current step, with what it has."""
    cfg = checked(cfg)
    job_dir = Path(cfg.job_dir or ".")
    run = test_config(load_config(cfg.run_config), cfg, job_dir)
    from trainer_core.train import AbortRequested, _StopFlag, build_trainer

    log(f"LR range test: {cfg.num_steps} steps, learning rate {cfg.start_lr:.1e} -> {cfg.end_lr:.1e} "
        f"(x{(cfg.end_lr / cfg.start_lr) ** (1 / (cfg.num_steps - 1)):.3g} a step), at most {run.max_samples} "
        f"records of each dataset; {run.finetuning_type} on {run.model_name_or_path}")
    stop = _StopFlag()
    previous = signal.signal(signal.SIGTERM, stop.handle)
    started = time.time()
    watcher = _DivergenceWatch(cfg.smooth_beta, stop)
    try:
        trainer, _ = build_trainer(run, job_dir, stop, log, fresh=True,
                                   arguments={"save_strategy": "no", "logging_nan_inf_filter": False})
        _grow_learning_rate(trainer, cfg)
        trainer.add_callback(watcher.callback())
        stop.training = True
        if not stop.requested:
            trainer.train()
        stop.training = False
    except AbortRequested:
        pass  # SIGTERM before the first step: the result says so (no steps)
    finally:
        signal.signal(signal.SIGTERM, previous)
    stopped = watcher.reason or ("stopped by request (SIGTERM)" if stop.requested else None)
    result = write_result(job_dir, cfg, run, runs.read_log(job_dir), stopped, time.time() - started)
    if stopped:
        log(stopped)
    log(summary_line(result))
    if stop.requested:
        runs.update_status(job_dir, state="aborted", exit_code=ABORTED_EXIT_CODE, ended_at=runs.now_iso(),
                           error="Stopped by request (SIGTERM); lr_find.json holds the steps done.")
    return result


def _grow_learning_rate(trainer: Any, cfg: LrFindConfig) -> None:
    """The Trainer's scheduler replaced by the exponential growth (its base learning rate is
    start_lr). Set where the Trainer (and DeepSpeed's init) ask for a scheduler."""
    from torch.optim.lr_scheduler import LambdaLR

    ratio, last = cfg.end_lr / cfg.start_lr, max(cfg.num_steps - 1, 1)

    def create_scheduler(num_training_steps: int, optimizer: Any = None) -> Any:  # noqa: ARG001 - Trainer's signature
        if trainer.lr_scheduler is None:
            trainer.lr_scheduler = LambdaLR(optimizer or trainer.optimizer, lambda step: ratio ** (step / last))
        return trainer.lr_scheduler

    trainer.create_scheduler = create_scheduler


class _DivergenceWatch:
    """Reads each logged loss; stops the Trainer when the smoothed loss diverges (`diverged`)."""

    def __init__(self, beta: float, stop: Any) -> None:
        self.beta, self.stop = beta, stop
        self.losses: list[float] = []
        self.reason: str | None = None

    def callback(self) -> Any:
        from transformers import TrainerCallback

        watch = self

        class Watch(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if not logs or "loss" not in logs or "train_loss" in logs:
                    return
                watch.losses.append(float(logs["loss"]))
                why = diverged(smooth(watch.losses, watch.beta))
                if why and state.global_step < state.max_steps:
                    watch.reason = f"stopped early at step {state.global_step}: {why}"
                    control.should_training_stop = True
                if watch.stop.requested:
                    control.should_training_stop = True

        return Watch()


def write_result(job_dir: Path, cfg: LrFindConfig, run: TrainConfig, entries: list[dict], stopped: str | None,
                 seconds: float) -> dict[str, Any]:
    """lr_find.json and lr_find.png from the steps logged in trainer_log.jsonl (the Trainer's own
    per-step loss and learning rate)."""
    steps = [e for e in entries if e.get("loss") is not None and e.get("learning_rate") is not None]
    lrs = [float(e["learning_rate"]) for e in steps]
    losses = [float(e["loss"]) for e in steps]
    found = suggest(lrs, losses, cfg.smooth_beta)
    result = {
        "suggestion": found["learning_rate"], "suggestion_index": found["index"], "no_suggestion": found["reason"],
        "rule": rule_text(cfg.smooth_beta), "lrs": lrs, "losses": [_number(x) for x in losses],
        "smoothed_losses": [_number(x) for x in found["smoothed"]], "steps": [e["step"] for e in steps],
        "stopped_early": stopped is not None, "stop_reason": stopped, "seconds": round(seconds, 1),
        "lr_find": dataclasses.asdict(cfg),
        "run": {k: getattr(run, k) for k in ("model_name_or_path", "stage", "finetuning_type", "template",
                                             "dataset", "cutoff_len", "per_device_train_batch_size",
                                             "gradient_accumulation_steps", "bf16", "fp16", "deepspeed",
                                             "max_samples")},
        "time": runs.now_iso(),
    }
    runs.write_json_atomic(job_dir / RESULT_FILE, result)
    write_plot(result, job_dir / PLOT_FILE)
    return result


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def summary_line(result: dict[str, Any]) -> str:
    """The suggestion as the CLI prints it."""
    if result.get("suggestion") is None:
        return result.get("no_suggestion") or "no suggestion"
    return (f"suggested learning_rate {result['suggestion']:.1e} (steepest descent of the smoothed loss; "
            "a suggestion, not a guarantee)")


def draw(ax: Any, result: dict[str, Any], labels: dict[str, str] | None = None) -> None:
    """The loss against the learning rate on a log axis: each step's loss, the smoothed curve and the
    suggestion. Shared by lr_find.png and the workbench's plot (app/plots.py)."""
    words = {"loss": "loss", "smoothed": "smoothed loss", "lr": "learning rate (log scale)",
             "suggestion": "suggestion", **(labels or {})}
    pairs = [(lr, loss) for lr, loss in zip(result["lrs"], result["losses"]) if loss is not None]
    if pairs:
        ax.plot(*zip(*pairs), "o", markersize=3, alpha=0.45, color="#1f77b4", label=words["loss"])
    smooth_pairs = [(lr, s) for lr, s in zip(result["lrs"], result["smoothed_losses"]) if s is not None]
    if smooth_pairs:
        ax.plot(*zip(*smooth_pairs), "-", linewidth=1.8, color="#1f77b4", label=words["smoothed"], gid="lr-smoothed")
    if result.get("suggestion") is not None:
        index = result["suggestion_index"]
        ax.axvline(result["suggestion"], color="#d62728", linestyle="--", linewidth=1.2, gid="lr-suggestion",
                   label=f"{words['suggestion']} {result['suggestion']:.1e}")
        ax.plot([result["suggestion"]], [result["smoothed_losses"][index]], "o", color="#d62728", markersize=6)
    finite = [s for s in result["smoothed_losses"] if s is not None]
    if pairs and finite:  # the divergence leaves through the top: the descent is what is read here
        lowest = result["smoothed_losses"].index(min(finite))
        before = [loss for _, loss in pairs[:lowest + 1]]
        top, bottom = max(before) * 1.25, min(loss for _, loss in pairs)
        if max(loss for _, loss in pairs) > top > bottom:
            ax.set_ylim(bottom - 0.05 * (top - bottom), top)
    ax.set_xscale("log")
    ax.set_xlabel(words["lr"])
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3, which="both")
    if pairs:
        ax.legend(fontsize=8, frameon=False)


def write_plot(result: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    draw(figure.subplots(), result)
    figure.savefig(path)
