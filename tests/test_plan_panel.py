"""The Parameters tab's plan panel as plain functions (app/plan_panel.py): the form planned for the
hardware picked, the HTML it shows, a fix turned into form values, the data statistics the CLI
counts too, and every word of it in both languages."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import pytest

from app import choices, form
from app import plan_panel as panel
from app.context import make_context
from app.i18n import t, translate
from trainer_core import planner
from trainer_core.config import TrainConfig, read_config
from trainer_core.errors import UserError
from trainer_core.models import TOKENIZER_FILES

SHIPPED_14B = planner.SHIPPED_MODELS_DIR / "qwen2.5-14b"
A100X4 = panel.HardwareChoice("A100-40GB", 4, 1, 2.5)


@pytest.fixture
def ctx(tmp_path, tiny_data_dir, tiny_model_dir):
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data_dir)
    return make_context(tmp_path / "work", data_dir, str(tiny_model_dir))


@pytest.fixture
def big_model(ctx, tiny_model_dir):
    """Qwen2.5-14B's shipped config.json beside the tiny model's tokenizer, in the work folder: the
    14B shape, with tokens counted by a tokenizer built in-process (no built-in model loaded)."""
    folder = ctx.workdir / "qwen2.5-14b-shape"
    folder.mkdir(parents=True)
    shutil.copy(SHIPPED_14B / "config.json", folder / "config.json")
    for name in TOKENIZER_FILES:
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, folder / name)
    return folder


def the_issue_case(ctx, model_dir, **changes):
    """Issue 19's form: LoRA r64, cutoff 2048 (packed: every row that long), batch 4, bf16, ZeRO-2."""
    values = form.initial_values(ctx, choices.dataset_names(ctx.data_dir))
    values.update(model_source="local", model_path=str(model_dir), lora_rank=64, lora_alpha=128, cutoff_len=2048,
                  per_device_train_batch_size=4, bf16=True, deepspeed="z2", packing="true", max_steps=-1)
    values.update(changes)
    return values


def test_the_issue_case_does_not_fit_and_its_first_fix_as_form_values_fits(ctx, big_model):
    for stage, without, with_fix in (("z2", "96.7 GiB", "36.6 GiB"), ("z3", "114.1 GiB", "32.2 GiB")):
        values = the_issue_case(ctx, big_model, deepspeed=stage)
        result = panel.plan_form(values, ctx, A100X4)
        assert result.problems == [] and result.plan is not None
        assert not result.plan.fits and panel.gib(result.plan.total) == without  # the CLI's figures (README)
        assert result.plan.hardware == "4xA100-40GB"
        fix = panel.first_fix(result)
        assert fix == {"gradient_checkpointing": True}
        values.update(panel.fix_values(fix))
        fixed = panel.plan_form(values, ctx, A100X4)
        assert fixed.plan is not None and fixed.plan.fits and panel.gib(fixed.plan.total) == with_fix
        assert panel.first_fix(fixed) is None


def test_a_known_model_without_a_folder_plans_from_its_shipped_config(ctx):
    values = form.initial_values(ctx, choices.dataset_names(ctx.data_dir))
    values.update(model_source="known", known_model="Qwen2.5-14B-Instruct", model_path="")
    _, fields, _ = form.check(values, ctx)
    assert "model_path" in fields  # the run needs the weights ...
    assert panel.plan_model(values, ctx) == "Qwen/Qwen2.5-14B-Instruct"  # ... the plan only config.json
    assert planner.find_model_config("Qwen/Qwen2.5-14B-Instruct") == SHIPPED_14B
    folder, shape = panel.model_shape("Qwen/Qwen2.5-14B-Instruct")
    assert folder == str(SHIPPED_14B) and shape.layers == 48 and shape.hidden == 5120


def test_the_plan_is_for_the_hardware_picked_not_this_machine(ctx, big_model):
    cfg = panel.plan_config(the_issue_case(ctx, big_model, num_gpus=1), ctx, panel.hardware_for(A100X4))
    assert cfg.num_gpus == 4 and cfg.deepspeed == "z2" and cfg.bf16  # DeepSpeed and bf16 on a CPU machine: planned
    here = panel.hardware_for(panel.HardwareChoice())
    assert here == planner.detect_hardware(1)


