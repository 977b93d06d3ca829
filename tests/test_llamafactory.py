"""LLaMA-Factory configs and command lines (issue 18): a LLaMA-Factory training YAML and the
train_bash.py flag line run here; its harmless keys give one notice each, values that contradict
what happens here and keys we do not know are problems, its template names map to ours where the
text is the same. Fast: no model is loaded, nothing trains (`--dry-run`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainer_core.cli import main
from trainer_core.config import (
    KEYS,
    LLAMAFACTORY_KEYS,
    LLAMAFACTORY_OTHER_TEMPLATES,
    LLAMAFACTORY_TEMPLATES,
    ConfigNotice,
    check_config,
    parse_overrides,
    read_config,
)
from trainer_core.errors import UserError
from trainer_core.tokenization import TEMPLATES, _compile_template

HERE = Path(__file__).parent
REPO = HERE.parent
EXAMPLE = HERE / "llamafactory" / "llama3_lora_sft.yaml"


def harmless(name: str) -> str:
    return f"{name} is LLaMA-Factory's; taken as harmless ({LLAMAFACTORY_KEYS[name].reason})"


EXAMPLE_NOTICES = [
    harmless("do_train"), harmless("overwrite_cache"), harmless("plot_loss"),  # preprocessing_num_workers is ours
    "overwrite_output_dir: true is taken as resume_from_checkpoint: none (LLaMA-Factory then does not resume; an "
    "output_dir that already holds checkpoints is refused here rather than overwritten)",
    harmless("ddp_timeout"), harmless("eval_strategy")]


def test_a_llamafactory_example_yaml_runs_with_its_notices(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", str(EXAMPLE), f"output_dir={out}", "--dry-run"]) == 0
    printed = capsys.readouterr()
    assert printed.err.splitlines() == [f"note: {n}" for n in EXAMPLE_NOTICES]
    assert printed.out.splitlines()[:2] == ["# command", f"{sys.executable} -m trainer_core train {out}/run.yaml"]
    cfg, notices = read_config(EXAMPLE)
    assert [str(n) for n in notices] == EXAMPLE_NOTICES
    assert (cfg.template, cfg.lora_target, cfg.bf16, cfg.val_size, cfg.eval_steps, cfg.cutoff_len) == (
        "llama3", "all", True, 0.1, 500, 1024)
    assert cfg.resume_from_checkpoint == "none" and cfg.finetuning_type == "lora" and cfg.lora_alpha == 16


def a_harmless_value(name: str):
    spec = LLAMAFACTORY_KEYS[name]
    if spec.harmless:
        return spec.harmless[0]
    return False if spec.means else True


@pytest.mark.parametrize("name", sorted(LLAMAFACTORY_KEYS))
def test_each_harmless_key_gives_its_notice(name):
    cfg, problems, notices = check_config({name: a_harmless_value(name)})
    assert problems == [] and cfg is not None
    assert notices == [ConfigNotice((name,), harmless(name))]


RESTRICTED = sorted(n for n in LLAMAFACTORY_KEYS if LLAMAFACTORY_KEYS[n].harmless)


@pytest.mark.parametrize("name", RESTRICTED)
def test_a_value_that_contradicts_us_is_a_problem(name):
    spec = LLAMAFACTORY_KEYS[name]
    value = (not spec.harmless[0]) if isinstance(spec.harmless[0], bool) else "bogus"
    cfg, problems, notices = check_config({name: value})
    spelled = str(value).lower()
    assert cfg is None and notices == []
    assert [p.message for p in problems] == [f"{name}: '{spelled}' is not supported; {spec.otherwise}"]


def test_the_contradictions_the_issue_names():
    _, problems, _ = check_config({"do_train": False, "do_eval": True, "do_predict": True})
    assert [p.message.split(";")[0] for p in problems] == [
        "do_train: 'false' is not supported", "do_eval: 'true' is not supported", "do_predict: 'true' is not supported"]


@pytest.mark.parametrize("name, nearest", [("neat_packing", "packing"), ("pure_bf16", "bf16"),
                                           ("save_total_limt", "save_total_limit")])
def test_a_key_we_do_not_support_is_refused_by_name_with_the_nearest(name, nearest):
    cfg, problems, _ = check_config({name: True})
    assert cfg is None and [p.message for p in problems] == [f"unknown key '{name}'; did you mean '{nearest}'?"]


def test_an_unsupported_key_in_a_llamafactory_yaml_exits_2(capsys, tmp_path):
    path = tmp_path / "lf.yaml"
    path.write_text(EXAMPLE.read_text(encoding="utf-8") + "use_dora: true\nflash_attn: fa2\n", encoding="utf-8")
    assert main(["train", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'use_dora'; see README.md for the list of keys" in err
    assert "flash_attn: 'fa2' is not supported; the attention kernel is not chosen here" in err


TRAIN_BASH = ["--stage", "sft", "--do_train", "--model_name_or_path", "default", "--dataset", "tcm_qa",
              "--template", "qwen", "--finetuning_type", "lora", "--lora_target", "q_proj,v_proj", "--overwrite_cache",
              "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "4", "--lr_scheduler_type",
              "cosine", "--logging_steps", "10", "--save_steps", "1000", "--learning_rate", "5e-5",
              "--num_train_epochs", "3.0", "--plot_loss", "--fp16"]


def test_the_train_bash_flag_line_parses_to_the_config():
    cfg, notices = read_config(None, TRAIN_BASH)
    assert (cfg.stage, cfg.template, cfg.finetuning_type, cfg.lora_target, cfg.fp16, cfg.bf16) == (
        "sft", "qwen", "lora", "q_proj,v_proj", True, False)
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, cfg.learning_rate,
            cfg.num_train_epochs, cfg.logging_steps, cfg.save_steps) == (4, 4, 5e-5, 3.0, 10, 1000)
    assert [n.keys for n in notices] == [("do_train",), ("overwrite_cache",), ("plot_loss",)]


def test_the_flag_line_runs_without_a_config_file_in_either_spelling(capsys, tmp_path):
    hyphens = [a.replace("_", "-") if a.startswith("--") else a for a in TRAIN_BASH]
    assert main(["train", *hyphens, "--output-dir", str(tmp_path / "run"), "--dry_run"]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("# command\n") and str(tmp_path / "run" / "run.yaml") in printed.out
    assert printed.err.splitlines() == [f"note: {harmless(n)}" for n in ("do_train", "overwrite_cache", "plot_loss")]
    assert read_config(None, hyphens)[0] == read_config(None, TRAIN_BASH)[0]


def test_bare_flags():
    assert parse_overrides(["--fp16", "--plot_loss", "--lora_rank", "8", "--do-train"]) == {
        "fp16": "true", "plot_loss": "true", "lora_rank": "8", "do_train": "true"}
    with pytest.raises(UserError, match="--lora_rank needs a value"):  # a key of ours that takes a value
        parse_overrides(["--lora_rank", "--fp16"])
    cfg, problems, _ = check_config(parse_overrides(["--lora_rnak"]))  # unknown: the usual suggestion
    assert [p.message for p in problems] == ["unknown key 'lora_rnak'; did you mean 'lora_rank'?"]


# ---- templates --------------------------------------------------------------------------------
# LLaMA-Factory's slots (src/llamafactory/data/template.py) for the names mapped to ours:
# (prefix, system, user, assistant, default system).
IM = ("", "<|im_start|>system\n{}<|im_end|>\n", "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
      "{}<|im_end|>\n", "")
LF_SLOTS = {
    "chatml": IM, "yi": IM, "smollm": IM, "qwen3_nothink": IM,
    "qwen": IM[:4] + ("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",),
    "llama3": ("<|begin_of_text|>", "<|start_header_id|>system<|end_header_id|>\n\n{}<|eot_id|>",
               "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
               "\n\n", "{}<|eot_id|>", ""),
}


def llamafactory_text(name: str, messages: list[dict]) -> str:
    """What LLaMA-Factory's Template._encode writes for a conversation (as text)."""
    prefix, system, user, assistant, default_system = LF_SLOTS[name]
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    sys_text = messages[0]["content"] if messages[0]["role"] == "system" else default_system
    text = prefix + (system.format(sys_text) if sys_text else "")
    return text + "".join((user if m["role"] == "user" else assistant).format(m["content"]) for m in turns)


