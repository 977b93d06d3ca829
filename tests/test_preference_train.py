"""Preference training (stage dpo and kto, trainer_core/preference.py) on the tiny model: the
collators' layout against encode_preference, each pref_loss through the one recipe with its reward
fields in trainer_log.jsonl, ORPO and SimPO against LLaMA-Factory's formulas computed here from a
plain forward, the LoRA reference being the base model (adapter off, no copy), KTO, and bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from trainer_core import preference, runs
from trainer_core.config import ConfigError, config_from_dict, validate
from trainer_core.errors import UserError
from trainer_core.tokenization import IGNORE_INDEX, encode_preference

REWARDS = ("rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy")
HERBS = ["附子", "麻黄", "黄芪", "人参", "白术", "茯苓", "甘草", "半夏"]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def pair(i: int) -> dict:
    herb = HERBS[i % len(HERBS)]
    return {"prompt": [user(f"{herb}的用量？（{i}）")],
            "chosen": [assistant(f"{herb}按药典用量，孕妇慎用，请遵医嘱。" + "补气" * (i % 3))],
            "rejected": [assistant("随意" * (1 + i % 2))]}


@pytest.fixture(scope="module")
def pref_data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pref-data")
    pairs = [{"instruction": p["prompt"][0]["content"], "input": "", "chosen": p["chosen"][0]["content"],
              "rejected": p["rejected"][0]["content"]} for p in map(pair, range(24))]
    kto = [{"conversations": [{"from": "human", "value": f"{HERBS[i % 8]}可以多用吗？{i}"},
                              {"from": "gpt", "value": "按药典用量，遵医嘱。" if i % 2 else "多用更好。"}],
            "kto_tag": bool(i % 2)} for i in range(16)]
    qa = [{"instruction": "黄芪的功效？", "input": "", "output": "补气升阳。"}] * 4
    files = {"pairs.json": pairs, "kto.json": kto, "qa.json": qa}
    for name, records in files.items():
        (folder / name).write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    info = {"pairs": {"file_name": "pairs.json", "ranking": True,
                      "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen",
                                  "rejected": "rejected"}},
            "kto": {"file_name": "kto.json", "formatting": "sharegpt",
                    "columns": {"messages": "conversations", "kto_tag": "kto_tag"}},
            "qa": {"file_name": "qa.json", "formatting": "alpaca"}}
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def run_config(model: Path, data: Path, out: Path, **extra):
    return config_from_dict({"model_name_or_path": str(model), "dataset_dir": str(data), "output_dir": str(out),
                             "stage": "dpo", "dataset": "pairs", "cutoff_len": 64, "logging_steps": 1,
                             "learning_rate": 5e-3, "per_device_train_batch_size": 4, "max_steps": 3,
                             "save_steps": 100, "seed": 0, **extra})


def tokenizer_of(model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


# ---- the collators (fast) ---------------------------------------------------------------------------------

def test_pair_collator_lays_out_chosen_then_rejected_with_our_labels(tiny_model_dir):
    tokenizer = tokenizer_of(tiny_model_dir)
    samples, _ = encode_preference([pair(0), pair(1)], tokenizer, cutoff_len=64)
    batch = preference.PairCollator(tokenizer.pad_token_id)(samples)
    rows = [(s["chosen_input_ids"], s["chosen_labels"]) for s in samples]
    rows += [(s["rejected_input_ids"], s["rejected_labels"]) for s in samples]
    width = max(len(ids) for ids, _ in rows)
    assert batch["input_ids"].shape == (4, width)
    for i, (ids, labels) in enumerate(rows):
        n = len(ids)
        assert batch["input_ids"][i].tolist() == ids + [tokenizer.pad_token_id] * (width - n)  # right padding
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
        assert batch["completion_mask"][i].tolist() == [int(lab != IGNORE_INDEX) for lab in labels] + [0] * (width - n)
    # The trained tokens are the answer alone: what TRL's loss reads is exactly our labels
    masked = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE_INDEX)
    assert masked[0].tolist()[:len(rows[0][1])] == rows[0][1]


def test_kto_collator_pairs_each_prompt_with_the_answer_before_it(tiny_model_dir):
    tokenizer = tokenizer_of(tiny_model_dir)
    answers = (("附子", "遵医嘱。", True), ("麻黄", "多用更好。", False), ("人参", "看情况", True))
    records = [{"prompt": [user(f"{herb}可以多用吗？")], "completion": [assistant(answer)], "label": good}
               for herb, answer, good in answers]
    samples, _ = encode_preference(records, tokenizer, cutoff_len=64)
    batch = preference.KTOCollator(tokenizer.pad_token_id)(samples)
    assert batch["label"].tolist() == [True, False, True]
    for i, sample in enumerate(samples):
        start = next(k for k, lab in enumerate(sample["labels"]) if lab != IGNORE_INDEX)
        other = samples[i - 1]  # the first takes the last's answer
        other_start = next(k for k, lab in enumerate(other["labels"]) if lab != IGNORE_INDEX)
        kl_ids = sample["input_ids"][:start] + other["input_ids"][other_start:]
        kl_mask = [0] * start + [int(lab != IGNORE_INDEX) for lab in other["labels"][other_start:]]
        n = len(kl_ids)
        assert batch["KL_input_ids"][i].tolist()[:n] == kl_ids
        assert batch["KL_completion_mask"][i].tolist()[:n] == kl_mask
        assert batch["KL_attention_mask"][i].tolist() == [1] * n + [0] * (batch["KL_input_ids"].shape[1] - n)
        assert batch["completion_mask"][i].tolist()[:len(sample["labels"])] == [
            int(lab != IGNORE_INDEX) for lab in sample["labels"]]


# ---- bad inputs (fast) ------------------------------------------------------------------------------------

def test_preference_keys_with_another_stage_are_refused_naming_the_key():
    _, problems = validate({"stage": "sft", "pref_loss": "orpo"})
    assert [p.keys for p in problems] == [("pref_loss", "stage")]
    assert problems[0].message.startswith("pref_loss: orpo applies to stage dpo only, and stage is sft")
    _, problems = validate({"stage": "dpo", "kto_rejected_weight": 2, "simpo_gamma": 1})
    assert {p.keys[0] for p in problems} == {"kto_rejected_weight", "simpo_gamma"}
    _, problems = validate({"stage": "kto", "per_device_train_batch_size": 1, "packing": True})
    assert {p.keys[0] for p in problems} == {"per_device_train_batch_size", "packing"}
    assert validate({"stage": "dpo", "pref_loss": "simpo", "simpo_gamma": 1, "pref_beta": 2})[1] == []
    assert validate({"stage": "kto", "kto_chosen_weight": 1.5, "pref_beta": 0.2})[1] == []


def test_a_dpo_run_on_sft_data_names_the_dataset_and_what_to_do(tmp_path, pref_data_dir, tiny_model_dir):
    def refused(**extra) -> str:
        with pytest.raises(UserError) as caught:
            preference.check_stage_data(run_config(tiny_model_dir, pref_data_dir, tmp_path, **extra))
        return str(caught.value)

    assert refused(dataset="qa") == (
        "dataset: 'qa' is not preference data, and stage dpo trains on chosen/rejected pairs; pick a preference "
        'dataset (in dataset_info.json: "ranking": true), or set stage: sft to train on its answers')
    assert "dataset: 'pairs' holds chosen/rejected pairs, and stage kto trains on" in refused(stage="kto")
    assert "set stage: dpo" in refused(stage="kto")
    assert "set stage: kto" in refused(eval_dataset="kto") and refused(eval_dataset="kto").startswith("eval_dataset:")
    preference.check_stage_data(run_config(tiny_model_dir, pref_data_dir, tmp_path))  # pairs for dpo: fine


# ---- training (a Trainer each) ----------------------------------------------------------------------------

def train_run(out: Path, model: Path, data: Path, **extra) -> Path:
    from trainer_core.train import run_training

    assert run_training(run_config(model, data, out, val_size=4, eval_steps=2, **extra), log=lambda _: None) == 0
    return out


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_model_dir, pref_data_dir) -> Path:
    """A finished LoRA DPO run (sigmoid) holding out 4 pairs."""
    return train_run(tmp_path_factory.mktemp("dpo") / "run", tiny_model_dir, pref_data_dir)


def assert_logged_rewards(run: Path, loss: str) -> None:
    entries = runs.read_log(run)
    steps = [e for e in entries if e["loss"] is not None]
    evals = [e for e in entries if e["eval_loss"] is not None]
    assert [e["step"] for e in steps] == [1, 2, 3] and evals
    assert all(math.isfinite(e["loss"]) for e in steps)
    assert all(e[key] is not None and math.isfinite(e[key]) for e in steps for key in REWARDS)
    assert all(e["eval_" + key] is not None for e in evals for key in REWARDS)
    assert all(e["eval_" + key] is None for e in steps for key in REWARDS)
    assert (run / "adapter" / "adapter_config.json").is_file() and not (run / "adapter" / "ref").exists()
    assert not (run / "README.md").exists()  # TRL's model card stays out of the run folder
    if loss in ("sigmoid", "ipo"):  # LoRA B starts at 0: policy = reference before the first update
        assert steps[0]["rewards_chosen"] == 0.0 and steps[0]["rewards_rejected"] == 0.0


@pytest.mark.train
def test_dpo_trains_and_logs_its_rewards(dpo_run):
    assert_logged_rewards(dpo_run, "sigmoid")


@pytest.mark.train
@pytest.mark.parametrize("loss", ["ipo", "orpo", "simpo"])
def test_each_other_loss_trains_and_logs_its_rewards(loss, tiny_model_dir, pref_data_dir, tmp_path):
    assert_logged_rewards(train_run(tmp_path / "run", tiny_model_dir, pref_data_dir, pref_loss=loss), loss)


def built(cfg):
    from trainer_core.train import _StopFlag, build_trainer

    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    trainer, _ = build_trainer(cfg, Path(cfg.output_dir), _StopFlag(), lambda _: None, fresh=True)
    return trainer


def answer_log_probs(model, batch):
    """Per row: (sum, mean) of the log-probs of the answer tokens, from a plain forward and
    log_softmax (no TRL, no fused head)."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    mask = batch["completion_mask"][:, 1:].float()
    total = (logps * mask).sum(-1)
    return total, total / mask.sum(-1)


