"""Evaluation on the tiny random model: perplexity against a hand computation, BLEU/ROUGE against
hand-counted n-grams, multiple choice with the answer forced through the output head, generation
stopping at the end-of-turn token, and run_eval's files and comparison table."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from trainer_core import evaluate
from trainer_core.config import config_from_dict
from trainer_core.data import load_datasets, read_dataset
from trainer_core.errors import UserError
from trainer_core.jobconfig import EvalConfig, config_from_args
from trainer_core.models import load_for_inference
from trainer_core.tokenization import IGNORE_INDEX, encode_sft

DIALOG = {"messages": [
    {"role": "system", "content": "你是中医助手"},
    {"role": "user", "content": "麻黄的性味？"}, {"role": "assistant", "content": "辛、微苦，温。"},
    {"role": "user", "content": "归经呢？"}, {"role": "assistant", "content": "归肺、膀胱经。"}]}
QA = {"messages": [{"role": "user", "content": "黄芪的功效是什么？"},
                   {"role": "assistant", "content": "黄芪补气升阳，固表止汗，利水消肿。"}]}

MCQ_ROWS = [  # (question, A, B, C, D, answer, subject)
    ("黄芪的功效是", "补气升阳", "发汗解表", "清热泻火", "活血化瘀", "A", "中药学"),
    ("麻黄的性味是", "甘，平", "辛、微苦，温", "苦，寒", "酸，涩", "B", "中药学"),
    ("四君子汤的功用是", "益气健脾", "补血调经", "温中散寒", "清热解毒", "A", "方剂学"),
    ("四君子汤中的君药是", "白术", "人参", "茯苓", "甘草", "B", "方剂学"),
    ("四君子汤由哪些药组成（多选）", "人参", "白术", "附子", "干姜", "AB", "方剂学"),
]
DEV_ROWS = [
    ("甘草的功效是", "补脾益气", "发散风寒", "清热燥湿", "平肝息风", "A", "中药学"),
    ("理中丸的功用是", "温中祛寒", "疏肝解郁", "清热化痰", "滋阴降火", "A", "方剂学"),
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_for_inference(str(tiny_model_dir), log=lambda message: None)


@pytest.fixture
def mcq_dir(tmp_path) -> Path:
    for name, rows in (("exam.csv", MCQ_ROWS), ("exam_dev.csv", DEV_ROWS)):
        with open(tmp_path / name, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["question", "A", "B", "C", "D", "answer", "subject"])
            writer.writerows(rows)
    info = {"exam": {"file_name": "exam.csv", "formatting": "mcq"},
            "exam_dev": {"file_name": "exam_dev.csv", "formatting": "mcq"},
            "nodev": {"file_name": "exam.csv", "formatting": "mcq"}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return tmp_path


def parse(*args: str) -> EvalConfig:
    """The config of `python -m trainer_core eval ARGS`."""
    return config_from_args("eval", list(args))


def force_token(model, token_id_for_call):
    """Add a large bias to the token `token_id_for_call(n)` (n = forward call, from 1) in every
    logit the output head produces; returns the hook handle and the call counter."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        calls["n"] += 1
        output = output.clone()
        output[..., token_id_for_call(calls["n"])] += 1000.0
        return output

    return model.get_output_embeddings().register_forward_hook(hook), calls


