"""Real, short trainings through the CLI, on the tiny random model (seconds each)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, current_umask

from trainer_core import runs
from trainer_core.config import load_config

pytestmark = pytest.mark.train


def _common(model, data, out, **extra):
    args = [f"model_name_or_path={model}", f"dataset_dir={data}", f"output_dir={out}", "cutoff_len=96",
            "logging_steps=1", "learning_rate=5e-3", "per_device_train_batch_size=4"]
    return args + [f"{k}={v}" for k, v in extra.items()]


def _log(out):
    return runs.read_log(out)


def test_lora_sft_writes_the_run_folder(cli, tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    result = cli("train", *_common(tiny_model_dir, tiny_data_dir, out, dataset="qa,dialog", max_steps=8,
                                  save_steps=4, val_size=8, eval_steps=4))
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished" and status["exit_code"] == 0 and status["error"] is None
    assert status["pid"] > 0 and status["started_at"] and status["ended_at"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "tokenizer_config.json").is_file()
    # safetensors writes mode 0600; the adapter gets the umask's mode like every other file
    assert (out / "adapter" / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o666 & ~current_umask()
    assert [p.name for p in runs.checkpoints(out)] == ["checkpoint-4", "checkpoint-8"]
    # run.yaml reloads to the very config that ran.
    assert load_config(out / "run.yaml").output_dir == str(out)
    log = _log(out)
    train = [e for e in log if e["loss"] is not None]
    evals = [e for e in log if e["eval_loss"] is not None]
    assert [e["step"] for e in train] == list(range(1, 9))
    assert [e["step"] for e in evals] == [4, 8]
    rewards = {prefix + name for prefix in ("", "eval_") for name in ("rewards_chosen", "rewards_rejected",
                                                                       "rewards_margin", "rewards_accuracy")}
    keys = {"step", "total_steps", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm",
            "tokens_per_second", "elapsed_seconds", "eta_seconds", "time", *rewards}
    assert all(set(e) == keys for e in log)
    assert all(e[key] is None for e in log for key in rewards)  # preference stages only
    assert all(e["total_steps"] == 8 and e["tokens_per_second"] > 0 for e in log)
    assert train[-1]["loss"] < train[0]["loss"]
    assert "Example input" in (out / "console.log").read_text()
    mix = json.loads((out / "data_mix.json").read_text())  # both datasets whole (concat), less the val split
    assert mix["strategy"] == "concat" and set(mix["records_per_epoch"]) == {"qa", "dialog"}
    assert "train mix: " in (out / "console.log").read_text()


def test_full_finetuning_saves_a_whole_model(cli, tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "full"
    result = cli("train", *_common(tiny_model_dir, tiny_data_dir, out, dataset="qa", finetuning_type="full",
                                  max_steps=4, save_steps=100))
    assert result.returncode == 0, result.stderr[-3000:]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.use_cache is True
    assert (out / "model" / "tokenizer.json").is_file()
    losses = [e["loss"] for e in _log(out) if e["loss"] is not None]
    assert losses[-1] < losses[0]


def test_continued_pretraining_on_raw_text(cli, tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "pt"
    result = cli("train", *_common(tiny_model_dir, tiny_data_dir, out, stage="pt", dataset="corpus",
                                  max_steps=5, save_steps=100))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "records →" in result.stdout and (out / "adapter").is_dir()
    losses = [e["loss"] for e in _log(out) if e["loss"] is not None]
    assert len(losses) == 5 and losses[-1] < losses[0]


def test_sft_packing_trains(cli, tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "packed"
    result = cli("train", *_common(tiny_model_dir, tiny_data_dir, out, dataset="qa", packing="true",
                                  max_steps=3, save_steps=100))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "packed into" in result.stdout


def test_sigterm_saves_a_checkpoint_and_resume_continues(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "abort"
    argv = [sys.executable, "-m", "trainer_core", "train",
            *_common(tiny_model_dir, tiny_data_dir, out, dataset="qa", max_steps=5000, save_steps=100000)]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not [e for e in _log(out) if e["step"] >= 3]:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, output[-2000:]
    status = runs.read_status(out)
    assert status["state"] == "aborted" and "resume" in status["error"]
    checkpoint = runs.newest_checkpoint(out)
    assert checkpoint is not None
    stopped_at = int(checkpoint.name.split("-")[1])
    assert 3 <= stopped_at < 5000

    # Resume with a shorter horizon so the test ends quickly; it must pick up at the saved step.
    cfg = yaml.safe_load((out / "run.yaml").read_text())
    assert cfg["resume_from_checkpoint"] == "auto"
    result = subprocess.run([sys.executable, "-m", "trainer_core", "train", str(out / "run.yaml"),
                             f"max_steps={stopped_at + 3}"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming from {checkpoint} (step {stopped_at})" in result.stdout
    steps = [e["step"] for e in _log(out) if e["loss"] is not None]
    # Steps after the checkpoint that ran before the abort were dropped from the log and redone once.
    assert steps == sorted(set(steps)) and steps[-1] == stopped_at + 3
    assert runs.read_status(out)["state"] == "finished"


def test_resume_reproduces_an_uninterrupted_run(cli, tiny_model_dir, tiny_data_dir, tmp_path):
    """Same data order and same optimizer state after resume: the losses match a straight run."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = dict(dataset="qa", max_steps=8, lr_scheduler_type="constant")
    assert cli("train", *_common(tiny_model_dir, tiny_data_dir, straight, save_steps=100, **common)).returncode == 0
    assert cli("train", *_common(tiny_model_dir, tiny_data_dir, split, save_steps=4, **common)).returncode == 0
    # Throw away everything after checkpoint-4 and run again from it.
    import shutil

    shutil.rmtree(split / "checkpoint-8")
    shutil.rmtree(split / "adapter")
    assert cli("train", *_common(tiny_model_dir, tiny_data_dir, split, save_steps=100, **common)).returncode == 0
    a = [e["loss"] for e in _log(straight) if e["loss"] is not None]
    b = [e["loss"] for e in _log(split) if e["loss"] is not None]
    assert len(a) == len(b) == 8
    assert b == pytest.approx(a, rel=1e-4)


