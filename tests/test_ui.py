"""The workbench's handlers as plain functions (no browser): i18n, the form, data views, uploads,
job views, and that starting the UI imports neither torch nor transformers."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest

from app import choices, form, jobview
from app.context import make_context
from app.i18n import LANGS, TEXT, t, translate
from app.tabs import chat, data, evaluate, export, train
from trainer_core import runs
from trainer_core.config import ConfigError, ConfigProblem
from trainer_core.data import preference_stats
from trainer_core.errors import Problem, UserError
from trainer_core.jobconfig import EvalConfig, ExportConfig

REPO = Path(__file__).resolve().parent.parent
BAD_DATA = Path(__file__).parent / "bad_data"


@pytest.fixture
def ctx(tmp_path, tiny_data_dir, tiny_model_dir):
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data_dir)
    return make_context(tmp_path / "work", data_dir, str(tiny_model_dir))


def form_values(ctx, **changes):
    values = form.initial_values(ctx, choices.dataset_names(ctx.data_dir))
    values.update(changes)
    return values


# ---- i18n ----------------------------------------------------------------------------------

def test_every_string_has_chinese_and_english_with_the_same_placeholders():
    assert LANGS == ("zh", "en")
    for key, texts in TEXT.items():
        assert len(texts) == 2 and all(text.strip() for text in texts), key
        zh, en = texts
        assert set(re.findall(r"{(\w+)}", zh)) == set(re.findall(r"{(\w+)}", en)), key


def test_every_key_the_app_uses_is_in_the_table(ctx):
    from app.ui import build_app

    demo = build_app(ctx)  # a missing key raises KeyError while building
    labels = [component for component in demo.blocks.values() if getattr(component, "label", None)]
    assert any(getattr(c, "label", None) == "训练数据集" for c in labels)
    source = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "app").rglob("*.py"))
    used = set(re.findall(r'\bt\("([a-z_]+\.[a-z_0-9]+)"', source))
    used |= set(re.findall(r'(?:text|label|info|placeholder)="([a-z_]+\.[a-z_0-9]+)"', source))
    missing = sorted(k for k in used if k not in TEXT)
    assert not missing
    for key in form.FORM_KEYS:
        assert f"cfg.{key}" in TEXT and f"help.{key}" in TEXT


def test_relabel_gives_one_update_per_translated_component(ctx):
    import gradio as gr

    from app.ui_kit import Labels

    L = Labels("zh")
    with gr.Blocks():
        button = L.make(gr.Button, text="train.start")
        radio = L.make(gr.Radio, label="cfg.stage", choice_keys=[("stage.sft", "sft"), ("stage.pt", "pt")],
                       value="sft")
    assert button.value == "开始训练"
    updates = L.relabel("en")
    assert updates[0]["value"] == "Start training"
    assert updates[1]["label"] == "Stage" and updates[1]["choices"][0] == ("SFT (supervised)", "sft")
    assert radio.value == "sft"


# ---- Parameters ----------------------------------------------------------------------------

def test_initial_form_is_the_lora_preset_on_the_launch_model_and_sample_data(ctx):
    values = form_values(ctx)
    assert values["model_source"] == "local" and values["model_path"] == ctx.model
    assert values["datasets"] == ["qa", "dialog"]  # conversation data; the text corpus is left out
    assert values["finetuning_type"] == "lora" and values["max_steps"] == 30
    cfg, fields, general = form.check(values, ctx)
    assert cfg is not None, (fields, general)
    assert cfg.dataset == "qa,dialog" and cfg.dataset_dir == str(ctx.data_dir)


def test_problems_are_flagged_beside_their_fields(ctx):
    cfg, fields, general = form.check(form_values(ctx, lora_rank=0, learning_rate=-1, lr_scheduler_type="cosine"), ctx)
    assert cfg is None
    assert set(fields) == {"lora_rank", "learning_rate"}
    assert "out of range" in fields["lora_rank"]
    assert form.field_info("lora_rank", "en", fields["lora_rank"]).startswith("⚠ lora_rank:")
    assert form.field_info("lora_rank", "zh") == "LoRA 低秩矩阵的秩（整数，≥ 1）"  # the allowed values in Chinese too
    assert form.field_info("lora_rank", "en").endswith("(an integer >= 1)")

    _, fields, _ = form.check(form_values(ctx, bf16=True, fp16=True), ctx)
    assert set(fields) == {"bf16", "fp16"}  # a rule about two keys flags both

    _, fields, general = form.check(form_values(ctx, datasets=[]), ctx)
    assert not fields and "dataset" in general[0]  # chosen on the Data tab, so reported in general


def test_model_folder_must_exist_here(ctx, tmp_path):
    _, fields, _ = form.check(form_values(ctx, model_source="local", model_path=str(ctx.workdir / "nope")), ctx)
    assert "does not exist" in fields["model_path"]
    _, fields, _ = form.check(form_values(ctx, model_source="known", model_path=""), ctx)
    assert "local model folder" in fields["model_path"]
    cfg, fields, _ = form.check(form_values(ctx, model_source="builtin"), ctx)
    assert cfg.model_name_or_path == "default" and not fields


def test_form_values_become_config_values(ctx):
    raw = form.raw_config(form_values(ctx, deepspeed="none", packing="true", max_samples=0, eval_steps=None,
                                 output_dir="  "))
    assert raw["deepspeed"] == "" and raw["packing"] is True
    assert raw["max_samples"] is None and raw["eval_steps"] is None and raw["output_dir"] == ""
    assert form.raw_config(form_values(ctx, deepspeed="z3"))["deepspeed"] == "z3"


def test_the_preference_keys_count_only_for_the_stages_they_apply_to(ctx):
    """The form shows pref_loss and simpo_gamma for dpo, the KTO weights for kto, pref_beta for both
    (as the LoRA keys for LoRA); a hidden key's value never reaches the config, so a value typed
    under dpo does not flag an sft form."""
    assert form.pref_shown("sft") == dict.fromkeys(form.PREF_KEYS, False)
    assert [k for k, shown in form.pref_shown("dpo").items() if shown] == ["pref_loss", "pref_beta", "simpo_gamma"]
    assert [k for k, shown in form.pref_shown("kto").items() if shown] == ["pref_beta", "kto_chosen_weight",
                                                                           "kto_rejected_weight"]
    typed = dict(pref_loss="orpo", pref_beta=0.2, kto_chosen_weight=2.0)
    assert not set(form.PREF_KEYS) & set(form.raw_config(form_values(ctx, stage="sft", **typed)))
    raw = form.raw_config(form_values(ctx, stage="dpo", **typed))
    assert (raw["pref_loss"], raw["pref_beta"], "kto_chosen_weight" in raw) == ("orpo", 0.2, False)
    _, fields, _ = form.check(form_values(ctx, stage="sft", **typed), ctx)
    assert not set(form.PREF_KEYS) & set(fields)
    _, fields, _ = form.check(form_values(ctx, stage="dpo", pref_beta=0), ctx)
    assert "pref_beta" in fields["pref_beta"] and "out of range" in fields["pref_beta"]


def test_each_core_problem_goes_under_the_fields_it_names_by_key(ctx):
    """The core's problems carry their keys; the tab reads no message's wording to place them."""
    fields, general = form.by_field([
        ConfigProblem(("lora_rank",), "lora_rank: 0 is out of range (an integer >= 1)"),
        ConfigProblem(("finetuning_type", "deepspeed"), "QLoRA with DeepSpeed ZeRO-3 is not supported; use z2 "
                                                        "or no DeepSpeed"),
        ConfigProblem((), "something else entirely"),
        ConfigProblem(("dataset",), "dataset: give at least one dataset name from dataset_info.json")])
    assert fields["lora_rank"].startswith("lora_rank:")
    assert fields["deepspeed"] == fields["finetuning_type"]  # a rule about two keys flags both
    assert general == ["something else entirely", "dataset: give at least one dataset name from dataset_info.json"]
    # A reworded message lands in the same place: only the keys count.
    fields, _ = form.by_field([ConfigProblem(("lora_rank",), "rank must be positive")])
    assert fields == {"lora_rank": "rank must be positive"}
    _, fields, _ = form.check(form_values(ctx, finetuning_type="qlora", deepspeed="z3"), ctx)
    assert set(fields) == {"finetuning_type", "deepspeed"} and "ZeRO-3" in fields["deepspeed"]


def test_the_summary_names_each_key_once(ctx):
    _, fields, general = form.check(form_values(ctx, lora_rank=0), ctx)
    assert form.summary(fields, general, "en").splitlines()[1] == "- `lora_rank`: 0 is out of range (an integer >= 1)"
    assert form.summary(fields, general, "zh").splitlines()[1] == "- `lora_rank`: 0 超出范围（整数，≥ 1）"


def test_preview_shows_the_exact_command_and_run_yaml(ctx):
    command, text = form.preview(form_values(ctx), ctx)
    assert "-m trainer_core train" in command and str(ctx.outputs_root) in command
    assert "run.yaml" in command
    assert "finetuning_type: lora" in text and f"model_name_or_path: {ctx.model}" in text
    with pytest.raises(UserError, match="lora_rank"):
        form.preview(form_values(ctx, lora_rank=0), ctx)


def test_save_and_load_config_round_trip(ctx):
    path = form.save(form_values(ctx, lora_rank=16, learning_rate=5e-4), "configs/mine.yaml", ctx)
    assert path == ctx.workdir / "configs" / "mine.yaml" and path.is_file()
    saved = form.resolve_config_path("configs/mine.yaml", ctx)
    values = form.load(saved, ctx, form_values(ctx), choices.dataset_names(ctx.data_dir))
    assert values["lora_rank"] == 16 and values["learning_rate"] == 5e-4
    assert values["datasets"] == ["qa", "dialog"] and values["model_path"] == ctx.model
    with pytest.raises(UserError, match=r"\.yaml"):
        form.save(form_values(ctx), "configs/mine.txt", ctx)
    bad = ctx.workdir / "configs" / "bad.yaml"
    bad.write_text("lora_rnk: 8\n", encoding="utf-8")
    with pytest.raises(UserError, match="did you mean 'lora_rank'"):
        form.load(form.resolve_config_path(str(bad), ctx), ctx, form_values(ctx), [])


def test_preset_fills_the_form_but_keeps_the_data_folder_and_launch_model(ctx):
    current = form_values(ctx)
    values = form.values_from_config(form.read_preset(ctx, "sft_qlora"), ctx, current,
                                       choices.dataset_names(ctx.data_dir))
    assert values["finetuning_type"] == "qlora" and values["max_steps"] == 10
    assert values["dataset_dir"] == str(ctx.data_dir)
    assert values["datasets"] == ["qa", "dialog"]  # the preset's tcm_qa is not in this folder
    assert values["model_path"] == ctx.model


def test_the_preset_list_offers_only_presets_and_each_fills_a_valid_form(ctx):
    """presets/models.yaml (the known-models list) is no preset: choosing it raised."""
    names = form.preset_names(ctx)
    assert names and "models" not in names
    for name in names:
        values = form.values_from_config(form.read_preset(ctx, name), ctx, form_values(ctx),
                                           choices.dataset_names(ctx.data_dir))
        cfg, problems, general = form.check(values, ctx)
        assert cfg is not None and not problems and not general, (name, problems, general)


# ---- mixing by ratio (issue 18): the Data tab's weights and strategy in the run form ---------

def test_weights_and_mix_strategy_travel_through_the_form(ctx):
    values = form_values(ctx, weights="0.6, 0.4", mix_strategy="interleave_over")
    raw = form.raw_config(values)
    assert raw["dataset"] == "qa:0.6,dialog:0.4" and raw["mix_strategy"] == "interleave_over"
    assert form.raw_config(form_values(ctx))["dataset"] == "qa,dialog"  # no weights: the names alone
    assert form.raw_config(form_values(ctx, weights="0.6；0.4"))["dataset"] == "qa:0.6,dialog:0.4"
    one = form.raw_config(form_values(ctx, datasets=["qa"], weights="2", mix_strategy="interleave_over"))
    assert one["dataset"] == "qa" and one["mix_strategy"] == "concat"  # one dataset is not mixed
    command, text = form.preview(values, ctx)
    assert "dataset: qa:0.6,dialog:0.4" in text and "mix_strategy: interleave_over" in text

    path = form.save(values, "configs/mixed.yaml", ctx)
    loaded = form.load(path, ctx, form_values(ctx), choices.dataset_names(ctx.data_dir))
    assert (loaded["datasets"], loaded["weights"], loaded["mix_strategy"]) == (["qa", "dialog"], "0.6,0.4",
                                                                              "interleave_over")
    assert form.raw_config(loaded)["dataset"] == "qa:0.6,dialog:0.4"

    # LLaMA-Factory's spelling: names in dataset, weights in interleave_probs.
    lf = ctx.workdir / "configs" / "lf.yaml"
    lf.write_text(f"stage: sft\ndo_train: true\ndataset: dialog,qa\ninterleave_probs: 0.25,0.75\n"
                  f"mix_strategy: interleave_under\ndataset_dir: {ctx.data_dir}\n", encoding="utf-8")
    loaded = form.load(lf, ctx, form_values(ctx), choices.dataset_names(ctx.data_dir))
    assert (loaded["datasets"], loaded["weights"], loaded["mix_strategy"]) == (["dialog", "qa"], "0.25,0.75",
                                                                              "interleave_under")
    assert form.raw_config(loaded)["dataset"] == "dialog:0.25,qa:0.75"
    # Weights alone mean interleave_under (the core's reading): the form shows the strategy that applies.
    weighted = form.values_from_config({"dataset": "qa:1,dialog:3"}, ctx, form_values(ctx), ["qa", "dialog"])
    assert weighted["weights"] == "1,3" and weighted["mix_strategy"] == "interleave_under"
    # A preset's dataset missing from this folder loses its weight with it; none left keeps the Data tab's.
    kept = form.values_from_config({"dataset": "tcm_qa:0.5,qa:0.2,dialog:0.3"}, ctx, form_values(ctx),
                                   ["qa", "dialog"])
    assert kept["datasets"] == ["qa", "dialog"] and kept["weights"] == "0.2,0.3"
    current = form_values(ctx, weights="1,2", mix_strategy="interleave_over")
    kept = form.values_from_config({"dataset": "tcm_qa:0.5,tcm_dialog:0.5"}, ctx, current, ["qa", "dialog"])
    assert (kept["datasets"], kept["weights"], kept["mix_strategy"]) == (["qa", "dialog"], "1,2", "interleave_over")


@pytest.mark.parametrize("weights, en, zh", [
    ("x,1", "dataset: mixing weight 'x' is not a number > 0", "dataset：混合权重 'x' 不是大于 0 的数"),
    ("0,1", "dataset: mixing weight '0' is not a number > 0", "dataset：混合权重 '0' 不是大于 0 的数"),
    ("1,-2", "dataset: mixing weight '-2' is not a number > 0", "dataset：混合权重 '-2' 不是大于 0 的数"),
    ("0.6", "interleave_probs: 1 weights for 2 datasets", "interleave_probs：1 个权重，却有 2 个数据集"),
    ("1,2,3", "interleave_probs: 3 weights for 2 datasets", "interleave_probs：3 个权重，却有 2 个数据集"),
])
def test_bad_weights_show_the_cores_message_under_the_field(ctx, weights, en, zh):
    values = form_values(ctx, weights=weights)
    assert form.mix_problem(values) == en
    assert form.field_info("weights", "en", en) == f"⚠ {en}"
    assert form.field_info("weights", "zh", en) == f"⚠ {zh}"
    cfg, fields, general = form.check(values, ctx)  # the run refuses them too, as a Data-tab problem
    assert cfg is None and not fields and general == [en]
    assert form.mix_problem(form_values(ctx, weights="")) is None
    assert form.mix_problem(form_values(ctx, datasets=["qa"], weights=weights)) is None  # one dataset: no weights


def test_the_composition_is_the_cores_count_of_the_training_split(ctx, monkeypatch):
    from trainer_core import data as core_data

    values = form_values(ctx, weights="0.6,0.4", mix_strategy="interleave_over", val_size=4, seed=7)
    found = form.composition(values, ctx)
    train, evals = core_data.load_datasets("qa:0.6,dialog:0.4", ctx.data_dir, "sft", val_size=4, seed=7,
                                           mix_strategy="interleave_over")
    assert found["records"] == core_data.mix_composition(train) and found["total"] == len(train)
    assert found["eval"] == 4 and found["strategy"] == "interleave_over"
    assert found["records"]["qa"] >= 48 - 4 and found["records"]["dialog"] > 16  # over: dialog repeated
    # No weights: every record once, in pick order; weights with concat draw as interleave_under.
    plain = form.composition(form_values(ctx, datasets=["dialog", "qa"], val_size=0), ctx)
    assert plain == {"strategy": "concat", "weights": None, "records": {"dialog": 16, "qa": 48}, "total": 64,
                     "eval": 0}
    assert form.composition(form_values(ctx, weights="1,1"), ctx)["strategy"] == "interleave_under"
    assert form.composition(form_values(ctx, max_samples=10, val_size=0), ctx)["records"] == {"qa": 10, "dialog": 10}

    table = form.composition_table(found, "zh").splitlines()
    assert "interleave_over" in table[0] and "另有 4 条留作验证" in table[0]
    assert table[-2].startswith("| qa | 0.6 | ") and table[-1].startswith("| dialog | 0.4 | ")
    line = form.composition_line(plain, "en")
    assert line == "Training split (64 records per epoch): dialog 16 (25.0%) · qa 48 (75.0%)"
    assert translate(line, "zh") == "训练集构成（每轮 64 条）：dialog 16 (25.0%) · qa 48 (75.0%)"

    # Asked again, nothing is read; a changed file is read again.
    monkeypatch.setattr(core_data, "read_dataset", lambda *a, **k: pytest.fail("read again"))
    assert form.composition(values, ctx) == found
    monkeypatch.undo()
    qa = json.loads((ctx.data_dir / "qa.json").read_text(encoding="utf-8"))
    (ctx.data_dir / "qa.json").write_text(json.dumps(qa[:20], ensure_ascii=False), encoding="utf-8")
    assert form.composition(form_values(ctx, datasets=["dialog", "qa"], val_size=0), ctx)["records"]["qa"] == 20

    # Data that takes the Arrow path is counted by the run, after tokenization: not read here.
    from trainer_core import arrow_data

    monkeypatch.setattr(arrow_data, "ARROW_FROM_BYTES", 1)
    monkeypatch.setattr(core_data, "read_dataset", lambda *a, **k: pytest.fail("read large data"))
    large = form.composition(form_values(ctx, weights="2,1", val_size=0), ctx)
    assert large["records"] is None and large["strategy"] == "interleave_under"
    assert "Arrow" in form.composition_table(large, "en") and "Arrow" in form.composition_line(large, "zh")
    monkeypatch.undo()
    monkeypatch.setattr(core_data, "read_dataset", lambda *a, **k: pytest.fail("read for the Arrow path"))
    assert form.composition(form_values(ctx, data_engine="arrow"), ctx)["records"] is None  # the form's engine
    streamed = form.composition(form_values(ctx, streaming=True, weights="1,1"), ctx)  # mixed as it is read
    assert streamed["records"] is None and streamed["streaming"]
    assert "no count per epoch" in form.composition_line(streamed, "en")
    monkeypatch.undo()

    # What keeps the run from mixing them is the core's message (the page translates it).
    with pytest.raises(UserError, match="raw text"):
        form.composition(form_values(ctx, datasets=["qa", "corpus"]), ctx)
    with pytest.raises(UserError, match="leaves none to train on"):
        form.composition(form_values(ctx, val_size=36, max_samples=None, weights="1,1"), ctx)


# ---- Data ----------------------------------------------------------------------------------

def test_preview_renders_conversations_escaped_and_paged():
    examples = [{"messages": [{"role": "user", "content": f"<script>alert({i})</script>"},
                              {"role": "assistant", "content": "黄芪补气"}], "source": "x", "index": i}
                for i in range(12)]
    page_html, page, text = data.render_page(examples, 3, "en")
    assert page == 3 and "page 3 of 3" in text
    assert "<script>" not in page_html and "&lt;script&gt;alert(10)" in page_html
    assert "qh-user" in page_html and "qh-assistant" in page_html and "黄芪补气" in page_html
    assert data.render_page(examples, 99, "zh")[1] == 3
    assert data.render_page([], 1, "zh")[1] == 1


def test_inspect_reports_problems_as_rows_not_tracebacks(ctx):
    examples, problems, _ = data.inspect_dataset("three_problems", str(BAD_DATA), "sft")
    rows = data.problem_rows(problems)
    assert [r[:2] for r in rows] == [[1, "output"], [2, "output"], [3, "instruction"]]
    assert len(examples) == 1
    examples, problems, _ = data.inspect_dataset("broken_json", str(BAD_DATA), "sft")
    assert examples == [] and data.problem_rows(problems)[0][0] == ""  # a whole-file problem has no record


def test_a_preference_pair_is_previewed_side_by_side_and_kto_with_its_label():
    pairs, problems, _ = data.inspect_dataset("tcm_preference", str(REPO / "data"), "sft")
    assert len(pairs) >= 150 and not problems
    page_html, _, _ = data.render_page(pairs, 1, "zh")
    assert page_html.count("class='qh-pair'") == data.PAGE_SIZE
    assert "选中的回答" in page_html and "被拒的回答" in page_html
    first = page_html.split("class='qh-rec'")[1]
    assert (first.index(html.escape(pairs[0]["chosen"][0]["content"][:20])) < first.index("qh-rejected")
            < first.index(html.escape(pairs[0]["rejected"][0]["content"][:20])))  # chosen left, rejected right
    rows = dict(data.stats_rows(preference_stats(pairs), None, "en"))
    assert rows["records"] == f"{len(pairs)}" and "share where the chosen answer is longer" in rows
    kto, problems, _ = data.inspect_dataset("tcm_kto", str(REPO / "data"), "sft")
    assert kto and not problems
    page_html, _, _ = data.render_page(kto, 1, "en")
    assert "Desirable answer" in page_html and "Undesirable answer" in page_html
    assert dict(data.stats_rows(preference_stats(kto), None, "zh"))["好的回答（kto_tag 为真）"] == str(
        sum(r["label"] for r in kto))


def test_text_data_is_read_as_pretraining_text_whatever_the_stage(ctx):
    examples, problems, _ = data.inspect_dataset("corpus", str(ctx.data_dir), "sft")
    assert examples and not problems and "text" in examples[0]


def test_stats_rows_and_token_lengths(ctx):
    examples, _, _ = data.inspect_dataset("dialog", str(ctx.data_dir), "sft")
    tokens, lengths, special = data.token_report(examples, ctx.model, "auto", 64)
    assert special == []
    assert len(lengths) == len(examples) and tokens["share_over_cutoff"] >= 0
    rows = dict(data.stats_rows(data.text_stats(examples), tokens, "en"))
    assert rows["records"] == "16" and rows["multi-turn share"] == "100.0%"
    assert "tokens p95" in rows and "share over cutoff_len (truncated)" in rows
    figure = data.histogram(lengths, 64, "zh")
    assert figure.axes[0].lines[0].get_xdata()[0] == 64  # the cutoff line


@pytest.mark.parametrize("name, expected", [
    ("../../etc/passwd.json", "passwd.json"),
    ("/etc/cron.d/evil.jsonl", "evil.jsonl"),
    ("..\\..\\windows\\x.csv", "x.csv"),
    ("..json", "json.json"),
    ("数据 集(1).JSON", "数据_集_1_.json"),
])
def test_upload_names_stay_inside_the_data_folder(tmp_path, name, expected):
    if expected == "json.json":
        with pytest.raises(UserError, match="unsupported file type"):
            data.safe_upload_name(name, tmp_path)
        return
    target = data.safe_upload_name(name, tmp_path)
    assert target.parent == tmp_path.resolve() and target.name == expected


def test_upload_names_refuse_odd_types_and_never_overwrite(tmp_path):
    for name in ("x.exe", "..", "/", "noext"):
        with pytest.raises(UserError):
            data.safe_upload_name(name, tmp_path)
    (tmp_path / "qa.json").write_text("[]")
    assert data.safe_upload_name("qa.json", tmp_path).name == "qa-1.json"


def test_register_upload_copies_and_registers(ctx, tmp_path):
    upload = tmp_path / "upload" / "新数据.csv"
    upload.parent.mkdir()
    upload.write_text("问题,回答\n黄芪的功效?,补气升阳\n当归的功效?,补血活血\n", encoding="utf-8")
    name, target = data.register_upload(str(upload), "../../新数据.csv", "my set", "alpaca",
                                        "instruction=问题, output=回答", ctx, ctx.data_dir)
    assert name == "my_set" and target == ctx.data_dir / "新数据.csv" and target.is_file()
    info = json.loads((ctx.data_dir / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["my_set"]["columns"] == {"instruction": "问题", "output": "回答"}
    examples, problems, _ = data.inspect_dataset("my_set", str(ctx.data_dir), "sft")
    assert len(examples) == 2 and not problems
    with pytest.raises(UserError, match="exists already"):
        data.register_upload(str(upload), "x.csv", "my_set", "alpaca", "instruction=问题, output=回答", ctx,
                             ctx.data_dir)


def test_register_refuses_a_file_with_problems_and_an_oversized_file(ctx):
    with pytest.raises(UserError, match="3 problem"):
        data.register_upload(str(BAD_DATA / "three_problems.json"), "three.json", "three", "alpaca", "", ctx,
                             ctx.data_dir)
    assert "three" not in choices.dataset_names(ctx.data_dir)
    ctx.max_upload_bytes = 10
    with pytest.raises(UserError, match="upload limit"):
        data.check_upload(str(BAD_DATA / "three_problems.json"), "alpaca", "", "sft", ctx.max_upload_bytes)


def test_check_upload_of_a_broken_file_lists_problems():
    _, problems = data.check_upload(str(BAD_DATA / "broken.json"), "alpaca", "", "sft", 1 << 20)
    assert problems and problems[0].record is None
    with pytest.raises(UserError, match="field=column"):
        data.parse_columns("instruction")
    assert data.parse_columns('{"output": "回答"}') == {"output": "回答"}
    assert data.parse_columns("instruction=问题，output=回答") == {"instruction": "问题", "output": "回答"}


# ---- jobs: train, eval, export -------------------------------------------------------------

def _fake_run(root: Path, name: str, state: str, losses: list[float], error: str | None = None) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / runs.CONFIG_FILE).write_text("stage: sft\n")
    runs.update_status(run_dir, state=state, pid=None, pgid=None, started_at=runs.now_iso(), error=error)
    for step, loss in enumerate(losses, start=1):
        runs.append_log(run_dir, {"step": step, "total_steps": 4, "loss": loss,
                                  "eval_loss": loss + 0.1 if step == 2 else None, "eta_seconds": 3})
    (run_dir / runs.CONSOLE_FILE).write_text("line 1\nline 2\n")
    return run_dir


def test_runs_table_progress_and_curves(ctx):
    first = _fake_run(ctx.outputs_root, "sft-lora-1", "finished", [2.0, 1.5, 1.2, 1.0])
    second = _fake_run(ctx.outputs_root, "sft-lora-2", "failed", [2.1, 1.9], error="Out of memory: <lower> it.")
    rows = choices.list_runs(ctx)
    assert {r["run_dir"] for r in rows} == {str(first), str(second)}
    table = {r[0]: r for r in train.table_rows(rows, "en")}
    assert table["sft-lora-1"][1:4] == ["finished", "4/4", "1.0000"]
    rows = train.plot_rows(str(first), [str(second)], "en")
    assert {r["series"] for r in rows} == {"sft-lora-1 · train", "sft-lora-1 · eval", "sft-lora-2 · train",
                                           "sft-lora-2 · eval"}
    assert [r["value"] for r in train.plot_rows(str(first), None, "en") if r["series"] == "train"] == [2.0, 1.5, 1.2,
                                                                                                        1.0]
    svg = train.plot_html(rows, "zh")
    tree = ElementTree.fromstring(svg[svg.index("<svg"):svg.rindex("</svg>") + 6])
    markers = [len(group.findall(".//{http://www.w3.org/2000/svg}use"))
               for group in tree.iter("{http://www.w3.org/2000/svg}g") if group.get("id", "").startswith("loss-")]
    assert markers == [4, 1, 2, 1]  # a marker per logged point: train and eval of each run
    assert "sft-lora-2 · eval" in svg and "步数" in svg
    assert "还没有记录到 loss" in train.plot_html([], "zh")
    failed = jobview.progress_html(jobview.job_progress(str(second)), "en")
    assert "Out of memory: &lt;lower&gt; it." in failed and "failed" in failed and "2 / 4" in failed
    assert "100%" in jobview.progress_html(jobview.job_progress(str(first)), "zh")


def test_a_preference_run_shows_its_reward_curves_and_an_sft_run_none(ctx):
    sft = _fake_run(ctx.outputs_root, "sft-lora-r", "finished", [2.0, 1.5])
    dpo = _fake_run(ctx.outputs_root, "dpo-lora-r", "finished", [])
    for step, (chosen, rejected) in enumerate([(0.0, 0.0), (0.2, -0.1), (0.5, -0.3)], start=1):
        runs.append_log(dpo, {"step": step, "total_steps": 3, "loss": 0.69 - 0.1 * step, "rewards_chosen": chosen,
                              "rewards_rejected": rejected, "rewards_margin": chosen - rejected,
                              "rewards_accuracy": 0.5 + 0.2 * (step - 1),
                              "eval_rewards_accuracy": 0.6 if step == 3 else None})
    assert train.reward_rows(str(sft), None, "en") == ([], [])
    assert train.reward_html(([], []), "en")["visible"] is False
    rewards, accuracy = train.reward_rows(str(dpo), None, "en")
    assert [r["value"] for r in rewards if r["series"] == "reward margin"] == pytest.approx([0.0, 0.3, 0.8])
    assert {r["series"] for r in accuracy} == {"preference accuracy", "preference accuracy · eval"}
    shown = train.reward_html(train.reward_rows(str(dpo), None, "zh"), "zh")
    assert shown["visible"] is True
    assert "选中回答的奖励" in shown["value"] and "偏好准确率 · 验证" in shown["value"]
    assert shown["value"].count("<svg") == 2


def test_a_requested_stop_is_a_neutral_note_in_the_pages_language(ctx):
    stopped = _fake_run(ctx.outputs_root, "sft-lora-3", "aborted", [2.0, 1.8],
                        error="Stopped by request (SIGTERM); resume with resume_from_checkpoint=auto from step 2.")
    for lang, words in (("zh", "第 2 步停止"), ("en", "Stopped on request at step 2")):
        shown = jobview.progress_html(jobview.job_progress(str(stopped)), lang)
        assert words in shown and "qh-error" not in shown and "SIGTERM" not in shown
        assert t("train.resume", lang) in shown  # the way on


def test_one_logged_point_is_drawn_on_an_axis_from_zero():
    from app.plots import axis_ranges, loss_svg

    assert axis_ranges([{"step": 1, "value": 1.0, "series": "train"}]) == ((0.0, 2.0), (0.0, 1.15))
    assert axis_ranges([{"step": s, "value": 3.0 - s, "series": "train"} for s in (1, 2)]) == (None, None)
    svg = loss_svg([{"step": 1, "value": 1.0, "series": "train"}])
    assert "0.96" not in svg and "1.04" not in svg


def test_start_refuses_an_invalid_form_and_resume_needs_a_stopped_run(ctx, tmp_path):
    with pytest.raises(UserError, match="lora_rank"):
        train.start(form_values(ctx, lora_rank=0), ctx)
    with pytest.raises(UserError, match="no run.yaml"):
        train.resume(str(tmp_path))


def test_console_tail_reads_only_appended_lines(tmp_path):
    (tmp_path / runs.CONSOLE_FILE).write_text("a\nb\n")
    text, state = jobview.console_tail({}, str(tmp_path))
    assert text == "a\nb"
    with open(tmp_path / runs.CONSOLE_FILE, "a") as fh:
        fh.write("c\npartial")
    text, state = jobview.console_tail(state, str(tmp_path))
    assert text == "a\nb\nc"  # the unfinished line waits for its end
    assert jobview.console_tail(state, None) == ("", {})


def test_only_changed_sends_what_changed():
    assert jobview.only_changed([1, "x"], None) == [1, "x"]
    same, new = jobview.only_changed([1, "y"], [1, "x"])
    assert same == {"__type__": "update"} and new == "y"


def test_eval_and_export_configs_from_the_forms(ctx, tmp_path):
    cfg = evaluate.eval_config("RUN", tasks=["ppl", "generate"], datasets=["qa"], dataset_dir="/d", split="all",
                               max_samples=5, n_shot=0, max_new_tokens=32, batch_size=2)
    assert cfg == EvalConfig(run="RUN", task="ppl,generate", dataset="qa", dataset_dir="/d", split="all",
                             max_samples=5, n_shot=0, max_new_tokens=32, batch_size=2)
    assert evaluate.eval_config("RUN", base_only=True, split="auto", max_new_tokens=None) == EvalConfig(
        run="RUN", base_only=True)  # auto and a cleared number: the config's defaults
    assert export.export_config("RUN", "float16", "1GB", [], True) == ExportConfig(
        run="RUN", dtype="float16", max_shard_size="1GB", gguf="none", overwrite=True)
    with pytest.raises(UserError, match="pick a finished run"):
        evaluate.eval_config("")
    # A mistake in a form is the config's problem, shown in the page's language.
    with pytest.raises(ConfigError) as err:
        evaluate.eval_config("RUN", batch_size=0)
    assert "batch_size：0 超出范围（整数，≥ 1）" in jobview.error_text(err.value, "zh")
    with pytest.raises(ConfigError) as err:
        export.export_config("RUN", max_shard_size="big")
    assert [p.keys for p in err.value.problems] == [("max_shard_size",)]
    assert "'big' 不是有效的大小" in jobview.error_text(err.value, "zh")
    run = _fake_run(ctx.outputs_root, "sft-lora-3", "finished", [1.0])
    assert choices.finished_runs(ctx) == []  # no adapter/ yet
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")
    assert choices.finished_runs(ctx) == [str(run)]
    (run / "export").mkdir()
    (run / "export" / "loss.png").write_bytes(b"\x89PNG")
    (run / "export" / "README.md").write_text("# card\n![loss](loss.png)\n![x](../secret.png)\n")
    card = export.model_card(str(run))
    assert "data:image/png;base64," in card and "](../secret.png)" in card
    assert [row[0] for row in export.export_files(str(run))] == ["README.md", "loss.png"]


def test_eval_results_render_with_the_core_compare(tmp_path):
    job = tmp_path / "eval" / "20260101-000000"
    job.mkdir(parents=True)
    runs.update_status(job, state="finished")
    assert evaluate.results_markdown([str(job)]) == ""  # status.json is not a result
    result = {"task": "ppl", "dataset": "qa", "split": "validation", "label": "tuned (adapter)", "n_shot": 0,
              "metrics": {"loss": 1.2, "perplexity": 3.32, "tokens": 100}}
    (job / "ppl-qa.json").write_text(json.dumps(result))
    table = evaluate.results_markdown([str(job)])
    assert "perplexity" in table and "3.32" in table


# ---- Chat ----------------------------------------------------------------------------------

class FakeSession:
    has_adapter = True
    model = object()

    def stream(self, history, message, system="", settings=None, use_adapter=True):
        reply = ("tuned " if use_adapter else "base ") + message
        for end in range(1, len(reply) + 1):
            yield reply[:end]


def test_chat_streams_growing_replies_and_compares(monkeypatch):
    monkeypatch.setattr(chat, "_SESSION", FakeSession())
    settings = chat.generation_settings(16, 0.7, 0.9, 50, 1.1, False)
    steps = list(chat.respond("你好", [], [], "", settings, compare=False))
    assert len(steps) > 2 and steps[-1][0][-1] == {"role": "assistant", "content": "tuned 你好"}
    assert steps[0][0][-1]["content"] == "t"  # streamed: the reply grows
    tuned, base = list(chat.respond("hi", [], [], "", settings, compare=True))[-1]
    assert base[-1]["content"] == "base hi" and tuned[-1]["content"] == "tuned hi"
    with pytest.raises(UserError):
        chat.generation_settings(16, 9, 0.9, 50, 1.1, False)


# ---- start-up ------------------------------------------------------------------------------

def test_building_the_ui_imports_neither_torch_nor_transformers(tmp_path, tiny_data_dir):
    code = ("import sys; from app.context import make_context; from app.ui import build_app; "
            f"build_app(make_context({str(tmp_path)!r}, {str(tiny_data_dir)!r})); "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'matplotlib') if m in sys.modules]; "
            "print('HEAVY', heavy)")
    started = time.time()
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    assert time.time() - started < 60


def test_problem_rows_keep_whole_file_problems_first():
    rows = data.problem_rows([Problem("f.json", None, None, "not JSON"), Problem("f.json", 3, "output", "missing")])
    assert rows == [["", "", "not JSON"], [3, "output", "missing"]]
    assert t("data.page_of", "en", page=1, pages=2, records=7) == "page 1 of 2, 7 records"


def test_one_duration_format_for_the_page_and_the_training_log():
    """runs.format_duration: the page's ETA and elapsed (M:SS, H:MM:SS from an hour, – unknown)
    and the training log's ETA (always H:MM:SS, whole seconds)."""
    from trainer_core.train import format_progress

    assert [runs.format_duration(s) for s in (None, 0, 59.4, 59.6, 61, 3599, 3600, 36000 + 62)] == [
        "–", "0:00", "0:59", "1:00", "1:01", "59:59", "1:00:00", "10:01:02"]
    assert [runs.format_duration(s, always_hours=True) for s in (0, 61, 3661)] == ["0:00:00", "0:01:01", "1:01:01"]
    assert format_progress({"step": 1, "total_steps": 4, "eta_seconds": 3661.9}) == "step 1/4  ETA 1:01:01"
    assert format_progress({"step": 5, "total_steps": 20, "loss": 0.6063, "rewards_margin": 0.1234,
                            "rewards_accuracy": 0.75, "rewards_chosen": 0.1}) == (
        "step 5/20  loss 0.6063  margin 0.123  acc 0.75")  # a preference run's line
    shown = jobview.progress_html({"state": "running", "step": 1, "total_steps": 4, "eta_seconds": 75,
                                   "elapsed_seconds": 3725}, "en")
    assert "ETA 1:15" in shown and "1:02:05" in shown


def test_a_closed_event_stream_leaves_its_sessions_messages_for_the_next_stream():
    """The work-around in app/ui.py (keep_session_queues) is applied to the installed Gradio, whose
    routes.py was read for it: a cancelled stream's `del` no longer takes the session's queue."""
    import gradio as gr

    from app.ui import SESSION_RACE_VERSIONS, keep_session_queues

    assert gr.__version__ in SESSION_RACE_VERSIONS, (
        f"gradio {gr.__version__}: read its routes.py sse_stream for the race keep_session_queues works around, "
        "then list the version in app/ui.py SESSION_RACE_VERSIONS (or remove the work-around if it is fixed)")
    with gr.Blocks() as demo:
        gr.Textbox()
    demo.queue()
    queues = demo._queue.pending_messages_per_session
    queues["before"] = "kept"
    assert keep_session_queues(demo)
    queues = demo._queue.pending_messages_per_session
    queues["session"] = "messages"
    del queues["session"]  # what sse_stream does when one of the session's streams is cancelled
    assert queues["session"] == "messages" and queues["before"] == "kept"
    assert queues.max_size == 2000
