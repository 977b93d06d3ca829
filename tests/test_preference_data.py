"""Preference data: LLaMA-Factory's ranking and KTO entries and TRL's conversational pairs, read
into {prompt, chosen, rejected} / {prompt, completion, label} records; every bad input named by
file, record and field; the answer labelled as encode_sft labels an assistant turn; the sample
sets tcm_preference and tcm_kto; and `data check` on them.

Bad files: tests/bad_data/pref_*.json and kto_bad.json (registered in its dataset_info.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from trainer_core.data import (
    PREFERENCE_MESSAGE,
    load_dataset_info,
    preference_kind,
    preference_stats,
    read_dataset,
    read_preference_dataset,
)
from trainer_core.errors import UserError
from trainer_core.tokenization import IGNORE_INDEX, encode_preference, encode_sft, prompts_over_cutoff

BAD = Path(__file__).parent / "bad_data"
DATA = Path(__file__).resolve().parent.parent / "data"


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def registry(folder: Path, entries: dict, files: dict) -> Path:
    for name, data in files.items():
        (folder / name).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    (folder / "dataset_info.json").write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return folder


def plain(records: list[dict]) -> list[dict]:
    """Records without where they came from, for comparing the content."""
    return [{k: v for k, v in r.items() if k not in ("source", "file", "index", "prompt_field")} for r in records]


# ---------------------------------------------------------------------------------------------
# Each format, read exactly
# ---------------------------------------------------------------------------------------------

PAIR = {"prompt": [user("附子的用量？")], "chosen": [assistant("3～15g，先煎、久煎。")],
        "rejected": [assistant("随意。")]}
KTO_GOOD = {"prompt": [user("附子要先煎吗？")], "completion": [assistant("要先煎、久煎。")], "label": True}
KTO_BAD = {"prompt": [user("附子要先煎吗？")], "completion": [assistant("不用。")], "label": False}
FORMATS = {
    "alpaca_ranking": (
        {"file_name": "a.json", "ranking": True,
         "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}},
        [{"instruction": "附子的用量？", "input": "", "chosen": "3～15g，先煎、久煎。", "rejected": "随意。"}],
        [PAIR]),
    "alpaca_ranking_system_history": (
        {"file_name": "a.json", "ranking": True, "columns": {"system": "system", "history": "history"}},
        [{"instruction": "附子", "input": "用量？", "system": "谨慎作答。", "history": [["你好", "您好。"]],
          "chosen": "3～15g。", "rejected": "随意。"}],
        [{"prompt": [{"role": "system", "content": "谨慎作答。"}, user("你好"), assistant("您好。"),
                     user("附子\n用量？")],
          "chosen": [assistant("3～15g。")], "rejected": [assistant("随意。")]}]),
    "sharegpt_ranking": (  # LLaMA-Factory's dpo_en_demo.json entry and shape
        {"file_name": "s.json", "formatting": "sharegpt", "ranking": True,
         "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
        [{"conversations": [{"from": "human", "value": "附子的用量？"}],
          "chosen": {"from": "gpt", "value": "3～15g，先煎、久煎。"}, "rejected": {"from": "gpt", "value": "随意。"}}],
        [PAIR]),
    "openai_ranking_multi_turn": (
        {"file_name": "o.json", "formatting": "openai", "ranking": True},
        [{"messages": [user("附子有毒吗？"), assistant("有毒。"), user("附子的用量？")],
          "chosen": {"role": "assistant", "content": "3～15g，先煎、久煎。"},
          "rejected": {"role": "assistant", "content": "随意。"}}],
        [{**PAIR, "prompt": [user("附子有毒吗？"), assistant("有毒。"), user("附子的用量？")]}]),
    "trl_explicit_prompt": (
        {"file_name": "t.json", "formatting": "trl"},
        [{"prompt": [user("附子的用量？")], "chosen": [assistant("3～15g，先煎、久煎。")],
          "rejected": [assistant("随意。")]}],
        [PAIR]),
    "trl_implicit_prompt": (
        {"file_name": "t.json", "formatting": "trl", "columns": {"chosen": "good", "rejected": "bad"}},
        [{"good": [user("附子有毒吗？"), assistant("有毒。"), user("附子的用量？"), assistant("3～15g，先煎、久煎。")],
          "bad": [user("附子有毒吗？"), assistant("有毒。"), user("附子的用量？"), assistant("随意。")]}],
        [{**PAIR, "prompt": [user("附子有毒吗？"), assistant("有毒。"), user("附子的用量？")]}]),
    "kto_sharegpt": (  # LLaMA-Factory's kto_en_demo.json entry and shape
        {"file_name": "k.json", "formatting": "sharegpt",
         "columns": {"messages": "messages", "kto_tag": "label"},
         "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
        [{"messages": [user("附子要先煎吗？"), assistant("要先煎、久煎。")], "label": True},
         {"messages": [user("附子要先煎吗？"), assistant("不用。")], "label": False}],
        [KTO_GOOD, KTO_BAD]),
    "kto_alpaca": (  # LLaMA-Factory's data/README.md KTO entry
        {"file_name": "k.json",
         "columns": {"prompt": "instruction", "query": "input", "response": "output", "kto_tag": "kto_tag"}},
        [{"instruction": "附子要先煎吗？", "input": "", "output": "要先煎、久煎。", "kto_tag": True},
         {"instruction": "附子要先煎吗？", "input": "", "output": "不用。", "kto_tag": False}],
        [KTO_GOOD, KTO_BAD]),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_format_reads_into_the_same_records(tmp_path, name):
    entry, rows, expected = FORMATS[name]
    registry(tmp_path, {"d": entry}, {entry["file_name"]: rows})
    records, problems = read_preference_dataset("d", tmp_path)
    assert problems == []
    assert plain(records) == expected
    assert [(r["source"], r["file"], r["index"]) for r in records] == [("d", entry["file_name"], i)
                                                                        for i in range(len(rows))]


def test_preference_entries_stay_refused_for_sft_and_pt(tmp_path):
    entries = {name: entry for name, (entry, _, _) in FORMATS.items()}
    registry(tmp_path, entries, {entry["file_name"]: rows for entry, rows, _ in FORMATS.values()})
    for name in entries:
        for stage in ("sft", "pt"):
            with pytest.raises(UserError) as refused:
                read_dataset(name, tmp_path, stage)
            assert PREFERENCE_MESSAGE in str(refused.value) or "needs stage kto" in str(refused.value)


def test_an_sft_entry_is_not_preference_data(tmp_path):
    registry(tmp_path, {"qa": {"file_name": "qa.json"}, "half": {"file_name": "qa.json", "columns": {"chosen": "c"}}},
             {"qa.json": [{"instruction": "q", "output": "a"}]})
    with pytest.raises(UserError, match="is not preference data: a preference entry has"):
        read_preference_dataset("qa", tmp_path)
    with pytest.raises(UserError, match='names chosen/rejected: add "ranking": true'):
        read_preference_dataset("half", tmp_path)
    with pytest.raises(UserError, match="unknown dataset 'qaa'.*did you mean 'qa'"):
        read_preference_dataset("qaa", tmp_path)


# ---------------------------------------------------------------------------------------------
# Bad input: every problem, with file, record and field
# ---------------------------------------------------------------------------------------------

EXPECTED = {
    "pref_alpaca_bad": [
        "pref_alpaca_bad.json, record 0, field 'rejected': is identical to 'chosen': a pair must prefer one answer "
        "over a different one; fix or remove the record",
        "pref_alpaca_bad.json, record 1, field 'chosen': empty answer",
        "pref_alpaca_bad.json, record 2, field 'rejected': missing; add it to the record",
        "pref_alpaca_bad.json, record 3, field 'instruction': empty question",
        "pref_alpaca_bad.json, record 4, field 'rejected': must be a string in an alpaca ranking record; answers "
        'given as message objects are the sharegpt shape: use "formatting": "sharegpt"'],
    "pref_sharegpt_bad": [
        "pref_sharegpt_bad.json, record 0, field 'chosen': wrong role 'human': the answer must be an assistant "
        "message ('gpt')",
        "pref_sharegpt_bad.json, record 1, field 'conversations': turn 2, the last, is an answer ('gpt'): in "
        "preference data the conversation is the prompt and ends with a question; the answers go in 'chosen' "
        "and 'rejected'",
        "pref_sharegpt_bad.json, record 2, field 'chosen': must be one message object like {'from': 'gpt', "
        "'value': '...'}, got a list (TRL's shape, where the answers are message lists: use \"formatting\": \"trl\")",
        "pref_sharegpt_bad.json, record 2, field 'rejected': empty answer",
        "pref_sharegpt_bad.json, record 3, field 'conversations': turn 1 is 'assistant' but the conversation must "
        "start with a 'user' turn"],
    "pref_trl_bad": [
        "pref_trl_bad.json, record 0, field 'rejected': message 1 has wrong role 'user': the answer after the "
        "prompt holds 'assistant' messages only",
        "pref_trl_bad.json, record 1, field 'rejected': is identical to 'chosen': a pair must prefer one answer "
        "over a different one; fix or remove the record",
        "pref_trl_bad.json, record 2, field 'chosen': message 1 ('user') differs from the other side's: without "
        "'prompt', both sides must share the conversation up to the answer and differ only in 'assistant' messages",
        "pref_trl_bad.json, record 2, field 'rejected': message 1 ('user') differs from the other side's: without "
        "'prompt', both sides must share the conversation up to the answer and differ only in 'assistant' messages",
        "pref_trl_bad.json, record 3, field 'chosen': must be a list of messages like [{'role': 'assistant', "
        "'content': '...'}], got str",
        "pref_trl_bad.json, record 3, field 'rejected': missing; add it to the record"],
    "kto_bad": [
        "kto_bad.json, record 0, field 'kto_tag': must be true or false (a JSON boolean: is the answer "
        "desirable?), got str 'true'",
        "kto_bad.json, record 1, field 'kto_tag': missing; add it to the record",
        "kto_bad.json, record 2, field 'conversations': conversation ends with a user turn and has no answer to "
        "train on"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_preference_file_gives_exactly_these_problems(name):
    records, problems = read_preference_dataset(name, BAD)
    assert records == []
    assert [str(p) for p in problems] == EXPECTED[name]


def test_every_preference_entry_in_bad_data_is_covered():
    info = load_dataset_info(BAD)
    assert {name for name, entry in info.items() if preference_kind(entry)} == set(EXPECTED)


def test_good_pairs_beside_bad_ones_still_load(tmp_path):
    entry, rows, expected = FORMATS["sharegpt_ranking"]
    bad = {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "a"},
           "rejected": {"from": "gpt", "value": "a"}}
    registry(tmp_path, {"d": entry}, {"s.json": [bad, *rows, bad]})
    records, problems = read_preference_dataset("d", tmp_path)
    assert plain(records) == expected and [r["index"] for r in records] == [1]
    assert [(p.file, p.record, p.field) for p in problems] == [("s.json", 0, "rejected"), ("s.json", 2, "rejected")]


# ---------------------------------------------------------------------------------------------
# Tokens: the answer labelled exactly as SFT labels an assistant turn
# ---------------------------------------------------------------------------------------------

def only_last_run(labels: list[int]) -> list[int]:
    """encode_sft's labels with every trained run but the last masked: the final answer alone."""
    last = max(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    start = last
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return [label if start <= i <= last else IGNORE_INDEX for i, label in enumerate(labels)]


MULTI = [user("附子有毒吗？"), assistant("有毒，须炮制。"), user("附子的用量？")]


def assert_sides_match_sft(tokenizer, prompt: list[dict]) -> None:
    record = {"prompt": prompt, "chosen": [assistant("3～15g，先煎、久煎。")], "rejected": [assistant("随意。")]}
    samples, stats = encode_preference([record], tokenizer, cutoff_len=4096)
    assert stats.samples == 1 and stats.dropped_no_trainable == 0
    for side in ("chosen", "rejected"):
        sft, _ = encode_sft([{"messages": prompt + record[side]}], tokenizer, cutoff_len=4096)
        assert samples[0][f"{side}_input_ids"] == sft[0]["input_ids"]
        assert samples[0][f"{side}_labels"] == only_last_run(sft[0]["labels"])
        if len(prompt) == 1:  # one question, one answer: SFT trains the answer alone too
            assert samples[0][f"{side}_labels"] == sft[0]["labels"]
    kto, _ = encode_preference([{"prompt": prompt, "completion": record["chosen"], "label": True}], tokenizer, 4096)
    assert kto == [{"input_ids": samples[0]["chosen_input_ids"], "labels": samples[0]["chosen_labels"],
                    "kto_label": True}]


def test_answer_labels_equal_sft_labels_on_the_tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert_sides_match_sft(tokenizer, [user("附子的用量？")])
    assert_sides_match_sft(tokenizer, MULTI)


sys.path.insert(0, str(Path(__file__).parent))
from chat_templates import FAMILIES as TEMPLATE_FAMILIES  # noqa: E402 - the zoo's 12 chat templates


@pytest.mark.zoo
@pytest.mark.parametrize("family", list(TEMPLATE_FAMILIES))
def test_answer_labels_equal_sft_labels_on_real_chat_templates(family):
    """Token by token, per chat-template family of the zoo: each side of a pair (and a KTO answer) is
    the same ids as the SFT sample of the same conversation, with the final answer's labels alone."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_template_labels import tokenizer_for  # the zoo's real vocabularies and templates

    tokenizer = tokenizer_for(family)
    assert_sides_match_sft(tokenizer, [user("附子的用量？")])
    assert_sides_match_sft(tokenizer, MULTI)


def test_cutoff_truncates_and_a_pair_without_answer_tokens_is_dropped(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    long_prompt = [user("附子" * 200 + "的用量？")]
    records = [{**PAIR, "file": "p.json", "index": 0, "prompt_field": "instruction"},
               {**PAIR, "prompt": long_prompt, "file": "p.json", "index": 1, "prompt_field": "instruction"}]
    samples, stats = encode_preference(records, tokenizer, cutoff_len=64)
    assert stats.samples == 1 and stats.dropped_no_trainable == 1 and stats.truncated == 2
    assert all(len(v) <= 64 for v in samples[0].values())
    problems = prompts_over_cutoff(records, tokenizer, cutoff_len=64)
    assert [(p.file, p.record, p.field) for p in problems] == [("p.json", 1, "instruction")]
    assert "and cutoff_len is 64: no token of the answers would be left" in problems[0].message
    assert prompts_over_cutoff(records, tokenizer, cutoff_len=4096) == []


# ---------------------------------------------------------------------------------------------
# The sample sets and `data check`
# ---------------------------------------------------------------------------------------------

def test_sample_preference_set_passes_its_checks():
    records, problems = read_preference_dataset("tcm_preference", DATA)
    assert problems == [] and len(records) >= 150
    prompts = [json.dumps(r["prompt"], ensure_ascii=False) for r in records]
    assert len(set(prompts)) == len(prompts)
    assert all(r["chosen"] != r["rejected"] for r in records)
    assert preference_stats(records)["chosen_longer_share"] < 0.9  # length alone must not tell the better answer
    kto, problems = read_preference_dataset("tcm_kto", DATA)
    assert problems == [] and len(kto) == 100
    assert sum(r["label"] for r in kto) == 50
    assert len({json.dumps(r["prompt"], ensure_ascii=False) for r in kto}) == 100


def test_sample_sets_are_what_the_generator_writes():
    sys.path.insert(0, str(DATA))
    import make_preference

    pairs = make_preference.all_pairs()
    rows = json.loads((DATA / "tcm_preference.json").read_text(encoding="utf-8"))
    assert [(r["instruction"], r["chosen"], r["rejected"]) for r in rows] == pairs
    info = load_dataset_info(DATA)
    assert preference_kind(info["tcm_preference"]) == "pairs" and preference_kind(info["tcm_kto"]) == "kto"


def test_data_check_reports_a_preference_set_without_a_stage(capsys):
    from trainer_core.cli import main

    assert main(["data", "check", "tcm_preference", "tcm_kto", "--dataset_dir", str(DATA), "--no-tokens"]) == 0
    out = capsys.readouterr().out
    assert "== tcm_preference ==\n  kind: pairs, records: 153," in out and "duplicate_prompts: 0" in out
    assert "== tcm_kto ==\n  kind: kto, records: 100, desirable: 50, undesirable: 50" in out
    assert out.count("no problems") == 2


def test_data_check_lists_every_problem_of_a_bad_preference_set(capsys):
    from trainer_core.cli import main

    assert main(["data", "check", "pref_trl_bad", "--dataset_dir", str(BAD), "--no-tokens"]) == 2
    out = capsys.readouterr().out
    assert "6 problem(s):" in out
    assert all(f"    - {line}" in out for line in EXPECTED["pref_trl_bad"])