def test_fresh_start_refuses_to_overwrite_checkpoints(cli, tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "keep"
    assert cli("train", *_common(tiny_model_dir, tiny_data_dir, out, dataset="qa", max_steps=2,
                                 save_steps=2)).returncode == 0
    result = cli("train", *_common(tiny_model_dir, tiny_data_dir, out, dataset="qa", max_steps=2,
                                   resume_from_checkpoint="none"))
    assert result.returncode == 2
    assert "already holds checkpoints" in result.stderr and "Traceback" not in result.stderr
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()


def test_a_checkpoint_cut_off_mid_save_is_skipped(cli, tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "cut"
    assert cli("train", *_common(tiny_model_dir, tiny_data_dir, out, dataset="qa", max_steps=2,
                                 save_steps=2)).returncode == 0
    broken = out / "checkpoint-3"
    broken.mkdir()
    (broken / "adapter_model.safetensors").write_bytes(b"half")
    result = cli("train", *_common(tiny_model_dir, tiny_data_dir, out, dataset="qa", max_steps=4, save_steps=2))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "checkpoint-3 is incomplete" in result.stdout
    assert f"Resuming from {out / 'checkpoint-2'}" in result.stdout


def _imported_modules(console_log: Path) -> set[str]:
    """Module names from `python -X importtime` lines ("import time: self | cumulative | name").
    A refused import is listed too, so callers look for a package's submodules."""
    return {line.rsplit("|", 1)[1].strip() for line in console_log.read_text().splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def test_a_lora_job_never_imports_bitsandbytes(cli, tiny_model_dir, tiny_data_dir, tmp_path):
    # peft imports bitsandbytes whenever it is installed, over a second of every job's start;
    # transformers imports scipy.optimize for object-detection losses, half a second.
    out = tmp_path / "lora"
    result = cli("train", *_common(tiny_model_dir, tiny_data_dir, out, dataset="qa", max_steps=1, save_steps=100),
                 env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    imported = _imported_modules(out / "console.log")
    assert "peft" in imported and "torch" in imported
    assert not [name for name in imported if name.startswith(("bitsandbytes.", "scipy."))]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_qlora_4bit_trains(cli, tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "qlora"
    result = cli("train", *_common(tiny_model_dir, tiny_data_dir, out, dataset="qa", finetuning_type="qlora",
                                  max_steps=3, save_steps=100), env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bitsandbytes.nn" in _imported_modules(out / "console.log")
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8
    assert Path(out / "adapter" / "adapter_model.safetensors").is_file()


def test_report_to_tensorboard_and_offline_wandb(cli, tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "tb"
    result = cli("train", *_common(tiny_model_dir, tiny_data_dir, out, dataset="qa", max_steps=2, save_steps=100,
                                  report_to="tensorboard"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(out.rglob("events.out.tfevents.*"))
    out = tmp_path / "wandb"
    env = {"WANDB_API_KEY": "", "WANDB_MODE": ""}
    result = cli("train", *_common(tiny_model_dir, tiny_data_dir, out, dataset="qa", max_steps=2, save_steps=100,
                                  report_to="wandb"), env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list((out / "wandb").glob("offline-run-*"))


def test_one_process_seeing_several_gpus_never_gets_data_parallel(tiny_model_dir, monkeypatch, tmp_path, capsys):
    """The plain python launcher on a host with several GPUs (num_gpus <= 1, no
    CUDA_VISIBLE_DEVICES): the Trainer would wrap the model in nn.DataParallel, whose replicas
    break the lean layers and the trained-rows loss. Training uses one device instead."""
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from trainer_core import train

    cfg = load_config(None, {"model_name_or_path": str(tiny_model_dir)})
    real = TrainingArguments.__post_init__

    def sees_two_gpus(self):  # what _setup_devices reports on such a host
        real(self)
        self._n_gpu = 2

    monkeypatch.setattr(TrainingArguments, "__post_init__", sees_two_gpus)
    args = train.build_training_arguments(cfg, tmp_path, has_eval=False)
    assert args.n_gpu == 1 and "training on the first only" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = train.make_trainer(model=model, args=args)
    assert not isinstance(trainer._wrap_model(trainer.model), torch.nn.DataParallel)


def test_streaming_trains_without_preparing_and_arrow_trains_from_its_shards(cli, tiny_model_dir, tiny_data_dir,
                                                                              tmp_path):
    out = tmp_path / "streamed"
    result = cli("train", *_common(tiny_model_dir, tiny_data_dir, out, dataset="qa:0.7,dialog:0.3", streaming="true",
                                  max_steps=3, save_steps=100))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "qa: streamed from 1 file(s)" in result.stdout and "Training on streamed data, 3 steps" in result.stdout
    assert [e["step"] for e in _log(out) if e["loss"] is not None] == [1, 2, 3]
    out = tmp_path / "arrow"
    result = cli("train", *_common(tiny_model_dir, tiny_data_dir, out, stage="pt", dataset="corpus",
                                  data_engine="arrow", max_steps=3, save_steps=100),
                 env={"QIHUANG_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data: Arrow path (data_engine arrow)" in result.stdout and "corpus: 60 records →" in result.stdout
    losses = [e["loss"] for e in _log(out) if e["loss"] is not None]
    assert len(losses) == 3 and losses[-1] < losses[0]