@pytest.mark.train
def test_orpo_and_simpo_equal_llamafactorys_formulas(tiny_model_dir, pref_data_dir, tmp_path):
    import torch
    import torch.nn.functional as F

    for loss, beta in (("orpo", 0.3), ("simpo", 2.0)):
        extra = {"simpo_gamma": 0.8} if loss == "simpo" else {}
        trainer = built(run_config(tiny_model_dir, pref_data_dir, tmp_path / loss, pref_loss=loss, pref_beta=beta,
                                   finetuning_type="full", **extra))
        assert trainer.ref_model is None  # reference-free: no copy of the weights, even for full fine-tuning
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        model = trainer.model
        model.eval()
        _, mean = answer_log_probs(model, batch)
        c, r = mean.chunk(2)
        if loss == "orpo":  # LLaMA-Factory's odds_ratio_loss
            log_odds = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
            expected = (-c + beta * -F.logsigmoid(log_odds)).mean()
        else:  # LLaMA-Factory's simpo_loss
            expected = (-F.logsigmoid(beta * ((c - r) - 0.8 / beta))).mean()
        with torch.no_grad():
            got = trainer.compute_loss(model, batch)
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)
        metrics = trainer._metrics["eval"]
        assert metrics["rewards/chosen"][-1] == pytest.approx((beta * c).mean().item(), rel=1e-5)
        assert metrics["rewards/accuracies"][-1] == pytest.approx((c > r).float().mean().item())


