"""The learning-rate range test: its suggestion rule on synthetic loss curves, its config and
command line checks (fast), and one real job on the tiny model (train)."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
import yaml

from trainer_core import cli, jobs, runs
from trainer_core.config import ConfigError, config_from_dict, load_config
from trainer_core.jobconfig import CONFIG_FILES, LR_FIND_RUN_CONFIG, LrFindConfig, load_job_config
from trainer_core.lr_find import diverged, lr_schedule, smooth, suggest
from trainer_core.paths import REPO_ROOT

LRS = lr_schedule(1e-7, 1.0, 40)


@pytest.fixture(autouse=True)
def own_machine(tmp_path, monkeypatch):
    """A registry of running jobs of its own: a job running elsewhere on this machine refuses nothing here."""
    monkeypatch.setenv("QIHUANG_HOME", str(tmp_path / "home"))


def sigmoid_curve(lrs: list[float], centre: float = -4.0, rise_from: float | None = None) -> list[float]:
    """A loss that falls from 3 to 1 around log10(lr) = centre, steepest exactly there; from
    `rise_from` on it grows again, fast (a divergence)."""
    out = []
    for lr in lrs:
        x = math.log10(lr)
        loss = 3 - 2 / (1 + math.exp(-3 * (x - centre)))
        if rise_from is not None and x > rise_from:
            loss += 10 ** (2 * (x - rise_from)) - 1
        out.append(loss)
    return out


def test_the_schedule_grows_by_one_factor_from_start_to_end():
    assert LRS[0] == pytest.approx(1e-7) and LRS[-1] == pytest.approx(1.0)
    ratios = {round(b / a, 9) for a, b in zip(LRS, LRS[1:])}
    assert len(ratios) == 1 and ratios.pop() == pytest.approx(1e7 ** (1 / 39))


def test_a_known_curve_gives_its_steepest_point():
    losses = sigmoid_curve(LRS, centre=-4.0, rise_from=-1.5)
    # Unsmoothed: the segment around log10(lr) = -4 (points 16 and 17: -4.13 and -3.95) is the steepest.
    found = suggest(LRS, losses, beta=0.0)
    assert found["reason"] is None and found["index"] == 16 and found["learning_rate"] == LRS[16]
    # Smoothed (the default beta): a little later, as a moving average lags; never past the lowest loss.
    smoothed = suggest(LRS, losses, beta=0.6)
    assert 16 <= smoothed["index"] <= 19, smoothed["index"]
    assert smoothed["index"] < min(range(40), key=smoothed["smoothed"].__getitem__)


def test_the_steepest_point_moves_with_the_curve():
    found = suggest(LRS, sigmoid_curve(LRS, centre=-2.5), beta=0.0)
    assert math.log10(found["learning_rate"]) == pytest.approx(-2.5, abs=7 / 39)


def test_the_first_tenth_is_left_out():
    """A steep first step (noise at the smallest rates) is not taken; the real descent is."""
    losses = sigmoid_curve(LRS, centre=-3.0)
    losses[0] += 5.0
    assert suggest(LRS, losses, beta=0.0)["index"] in (22, 23)


def test_a_diverging_curve_stops_at_four_times_the_lowest_smoothed_loss():
    losses = sigmoid_curve(LRS, centre=-4.0, rise_from=-1.5)
    stop = next(i for i in range(1, 41) if diverged(smooth(losses[:i], 0.6)))
    smoothed = smooth(losses[:stop], 0.6)
    assert smoothed[-1] > 4 * min(smoothed) and smooth(losses[:stop - 1], 0.6)[-1] <= 4 * min(smoothed)
    assert "over 4x its lowest value" in diverged(smoothed)
    assert diverged(smooth([2.0, 1.5, float("nan")], 0.6)) == "the loss is not a number"
    assert diverged(smooth([2.0, 1.9, 1.8], 0.6)) is None


def test_a_flat_curve_gives_no_suggestion_and_says_why():
    found = suggest(LRS, [2.5] * 40, beta=0.6)
    assert found["learning_rate"] is None and "flat curve" in found["reason"]
    noisy = [2.5 + 0.005 * (-1) ** i for i in range(40)]  # wiggles smaller than 1 %
    assert suggest(LRS, noisy, beta=0.6)["learning_rate"] is None


def test_a_nan_curve_gives_no_suggestion_and_a_late_nan_keeps_the_points_before():
    nan = float("nan")
    found = suggest(LRS, [nan] * 40, beta=0.6)
    assert found["learning_rate"] is None and "first step's loss was not a number" in found["reason"]
    assert "only 2 finite" in suggest(LRS, [3.0, 2.9, nan, nan], beta=0.6)["reason"]
    losses = sigmoid_curve(LRS, centre=-4.0)[:30] + [nan] * 10
    late = suggest(LRS, losses, beta=0.0)
    assert late["index"] == 16 and len(late["smoothed"]) == 30


def problems(raw: dict) -> dict:
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw, LrFindConfig)
    return {p.keys: p.message for p in err.value.problems}


def test_the_config_reports_every_problem_at_once():
    assert problems({"run_config": "r.yaml", "start_lr": 1e-2, "end_lr": 1e-3, "num_steps": 2}) == {
        ("num_steps",): "num_steps: 2 is out of range (an integer >= 5)",
        ("start_lr", "end_lr"): "end_lr (0.001) must be larger than start_lr (0.01): the learning rate grows from "
                                "one to the other"}
    assert problems({"end_lr": 0, "smooth_beta": 1}) == {
        ("end_lr",): "end_lr: 0 is out of range (a number > 0)",
        ("smooth_beta",): "smooth_beta: 1 is out of range (a number >= 0 and <= 0.99)",
        ("run_config",): "run_config: give the run config to test (a .yaml file)"}
    assert config_from_dict({"run_config": "r.yaml"}, LrFindConfig) == LrFindConfig(run_config="r.yaml")


@pytest.mark.parametrize("args, message", [
    (["presets/sft_lora.yaml", "--num_stepz", "20"], "unknown key 'num_stepz'; did you mean '--num_steps'?"),
    (["presets/sft_lora.yaml", "lora_rnk=4"], "unknown key 'lora_rnk'; did you mean 'lora_rank'?"),
    (["presets/sft_lora.yaml", "--start_lr", "1e-2", "--end_lr", "1e-3"], "must be larger than start_lr (0.01)"),
    (["presets/no_such.yaml"], "config file 'presets/no_such.yaml' does not exist"),
    ([], "lr-find needs a run config"),
    (["presets/sft_lora.yaml", "--num_steps", "3", "num_train_epoch=2"],  # the test's and the run's problems at once
     "num_steps: 3 is out of range (an integer >= 5)\n"
     "  - unknown key 'num_train_epoch'; did you mean 'num_train_epochs'?"),
    (["presets/sft_lora.yaml", "--num-steps"], "--num-steps needs a value"),
])
def test_bad_command_lines_exit_2_with_a_message_and_start_nothing(args, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # the presets' relative paths
    monkeypatch.setattr(jobs, "launch", lambda *a, **k: pytest.fail("a job was started"))
    assert cli.main(["lr-find", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_the_launcher_writes_both_configs_and_starts_the_job_from_its_yaml(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(jobs, "launch", lambda job_dir, argv, devices, launcher: started.append(argv) or job_dir)
    run = load_config(REPO_ROOT / "presets" / "sft_lora.yaml", {"lora_rank": 4})
    job_dir = jobs.start_lr_find(run, LrFindConfig(num_steps=12), tmp_path / "outputs")
    assert job_dir.parent == tmp_path / "outputs" / "jobs" and job_dir.name.startswith("lr-find-")
    config_file = job_dir / CONFIG_FILES["lr_find"]
    assert started == [[sys.executable, "-m", "trainer_core", "lr-find", str(config_file)]]
    saved = load_job_config("lr_find", config_file)
    assert saved == LrFindConfig(run_config=str(job_dir / LR_FIND_RUN_CONFIG), num_steps=12, job_dir=str(job_dir))
    tested = load_config(saved.run_config)
    assert tested.lora_rank == 4 and tested.output_dir == str(job_dir)  # the run config, overrides applied
    # The job's own file starts it again in the same folder (start_task reads the run config it names).
    assert jobs.start_task("lr_find", saved) == job_dir and len(started) == 2


def test_a_batch_auto_run_config_is_tested_with_the_batch_a_launch_would_pick(tmp_path, monkeypatch,
                                                                              tiny_model_dir):
    monkeypatch.setattr(jobs, "launch", lambda job_dir, argv, devices, launcher: job_dir)
    run = load_config(REPO_ROOT / "presets" / "sft_lora.yaml", {"per_device_train_batch_size": "auto",
                                                                 "model_name_or_path": str(tiny_model_dir)})
    job_dir = jobs.start_lr_find(run, LrFindConfig(num_steps=12), tmp_path / "outputs")
    tested = load_config(job_dir / LR_FIND_RUN_CONFIG)
    chosen = jobs.resolve_batch(run)[0]
    assert isinstance(tested.per_device_train_batch_size, int)
    assert (tested.per_device_train_batch_size, tested.gradient_accumulation_steps) == (
        chosen.per_device_train_batch_size, chosen.gradient_accumulation_steps)
    assert "was auto" in (job_dir / LR_FIND_RUN_CONFIG).read_text(encoding="utf-8")


def test_it_is_refused_while_another_job_holds_the_devices(tmp_path):
    busy = tmp_path / "outputs" / "busy-run"
    busy.mkdir(parents=True)
    runs.update_status(busy, state="running", pid=os.getpid(), pgid=os.getpgid(0), devices=jobs.current_devices())
    with pytest.raises(jobs.UserError, match="busy with the running job"):
        jobs.start_lr_find(load_config(), LrFindConfig(), tmp_path / "outputs")
    assert not (tmp_path / "outputs" / "jobs").exists()


@pytest.mark.train
def test_the_job_on_the_tiny_model(cli, tiny_model_dir, tiny_data_dir, tmp_path):
    """A real range test: 14 steps of full fine-tuning up to lr 100, which diverges before the end."""
    result = cli("lr-find", str(REPO_ROOT / "presets" / "sft_lora.yaml"), f"model_name_or_path={tiny_model_dir}",
                 f"dataset_dir={tiny_data_dir}", "dataset=qa", "cutoff_len=96", "finetuning_type=full",
                 "--num_steps", "14", "--start_lr", "1e-4", "--end_lr", "100", "--job_dir", str(tmp_path / "job"),
                 env={"QIHUANG_HOME": str(tmp_path / "home")}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    job_dir = tmp_path / "job"
    assert f"Started lr-find job {job_dir}" in result.stdout
    assert {"lr_find.yaml", "run_config.yaml", "status.json", "console.log", "trainer_log.jsonl", "lr_find.json",
            "lr_find.png"} <= {p.name for p in job_dir.iterdir()}
    assert not list(job_dir.glob("checkpoint-*")) and not (job_dir / "model").exists()  # nothing kept
    assert json.loads((job_dir / "status.json").read_text())["state"] == "finished"
    found = json.loads((job_dir / "lr_find.json").read_text())
    log = [e for e in runs.read_log(job_dir) if e["loss"] is not None]
    # The losses and rates are the Trainer's own, one per step, the rate growing by one factor.
    assert found["losses"] == [e["loss"] for e in log] and found["lrs"] == [e["learning_rate"] for e in log]
    assert found["steps"] == list(range(1, len(log) + 1))
    assert found["lrs"] == pytest.approx(lr_schedule(1e-4, 100, 14)[:len(log)], rel=1e-6)
    assert found["stopped_early"] and len(log) < 14 and "over 4x its lowest value" in found["stop_reason"]
    assert found["suggestion"] in found["lrs"] and found["rule"].startswith("steepest descent")
    assert found["suggestion"] < found["lrs"][-1]
    assert f"suggested learning_rate {found['suggestion']:.1e}" in result.stdout
    assert (job_dir / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert yaml.safe_load((job_dir / "run_config.yaml").read_text())["finetuning_type"] == "full"


def test_the_page_shows_the_suggestion_and_the_cores_reasons_in_its_language(tmp_path):
    from app.tabs.params import lr_find_plot, lr_find_result, lr_find_text

    losses = sigmoid_curve(LRS, centre=-4.0, rise_from=-1.5)[:34]
    found = suggest(LRS[:34], losses, beta=0.6)
    result = {"suggestion": found["learning_rate"], "suggestion_index": found["index"], "no_suggestion": None,
              "lrs": LRS[:34], "losses": losses, "smoothed_losses": found["smoothed"],
              "stop_reason": "stopped early at step 34: the smoothed loss 9.1 is over 4x its lowest value 1.2"}
    (tmp_path / "lr_find.json").write_text(json.dumps(result))
    assert lr_find_result(str(tmp_path)) == result and lr_find_result(str(tmp_path / "none")) is None
    zh = lr_find_text(result, "zh")
    assert f"**建议**学习率：`{found['learning_rate']:.1e}`" in zh and "在第 34 步提前停止" in zh and "4 倍" in zh
    assert "**Suggested** learning rate" in lr_find_text(result, "en") and "a suggestion, not a guarantee" in \
        lr_find_text(result, "en")
    flat = {**result, "suggestion": None, "stop_reason": None, "no_suggestion": suggest(LRS, [2.0] * 40, 0.6)["reason"]}
    assert lr_find_text(flat, "zh").startswith("⚠ 没有建议：") and "曲线是平的" in lr_find_text(flat, "zh")
    svg = lr_find_plot(result, "zh")
    assert 'id="lr-smoothed"' in svg and 'id="lr-suggestion"' in svg and "学习率（对数坐标）" in svg
    assert "qh-plot-empty" in lr_find_plot(None, "en")
