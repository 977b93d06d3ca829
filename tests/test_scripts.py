"""The seed's entry scripts run end to end on our CLI (tiny settings to keep the suite fast)."""

import os
import subprocess

import pytest
from conftest import REPO

from trainer_core import runs
from trainer_core.config import load_config


def _run_script(name: str, out, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "BASE_MODEL_PATH": "default", "NUM_GPUS": "0", "MAX_STEPS": "2",
                "GRAD_ACCUM": "1", "CUTOFF_LEN": "128", "VAL_SIZE": "0", "GRADIENT_CHECKPOINTING": "false",
                "REPORT_TO": "none", "OUTPUT_DIR": str(out), **env}
    return subprocess.run(["bash", f"scripts/{name}"], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.train
def test_sft_script_keeps_the_seed_settings_and_runs(tmp_path):
    out = tmp_path / "sft"
    result = _run_script("run_sft_shuzhiqihuang.sh", out, DATASET="tcm_qa")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    cfg = load_config(out / "run.yaml")
    assert (cfg.stage, cfg.lora_rank, cfg.lora_alpha, cfg.lr_scheduler_type) == ("sft", 64, 128, "cosine")
    assert cfg.bf16 is True and cfg.deepspeed == "" and cfg.num_gpus == 0
    assert runs.read_status(out)["state"] == "finished"
    assert "WANDB_MODE=offline" in (out / "command.txt").read_text()


@pytest.mark.train
def test_pt_script_keeps_the_seed_settings_and_runs(tmp_path):
    out = tmp_path / "pt"
    result = _run_script("run_pt_shuzhiqihuang.sh", out, DATASET="clinical_notes")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    cfg = load_config(out / "run.yaml")
    assert (cfg.stage, cfg.lora_rank, cfg.lora_alpha) == ("pt", 128, 256)
    assert len([e for e in runs.read_log(out) if e["loss"] is not None]) == 2


def test_default_launch_is_four_gpus_with_deepspeed_zero3(tmp_path):
    """Without overrides the scripts ask for the seed's 4 GPUs through the DeepSpeed launcher."""
    env = {**os.environ, "DRY_RUN": "1", "OUTPUT_DIR": str(tmp_path / "x")}
    env.pop("NUM_GPUS", None)
    for name in ("run_sft_shuzhiqihuang.sh", "run_pt_shuzhiqihuang.sh"):
        result = subprocess.run(["bash", f"scripts/{name}"], cwd=REPO, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "deepspeed --master_port" in result.stdout
        assert f"--num_gpus 4 --no_local_rank --module trainer_core train {tmp_path / 'x'}/run.yaml" in result.stdout
        assert '"stage": 3' in result.stdout


@pytest.mark.train
def test_gpu_check_cpu_smoke_runs_a_mode_the_zoo_parity_and_the_planner(tmp_path, capsys):
    """scripts/gpu_check.sh in its CPU smoke mode: what runs on a GPU whenever one is lent, here on
    a tiny model, so the script cannot rot between GPU sessions. The planner comparison runs its one
    CPU case: its table holds the plan's own figures, and its measured MFU is what `plan --mfu` uses."""
    import json

    from trainer_core.cli import main
    from trainer_core.planner import GIB, cpu_hardware, model_shape, plan

    env = {**os.environ, "OUT": str(tmp_path)}
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu-smoke", "--modes", "lora_bf16", "--zoo-cases", "1"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = (tmp_path / "gpu_check.md").read_text()
    assert "| lora_bf16 | finished |" in report and "1 PASS" in report
    assert "Planner against measurement (`bench/planner_gpu.py`): finished" in report

    measured = json.loads((tmp_path / "planner_gpu.json").read_text())
    assert measured["kind"] == "CPU" and [row["case"] for row in measured["cases"]] == ["lora-b2-t64"]
    row = measured["cases"][0]
    assert row["measured"]["state"] == "finished" and row["measured"]["seconds_per_step"] > 0
    # the planned figures are the planner's for the same config and model
    config = row["config"]
    cfg = load_config(None, {**config, "model_name_or_path": "default", "num_gpus": 0})
    p = plan(cfg, cpu_hardware(), shape=model_shape(measured["model"]))
    assert row["planned"]["total"] == p.total and row["planned"]["flops_per_step"] == p.flops_per_step
    assert row["mfu"] == measured["mfu"]["lora"] == (
        p.flops_per_step / row["measured"]["seconds_per_step"] / row["planned"]["peak_flops"])
    # the table: a header of 12 columns, one row per case, with the plan's total in it
    table = [line for line in (tmp_path / "planner_gpu.md").read_text().splitlines() if line.startswith("|")]
    assert len(table) == 3 and all(line.count("|") == 13 for line in table)
    assert table[2].split(" | ")[:2] == ["| lora-b2-t64", f"{p.total / GIB:.2f}"]
    assert table[2] in report

    # `plan --mfu planner_gpu.json` plans with the measured utilisation: its step time is the measured one
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(measured["model"]))
    capsys.readouterr()
    code = main(["plan", *[f"{k}={v}" for k, v in config.items()], f"model_name_or_path={model}", "num_gpus=0",
                 "--gpus", "CPU", "--no-data", "--json", "--mfu", str(tmp_path / "planner_gpu.json")])
    planned = json.loads(capsys.readouterr().out)
    assert code == 0 and planned["flops_per_step"] == p.flops_per_step
    same_peak = row["planned"]["peak_flops"] / cpu_hardware().peak_flops  # 1 unless the clock reading moved
    assert planned["step_seconds"] == pytest.approx(row["measured"]["seconds_per_step"] * same_peak, rel=1e-9)
    assert any("measured by the GPU check (planner_gpu.json, CPU, lora)" in a for a in planned["assumptions"])