def test_what_keeps_a_plan_from_being_made_is_said_in_the_panel(ctx, big_model):
    cases = [
        (the_issue_case(ctx, big_model, learning_rate=-1), A100X4, "learning_rate", "超出范围"),
        (the_issue_case(ctx, big_model), dataclasses.replace(A100X4, gpus=0), "GPUs per node", "每节点 GPU 数"),
        (the_issue_case(ctx, big_model), dataclasses.replace(A100X4, price="x"), "Price per GPU-hour", "不是"),
        (the_issue_case(ctx, big_model, model_source="known", known_model="Llama-3.1-8B-Instruct", model_path=""),
         A100X4, "no config.json found", "找不到 config.json"),
        (the_issue_case(ctx, "/etc"), A100X4, "outside the folders", "不在本工作台可读取的文件夹内"),
    ]
    for values, choice, english, chinese in cases:
        result = panel.plan_form(values, ctx, choice)
        assert result.plan is None and any(english in p for p in result.problems), result.problems
        shown = panel.plan_html(result, "zh")
        assert 'data-state="problem"' in shown and chinese in shown, shown
        assert english in panel.plan_html(result, "en")


def test_the_html_has_the_bar_the_legend_the_verdict_time_cost_and_fixes(ctx, big_model):
    result = panel.plan_form(the_issue_case(ctx, big_model), ctx, A100X4)
    p = result.plan
    for lang in ("zh", "en"):
        shown = panel.plan_html(result, lang)
        assert 'data-state="does-not-fit"' in shown
        segments = re.findall(r'data-part="(\w+)"[^>]*style="width:([\d.]+)%', shown)
        assert [name for name, _ in segments] == [n for n in planner.PARTS if p.parts.get(n)]
        # The bar is the total (activations less what backward frees) on a scale of the larger of total and card.
        assert sum(float(w) for _, w in segments) == pytest.approx(100 * p.total / max(p.total, p.capacity), abs=0.01)
        cap = float(re.search(r'qh-plan-cap" style="left:([\d.]+)%', shown).group(1))
        assert cap == pytest.approx(100 * p.capacity / p.total, abs=0.01)
        for name in planner.PARTS:
            if p.parts.get(name):
                assert f"{t(f'plan.part_{name}', lang)} {panel.gib(p.parts[name])}" in shown
        verdict = t("plan.does_not_fit", lang, total=panel.gib(p.total), capacity=panel.gib(p.capacity),
                    device=t("plan.per_gpu", lang))
        assert f"✗ {verdict}" in shown.replace("&#x27;", "'")
        assert t("plan.step", lang, seconds=f"{p.step_seconds:.2f}", tokens=f"{p.tokens_per_step:,}") in shown
        assert t("plan.cost", lang, cost=f"{p.cost:,.2f}", price="2.5") in shown
        first = re.search(r"<li class=first>(.*?)</li>", shown).group(1)
        assert first.startswith(t("plan.change_checkpointing_on", lang) + " → ")
        assert "<details" in shown  # the notes and assumptions, folded
    fitting = panel.plan_form(the_issue_case(ctx, big_model, gradient_checkpointing=True), ctx, A100X4)
    shown = panel.plan_html(fitting, "en")
    assert 'data-state="fits"' in shown and "✓ Fits: 36.6 GiB per GPU of 40.0 GiB" in shown
    assert "qh-plan-fixes" not in shown
    without_price = panel.plan_form(the_issue_case(ctx, big_model), ctx, dataclasses.replace(A100X4, price=None))
    assert "cost" not in panel.plan_html(without_price, "en") and "GPU-hours" in panel.plan_html(without_price, "en")


def test_a_fix_in_words_and_as_form_values():
    assert panel.change_words({"gradient_checkpointing": True}, "en") == "gradient checkpointing on"
    assert panel.change_words({"deepspeed": "z3"}, "en") == "ZeRO-3"
    assert panel.change_words({"per_device_train_batch_size": 2, "gradient_accumulation_steps": 8},
                              "en") == "batch 2 × accumulation 8"
    assert panel.change_words({"finetuning_type": "qlora", "deepspeed": "z2"}, "zh") == "QLoRA（4 比特） + ZeRO-2"
    assert panel.change_words({"cutoff_len": 1024}, "zh") == "cutoff_len 1024"
    assert panel.fix_values({"deepspeed": "", "gradient_checkpointing": True}) == {
        "deepspeed": "none", "gradient_checkpointing": True}  # the dropdown's spelling of no DeepSpeed
    assert form.raw_config({**panel.fix_values({"deepspeed": ""}), "model_source": "builtin"})["deepspeed"] == ""


def test_every_key_a_fix_can_change_is_a_field_the_apply_button_sets():
    shape = planner.load_model_shape(str(SHIPPED_14B), light=True)
    keys: set[str] = set()
    for cfg in (TrainConfig(), TrainConfig(finetuning_type="qlora"), TrainConfig(deepspeed="z3", cutoff_len=4096),
                TrainConfig(per_device_train_batch_size=8, deepspeed="z2")):
        for _, options in planner._fix_steps(cfg, planner.gpu_hardware("RTX4090-24GB", 2)):
            for changes in options:
                keys |= set(changes)
    assert keys == set(panel.FIX_KEYS)
    assert set(panel.FIX_KEYS) <= set(form.FORM_KEYS)
    assert shape.layers == 48