def quiet(message: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# Perplexity
# ---------------------------------------------------------------------------------------------

def test_perplexity_equals_hand_computed_loss_on_assistant_tokens(tiny):
    model, tokenizer = tiny
    sample = encode_sft([DIALOG], tokenizer, 1024)[0][0]
    ids, labels = sample["input_ids"], sample["labels"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    scored = [i for i in range(1, len(ids)) if labels[i] != IGNORE_INDEX]
    expected = -sum(log_probs[i - 1, ids[i]].item() for i in scored) / len(scored)

    result = evaluate.perplexity(model, tokenizer, [DIALOG], cutoff_len=1024, batch_size=1)

    assert result["tokens"] == len(scored) < len(ids) - 1
    # Exactly the two replies, each with its end-of-turn token, are scored.
    assert tokenizer.decode([ids[i] for i in scored]) == "辛、微苦，温。<|im_end|>归肺、膀胱经。<|im_end|>"
    assert result["loss"] == pytest.approx(expected, abs=1e-4)
    assert result["perplexity"] == pytest.approx(math.exp(expected), rel=1e-4)


def test_perplexity_is_token_weighted_and_batch_independent(tiny):
    model, tokenizer = tiny
    one = evaluate.perplexity(model, tokenizer, [DIALOG], 1024, 1)
    two = evaluate.perplexity(model, tokenizer, [QA], 1024, 1)
    both = evaluate.perplexity(model, tokenizer, [DIALOG, QA], 1024, batch_size=2)  # padded together
    assert both["tokens"] == one["tokens"] + two["tokens"]
    weighted = (one["loss"] * one["tokens"] + two["loss"] * two["tokens"]) / both["tokens"]
    assert both["loss"] == pytest.approx(weighted, abs=1e-4)


def test_perplexity_scores_every_token_of_plain_text(tiny):
    model, tokenizer = tiny
    text = "四君子汤由人参、白术、茯苓、甘草组成，功用益气健脾。"
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + eos
    assert evaluate.perplexity(model, tokenizer, [{"text": text}], 1024, 1)["tokens"] == n - 1
    # Cut into blocks of 8: every block's first token has nothing before it to predict it.
    blocks = math.ceil(n / 8)
    assert evaluate.perplexity(model, tokenizer, [{"text": text}], 8, 4)["tokens"] == n - blocks


# ---------------------------------------------------------------------------------------------
# BLEU / ROUGE
# ---------------------------------------------------------------------------------------------

def test_bleu_rouge_identical_and_disjoint():
    sentence = "黄芪补气升阳，固表止汗，利水消肿。"
    assert evaluate.bleu_rouge([sentence], [sentence]) == {"bleu-4": 100.0, "rouge-1": 100.0, "rouge-2": 100.0,
                                                           "rouge-l": 100.0}
    assert evaluate.words("黄芪补气升阳") == ["黄芪", "补气", "升阳"]
    assert evaluate.words("麻黄发汗散寒") == ["麻黄", "发汗", "散寒"]
    assert evaluate.bleu_rouge(["黄芪补气升阳"], ["麻黄发汗散寒"]) == {"bleu-4": 0.0, "rouge-1": 0.0, "rouge-2": 0.0,
                                                                    "rouge-l": 0.0}


def test_bleu_rouge_hand_checked_partial_match():
    # hyp "the cat sat on the mat" vs ref "the cat is on the mat" (6 words each, so no brevity penalty):
    #   1-grams: the x2, cat, on, mat match, sat does not            -> p1 = 5/6
    #   2-grams: "the cat", "on the", "the mat" of 5                 -> p2 = 3/5
    #   3-grams: "on the mat" of 4                                   -> p3 = 1/4
    #   4-grams: none of 3; first zero order smoothed to 1/(2*3)     -> p4 = 1/6
    #   BLEU-4 = (5/6 * 3/5 * 1/4 * 1/6) ** (1/4) = (1/48) ** 0.25
    #   ROUGE-1 F1 = 5/6; ROUGE-2 F1 = 3/5; LCS "the cat on the mat" = 5 -> ROUGE-L F1 = 5/6
    scores = evaluate.bleu_rouge(["the cat sat on the mat"], ["the cat is on the mat"])
    assert scores["bleu-4"] == pytest.approx(100 * (1 / 48) ** 0.25, abs=1e-3)
    assert scores["rouge-1"] == pytest.approx(100 * 5 / 6, abs=1e-3)
    assert scores["rouge-2"] == pytest.approx(60.0, abs=1e-3)
    assert scores["rouge-l"] == pytest.approx(100 * 5 / 6, abs=1e-3)
    # "the cat" against the 6-word reference: both its orders match fully (effective order 2),
    # brevity penalty exp(1 - 6/2); ROUGE-1: P = 1, R = 2/6 -> F1 = 0.5.
    short = evaluate.bleu_rouge(["the cat"], ["the cat sat on the mat"])
    assert short["bleu-4"] == pytest.approx(100 * math.exp(-2), abs=1e-3)
    assert short["rouge-1"] == pytest.approx(50.0, abs=1e-3)
    # The corpus score is the mean of the sentence scores.
    mean = evaluate.bleu_rouge(["the cat", "黄芪补气升阳"], ["the cat sat on the mat", "黄芪补气升阳"])
    assert mean["bleu-4"] == pytest.approx((100 * math.exp(-2) + 100) / 2, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# Multiple choice
# ---------------------------------------------------------------------------------------------

def test_mcq_prompt_is_c_eval_style_with_dev_shots(mcq_dir):
    questions, _ = read_dataset("exam", mcq_dir, "mcq")
    dev, _ = read_dataset("exam_dev", mcq_dir, "mcq")
    shots = evaluate.select_shots(questions[0], dev, n_shot=2)
    assert [s["subject"] for s in shots] == ["中药学", "方剂学"]  # same subject first, then any
    prompt = evaluate.mcq_prompt(questions[0], shots)
    assert prompt == (
        "以下是中国关于中药学考试的单项选择题，请选出其中的正确答案。\n\n"
        "甘草的功效是\nA. 补脾益气\nB. 发散风寒\nC. 清热燥湿\nD. 平肝息风\n答案：A\n\n"
        "理中丸的功用是\nA. 温中祛寒\nB. 疏肝解郁\nC. 清热化痰\nD. 滋阴降火\n答案：A\n\n"
        "黄芪的功效是\nA. 补气升阳\nB. 发汗解表\nC. 清热泻火\nD. 活血化瘀\n答案：")
    assert evaluate.mcq_prompt(questions[0]) == (
        "以下是中国关于中药学考试的单项选择题，请选出其中的正确答案。\n\n"
        "黄芪的功效是\nA. 补气升阳\nB. 发汗解表\nC. 清热泻火\nD. 活血化瘀\n答案：")


def test_letter_token_ids_skip_a_split_space(tiny):
    _, tokenizer = tiny
    # This byte-level BPE has no " B" token: " B" is space + "B", and the bare space must not count.
    assert tokenizer.encode(" B", add_special_tokens=False)[0] != tokenizer.encode("B", add_special_tokens=False)[0]
    assert evaluate.letter_token_ids(tokenizer, "B") == tokenizer.encode("B", add_special_tokens=False)


def test_mcq_accuracy_with_the_answer_forced_to_b(tiny, mcq_dir):
    model, tokenizer = tiny
    questions, _ = read_dataset("exam", mcq_dir, "mcq")
    dev, _ = read_dataset("exam_dev", mcq_dir, "mcq")
    b_id = evaluate.letter_token_ids(tokenizer, "B")[0]
    handle, _ = force_token(model, lambda call: b_id)
    try:
        result = evaluate.mcq_accuracy(model, tokenizer, questions, dev, n_shot=1, batch_size=3)
    finally:
        handle.remove()
    assert [p["predicted"] for p in result["predictions"]] == ["B"] * 4
    assert (result["correct"], result["total"], result["unsupported"]) == (2, 4, 1)
    assert result["accuracy"] == pytest.approx(50.0)
    assert result["per_subject"] == {"中药学": {"accuracy": 50.0, "correct": 1, "total": 2},
                                     "方剂学": {"accuracy": 50.0, "correct": 1, "total": 2}}
    only = evaluate.mcq_accuracy(model, tokenizer, questions, subject_filter="中药学")
    assert only["total"] == 2 and only["unsupported"] == 0 and list(only["per_subject"]) == ["中药学"]


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------

def test_generate_answers_stops_at_end_of_turn(tiny):
    model, tokenizer = tiny
    a_id = tokenizer.encode("A", add_special_tokens=False)[0]
    # The prefill call emits "A", the next step <|im_end|>, any later step "A" again.
    handle, calls = force_token(model, lambda call: tokenizer.eos_token_id if call == 2 else a_id)
    try:
        answers = evaluate.generate_answers(model, tokenizer, [DIALOG, QA], max_new_tokens=10, batch_size=2)
    finally:
        handle.remove()
    assert calls["n"] == 2  # generation ended at the end-of-turn token, not after 10 tokens
    assert [a["prediction"] for a in answers] == ["A", "A"]
    assert [a["reference"] for a in answers] == ["归肺、膀胱经。", "黄芪补气升阳，固表止汗，利水消肿。"]
    # The prompt is everything before the last reply, ending with the assistant header.
    assert answers[0]["prompt"].endswith("<|im_start|>user\n归经呢？<|im_end|>\n<|im_start|>assistant\n")
    assert "辛、微苦，温。" in answers[0]["prompt"]


def test_generate_answers_left_padding_matches_one_at_a_time(tiny):
    model, tokenizer = tiny
    together = evaluate.generate_answers(model, tokenizer, [DIALOG, QA], max_new_tokens=6, batch_size=2)
    alone = evaluate.generate_answers(model, tokenizer, [DIALOG, QA], max_new_tokens=6, batch_size=1)
    assert [a["prediction"] for a in together] == [a["prediction"] for a in alone]


# ---------------------------------------------------------------------------------------------
# run_eval, results and compare
# ---------------------------------------------------------------------------------------------

def test_run_eval_writes_results_predictions_and_progress(tiny_model_dir, tiny_data_dir, tmp_path):
    job = tmp_path / "job"
    summary = evaluate.run_eval(parse("--model", str(tiny_model_dir), "--dataset", "qa", "--dataset_dir",
                                      str(tiny_data_dir), "--max_samples", "3", "--max-new-tokens", "4",
                                      "--batch_size", "2", "--output_dir", str(job)), log=quiet)
    assert [(r["task"], r["dataset"]) for r in summary["results"]] == [("ppl", "qa"), ("generate", "qa")]
    ppl = json.loads((job / "ppl-qa.json").read_text(encoding="utf-8"))
    assert {"task", "model", "adapter", "dataset", "split", "n_shot", "settings", "time", "metrics"} <= set(ppl)
    assert ppl["split"] == "all" and ppl["adapter"] is None and ppl["label"] == "base"
    assert ppl["metrics"]["perplexity"] == pytest.approx(math.exp(ppl["metrics"]["loss"]))
    generated = json.loads((job / "generate-qa.json").read_text(encoding="utf-8"))
    assert set(generated["metrics"]) >= {"bleu-4", "rouge-1", "rouge-2", "rouge-l"}
    assert generated["settings"]["max_new_tokens"] == 4
    lines = [json.loads(line) for line in (job / "predictions-qa.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 3 and all(set(line) == {"prompt", "prediction", "reference"} for line in lines)
    progress = [json.loads(line) for line in (job / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert progress[-1]["step"] == progress[-1]["total_steps"] == 6
    assert "perplexity" in evaluate.format_result(ppl)


def _fake_run(run_dir: Path, tiny_model_dir: Path, data_dir: Path, val_size: float = 4) -> Path:
    """A finished LoRA run: run.yaml and a (random, non-zero) adapter on the tiny model."""
    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run_dir.mkdir()
    config = {"stage": "sft", "model_name_or_path": str(tiny_model_dir), "template": "auto",
              "dataset_dir": str(data_dir), "dataset": "dialog,qa", "eval_dataset": "", "val_size": val_size,
              "max_samples": 8, "cutoff_len": 256, "seed": 7}
    (run_dir / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(run_dir / "adapter")
    return run_dir


def test_run_eval_on_a_run_uses_its_validation_split_and_compares_with_base(tiny_model_dir, tiny_data_dir,
                                                                             tmp_path):
    run = _fake_run(tmp_path / "run", tiny_model_dir, tiny_data_dir)
    tuned = evaluate.run_eval(parse("--run", str(run), "--task", "ppl", "--output_dir", str(tmp_path / "tuned")),
                              log=quiet)
    base = evaluate.run_eval(parse("--run", str(run), "--base-only", "--task", "ppl",
                                   "--output_dir", str(tmp_path / "base")), log=quiet)
    assert (tuned["label"], base["label"]) == ("tuned (adapter)", "base")
    assert tuned["adapter"] == str(run / "adapter") and base["adapter"] is None

    # The same 4 held-out records as training: same datasets, max_samples, val_size and seed.
    _, held_out = load_datasets("dialog,qa", tiny_data_dir, "sft", max_samples=8, val_size=4, seed=7)
    counts = {name: sum(ex["source"] == name for ex in held_out) for name in ("dialog", "qa")}
    results = {r["dataset"]: r for r in tuned["results"]}
    assert set(results) == {name for name, n in counts.items() if n}
    for name, result in results.items():
        assert result["metrics"]["samples"] == counts[name]
        record = json.loads(Path(result["file"]).read_text(encoding="utf-8"))
        assert record["split"] == "validation" and record["settings"]["cutoff_len"] == 256

    table = evaluate.compare([tmp_path / "base", tmp_path / "tuned"])
    assert table.splitlines()[0] == "| metric | base | tuned (adapter) | Δ |"
    name = next(iter(results))
    assert f"**ppl · {name}** (split) | validation | validation |" in table
    base_ppl = base["results"][0]["metrics"]["perplexity"]
    tuned_ppl = next(r for r in tuned["results"] if r["dataset"] == base["results"][0]["dataset"])
    assert base_ppl != tuned_ppl["metrics"]["perplexity"]  # the adapter changes the model
    assert any(line.startswith("| perplexity |") and line.count("|") == 5 for line in table.splitlines())


def test_run_eval_mcq_files_and_side_by_side_table(tiny_model_dir, mcq_dir, tmp_path):
    common = ["--model", str(tiny_model_dir), "--dataset", "exam", "--dataset_dir", str(mcq_dir)]
    zero = evaluate.run_eval(parse(*common, "--output_dir", str(tmp_path / "zero")), log=quiet)
    one = evaluate.run_eval(parse(*common, "--n_shot", "1", "--label", "one-shot",
                                  "--output_dir", str(tmp_path / "one")), log=quiet)
    assert [r["task"] for r in zero["results"]] == ["mcq"]  # the default task for mcq data
    record = json.loads((tmp_path / "one" / "mcq-exam.json").read_text(encoding="utf-8"))
    assert record["n_shot"] == 1 and record["settings"]["dev_dataset"] == "exam_dev"
    assert record["metrics"]["total"] == 4 and record["metrics"]["unsupported"] == 1
    assert len(record["predictions"]) == 4
    assert one["results"][0]["metrics"]["total"] == 4
    assert "accuracy" in evaluate.format_result(record) and "1 multi-answer not scored" in evaluate.format_result(
        record)

    table = evaluate.compare([tmp_path / "zero", tmp_path / "one" / "mcq-exam.json"])
    lines = table.splitlines()
    assert lines[0] == "| metric | base | one-shot | Δ |"
    assert "| **mcq · exam** (split) | all, 0-shot | all, 1-shot |  |" in lines
    assert any(line.startswith("| accuracy · 方剂学 |") for line in lines)
    assert any(line.startswith("| unsupported | 1 | 1 | +0 |") for line in lines)
    # Two columns with the same label are told apart by their folder names.
    assert evaluate.compare([tmp_path / "zero", tmp_path / "zero"]).splitlines()[0] == (
        "| metric | base (zero) | base (zero) | Δ |")


def test_run_eval_in_process_options_subject_filter_and_text_progress(tiny_model_dir, tiny_data_dir, mcq_dir,
                                                                     tmp_path):
    summary = evaluate.run_eval(EvalConfig(model=str(tiny_model_dir), dataset="exam", dataset_dir=str(mcq_dir),
                                           subject="中药学", output_dir=str(tmp_path / "mcq")), log=quiet)
    metrics = summary["results"][0]["metrics"]
    assert (metrics["total"], metrics["unsupported"], list(metrics["per_subject"])) == (2, 0, ["中药学"])
    with pytest.raises(UserError, match="unknown key 'datasets'; did you mean 'dataset'"):
        config_from_dict({"datasets": "qa"}, EvalConfig)

    # Plain text is cut into more blocks than it has records; progress still ends at its record count.
    job = tmp_path / "text"
    summary = evaluate.run_eval(EvalConfig(model=str(tiny_model_dir), dataset="corpus", dataset_dir=str(tiny_data_dir),
                                           max_samples=5, cutoff_len=16, output_dir=str(job)), log=quiet)
    assert [r["task"] for r in summary["results"]] == ["ppl"]
    assert summary["results"][0]["metrics"]["samples"] > 5
    progress = [json.loads(line) for line in (job / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(p["step"], p["total_steps"]) for p in progress][-1] == (5, 5)
    assert all(p["step"] <= 5 for p in progress)


@pytest.mark.parametrize("args, message", [
    (["--task", "bleu"], "unknown task 'bleu'"),
    (["--dataset", "qa", "--task", "mcq"], "task 'mcq' does not apply to dataset 'qa'"),
    (["--dataset", "corpus", "--task", "generate"], "task 'generate' does not apply to dataset 'corpus'"),
    (["--dataset", "qa", "--split", "validation"], "--split validation needs --run"),
    (["--dataset", "qa", "--adapter", "nowhere"], "not a LoRA adapter folder"),
    (["--dataset", "qa", "--base-only"], "--base-only goes with --run"),
    ([], "no dataset"),
])
def test_run_eval_refuses_bad_input_before_loading(tiny_model_dir, tiny_data_dir, tmp_path, args, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        evaluate.run_eval(parse("--model", str(tiny_model_dir), "--dataset_dir", str(tiny_data_dir),
                                "--output_dir", str(tmp_path / "job"), *args), log=quiet)


def test_run_eval_refuses_runs_without_adapter_split_or_dev(tiny_model_dir, tiny_data_dir, mcq_dir, tmp_path):
    run = _fake_run(tmp_path / "run", tiny_model_dir, tiny_data_dir, val_size=0)
    with pytest.raises(UserError, match="held out no validation records"):
        evaluate.run_eval(parse("--run", str(run), "--output_dir", str(tmp_path / "a")), log=quiet)
    (run / "adapter" / "adapter_config.json").unlink()
    with pytest.raises(UserError, match="holds no adapter/ or model/"):
        evaluate.run_eval(parse("--run", str(run), "--dataset", "qa", "--output_dir", str(tmp_path / "b")), log=quiet)
    with pytest.raises(UserError, match="has no question to score"):
        evaluate.run_eval(parse("--model", str(tiny_model_dir), "--dataset", "exam", "--dataset_dir", str(mcq_dir),
                                "--subject", "针灸学", "--output_dir", str(tmp_path / "d")), log=quiet)
    with pytest.raises(UserError, match="needs dev examples"):
        evaluate.run_eval(parse("--model", str(tiny_model_dir), "--dataset", "nodev", "--dataset_dir", str(mcq_dir),
                                "--n_shot", "2", "--output_dir", str(tmp_path / "c")), log=quiet)
    with pytest.raises(UserError, match="needs output_dir"):
        evaluate.run_eval(parse("--model", str(tiny_model_dir), "--dataset", "qa"), log=quiet)
