"""Jobs through the CLI: detached start, list, follow, abort, resume; failures explained;
DeepSpeed ZeRO-2/3 and torchrun with two processes, for real, on the CPU."""

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from trainer_core import jobs, runs


def _args(model, data, out, **extra):
    base = {"model_name_or_path": model, "dataset_dir": data, "output_dir": out, "cutoff_len": 96,
            "logging_steps": 1, "learning_rate": 5e-3, "dataset": "qa"}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _wait_for_step(out: Path, step: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if [e for e in runs.read_log(out) if e["step"] >= step]:
            return
        time.sleep(0.2)
    raise AssertionError(f"no step {step} within {timeout} s:\n" + (out / "console.log").read_text()[-3000:])


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.train
def test_detached_run_list_follow_abort_resume(cli, tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "outputs" / "job"
    started = cli("train", *_args(tiny_model_dir, tiny_data_dir, out, max_steps=100000, save_steps=100000),
                  "--detach")
    assert started.returncode == 0, started.stderr
    assert "runs --follow" in started.stdout
    status = runs.read_status(out)
    assert status["state"] == "running" and status["launcher"] == "python"
    _wait_for_step(out, 2)

    listed = cli("runs", "--root", str(tmp_path / "outputs"))
    assert "running" in listed.stdout and str(out) in listed.stdout

    # A second job on the same devices is refused, naming the running one.
    second = cli("train", *_args(tiny_model_dir, tiny_data_dir, tmp_path / "outputs" / "other", max_steps=2))
    assert second.returncode == 2 and str(out) in second.stderr and "busy" in second.stderr
    # ... also when it writes somewhere else entirely (the busy check is machine-wide) ...
    elsewhere = cli("train", *_args(tiny_model_dir, tiny_data_dir, tmp_path / "elsewhere" / "deep" / "run",
                                    max_steps=2))
    assert elsewhere.returncode == 2 and str(out) in elsewhere.stderr and "busy" in elsewhere.stderr
    assert not (tmp_path / "elsewhere" / "deep" / "run").exists()

    aborted = cli("runs", "--abort", str(out))
    assert aborted.returncode == 0, aborted.stderr
    status = runs.read_status(out)
    assert status["state"] == "aborted" and status["exit_code"] == 143
    assert not jobs.group_alive(status["pgid"])
    assert _processes_mentioning(str(out)) == []  # no orphans
    checkpoint = runs.newest_checkpoint(out)
    stopped_at = int(checkpoint.name.split("-")[1])

    followed = cli("runs", "--follow", str(out))
    assert "Stopped by request" in followed.stdout

    resumed = cli("train", str(out / "run.yaml"), f"max_steps={stopped_at + 2}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming from {checkpoint}" in resumed.stdout
    assert runs.read_status(out)["state"] == "finished"


@pytest.mark.train
def test_failures_are_explained_in_status(cli, tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "missing-model"
    result = cli("train", *_args(tmp_path / "no-such-model", tiny_data_dir, out, max_steps=2))
    assert result.returncode == 2
    status = runs.read_status(out)
    assert status["state"] == "failed"
    assert status["error"].startswith("model folder") and "does not exist" in status["error"]

    out = tmp_path / "bad-target"
    result = cli("train", *_args(tiny_model_dir, tiny_data_dir, out, max_steps=2, lora_target="qkv_proj"))
    assert result.returncode == 2
    status = runs.read_status(out)
    assert status["state"] == "failed" and "lora_target ['qkv_proj'] not found" in status["error"]
    assert "Traceback" not in result.stderr


@pytest.mark.train
def test_a_killed_job_is_reported_as_killed(tiny_model_dir, tiny_data_dir, tmp_path):
    from trainer_core.config import load_config

    out = tmp_path / "killed"
    cfg = load_config(None, _args(tiny_model_dir, tiny_data_dir, out, max_steps=100000, save_steps=100000))
    run_dir = jobs.start_job(cfg)
    _wait_for_step(run_dir, 1)
    rank0 = int((run_dir / "ranks" / "0.pid").read_text())
    os.kill(rank0, 9)
    deadline = time.time() + 30
    while time.time() < deadline and jobs.refresh_status(run_dir)["state"] == "running":
        time.sleep(0.2)
    status = runs.read_status(run_dir)
    assert status["state"] == "failed" and "killed by the system" in status["error"]


def test_watch_reads_only_what_was_appended(tmp_path):
    path = tmp_path / "console.log"
    path.write_text("one\ntw")
    tail = jobs.Tail(path)
    assert tail.new_lines() == ["one"]
    with open(path, "a") as fh:
        fh.write("o\nthree\n")
    assert tail.new_lines() == ["two", "three"]
    assert tail.new_lines() == []


def test_dry_run_prints_the_launcher_command(cli):
    result = cli("train", "presets/sft_lora.yaml", "deepspeed=z3", "num_gpus=4", "output_dir=outputs/x", "--dry-run")
    assert result.returncode == 0, result.stderr
    command = result.stdout.splitlines()[1]
    assert "deepspeed --master_port" in command
    assert "--num_gpus 4 --no_local_rank --module trainer_core train outputs/x/run.yaml" in command
    assert '"stage": 3' in result.stdout
    result = cli("train", "presets/sft_lora.yaml", "num_gpus=2", "output_dir=outputs/x", "--dry-run")
    assert "torchrun --nproc_per_node 2 --master_port" in result.stdout


@pytest.mark.dist
@pytest.mark.parametrize("stage", ["z2", "z3"])
def test_deepspeed_zero_trains_on_cpu(cli, tiny_model_dir, tiny_data_dir, tmp_path, stage):
    out = tmp_path / f"ds-{stage}"
    result = cli("train", *_args(tiny_model_dir, tiny_data_dir, out, max_steps=4, save_steps=2, deepspeed=stage,
                                 num_gpus=1), timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert runs.read_status(out)["launcher"] == "deepspeed"
    assert (out / "checkpoint-4" / "global_step4").is_dir()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    losses = [e["loss"] for e in runs.read_log(out) if e["loss"] is not None]
    assert len(losses) == 4 and losses[-1] < losses[0]


@pytest.mark.dist
def test_torchrun_two_processes_split_the_data(cli, tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "ddp"
    result = cli("train", *_args(tiny_model_dir, tiny_data_dir, out, max_steps=6, save_steps=100, num_gpus=2,
                                 per_device_train_batch_size=2), env={"QIHUANG_RECORD_BATCHES": "1"}, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert runs.read_status(out)["launcher"] == "torchrun"
    rank0 = (out / "ranks" / "0.samples").read_text().split()
    rank1 = (out / "ranks" / "1.samples").read_text().split()
    # 6 global steps x 2 samples per rank (the data loader may collate one batch ahead that is
    # never trained on): each rank gets its own samples, none shared.
    assert 12 <= len(rank0) == len(rank1) <= 14
    assert not set(rank0) & set(rank1) and len(set(rank0)) == len(rank0)
    log = runs.read_log(out)
    assert [e["step"] for e in log if e["loss"] is not None] == [1, 2, 3, 4, 5, 6]
    assert all(e["total_steps"] == 6 for e in log)
    json.loads((out / "status.json").read_text())


@pytest.mark.train
def test_eval_and_export_run_as_jobs(cli, tiny_model_dir, tiny_data_dir, tmp_path):
    run = tmp_path / "run"
    assert cli("train", *_args(tiny_model_dir, tiny_data_dir, run, max_steps=2, save_steps=100,
                               val_size=8)).returncode == 0
    result = cli("eval", "--run", str(run), "--task", "ppl", "--dataset_dir", str(tiny_data_dir))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    job = next((run / "eval").iterdir())
    assert runs.read_status(job)["state"] == "finished"
    saved = json.loads(next(job.glob("ppl-*.json")).read_text())
    assert saved["metrics"]["perplexity"] > 1
    assert [e for e in runs.read_log(job) if e["step"] == e["total_steps"]]  # progress reached the end
    # The job ran from its own config, which names its folder; the same file runs it again there.
    config = yaml.safe_load((job / "eval.yaml").read_text())
    assert config["run"] == str(run) and config["task"] == "ppl" and config["output_dir"] == str(job)
    argv = (job / runs.COMMAND_FILE).read_text().splitlines()[2:6]
    assert argv == ["-m", "trainer_core", "eval", str(job / "eval.yaml")]
    next(job.glob("ppl-*.json")).unlink()
    result = cli("eval", str(job / "eval.yaml"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert [p.name for p in (run / "eval").iterdir()] == [job.name] and next(job.glob("ppl-*.json"))

    result = cli("export", "--run", str(run), "--gguf", "none")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (run / "export" / "config.json").is_file() and (run / "export" / "README.md").is_file()
    export_job = next((run / "jobs").glob("export-*"))
    assert runs.read_status(export_job)["state"] == "finished"
    assert yaml.safe_load((export_job / "export.yaml").read_text())["job_dir"] == str(export_job)

    # A bad request fails as a job with the module's own one-sentence error.
    result = cli("export", "--run", str(tmp_path / "nope"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