CONVERSATIONS = [
    [{"role": "user", "content": "黄芪的功效？"}, {"role": "assistant", "content": "补气升阳。"}],
    [{"role": "system", "content": "你是中医助手"}, {"role": "user", "content": "麻黄？"},
     {"role": "assistant", "content": "辛、微苦，温。"}, {"role": "user", "content": "归经？"},
     {"role": "assistant", "content": "归肺、膀胱经。"}],
]


@pytest.mark.parametrize("lf_name", sorted(LLAMAFACTORY_TEMPLATES))
def test_a_mapped_template_renders_llamafactorys_text(lf_name):
    cfg, problems, notices = check_config({"template": lf_name})
    ours = LLAMAFACTORY_TEMPLATES[lf_name]
    assert problems == [] and cfg is not None and cfg.template == ours
    assert notices == ([] if ours == lf_name else [ConfigNotice(("template",), (
        f"template: LLaMA-Factory's '{lf_name}' is the same text as our '{ours}'; taken as template: {ours}"))])
    render = _compile_template(SimpleNamespace(chat_template=TEMPLATES[ours], bos_token="<|begin_of_text|>",
                                               eos_token="<|end_of_text|>"))
    for messages in CONVERSATIONS:
        assert render(messages) == llamafactory_text(lf_name, messages)
        # The prompt before the last reply: LLaMA-Factory's user slot ends with the assistant header.
        assert render(messages[:-1], add_generation_prompt=True) == llamafactory_text(lf_name, messages)[
            : -len(LF_SLOTS[lf_name][3].format(messages[-1]["content"]))]


