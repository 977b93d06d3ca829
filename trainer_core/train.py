"""The training recipe: config → data → tokens → model → Trainer → adapter or model.

Read top to bottom, `run_training` is the whole workflow. It writes the run folder of
README's "The run folder" (run.yaml, status.json, trainer_log.jsonl, checkpoints, adapter/ or model/).
SIGTERM asks the run to stop: it saves a checkpoint at the end of the current step and exits
with state `aborted`; `resume_from_checkpoint: auto` continues from there.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer_core import runs
from trainer_core.config import TrainConfig, save_config
from trainer_core.errors import UserError
from trainer_core.paths import PRESETS_DIR
from trainer_core.preference import (
    is_preference_stage,
    load_preference_data,
    make_preference_trainer,
    preference_collator,
    reward_entry,
    show_preference_example,
    trainer_arguments,
)
from trainer_core.procs import explain_failure, free_port, register_rank

ABORTED_EXIT_CODE = 143  # 128 + SIGTERM, as a shell reports a process ended by SIGTERM


class AbortRequested(Exception):
    """SIGTERM arrived before training started; nothing to save yet."""


class _StopFlag:
    """Set by the SIGTERM handler; read by the Trainer callback between steps."""

    def __init__(self) -> None:
        self.requested = False
        self.training = False

    def handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.requested = True
        if not self.training:
            raise AbortRequested()


def resolve_resume(cfg: TrainConfig, run_dir: Path) -> str | None:
    if cfg.resume_from_checkpoint == "none":
        return None
    if cfg.resume_from_checkpoint in ("auto", ""):  # "": an emptied field or `null`, i.e. the default
        newest = runs.newest_checkpoint(run_dir)
        return str(newest) if newest else None
    path = Path(cfg.resume_from_checkpoint)
    if not (path / "trainer_state.json").is_file():
        raise UserError(f"resume_from_checkpoint '{path}' is not a complete checkpoint folder "
                        "(no trainer_state.json)")
    return str(path)


def deepspeed_config(name_or_path: str) -> dict:
    """A preset name (z0, z2, z3, z3_offload) or a JSON file → the DeepSpeed config dict."""
    path = Path(name_or_path)
    if not name_or_path.endswith(".json"):
        path = PRESETS_DIR / "deepspeed" / f"{name_or_path}.json"
    if not path.is_file():
        raise UserError(f"DeepSpeed config '{path}' does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"DeepSpeed config '{path}' is not valid JSON: {exc}") from exc


def _single_process_distributed_env() -> None:
    """DeepSpeed needs a process group even for one process; give it one on a free local port
    when no launcher (deepspeed / torchrun) set the usual variables."""
    if "RANK" in os.environ or "LOCAL_RANK" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))


def setup_reporting(cfg: TrainConfig, run_dir: Path) -> None:
    if cfg.report_to == "wandb":
        # With no network, wandb online hangs for minutes; offline unless a key says otherwise.
        if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
            os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        os.environ.setdefault("WANDB_PROJECT", "qihuang")


def build_training_arguments(cfg: TrainConfig, run_dir: Path, has_eval: bool, **overrides: Any) -> Any:
    """The TrainingArguments of a run; `overrides` replace any of them (the LR range test saves nothing)."""
    from transformers import TrainingArguments

    from trainer_core.models import has_cuda, tf32_supported

    kwargs: dict[str, Any] = dict(
        output_dir=str(run_dir),
        per_device_train_batch_size=cfg.micro_batch(),
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps if cfg.warmup_steps > 0 else cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        bf16=cfg.bf16,
        fp16=cfg.fp16,
        use_cpu=not has_cuda(),
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=not sys.stderr.isatty(),
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False if cfg.finetuning_type != "full" else None,
        tf32=True if tf32_supported() else None,
    )
    if has_eval:
        kwargs.update(eval_strategy="steps", eval_steps=cfg.eval_steps or cfg.logging_steps * 10)
    if cfg.deepspeed:
        kwargs["deepspeed"] = deepspeed_config(cfg.deepspeed)
    arguments_class: type = TrainingArguments
    if is_preference_stage(cfg.stage):  # TRL's DPOConfig / KTOConfig: TrainingArguments and the loss's own
        arguments_class, preference_arguments = trainer_arguments(cfg)
        kwargs.update(preference_arguments)
    kwargs.update(overrides)
    return one_device_per_process(arguments_class(**kwargs))


def one_device_per_process(args: Any, log=print) -> Any:
    """One process that sees several GPUs would get nn.DataParallel from the Trainer, whose
    replicas break the lean layers (bound to the first GPU's modules) and the trained-rows loss
    (one batch-wide mask over per-replica slices). Such a process trains on its first GPU only;
    several GPUs are used through torchrun or DeepSpeed (num_gpus)."""
    if args.n_gpu > 1:
        log(f"This process sees {args.n_gpu} GPUs but was started as one process: training on the first only. "
            "Set num_gpus to use them all (torchrun or DeepSpeed, one process per GPU).")
        args._n_gpu = 1  # the Trainer wraps the model in nn.DataParallel exactly when n_gpu > 1
    return args


def make_progress_callback(run_dir: Path, stop: _StopFlag, log=print, save_on_stop: bool = True) -> Any:
    """A TrainerCallback that writes trainer_log.jsonl (its schema: README, "The run folder"), prints one line per
    logging event, and turns a SIGTERM into save-and-stop at the next step boundary (stop only, without
    `save_on_stop`)."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start_time = time.time()
            self.start_step = state.global_step
            self.start_tokens = state.num_input_tokens_seen or 0

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == state.max_steps:
                control.should_log = True  # the final loss is always in the log, whatever logging_steps
            if _any_rank_requested(stop.requested):
                control.should_save = save_on_stop
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if "train_loss" in logs:  # the Trainer's end-of-run summary, not a step
                return
            elapsed = time.time() - self.start_time
            steps_done = max(state.global_step - self.start_step, 0)
            tokens = (state.num_input_tokens_seen or 0) - self.start_tokens
            remaining = max(state.max_steps - state.global_step, 0)
            entry = {
                "step": state.global_step,
                "total_steps": state.max_steps,
                "epoch": round(state.epoch or 0.0, 4),
                "loss": logs.get("loss"),
                "eval_loss": logs.get("eval_loss"),
                "learning_rate": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                **reward_entry(logs),  # stage dpo and kto; None for the others
                "tokens_per_second": round(tokens / elapsed, 2) if elapsed > 0 else None,
                "elapsed_seconds": round(elapsed, 2),
                "eta_seconds": round(elapsed / steps_done * remaining, 1) if steps_done else None,
                "time": runs.now_iso(),
            }
            runs.append_log(run_dir, entry)
            log(format_progress(entry))

    return ProgressCallback()


def _any_rank_requested(requested: bool) -> bool:
    """Every rank must stop at the same step, or the checkpoint save deadlocks."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return requested
    import torch

    flag = torch.tensor([1.0 if requested else 0.0])
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def format_progress(entry: dict) -> str:
    parts = [f"step {entry['step']}/{entry['total_steps']}"]
    for key, label, fmt in (("loss", "loss", ".4f"), ("eval_loss", "eval_loss", ".4f"),
                            ("rewards_margin", "margin", ".3f"), ("rewards_accuracy", "acc", ".2f"),
                            ("eval_rewards_accuracy", "eval_acc", ".2f"),  # preference runs (dpo, kto)
                            ("learning_rate", "lr", ".2e"), ("tokens_per_second", "tok/s", ".0f")):
        if entry.get(key) is not None:
            parts.append(f"{label} {entry[key]:{fmt}}")
    if entry.get("eta_seconds") is not None:
        # Whole seconds, truncated; always H:MM:SS in the log.
        parts.append(f"ETA {runs.format_duration(int(entry['eta_seconds']), always_hours=True)}")
    return "  ".join(parts)


def load_training_data(cfg: TrainConfig, tokenizer: Any, log=print) -> tuple[list[dict], list[dict]]:
    """Datasets → examples → token ids (cached), with a line of statistics for each split."""
    from trainer_core.arrow_data import load_arrow_data, use_arrow
    from trainer_core.config import dataset_mix
    from trainer_core.data import load_datasets, mix_composition
    from trainer_core.models import qihuang_home
    from trainer_core.tokenization import pack_samples, special_token_problems, tokenize_dataset

    if cfg.streaming:
        from trainer_core.arrow_data import stream_arrow_data

        train = stream_arrow_data(cfg, tokenizer, log)
        evals: Any = []
        if cfg.eval_dataset:
            evals = load_training_data(dataclasses.replace(cfg, streaming=False, dataset=cfg.eval_dataset,
                                                           eval_dataset="", val_size=0.0), tokenizer, log)[0]
        return train, evals
    if use_arrow(cfg.data_engine, dataset_mix(cfg.dataset)[0], cfg.dataset_dir, cfg.stage):
        log(f"data: Arrow path (data_engine {cfg.data_engine}): checked and tokenized by worker processes into "
            "memory-mapped files, cached and resumable")
        arrow = load_arrow_data(cfg, tokenizer, log)
        record_mix(cfg, arrow.composition, log)
        for line in arrow.lines:
            log(line)
        return arrow.train, arrow.eval if arrow.eval is not None else []
    train_examples, eval_examples = load_datasets(
        cfg.dataset, cfg.dataset_dir, cfg.stage, max_samples=cfg.max_samples, val_size=cfg.val_size,
        seed=cfg.seed, eval_names=cfg.eval_dataset or None, mix_strategy=cfg.mix_strategy,
        interleave_probs=cfg.interleave_probs)
    record_mix(cfg, mix_composition(train_examples), log)
    cache_dir = qihuang_home() / "cache" / "tokenized"
    splits: list[list] = []
    for name, examples in (("train", train_examples), ("eval", eval_examples)):
        if not examples:
            splits.append([])
            continue
        samples, stats = tokenize_dataset(examples, tokenizer, cfg.stage, cfg.cutoff_len, cache_dir, log,
                                          packing=cfg.resolved_packing())
        special = special_token_problems(examples, tokenizer)
        if special:  # a warning, not a stop: the tokenizer would read this text the same way at inference
            log(f"warning: {len(special)}{'+' if len(special) >= 1000 else ''} {name} record field(s) hold "
                "special-token text (python -m trainer_core data check lists them all); the first:")
            for problem in special[:3]:
                log(f"  - {problem}")
        source = "from cache" if stats.cached else "tokenized"
        log(f"{name}: {stats.records} records → {stats.samples} samples ({source} in {stats.seconds:.2f} s); "
            f"{stats.truncated} truncated to cutoff_len {cfg.cutoff_len}, "
            f"{stats.dropped_no_trainable} dropped with no answer tokens left")
        if stats.system_dropped:
            log(f"warning: the chat template leaves out the system prompt of {stats.system_dropped} {name} "
                "conversation(s) (some templates show it only before the last user turn); the model will not "
                "learn from it there. Choose another template, or put the instruction in the first user turn.")
        if not samples:
            raise UserError(f"no {name} samples left after tokenization: every record's answer lies beyond "
                            f"cutoff_len {cfg.cutoff_len}; raise cutoff_len")
        if cfg.stage == "sft" and cfg.resolved_packing() and name == "train":
            samples = pack_samples(samples, cfg.cutoff_len)
            log(f"train: packed into {len(samples)} blocks of at most {cfg.cutoff_len} tokens")
        splits.append(samples)
    return splits[0], splits[1]


def record_mix(cfg: TrainConfig, counts: dict[str, int], log=print) -> None:
    """What the training split holds of each dataset (`counts`), per epoch: one log line and
    data_mix.json in the run folder (written once, by the main process)."""
    from trainer_core.config import dataset_mix

    total = sum(counts.values()) or 1
    log("train mix: " + ", ".join(f"{name} {n} ({100 * n / total:.0f}%)" for name, n in counts.items()))
    if int(os.environ.get("RANK", "0")) != 0 or not cfg.output_dir:
        return
    names, weights = dataset_mix(cfg.dataset, cfg.interleave_probs)
    strategy = cfg.mix_strategy if weights is None or cfg.mix_strategy != "concat" else "interleave_under"
    runs.write_json_atomic(Path(cfg.output_dir) / runs.MIX_FILE, {
        "strategy": strategy, "weights": dict(zip(names, weights)) if weights else None,
        "records_per_epoch": counts, "total": sum(counts.values())})


def show_example(sample: dict, tokenizer: Any, log=print) -> None:
    """Print one sample as the model sees it, with the trained part marked: template and masking
    mistakes show up here before any compute is spent."""
    from trainer_core.tokenization import IGNORE_INDEX

    ids, labels = sample["input_ids"], sample["labels"]
    trained = tokenizer.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])
    log("Example input:\n" + tokenizer.decode(ids)[:800])
    log("Trained on (label != -100):\n" + trained[:400])


def run_training(cfg: TrainConfig, argv: list[str] | None = None, log=print, run_dir: Path | None = None,
                 auto_line: str | None = None) -> int:
    """Run one training job in this process; returns the exit code. Writes status.json. `run_dir`:
    the folder the caller prepared already (else prepared here, runs.prepare_run_dir). `auto_line`:
    the caller turned per_device_train_batch_size auto into these numbers (jobs.resolve_batch)
    without a launcher of ours; a launched job learns it from runs.AUTO_BATCH_ENV. Either way the
    batch is settled before the first step (settle_auto_batch)."""
    auto = auto_line is not None or os.environ.get(runs.AUTO_BATCH_ENV) == "1"
    run_dir = run_dir or runs.prepare_run_dir(cfg)
    is_main = os.environ.get("RANK", "0") == "0"
    launched = os.environ.get("QIHUANG_LAUNCHED") == "1"
    if is_main and not launched:  # a launcher already wrote these for its job
        save_config(cfg, run_dir / runs.CONFIG_FILE, runs.auto_batch_note(auto_line) if auto_line else "")
        runs.write_command(run_dir, argv or [sys.executable, "-m", "trainer_core", "train"],
                           {k: os.environ[k] for k in runs.RECORDED_ENV if k in os.environ})
        runs.update_status(run_dir, state="running", pid=os.getpid(), pgid=os.getpgid(0),
                           started_at=runs.now_iso(), ended_at=None, exit_code=None, error=None)
    register_rank(run_dir)
    stop = _StopFlag()
    previous_handler = signal.signal(signal.SIGTERM, stop.handle)
    saving_final: Path | None = None  # the adapter/ or model/ folder while it is being written
    try:
        trainer, resume = build_trainer(cfg, run_dir, stop, log, auto=auto)
        stop.training = True
        if stop.requested:
            raise AbortRequested()
        trainer.train(resume_from_checkpoint=resume)
        stop.training = False
        if stop.requested:
            log(f"Stopped by request at step {trainer.state.global_step}; checkpoint saved in {run_dir}")
            _finish(run_dir, is_main, "aborted", ABORTED_EXIT_CODE, "Stopped by request (SIGTERM); "
                    f"resume with resume_from_checkpoint=auto from step {trainer.state.global_step}.")
            return ABORTED_EXIT_CODE
        final_dir = run_dir / ("model" if cfg.finetuning_type == "full" else "adapter")
        trainer.model.config.use_cache = True  # training turned it off; generation wants it back
        saving_final = final_dir
        trainer.save_model(str(final_dir))
        if is_main:
            trainer.processing_class.save_pretrained(str(final_dir))
            runs.honour_umask(final_dir)
        saving_final = None
        if is_main:  # only rank 0 writes it
            log(f"Saved the {'model' if cfg.finetuning_type == 'full' else 'LoRA adapter'} to {final_dir}")
        _finish(run_dir, is_main, "finished", 0, None)
        return 0
    except AbortRequested:
        log("Stopped by request (SIGTERM) before training began; nothing to save.")
        _finish(run_dir, is_main, "aborted", ABORTED_EXIT_CODE, "Stopped by request before training began.")
        return ABORTED_EXIT_CODE
    except BaseException as exc:
        where = None
        if is_main and runs.is_disk_full(exc):
            # Give the space back first (or not even status.json could be written): a checkpoint or
            # final folder cut off by the full disk is deleted, so none is left that looks complete.
            cut = runs.remove_incomplete_checkpoints(run_dir, log, delete=True)
            where = cut[-1] if cut else run_dir
            if saving_final is not None:
                shutil.rmtree(saving_final, ignore_errors=True)
                where = saving_final
        error = explain_failure(exc, where)
        if where is not None:
            newest = runs.newest_checkpoint(run_dir)
            error += (f" The newest complete checkpoint, {newest.name}, is intact; resume from it with "
                      "resume_from_checkpoint=auto." if newest else "")
        _finish(run_dir, is_main, "failed", 2 if isinstance(exc, UserError) else 1, error)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        _leave_process_group()


def _leave_process_group() -> None:
    """Ranks leave their gloo/NCCL group together, then destroy it: a rank that exits while
    another still saves (rank 0 writes the model) can abort in teardown ("terminate called without
    an active exception", SIGABRT) after a run that succeeded. The wait is bounded, for a peer that
    died; after an error in this rank there is no wait at all."""
    from datetime import timedelta

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if sys.exc_info()[0] is None:
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=timedelta(seconds=120))
            else:
                dist.barrier()
        except RuntimeError:  # a peer is gone: nothing left to wait for
            pass
    dist.destroy_process_group()


def _finish(run_dir: Path, is_main: bool, state: str, exit_code: int, error: str | None) -> None:
    if is_main:
        runs.update_status(run_dir, state=state, exit_code=exit_code, error=error, ended_at=runs.now_iso())


def _maybe_recording(collator: Any, run_dir: Path) -> Any:
    """With QIHUANG_RECORD_BATCHES=1 each rank writes a short hash of every sample it trains on to
    ranks/<rank>.samples: how one checks that data-parallel ranks split the data without overlap."""
    if os.environ.get("QIHUANG_RECORD_BATCHES") != "1":
        return collator
    import hashlib

    record = run_dir / "ranks" / f"{os.environ.get('RANK', '0')}.samples"

    def collate(features: list[dict]) -> dict:
        with open(record, "a") as fh:
            for f in features:
                ids = f["input_ids"] if "input_ids" in f else f["chosen_input_ids"]  # a pair: its chosen side
                fh.write(hashlib.sha1(str(ids).encode()).hexdigest()[:12] + "\n")
        return collator(features)

    return collate


def make_trainer(**kwargs: Any) -> Any:
    """A transformers Trainer whose loss computes the output layer only at trained positions, a
    slice of rows at a time (trainer_core/loss.py): the same loss, less arithmetic and memory.
    An architecture that trainer_core.loss does not list trains with the model's own loss."""
    from transformers import Trainer

    from trainer_core.loss import TrainedRowsOnly, trained_rows_path

    path = trained_rows_path(kwargs["model"])
    if path is None:
        trainer = Trainer(**kwargs)
    else:
        class TrainedRowsTrainer(Trainer):
            trained_rows: TrainedRowsOnly

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                self.trained_rows.select(inputs["labels"])
                try:
                    return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                finally:
                    self.trained_rows.clear()

        rows = TrainedRowsOnly(kwargs["model"], fused=path == "fused")
        trainer = TrainedRowsTrainer(compute_loss_func=rows.loss, **kwargs)
        trainer.trained_rows = rows
    trainer.add_callback(_lean_norm_step_callback())
    return trainer


def _lean_norm_step_callback() -> Any:
    """After each optimizer step the lean norms check their (trainable) weights for zeros again."""
    from transformers import TrainerCallback

    from trainer_core.lean_layers import weights_changed

    class LeanNormStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            weights_changed()

    return LeanNormStep()


def build_trainer(cfg: TrainConfig, run_dir: Path, stop: _StopFlag, log, *, fresh: bool = False,
                  arguments: dict[str, Any] | None = None, auto: bool = False) -> tuple[Any, str | None]:
    """Everything before the first step: model files, tokenizer, data, model, Trainer. The one
    recipe for a run and for the LR range test (trainer_core/lr_find.py), which asks for a `fresh`
    start (no checkpoint looked for or resumed, none saved on a stop) and its own TrainingArguments
    (`arguments`, on top of the run's). With `auto` (the batch came from per_device_train_batch_size
    auto) the batch is confirmed on the device (settle_auto_batch)."""
    from trainer_core.models import check_precision, load_model, load_tokenizer, resolve_model_path
    from trainer_core.tokenization import SupervisedCollator, setup_chat_template

    check_precision(cfg.bf16, cfg.fp16)
    setup_reporting(cfg, run_dir)
    if cfg.deepspeed:
        _single_process_distributed_env()
    model_path = resolve_model_path(cfg.model_name_or_path, log)
    tokenizer = load_tokenizer(model_path, cfg.trust_remote_code)
    preference = is_preference_stage(cfg.stage)
    if cfg.stage == "sft" or preference:
        setup_chat_template(tokenizer, cfg.template, log)
    if preference:
        train_samples, eval_samples = load_preference_data(cfg, tokenizer, log, record_mix)
        show_preference_example(train_samples[0], tokenizer, log)
    else:
        train_samples, eval_samples = load_training_data(cfg, tokenizer, log)
        show_example(next(iter(train_samples)), tokenizer, log)

    resume = None
    if not fresh:
        runs.remove_incomplete_checkpoints(run_dir, log)
        resume = resolve_resume(cfg, run_dir)
    if resume:
        step = int(Path(resume).name.split("-")[-1])
        runs.truncate_log_after(run_dir, step)
        log(f"Resuming from {resume} (step {step})")
    elif (run_dir / runs.LOG_FILE).exists():
        (run_dir / runs.LOG_FILE).unlink()  # a fresh start has a fresh log

    args = build_training_arguments(cfg, run_dir, has_eval=bool(eval_samples), **(arguments or {}))
    if cfg.deepspeed:
        # ZeRO-3 partitions the model while it is built, before the Trainer starts DeepSpeed: its
        # communication layer must know the ranks by then (on CPU nothing else initialises it,
        # and the model would be built for a world of one). Reuses the process group above.
        import deepspeed

        deepspeed.init_distributed()
    from transformers import set_seed

    set_seed(cfg.seed)  # LoRA's initial weights are random: the same seed gives the same run
    # A preference trainer adds the adapter itself: its reference is then the model with the adapter
    # off. Given a peft model, TRL would keep a second, frozen "ref" adapter as the reference.
    model = load_model(cfg, model_path, tokenizer, log, wrap=not preference)
    callbacks = [make_progress_callback(run_dir, stop, log, save_on_stop=not fresh)]
    if preference:
        trainer = make_preference_trainer(
            cfg, model=model, args=args, train_samples=train_samples, eval_samples=eval_samples,
            processing_class=tokenizer, callbacks=callbacks,
            data_collator=_maybe_recording(preference_collator(cfg.stage, tokenizer.pad_token_id), run_dir), log=log)
        # The lean layers (models.load_model) are in this model too; the SFT loss (make_trainer) is not.
        trainer.add_callback(_lean_norm_step_callback())
    else:
        trainer = make_trainer(
            model=model,
            args=args,
            train_dataset=train_samples,
            eval_dataset=eval_samples or None,
            processing_class=tokenizer,
            data_collator=_maybe_recording(SupervisedCollator(tokenizer.pad_token_id), run_dir),
            callbacks=callbacks,
        )
    if args.disable_tqdm:
        # Our callback prints one readable line per logging event; the raw dicts would repeat it.
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    if auto:
        cfg = settle_auto_batch(trainer, cfg, train_samples, run_dir, log)
        set_seed(cfg.seed)  # the probe drew on the random state (dropout): the run starts as without it
    if cfg.streaming:
        log(f"Training on streamed data, {cfg.max_steps} steps")
    else:
        steps_per_epoch = math.ceil(len(train_samples) / (cfg.micro_batch() * cfg.gradient_accumulation_steps
                                                          * args.world_size))
        total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.num_train_epochs)
        log(f"Training {len(train_samples)} samples, {steps_per_epoch} steps per epoch, {total} steps in all")
    return trainer, resume


# ---- per_device_train_batch_size auto, confirmed on the device --------------------------------------


def back_off(step: Callable[[int], None], micro: int, per_device: int, release: Callable[[], None],
             log=print) -> int:
    """The largest micro-batch from `micro` down that `step(micro)` runs without
    torch.cuda.OutOfMemoryError: after each out-of-memory the next smaller candidate (about half:
    config.next_smaller_batch, a divisor of `per_device` so that accumulation keeps the global batch),
    with `release()` giving the memory back after every try. 0 when not even 1 runs. Like accelerate's
    find_executable_batch_size (which retries at 0.9 x the batch, and does not adjust accumulation)."""
    import torch

    from trainer_core.config import next_smaller_batch

    while micro > 0:
        failed = False
        try:
            step(micro)
        except torch.cuda.OutOfMemoryError:
            failed = True
        release()  # outside the except block: its traceback holds the failed step's tensors until then
        if not failed:
            return micro
        smaller = next_smaller_batch(micro, per_device)
        log(f"batch probe: {micro} ran out of GPU memory" + (f"; trying {smaller}" if smaller else ""))
        micro = smaller
    return 0


def settle_auto_batch(trainer: Any, cfg: TrainConfig, samples: Any, run_dir: Path, log=print) -> TrainConfig:
    """The batch auto chose, confirmed before the first step. On CUDA (without DeepSpeed) one forward
    and backward of the micro-batch at the longest length the data gives, with the optimizer's states
    (and DDP's gradient buckets) held aside as they will be, backing off on out-of-memory (`back_off`).
    On the CPU there is no out-of-memory error to catch (the kernel ends the process), so the plan
    against the RAM available at launch stands; under DeepSpeed the engine is not built yet, so the
    plan stands too. Several ranks take the smallest of their results (all_reduce MIN), so none trains
    with another batch. A change is written to run.yaml and said on the console."""
    from trainer_core.config import auto_target

    micro = cfg.micro_batch()
    per_device = auto_target(cfg) // cfg.devices()
    why = _no_probe_reason(trainer, cfg)
    if why:
        found = micro
    else:
        found = back_off(_probe_step(trainer, cfg, samples), micro, per_device, _release_memory(trainer), log)
        why = f"one forward and backward at {_probe_length(cfg, samples)} tokens a row fit on the GPU"
    agreed = _smallest_over_ranks(found)
    if agreed == 0:
        raise UserError("per_device_train_batch_size auto: not even a micro-batch of 1 fits in GPU memory; lower "
                        "cutoff_len, turn on gradient_checkpointing, or use deepspeed z3_offload")
    if cfg.deepspeed and agreed != micro:  # its config took the numbers when the arguments were made
        raise UserError("per_device_train_batch_size auto: the ranks planned different batches; start the run "
                        "through python -m trainer_core train, which decides once for every rank")
    if agreed != found:
        why = f"the smallest of the ranks' ({found} here)"
    settled = dataclasses.replace(cfg, per_device_train_batch_size=agreed,
                                  gradient_accumulation_steps=per_device // agreed)
    line = (f"per_device_train_batch_size {agreed}, gradient_accumulation_steps {settled.gradient_accumulation_steps} "
            f"(global batch {auto_target(cfg)}, from auto): {why}")
    log(line)
    if agreed != micro:
        trainer.args.per_device_train_batch_size = agreed
        trainer.args.gradient_accumulation_steps = settled.gradient_accumulation_steps
        trainer._train_batch_size = trainer.args.train_batch_size  # what the Trainer read at its start
        if os.environ.get("RANK", "0") == "0":
            save_config(settled, run_dir / runs.CONFIG_FILE, runs.auto_batch_note(line))
    return settled


def _no_probe_reason(trainer: Any, cfg: TrainConfig) -> str | None:
    """Why the batch is not probed on this device (None: it is)."""
    if trainer.args.device.type != "cuda":
        return ("no probe on the CPU: running out of RAM ends the process, with no error to back off from, so "
                "the plan against the RAM available at launch decides")
    if cfg.deepspeed:
        return "no probe under DeepSpeed (its engine is built when training starts): the plan decides"
    if is_preference_stage(cfg.stage):
        return f"no probe for stage {cfg.stage} (its step is TRL's, with pairs of rows): the plan decides"
    return None


def _probe_length(cfg: TrainConfig, samples: Any) -> int:
    """The longest row a micro-batch of this data can have: cutoff_len for packed or streamed data,
    else the longest sample."""
    if cfg.resolved_packing() or not isinstance(samples, list) or not samples:
        return cfg.cutoff_len
    return max(len(sample["input_ids"]) for sample in samples)


def _probe_step(trainer: Any, cfg: TrainConfig, samples: Any) -> Callable[[int], None]:
    """One training step's memory for `micro` rows, as the Trainer's will be: the model in training
    mode, the trainer's own loss, autocast as accelerate sets it for bf16/fp16, every position trained
    (the plan's assumption), one row a token shorter so the batch is padded (a real batch's mask), and
    AdamW's two fp32 states per trainable parameter held aside (made only at the first step)."""
    import torch

    from trainer_core.tokenization import SupervisedCollator

    model = trainer.model
    collate = SupervisedCollator(trainer.processing_class.pad_token_id)  # not the recording one: no real batch
    length = _probe_length(cfg, samples)
    first = next(iter(samples))
    ids = list(first["input_ids"]) * (length // max(1, len(first["input_ids"])) + 1)
    row: dict[str, list[int]] = {"input_ids": ids[:length], "labels": ids[:length]}
    if "position_ids" in first:  # packed: two samples in the block, so the block-diagonal mask is made
        half = length // 2
        row["position_ids"] = [*range(half), *range(length - half)]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    held = 8 * trainable + (4 * trainable if trainer.args.world_size > 1 else 0)
    dtype = torch.bfloat16 if cfg.bf16 else torch.float16 if cfg.fp16 else None

    def step(micro: int) -> None:
        rows = [row] * micro
        if micro > 1:
            rows[-1] = {key: value[:-1] for key, value in row.items()}
        batch = {k: v.to(trainer.args.device) for k, v in collate(rows).items()}
        optimizer_states = torch.empty(held, dtype=torch.uint8, device=trainer.args.device)
        model.train()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            loss = trainer.compute_loss(model, batch)
        loss.backward()
        del optimizer_states, loss, batch

    return step


def _release_memory(trainer: Any) -> Callable[[], None]:
    def release() -> None:
        import gc

        import torch

        trainer.model.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()

    return release


def _smallest_over_ranks(value: int) -> int:
    """The smallest `value` of all ranks (this one's alone without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    import torch

    found = torch.tensor([value], dtype=torch.long)
    if dist.get_backend() == "nccl":
        found = found.cuda()
    dist.all_reduce(found, op=dist.ReduceOp.MIN)
    return int(found.item())