def test_the_data_statistics_are_the_clis_and_kept(ctx, big_model, monkeypatch, capsys):
    from trainer_core import cli

    cfg = panel.plan_config(the_issue_case(ctx, big_model), ctx, panel.hardware_for(A100X4))
    stats, notes = planner.data_statistics(cfg)
    assert stats is not None and stats.samples == 64 and notes == []  # qa 48 + dialog 16, its own tokenizer
    calls = []

    def counted(config, log=None, convert=True):
        calls.append(config.dataset)
        return stats, ["counted here"]

    monkeypatch.setattr(panel, "data_statistics", counted)
    panel._DATA.clear()
    assert panel.data_stats(cfg) == (stats, ["counted here"])
    assert panel.data_stats(dataclasses.replace(cfg, learning_rate=1.0)) == (stats, ["counted here"])
    assert calls == ["qa,dialog"]  # read once: a number that does not change the tokens reads nothing
    panel.data_stats(dataclasses.replace(cfg, cutoff_len=512))
    assert len(calls) == 2  # the cut changes the counts
    # The CLI counts with the same function: what it returns is what the plan shows.
    monkeypatch.setattr(planner, "data_statistics", counted)
    overrides = [f"model_name_or_path={big_model}", f"dataset_dir={ctx.data_dir}", "dataset=qa,dialog",
                 "max_steps=-1", "per_device_train_batch_size=1"]
    assert cli.main(["plan", *overrides, "--gpus", "A100-40GB", "--json"]) == 0
    out = capsys.readouterr()
    assert "note: counted here" in out.err and calls[-1] == "qa,dialog"
    cli_cfg, _ = read_config(None, overrides)
    expected = planner.plan(cli_cfg, planner.gpu_hardware("A100-40GB"), data=stats)
    assert json.loads(out.out)["steps_per_epoch"] == expected.steps_per_epoch > 1
    assert json.loads(out.out)["total"] == expected.total


def test_the_planners_notes_read_in_chinese(ctx, big_model, monkeypatch):
    from trainer_core import datacheck

    results = [panel.plan_form(the_issue_case(ctx, big_model), ctx, A100X4),
               panel.plan_form(the_issue_case(ctx, big_model, bf16=False, deepspeed="none"), ctx,
                               panel.HardwareChoice()),
               panel.plan_form(the_issue_case(ctx, big_model, finetuning_type="qlora"), ctx,
                               panel.HardwareChoice("V100-32GB", 1, 1, None))]
    notes = [n for r in results for n in (*r.notes, *r.plan.notes, *r.plan.assumptions)]
    # The data's own notes: a model folder without a tokenizer, data that cannot be read.
    bare = ctx.workdir / "config-only"
    bare.mkdir()
    shutil.copy(SHIPPED_14B / "config.json", bare / "config.json")
    monkeypatch.setattr(datacheck, "check_datasets", lambda *a, **k: [])  # no built-in model loaded for it
    cfg = dataclasses.replace(TrainConfig(), model_name_or_path=str(bare), dataset="qa", dataset_dir=str(ctx.data_dir))
    stats, data_notes = planner.data_statistics(cfg)
    assert stats is None and "has no tokenizer here" in data_notes[0]

    def unreadable(*a, **k):
        raise UserError("dataset 'qa' not found in dataset_info.json")

    monkeypatch.setattr(datacheck, "check_datasets", unreadable)
    data_notes += planner.data_statistics(cfg)[1]
    assert data_notes[-1].startswith("no data statistics (")
    without_data = planner.plan(dataclasses.replace(cfg, model_name_or_path=str(SHIPPED_14B)), planner.cpu_hardware())
    notes += [*data_notes, *without_data.assumptions]
    assert any("has no bf16" in n for n in notes) and any("QLoRA's 4-bit" in n for n in notes)
    assert any(n.startswith("CPU peak") for n in notes) and any(n.startswith("A100-40GB:") for n in notes)
    untranslated = [n for n in notes if translate(n, "zh") == n]
    assert not untranslated


def test_the_panel_never_prepares_the_built_in_model(ctx, monkeypatch, tmp_path):
    """Its tokens would need the built-in model's tokenizer (a shipped config has none); unprepared, the
    panel goes without statistics and says so, rather than holding the page's events for a conversion."""
    monkeypatch.setenv("QIHUANG_HOME", str(tmp_path / "empty-home"))
    from trainer_core import models

    monkeypatch.setattr(models, "ensure_default_model", lambda *a, **k: pytest.fail("the panel converted the model"))
    cfg = dataclasses.replace(read_config()[0], model_name_or_path=str(SHIPPED_14B), dataset_dir=str(ctx.data_dir),
                              dataset="qa")
    data, notes = panel.data_stats(cfg)
    assert data is None and any("has not been prepared" in note for note in notes), notes