def test_a_llamafactory_template_not_built_in_gets_a_message():
    for name in ("glm4", "default", "qwen2_vl", "mistral"):
        assert name in LLAMAFACTORY_OTHER_TEMPLATES
        cfg, problems, _ = check_config({"template": name})
        assert cfg is None and [(p.keys, p.message) for p in problems] == [(("template",), (
            f"template: '{name}' is a LLaMA-Factory template that is not built in here; write template: auto to use "
            "the model's own chat template (its tokenizer's), or choose one of chatml, qwen, llama3"))]
    assert not set(LLAMAFACTORY_OTHER_TEMPLATES) & set(LLAMAFACTORY_TEMPLATES)
    assert set(LLAMAFACTORY_TEMPLATES.values()) <= set(KEYS["template"].metadata["choices"])


# ---- LLaMA-Factory's readings of our keys, in a LLaMA-Factory config only ------------------------

def test_llamafactorys_qlora_lora_alpha_and_resume_readings():
    lf = {"do_train": True}
    assert check_config({"quantization_bit": 4})[0].finetuning_type == "lora"  # a config of ours: as written
    assert check_config({**lf, "quantization_bit": 4})[0].finetuning_type == "qlora"
    assert check_config({**lf, "finetuning_type": "full", "quantization_bit": 4})[0].finetuning_type == "full"
    assert check_config({"lora_rank": 32})[0].lora_alpha == 16
    cfg, _, notices = check_config({**lf, "lora_rank": 32})
    assert cfg.lora_alpha == 64 and notices[-1].message == (
        "lora_alpha is not set; LLaMA-Factory's default is 2 x lora_rank, taken as lora_alpha: 64")
    assert check_config({**lf, "lora_rank": 32, "lora_alpha": 8})[0].lora_alpha == 8
    assert check_config({**lf, "resume_from_checkpoint": None})[0].resume_from_checkpoint == "auto"
    both = {**lf, "resume_from_checkpoint": None, "overwrite_output_dir": True}
    assert check_config(both)[0].resume_from_checkpoint == "none"
    cfg, _, notices = check_config({"overwrite_output_dir": True, "resume_from_checkpoint": "/ckpt/checkpoint-5"})
    assert cfg.resume_from_checkpoint == "/ckpt/checkpoint-5"  # as in LLaMA-Factory, the given checkpoint wins
    assert notices == [ConfigNotice(("overwrite_output_dir", "resume_from_checkpoint"), (
        "overwrite_output_dir: true is LLaMA-Factory's; resume_from_checkpoint as given decides here"))]


def test_the_readme_lists_every_llamafactory_key_and_template():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = re.split(r"\n##+ ", readme.split("### From LLaMA-Factory", 1)[1], maxsplit=1)[0]
    missing = [k for k in [*LLAMAFACTORY_KEYS, *LLAMAFACTORY_TEMPLATES] if f"`{k}`" not in section]
    assert not missing, missing
