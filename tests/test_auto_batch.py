"""per_device_train_batch_size: auto (issue 19): the config takes it, the planner resolves it to the
largest micro-batch that fits with the global batch kept, the training process backs off on
out-of-memory and makes the ranks agree, and (marked train) a real run writes the numbers to run.yaml."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import pytest
import yaml

from trainer_core import cli
from trainer_core.config import (
    ConfigError,
    auto_target,
    batch_candidates,
    load_config,
    next_smaller_batch,
    read_yaml,
)
from trainer_core.planner import SHIPPED_MODELS_DIR, gpu_hardware, load_model_shape, plan, resolve_auto_batch

QWEN7 = str(SHIPPED_MODELS_DIR / "qwen2.5-7b")


def auto_config(**keys):
    return load_config(None, {"per_device_train_batch_size": "auto", "model_name_or_path": QWEN7, "cutoff_len": 2048,
                              "bf16": True, **keys})


# ---- the config ------------------------------------------------------------------------------


def test_the_batch_takes_auto_or_a_number_in_yaml_and_on_the_command_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("per_device_train_batch_size: auto\n", encoding="utf-8")
    assert load_config(path).per_device_train_batch_size == "auto"
    assert load_config(None, ["per_device_train_batch_size=AUTO"]).batch_is_auto()
    assert load_config(None, ["--per_device_train_batch_size", "auto"]).batch_is_auto()
    numbered = load_config(None, ["per_device_train_batch_size=8"])
    assert numbered.per_device_train_batch_size == 8 and numbered.micro_batch() == 8
    with pytest.raises(RuntimeError, match="not resolved"):  # nothing may count with auto itself
        load_config(None, ["per_device_train_batch_size=auto"]).micro_batch()


@pytest.mark.parametrize("value, says", [("auto2", "'auto2' is not a valid int (an integer >= 1, or auto)"),
                                         ("-1", "-1 is out of range (an integer >= 1, or auto)"),
                                         ("0", "0 is out of range (an integer >= 1, or auto)")])
def test_a_bad_batch_is_a_problem_naming_the_key(value, says):
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"per_device_train_batch_size": value})
    assert [p.keys for p in caught.value.problems] == [("per_device_train_batch_size",)]
    assert caught.value.problems[0].message == f"per_device_train_batch_size: {says}"


def test_train_batch_size_is_the_global_batch_a_number_batch_must_make():
    assert load_config(None, {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                              "train_batch_size": 8}).train_batch_size == 8
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "train_batch_size": 16})
    problem = caught.value.problems[0]
    assert "train_batch_size" in problem.keys and "per_device_train_batch_size" in problem.keys
    assert problem.message.startswith("train_batch_size: 16 is not per_device_train_batch_size 4 x "
                                      "gradient_accumulation_steps 2 x 1 device(s) = 8")
    with pytest.raises(ConfigError, match="does not divide evenly among 4 devices"):
        load_config(None, {"per_device_train_batch_size": "auto", "num_gpus": 4, "train_batch_size": 10})


# ---- the resolution ----------------------------------------------------------------------------


def test_auto_keeps_the_global_batch_and_takes_the_largest_micro_batch_that_fits():
    cfg = auto_config(train_batch_size=64)
    shape = load_model_shape(QWEN7, light=True)
    # A GPU exactly as large as the plan of micro-batch 8: 8 fits, 16 does not.
    eight = plan(dataclasses.replace(cfg, per_device_train_batch_size=8, gradient_accumulation_steps=8),
                 gpu_hardware("H100-80GB"), shape=shape)
    hardware = dataclasses.replace(gpu_hardware("H100-80GB"), memory_bytes=eight.total)
    chosen = resolve_auto_batch(cfg, hardware, shape)
    assert chosen.fits
    assert (chosen.config.per_device_train_batch_size, chosen.config.gradient_accumulation_steps) == (8, 8)
    assert chosen.config.train_batch_size == 64
    assert chosen.line.startswith("per_device_train_batch_size auto -> 8, gradient_accumulation_steps 8 "
                                  "(global batch 64): the plan's largest that fits")
    # On a real kind: the choice fits, the next larger candidate does not, the product is the target.
    for kind in ("A100-80GB", "H100-80GB", "H200-141GB"):
        got = resolve_auto_batch(cfg, gpu_hardware(kind), shape).config
        assert got.micro_batch() * got.gradient_accumulation_steps == 64
        assert plan(got, gpu_hardware(kind), shape=shape).fits
        larger = [c for c in batch_candidates(64) if c > got.micro_batch()]
        if larger:
            bigger = dataclasses.replace(got, per_device_train_batch_size=larger[-1],
                                         gradient_accumulation_steps=64 // larger[-1])
            assert not plan(bigger, gpu_hardware(kind), shape=shape).fits, kind


def test_a_plan_of_auto_plans_the_batch_auto_picks_there():
    cfg = auto_config(train_batch_size=64)
    shape = load_model_shape(QWEN7, light=True)
    chosen = resolve_auto_batch(cfg, gpu_hardware("H200-141GB"), shape)
    planned = plan(cfg, gpu_hardware("H200-141GB"), shape=shape)
    assert planned.notes[0] == chosen.line
    # The rest is the plan of the numbers chosen.
    assert dataclasses.replace(planned, notes=planned.notes[1:]) == plan(chosen.config, gpu_hardware("H200-141GB"),
                                                                         shape=shape)


def test_the_target_without_train_batch_size_is_the_default_batch_times_accumulation_and_devices(monkeypatch):
    monkeypatch.delenv("NNODES", raising=False)
    assert auto_target(auto_config(gradient_accumulation_steps=2)) == 8
    assert auto_target(auto_config(gradient_accumulation_steps=2, num_gpus=4)) == 32
    monkeypatch.setenv("NNODES", "2")
    assert auto_target(auto_config(num_gpus=4)) == 32
    # The micro-batches keep the per-device share exactly: its divisors, halving on the way down.
    assert batch_candidates(12) == [12, 6, 4, 3, 2, 1]
    assert [next_smaller_batch(m, 12) for m in (12, 6, 4, 3, 1)] == [6, 3, 2, 1, 0]
    assert [next_smaller_batch(m, 16) for m in (16, 8, 2, 1)] == [8, 4, 1, 0]


def test_a_config_that_fits_nothing_gets_batch_1_and_a_warning_with_the_fix():
    cfg = auto_config(train_batch_size=16)
    chosen = resolve_auto_batch(cfg, gpu_hardware("RTX4090-24GB"), load_model_shape(QWEN7, light=True))
    assert not chosen.fits
    assert (chosen.config.per_device_train_batch_size, chosen.config.gradient_accumulation_steps) == (1, 16)
    assert "warning: not even batch 1 fits the plan" in chosen.line and "the planner's fix" in chosen.line


def test_plan_and_dry_run_show_the_resolution(capsys, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("QIHUANG_LAUNCHED", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert cli.main(["plan", f"model_name_or_path={QWEN7}", "per_device_train_batch_size=auto", "cutoff_len=2048",
                     "bf16=true", "train_batch_size=64", "--gpus", "H100-80GB", "--no-data"]) == 0
    out = capsys.readouterr().out
    want = resolve_auto_batch(auto_config(train_batch_size=64), gpu_hardware("H100-80GB")).line
    assert want in out and "memory for the longest micro-batch: " in out
    assert cli.main(["train", f"model_name_or_path={tiny_model_dir}", "per_device_train_batch_size=auto",
                     "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "per_device_train_batch_size auto -> 4, gradient_accumulation_steps 1 (global batch 4)" in out
    assert "# command" in out


# ---- the run form ----------------------------------------------------------------------------------


def test_the_forms_batch_picker_holds_auto_or_a_number_and_its_preview_resolves(tmp_path, tiny_data_dir,
                                                                                tiny_model_dir):
    from app import choices, form
    from app.context import make_context

    ctx = make_context(tmp_path / "work", tiny_data_dir, str(tiny_model_dir))
    available = choices.dataset_names(ctx.data_dir)
    values = form.initial_values(ctx, available)
    assert values["per_device_train_batch_size"] in form.BATCH_CHOICES  # the preset's 4, as the picker spells it
    auto = form.values_from_config({"per_device_train_batch_size": "auto", "train_batch_size": 8}, ctx, values,
                                   available)
    assert auto["per_device_train_batch_size"] == "auto" and auto["train_batch_size"] == 8
    assert form.raw_config(auto)["per_device_train_batch_size"] == "auto"
    cfg, fields, _ = form.check({**auto, "per_device_train_batch_size": " 12 ", "train_batch_size": 0}, ctx)
    assert cfg is not None and cfg.per_device_train_batch_size == 12 and not fields  # a size typed in
    _, fields, _ = form.check({**auto, "per_device_train_batch_size": "auto2"}, ctx)
    assert "'auto2' is not a valid int" in fields["per_device_train_batch_size"]
    _, text = form.preview(auto, ctx)  # the run.yaml the start will write: the numbers, and where they came from
    assert text.startswith("# per_device_train_batch_size auto -> 8, gradient_accumulation_steps 1 (global batch 8)")
    assert "\nper_device_train_batch_size: 8\n" in text and "\ntrain_batch_size: 8\n" in text


# ---- the probe: backing off on out-of-memory, the ranks agreeing ----------------------------------


def test_the_probe_halves_on_out_of_memory_until_a_step_runs():
    import torch

    from trainer_core.train import back_off

    tried, released = [], []

    def step(micro: int) -> None:
        tried.append(micro)
        if micro > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert back_off(step, 16, 16, lambda: released.append(True), log=lambda m: None) == 2
    assert tried == [16, 8, 4, 2] and len(released) == 4  # memory given back after every try
    tried.clear()
    assert back_off(step, 12, 12, lambda: None, log=lambda m: None) == 3  # divisors of 12: 12, 6, 3
    assert tried == [12, 6, 3]

    def never(micro: int) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory.")

    assert back_off(never, 4, 4, lambda: None, log=lambda m: None) == 0

    def broken(micro: int) -> None:
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError):  # only out-of-memory backs off
        back_off(broken, 4, 4, lambda: None, log=lambda m: None)


class _Args:
    """The few TrainingArguments fields the settling reads and sets."""

    def __init__(self) -> None:
        self.per_device_train_batch_size, self.gradient_accumulation_steps, self.world_size = 8, 2, 1
        self.device = types.SimpleNamespace(type="cpu")

    @property
    def train_batch_size(self) -> int:
        return self.per_device_train_batch_size


def _fake_trainer():
    return types.SimpleNamespace(args=_Args(), _train_batch_size=8)


def test_on_the_cpu_the_plan_decides_and_the_ranks_take_the_smallest(tmp_path, monkeypatch):
    import trainer_core.train as train

    cfg = load_config(None, {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2,
                             "train_batch_size": 16, "output_dir": str(tmp_path)})
    lines: list[str] = []
    trainer = _fake_trainer()
    settled = train.settle_auto_batch(trainer, cfg, [], tmp_path, lines.append)
    assert settled == cfg and "no probe on the CPU" in lines[-1]
    assert not (tmp_path / "run.yaml").exists()  # nothing changed, nothing rewritten
    # Another rank could only run 2: every rank trains with 2 (and 8 micro-batches a step).
    monkeypatch.setattr(train, "_smallest_over_ranks", lambda value: 2)
    settled = train.settle_auto_batch(trainer, cfg, [], tmp_path, lines.append)
    assert (settled.per_device_train_batch_size, settled.gradient_accumulation_steps) == (2, 8)
    assert (trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps) == (2, 8)
    assert trainer._train_batch_size == 2
    assert "the smallest of the ranks' (8 here)" in lines[-1]
    written = read_yaml(tmp_path / "run.yaml")
    assert (written["per_device_train_batch_size"], written["gradient_accumulation_steps"]) == (2, 8)
    assert (tmp_path / "run.yaml").read_text(encoding="utf-8").startswith("# per_device_train_batch_size 2")
    # Under DeepSpeed the numbers are in its config already: ranks that disagree are refused.
    with pytest.raises(train.UserError, match="ranks planned different batches"):
        train.settle_auto_batch(_fake_trainer(), dataclasses.replace(cfg, deepspeed="z2"), [], tmp_path, lines.append)
    monkeypatch.setattr(train, "_smallest_over_ranks", lambda value: 0)
    with pytest.raises(train.UserError, match="not even a micro-batch of 1"):
        train.settle_auto_batch(_fake_trainer(), cfg, [], tmp_path, lines.append)


@pytest.mark.train
def test_the_probe_runs_the_trainers_step_and_the_trainer_trains_with_what_it_settled(
        tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    """The probe's path on this CPU (a CUDA device is what it is for): the real step function on the
    tiny model's Trainer, made to run out of memory above 2, then one real training step with the
    numbers it settled."""
    import torch

    import trainer_core.train as train

    run = tmp_path / "probe"
    cfg = load_config(None, {"model_name_or_path": str(tiny_model_dir), "dataset_dir": str(tiny_data_dir),
                             "dataset": "qa", "output_dir": str(run), "cutoff_len": 96, "max_steps": 1,
                             "save_steps": 100, "per_device_train_batch_size": 8, "train_batch_size": 8,
                             "logging_steps": 1, "lora_dropout": 0.1})
    run.mkdir()
    trainer, _ = train.build_trainer(cfg, run, train._StopFlag(), lambda m: None)
    real_step = train._probe_step
    rows = []

    def step_that_runs_out_above_2(trainer, cfg, samples):
        step = real_step(trainer, cfg, samples)

        def probe(micro: int) -> None:
            if micro > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
            step(micro)
            rows.append(micro)
            assert all(p.grad is not None for p in trainer.model.parameters() if p.requires_grad)

        return probe

    monkeypatch.setattr(train, "_no_probe_reason", lambda trainer, cfg: None)
    monkeypatch.setattr(train, "_probe_step", step_that_runs_out_above_2)
    lines: list[str] = []
    settled = train.settle_auto_batch(trainer, cfg, trainer.train_dataset, run, lines.append)
    assert rows == [2] and (settled.per_device_train_batch_size, settled.gradient_accumulation_steps) == (2, 4)
    assert all(p.grad is None for p in trainer.model.parameters())  # the probe's gradients given back
    assert "8 ran out of GPU memory; trying 4" in lines[0] and "4 ran out of GPU memory; trying 2" in lines[1]
    longest = max(len(s["input_ids"]) for s in trainer.train_dataset)
    assert f"one forward and backward at {longest} tokens a row fit on the GPU" in lines[-1]
    assert read_yaml(run / "run.yaml")["per_device_train_batch_size"] == 2
    trainer.train()
    assert trainer.state.global_step == 1 and trainer.state.train_batch_size == 2


# ---- a real run --------------------------------------------------------------------------------


@pytest.mark.train
def test_a_run_with_batch_auto_writes_the_numbers_to_run_yaml(cli, tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "auto"
    result = cli("train", f"model_name_or_path={tiny_model_dir}", f"dataset_dir={tiny_data_dir}", "dataset=qa",
                 f"output_dir={out}", "cutoff_len=96", "max_steps=2", "save_steps=100",
                 "--per_device_train_batch_size", "auto", "gradient_accumulation_steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    # The global batch 4 x 2 on one device; the tiny model's micro-batch of 8 fits, so no accumulation is left.
    line = "per_device_train_batch_size auto -> 8, gradient_accumulation_steps 1 (global batch 8)"
    assert result.stdout.count(line) == 1  # printed by the CLI, not again from the console
    written = yaml.safe_load((out / "run.yaml").read_text(encoding="utf-8"))
    assert (written["per_device_train_batch_size"], written["gradient_accumulation_steps"],
            written["train_batch_size"]) == (8, 1, 8)
    assert (out / "run.yaml").read_text(encoding="utf-8").startswith(f"# {line}")
    console = (out / "console.log").read_text(encoding="utf-8")
    assert f"[launcher] {line}" in console and "no probe on the CPU" in console
    assert "QIHUANG_AUTO_BATCH" in (out / "command.txt").read_text(encoding="utf-8")
    assert load_config(out / "run.yaml").micro_batch() == 8  # a rerun of run.yaml keeps the numbers
    assert Path(out / "adapter").is_dir()