@pytest.mark.train
def test_lora_reference_is_the_base_model_with_the_adapter_off(tiny_model_dir, pref_data_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    trainer = built(run_config(tiny_model_dir, pref_data_dir, tmp_path / "run", max_steps=2, learning_rate=5e-2))
    assert trainer.ref_model is None  # no second copy: the adapter is switched off instead
    assert list(trainer.model.peft_config) == ["default"]  # and no frozen copy of the adapter ("ref") either
    trainer.train()
    model = trainer.model
    model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(model, batch)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    base_sum, _ = answer_log_probs(base, batch)
    torch.testing.assert_close(torch.cat([ref_chosen, ref_rejected]), base_sum, rtol=1e-5, atol=1e-5)
    policy_sum, _ = answer_log_probs(model, batch)  # the trained adapter on: another model
    assert (policy_sum - base_sum).abs().max() > 1e-3


@pytest.mark.train
def test_full_dpo_keeps_a_frozen_reference(tiny_model_dir, pref_data_dir, tmp_path):
    trainer = built(run_config(tiny_model_dir, pref_data_dir, tmp_path / "run", finetuning_type="full"))
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model  # a copy: the weights move
    policy = {p.data_ptr() for p in trainer.model.parameters()}
    assert not policy & {p.data_ptr() for p in trainer.ref_model.parameters()}


@pytest.mark.train
def test_kto_trains_and_logs_the_rewards_it_has(tiny_model_dir, pref_data_dir, tmp_path):
    from trainer_core.train import run_training

    cfg = run_config(tiny_model_dir, pref_data_dir, tmp_path / "run", stage="kto", dataset="kto",
                     kto_rejected_weight=1.5)
    assert run_training(cfg, log=lambda _: None) == 0
    steps = [e for e in runs.read_log(tmp_path / "run") if e["loss"] is not None]
    assert [e["step"] for e in steps] == [1, 2, 3] and all(math.isfinite(e["loss"]) for e in steps)
    assert all(e["rewards_chosen"] is not None and e["rewards_rejected"] is not None for e in steps)
    assert all(e["rewards_accuracy"] is None for e in steps)  # TRL's KTO logs no accuracy
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()


@pytest.mark.train
def test_a_dpo_run_on_sft_data_fails_with_the_message(tiny_model_dir, pref_data_dir, tmp_path):
    from trainer_core.train import run_training

    with pytest.raises(UserError, match="dataset: 'qa' is not preference data"):
        run_training(run_config(tiny_model_dir, pref_data_dir, tmp_path / "run", dataset="qa"), log=lambda _: None)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and status["exit_code"] == 2


def test_pref_loss_with_stage_sft_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="pref_loss: simpo applies to stage dpo only"):
        config_from_dict({"stage": "sft", "pref_loss": "simpo"})


@pytest.mark.train
def test_preference_accuracy_of_a_run_and_its_base(dpo_run, tiny_model_dir, pref_data_dir, tmp_path):
    """The eval task `preference` on the run's held-out pairs, tuned and base, against the share
    computed here from a plain forward."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer_core import evaluate
    from trainer_core.jobconfig import config_from_args

    def accuracy_here(model) -> tuple[float, float, float]:
        tokenizer = tokenizer_of(tiny_model_dir)
        _, held_out = preference.split_records(run_config(tiny_model_dir, pref_data_dir, dpo_run, val_size=4))
        samples, _ = encode_preference(held_out, tokenizer, cutoff_len=64)
        total, mean = answer_log_probs(model, preference.PairCollator(tokenizer.pad_token_id)(samples))
        chosen, rejected = total.chunk(2)
        per_token = 100 * torch.gt(*mean.chunk(2)).float().mean().item()
        return 100 * (chosen > rejected).float().mean().item(), (chosen - rejected).mean().item(), per_token

    results = {}
    for label, extra in (("tuned", []), ("base", ["--base-only"])):
        summary = evaluate.run_eval(config_from_args("eval", ["--run", str(dpo_run), "--task", "preference",
                                                              "--output_dir", str(tmp_path / label), *extra]),
                                    log=lambda _: None)
        [result] = summary["results"]
        assert (result["dataset"], result["metrics"]["total"]) == ("pairs", 4)
        results[label] = result["metrics"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    accuracy, margin, per_token = accuracy_here(base)
    assert results["base"]["accuracy"] == pytest.approx(accuracy) and results["base"]["margin"] == pytest.approx(
        margin, rel=1e-4)
    assert results["base"]["per_token_accuracy"] == pytest.approx(per_token)
    tuned = PeftModel.from_pretrained(base, str(dpo_run / "adapter")).eval()
    accuracy, margin, per_token = accuracy_here(tuned)
    assert results["tuned"]["accuracy"] == pytest.approx(accuracy) and results["tuned"]["margin"] == pytest.approx(
        margin, rel=1e-4)
    assert results["tuned"]["per_token_accuracy"] == pytest.approx(per_token)
    assert results["tuned"]["margin"] != results["base"]["margin"]  # the adapter changes the model
    table = evaluate.compare([tmp_path / "base", tmp_path / "tuned"])
    assert "**preference · pairs**" in table and "| margin |" in table
    with pytest.raises(UserError, match="dataset 'kto' is KTO data"):
        evaluate.run_eval(config_from_args("eval", ["--model", str(tiny_model_dir), "--dataset", "kto",
                                                    "--dataset_dir", str(pref_data_dir), "--output_dir",
                                                    str(tmp_path / "kto")]), log=lambda _: None)
