"""Tests for trainer_core.data: readers, formats, validation messages, mixing and statistics.

Small files are written into tmp_path; `tests/bad_data/` is a committed corpus of broken files,
one per mistake, each with the exact Problem it must produce.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_core.data import (
    load_dataset_info,
    load_datasets,
    mix_composition,
    percentile,
    preference_kind,
    read_dataset,
    read_file,
    read_preference_dataset,
    text_stats,
)
from trainer_core.errors import DataError, Problem, UserError

BAD_DATA = Path(__file__).parent / "bad_data"
SAMPLE_DATA = Path(__file__).parent.parent / "data"


def write(path: Path, content: str | bytes | list | dict, encoding: str = "utf-8") -> Path:
    """Write text, bytes, or a JSON value (lists and dicts) to `path`."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_bytes(content.encode(encoding))
    else:
        path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list) -> Path:
    return write(path, "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")


def chat(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in turns]


def read_ok(path: Path, formatting: str, **kwargs) -> list[dict]:
    """Read a file that must have no problems."""
    examples, problems = read_file(path, formatting, **kwargs)
    assert problems == []
    return examples


# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------

def test_alpaca_with_system_history_and_input(tmp_path):
    path = write(tmp_path / "qa.json", [
        {"instruction": "头痛恶寒，无汗而喘", "input": "脉浮紧", "output": "麻黄汤", "system": "你是中医",
         "history": [["何为表证?", "病位在表"], ["何为里证?", "病位在里"]]},
        {"instruction": "何为四诊?", "input": "", "output": "望闻问切"},
    ])
    first, second = read_ok(path, "alpaca")
    assert first["messages"] == chat(
        ("system", "你是中医"), ("user", "何为表证?"), ("assistant", "病位在表"), ("user", "何为里证?"),
        ("assistant", "病位在里"), ("user", "头痛恶寒，无汗而喘\n脉浮紧"), ("assistant", "麻黄汤"))
    assert second["messages"] == chat(("user", "何为四诊?"), ("assistant", "望闻问切"))
    assert (first["source"], first["index"], second["index"]) == ("qa.json", 0, 1)


def test_alpaca_null_input_and_system_are_empty(tmp_path):
    path = write(tmp_path / "qa.json", [{"instruction": "何为四诊?", "input": None, "system": None,
                                         "output": "望闻问切"}])
    assert read_ok(path, "alpaca")[0]["messages"] == chat(("user", "何为四诊?"), ("assistant", "望闻问切"))


def test_sharegpt_with_top_level_system(tmp_path):
    path = write(tmp_path / "conv.json", [{"system": "你是中医", "conversations": [
        {"from": "human", "value": "头痛"}, {"from": "gpt", "value": "多久了?"},
        {"from": "user", "value": "三天"}, {"from": "assistant", "value": "可用川芎茶调散"}]}])
    assert read_ok(path, "sharegpt")[0]["messages"] == chat(
        ("system", "你是中医"), ("user", "头痛"), ("assistant", "多久了?"), ("user", "三天"),
        ("assistant", "可用川芎茶调散"))


def test_sharegpt_system_given_twice(tmp_path):
    path = write(tmp_path / "conv.json", [{"system": "你是中医", "conversations": [
        {"from": "system", "value": "你是医生"}, {"from": "human", "value": "头痛"},
        {"from": "gpt", "value": "嗯"}]}])
    _, problems = read_file(path, "sharegpt")
    assert [(p.record, p.field) for p in problems] == [(0, "system")]
    assert "system prompt given twice" in problems[0].message


def test_openai_messages(tmp_path):
    messages = chat(("system", "你是中医"), ("user", "头痛"), ("assistant", "可用川芎茶调散"))
    path = write_jsonl(tmp_path / "openai.jsonl", [{"messages": messages}])
    assert read_ok(path, "openai")[0]["messages"] == messages


def test_sharegpt_with_llamafactory_tags_reads_openai_style(tmp_path):
    messages = chat(("user", "头痛"), ("assistant", "可用川芎茶调散"))
    write(tmp_path / "oa.json", [{"messages": messages}])
    write(tmp_path / "dataset_info.json", {"oa": {
        "file_name": "oa.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant"}}})
    examples, problems = read_dataset("oa", tmp_path)
    assert problems == [] and examples[0]["messages"] == messages


def test_sharegpt_without_tags_spots_openai_turns(tmp_path):
    path = write(tmp_path / "oa.json", [{"conversations": chat(("user", "头痛"), ("assistant", "嗯"))}])
    _, problems = read_file(path, "sharegpt")
    assert [(p.record, p.field) for p in problems] == [(0, "conversations")]
    assert "turn 1 has no 'from' key" in problems[0].message
    assert '"formatting": "openai"' in problems[0].message


def test_text_from_txt_paragraphs_and_lines(tmp_path):
    paragraphs = write(tmp_path / "book.txt", "第一段，\n仍是第一段。\n\n\n第二段。\n  \n第三段。\n")
    texts = [e["text"] for e in read_ok(paragraphs, "text", stage="pt")]
    assert texts == ["第一段，\n仍是第一段。", "第二段。", "第三段。"]
    lines = write(tmp_path / "lines.txt", "一行\r\n二行\r\n\r\n")  # only a trailing blank line: per line
    assert [e["text"] for e in read_ok(lines, "text", stage="pt")] == ["一行", "二行"]


def test_text_from_jsonl_with_mapped_column(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"正文": "阴阳者，天地之道也"}, {"正文": "   "}])
    examples, problems = read_file(path, "text", columns={"text": "正文"}, stage="pt")
    assert [e["text"] for e in examples] == ["阴阳者，天地之道也"]
    assert problems == [Problem(str(path), 1, "正文", "empty text")]


def test_mcq_ceval_csv(tmp_path):
    path = write(tmp_path / "ceval.csv", "id,question,A,B,C,D,answer,explanation\n"
                                         "0,四诊不包括,望,闻,问,补,D,\n1,属阳的有,表,热,里,寒,AB,解释\n")
    single, multi = read_ok(path, "mcq", stage="mcq")
    assert single["question"] == "四诊不包括" and single["answer"] == "D" and single["multi"] is False
    assert single["options"] == {"A": "望", "B": "闻", "C": "问", "D": "补"} and single["subject"] is None
    assert multi["answer"] == "AB" and multi["multi"] is True


def test_mcq_cmmlu_csv_with_unnamed_index_column(tmp_path):
    path = write(tmp_path / "cmmlu.csv", ",Question,A,B,C,D,Answer\n0,五行中属木的是,肝,心,脾,肺,A\n")
    [example] = read_ok(path, "mcq", stage="mcq")
    assert (example["question"], example["answer"], example["options"]["A"]) == ("五行中属木的是", "A", "肝")


def test_mcq_json_options_list_and_map_and_subject(tmp_path):
    path = write_jsonl(tmp_path / "mcq.jsonl", [
        {"question": "五行中属火的是", "options": ["肝", "心", "脾"], "answer": "b", "subject": "中医基础"},
        {"question": "1+2=", "options": {"a": 3, "b": 4}, "answer": "A"},
    ])
    listed, mapped = read_ok(path, "mcq", stage="mcq")
    assert listed["options"] == {"A": "肝", "B": "心", "C": "脾"} and listed["answer"] == "B"
    assert listed["subject"] == "中医基础"
    assert mapped["options"] == {"A": "3", "B": "4"} and mapped["subject"] is None


# ---------------------------------------------------------------------------------------------
# Readers and encodings
# ---------------------------------------------------------------------------------------------

def test_csv_with_column_mapping_aliases_and_quoted_newline(tmp_path):
    path = write(tmp_path / "qa.csv", '问题,补充,回答\n"头痛,恶寒",脉浮紧,"麻黄汤\n或桂枝汤"\n')
    columns = {"prompt": "问题", "query": "补充", "response": "回答"}  # LLaMA-Factory's names
    [example] = read_ok(path, "alpaca", columns=columns)
    assert example["messages"] == chat(("user", "头痛,恶寒\n脉浮紧"), ("assistant", "麻黄汤\n或桂枝汤"))


def test_tsv(tmp_path):
    path = write(tmp_path / "qa.tsv", "instruction\tinput\toutput\n何为四诊?\t\t望闻问切\n")
    assert read_ok(path, "alpaca")[0]["messages"][1]["content"] == "望闻问切"


def test_gb18030_csv(tmp_path):
    path = write(tmp_path / "gb.csv", "instruction,output\n何为四诊?,望闻问切\n", encoding="gb18030")
    assert read_ok(path, "alpaca")[0]["messages"] == chat(("user", "何为四诊?"), ("assistant", "望闻问切"))


def test_utf8_bom_json(tmp_path):
    path = write(tmp_path / "bom.json", '\ufeff[{"instruction": "何为四诊?", "output": "望闻问切"}]')
    assert read_ok(path, "alpaca")[0]["messages"][0]["content"] == "何为四诊?"


def test_jsonl_skips_blank_lines(tmp_path):
    path = write(tmp_path / "qa.jsonl",
                 '\n{"instruction": "一", "output": "1"}\n\n  \n{"instruction": "二", "output": "2"}')
    assert [e["index"] for e in read_ok(path, "alpaca")] == [0, 1]


def test_parquet_alpaca_with_nulls_and_sharegpt_nested(tmp_path):
    import pandas as pd  # a requirement: a missing pandas fails here, it does not skip
    alpaca = tmp_path / "qa.parquet"
    pd.DataFrame({"instruction": ["何为四诊?", "何为八纲?"], "input": [None, "简答"],
                  "output": ["望闻问切", "阴阳表里寒热虚实"]}).to_parquet(alpaca)
    first, second = read_ok(alpaca, "alpaca")
    assert first["messages"][0]["content"] == "何为四诊?"
    assert second["messages"][0]["content"] == "何为八纲?\n简答"

    sharegpt = tmp_path / "conv.parquet"
    turns = [{"from": "human", "value": "头痛"}, {"from": "gpt", "value": "可用川芎茶调散"}]
    pd.DataFrame({"conversations": [turns]}).to_parquet(sharegpt)
    expected = chat(("user", "头痛"), ("assistant", "可用川芎茶调散"))
    assert read_ok(sharegpt, "sharegpt")[0]["messages"] == expected


def test_not_a_parquet_file(tmp_path):
    path = write(tmp_path / "fake.parquet", "not parquet")
    _, problems = read_file(path, "alpaca")
    assert [(p.record, p.field) for p in problems] == [(None, None)]
    assert "cannot read this parquet file" in problems[0].message


def test_file_larger_than_limit_is_refused_before_reading(tmp_path):
    path = write(tmp_path / "big.json", "[" + " " * 100 + "]")
    examples, problems = read_file(path, "alpaca", max_file_bytes=10)
    assert examples == [] and len(problems) == 1
    assert problems[0].message.startswith("file is 102 bytes; the limit is 10 bytes")


def test_over_long_record(tmp_path):
    path = write(tmp_path / "long.json", [{"instruction": "长", "output": "气" * 999_999},
                                          {"instruction": "短", "output": "1"}])
    examples, problems = read_file(path, "alpaca")
    assert [e["index"] for e in examples] == [1]
    assert [(p.record, p.field) for p in problems] == [(0, None)]
    assert "record is 1,000,000 characters; the limit is 200,000" in problems[0].message


def test_missing_file_with_read_file(tmp_path):
    _, problems = read_file(tmp_path / "nope.json", "alpaca")
    assert problems[0].record is None and str(tmp_path / "nope.json") in problems[0].message


def test_unsupported_extension_and_txt_for_chat(tmp_path):
    _, problems = read_file(write(tmp_path / "qa.docx", "x"), "alpaca")
    assert "unsupported file type '.docx'" in problems[0].message
    _, problems = read_file(write(tmp_path / "qa.txt", "x"), "alpaca")
    assert '"formatting": "text"' in problems[0].message


def test_json_lines_in_a_json_file_get_a_hint(tmp_path):
    path = write(tmp_path / "qa.json", '{"instruction": "一", "output": "1"}\n{"instruction": "二"}')
    _, problems = read_file(path, "alpaca")
    assert "Extra data" in problems[0].message and ".jsonl" in problems[0].message


# ---------------------------------------------------------------------------------------------
# The bad-data corpus: each file, the exact problems it must give
# ---------------------------------------------------------------------------------------------

BAD_CASES = {
    "broken_json": [("broken.json", None, None, "invalid JSON at line 3, column 2: Expecting ',' delimiter")],
    "broken_line": [("broken_line.jsonl", 1, None, "line 2: invalid JSON at column 36")],
    "top_level_object": [("top_level_object.json", None, None,
                          "expected a JSON list of records, got an object")],
    "misspelled": [("misspelled.json", 0, "instruction",
                    ("missing; the record has 'instrution' instead: rename it to 'instruction' in the file "
                     "or map it with \"columns\" in dataset_info.json"))],
    "empty_answer": [("empty_answer.json", 1, "output", "empty answer")],
    "wrong_type": [("wrong_type.json", 0, "output", "must be a string, got int")],
    "role_order": [
        ("role_order.json", 0, "conversations",
         "turn 3 is 'assistant' but a 'user' turn must come after 'assistant' (two assistant turns in a row"),
        ("role_order.json", 1, "conversations",
         "turn 1 is 'assistant' but the conversation must start with a 'user'"),
        ("role_order.json", 2, "conversations", "turn 2: system turn must be first"),
        ("role_order.json", 3, "conversations",
         "conversation ends with a user turn and has no answer to train on"),
    ],
    "two_users": [("two_users.json", 0, "conversations",
                   ("turn 2 is 'user' but an 'assistant' turn must come after 'user' "
                   "(two user turns in a row: turns 1 and 2)"))],
    "unknown_role": [
        ("unknown_role.json", 0, "conversations",
         "turn 2: unknown role 'doctor' (expected one of human, gpt, system, function_call, observation)"),
        ("unknown_role.json", 1, "conversations",  # a function call turn whose value "{}" names no function
         'turn 2: a function call must be JSON like {"name": "get_weather"'),
    ],
    "binary": [("binary.json", None, None, "not a text file")],
    "bad_encoding": [("bad_encoding.csv", None, None, "unknown encoding")],
    "mcq_missing_option": [("mcq_missing_option.csv", 1, "answer",
                            "answer 'E' names option E, which is missing")],
    "duplicate_header": [("duplicate_header.csv", None, "A", "column 'A' appears 2 times in the header")],
    "ragged_csv": [("ragged.csv", 1, None, "line 3: 3 cells, but the header has 2")],
    "missing_file": [("not_here.json", None, None, "file not found: ")],
}


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_data(name):
    formatting = load_dataset_info(BAD_DATA)[name]["formatting"]
    _, problems = read_dataset(name, BAD_DATA, "mcq" if formatting == "mcq" else "sft")
    assert [(p.file, p.record, p.field) for p in problems] == [case[:3] for case in BAD_CASES[name]]
    for problem, case in zip(problems, BAD_CASES[name]):
        assert case[3] in problem.message


def test_bad_data_missing_file_names_path_and_dataset():
    _, [problem] = read_dataset("missing_file", BAD_DATA)
    assert str((BAD_DATA / "not_here.json").resolve()) in problem.message
    assert "dataset 'missing_file'" in problem.message


def test_bad_data_good_records_still_load():
    examples, _ = read_dataset("broken_line", BAD_DATA)
    assert [e["index"] for e in examples] == [0, 2]
    examples, _ = read_dataset("mcq_missing_option", BAD_DATA, "mcq")
    assert [(e["index"], e["answer"], e["multi"]) for e in examples] == [(0, "D", False), (2, "AB", True)]


def test_bad_data_over_long_record_with_a_small_limit():
    examples, problems = read_dataset("long_record", BAD_DATA, max_record_chars=200)
    assert len(examples) == 1
    assert [(p.file, p.record, p.field) for p in problems] == [("long_record.json", 1, None)]
    assert "record is 300 characters; the limit is 200" in problems[0].message


def test_all_problems_of_a_file_are_collected():
    examples, problems = read_dataset("three_problems", BAD_DATA)
    assert [e["index"] for e in examples] == [0]
    assert [(p.record, p.field) for p in problems] == [(1, "output"), (2, "output"), (3, "instruction")]
    messages = [p.message.split(";")[0] for p in problems]
    assert messages == ["missing", "must be a string, got list", "empty question"]


def test_all_problems_of_all_datasets_raise_one_data_error():
    with pytest.raises(DataError) as caught:
        load_datasets("three_problems,empty_answer", BAD_DATA, "sft")
    assert len(caught.value.problems) == 4
    assert {p.file for p in caught.value.problems} == {"three_problems.json", "empty_answer.json"}
    assert "4 problem(s)" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# Registry and stages
# ---------------------------------------------------------------------------------------------

def test_text_dataset_refused_for_sft_and_read_for_pt():
    message = "dataset 'tcm_corpus' is raw text (formatting: text) and can only be used for stage pt"
    with pytest.raises(UserError, match=re.escape(message)):
        read_dataset("tcm_corpus", BAD_DATA, "sft")
    examples, problems = read_dataset("tcm_corpus", BAD_DATA, "pt")
    assert problems == [] and len(examples) == 2


def test_pt_stage_joins_conversations_into_text(tmp_path):
    path = write(tmp_path / "qa.json", [{"instruction": "何为四诊?", "output": "望闻问切",
                                         "system": "你是中医"}])
    [example] = read_ok(path, "alpaca", stage="pt")
    assert example["text"] == "你是中医\n何为四诊?\n望闻问切" and "messages" not in example


def test_stage_mismatches_for_mcq(tmp_path):
    path = write(tmp_path / "qa.json", [])
    with pytest.raises(UserError, match="not multiple-choice"):
        read_file(path, "alpaca", stage="mcq")
    with pytest.raises(UserError, match="only be used for evaluation"):
        read_file(path, "mcq", stage="sft")


def test_unknown_dataset_suggests_the_nearest():
    with pytest.raises(UserError) as caught:
        read_dataset("mispelled", BAD_DATA)
    assert "did you mean 'misspelled'?" in str(caught.value) and "two_users" in str(caught.value)


def test_missing_and_broken_dataset_info(tmp_path):
    with pytest.raises(UserError, match="dataset_info.json not found"):
        load_dataset_info(tmp_path)
    write(tmp_path / "dataset_info.json", '{"qa": {"file_name": "qa.json",}}')
    with pytest.raises(UserError, match="dataset_info.json is not valid JSON: line 1"):
        load_dataset_info(tmp_path)


def test_registry_defaults_and_entry_mistakes(tmp_path):
    write(tmp_path / "dataset_info.json", {
        "plain": {"file_name": "qa.json"},
        "typo_column": {"file_name": "qa.json", "columns": {"instrution": "问题"}},
        "typo_format": {"file_name": "qa.json", "formatting": "sharegtp"},
        "hub": {"hf_hub_url": "someone/data"},
    })
    assert load_dataset_info(tmp_path)["plain"]["formatting"] == "alpaca"
    with pytest.raises(UserError, match="did you mean 'instruction'"):
        read_dataset("typo_column", tmp_path)
    with pytest.raises(UserError, match="did you mean 'sharegpt'"):
        read_dataset("typo_format", tmp_path)
    with pytest.raises(UserError, match="local files only"):
        read_dataset("hub", tmp_path)


def test_missing_field_without_a_close_key_lists_the_keys(tmp_path):
    path = write(tmp_path / "qa.json", [{"问题": "何为四诊?", "回答": "望闻问切"}])
    _, problems = read_file(path, "alpaca")
    assert [(p.record, p.field) for p in problems] == [(0, "instruction"), (0, "output")]
    assert "other keys: 问题, 回答" in problems[0].message


# ---------------------------------------------------------------------------------------------
# load_datasets: mixing, max_samples, splits, determinism
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def two_datasets(tmp_path):
    write(tmp_path / "a.json", [{"instruction": f"a{i}", "output": "x"} for i in range(20)])
    write_jsonl(tmp_path / "b.jsonl", [{"conversations": [{"from": "human", "value": f"b{i}"},
                                                          {"from": "gpt", "value": "y"}]} for i in range(10)])
    write(tmp_path / "dataset_info.json", {"a": {"file_name": "a.json"},
                                           "b": {"file_name": "b.jsonl", "formatting": "sharegpt"}})
    return tmp_path


def questions(examples):
    return [e["messages"][0]["content"] for e in examples]


def test_load_datasets_mixes_and_is_deterministic(two_datasets):
    train, evals = load_datasets("a, b", two_datasets, "sft")
    assert len(train) == 30 and evals == []
    assert {e["source"] for e in train} == {"a", "b"}
    assert questions(train) == questions(load_datasets(["a", "b"], two_datasets, "sft")[0])
    assert questions(train) != questions(load_datasets(["a", "b"], two_datasets, "sft", seed=7)[0])
    assert questions(train) != [f"a{i}" for i in range(20)] + [f"b{i}" for i in range(10)]  # shuffled


def test_load_datasets_max_samples_per_dataset_in_file_order(two_datasets):
    train, _ = load_datasets("a,b", two_datasets, "sft", max_samples=3)
    assert sorted(questions(train)) == ["a0", "a1", "a2", "b0", "b1", "b2"]


def test_load_datasets_val_size_fraction_and_count(two_datasets):
    train, evals = load_datasets("a,b", two_datasets, "sft", val_size=0.1)
    assert (len(train), len(evals)) == (27, 3)
    assert set(questions(train)).isdisjoint(questions(evals))
    train, evals = load_datasets("a,b", two_datasets, "sft", val_size=5)
    assert (len(train), len(evals)) == (25, 5)
    with pytest.raises(UserError, match="leaves none to train on"):
        load_datasets("a", two_datasets, "sft", val_size=20)
    with pytest.raises(UserError, match="val_size"):
        load_datasets("a", two_datasets, "sft", val_size=1.5)


def test_load_datasets_eval_names_replace_val_size(two_datasets):
    train, evals = load_datasets("a", two_datasets, "sft", val_size=0.5, eval_names="b")
    assert len(train) == 20 and questions(evals) == [f"b{i}" for i in range(10)]


def test_load_datasets_checks_every_name_first(two_datasets):
    with pytest.raises(UserError, match="unknown dataset 'c'"):
        load_datasets("a,c", two_datasets, "sft")
    with pytest.raises(UserError, match="no dataset given"):
        load_datasets("", two_datasets, "sft")


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------

def test_text_stats_chat():
    examples = [
        {"messages": chat(("system", "s"), ("user", "ab"), ("assistant", "cd"))},
        {"messages": chat(("user", "ab"), ("assistant", "cd"), ("user", "e"), ("assistant", "f"))},
        {"messages": chat(("user", "AB "), ("assistant", " cd"))},  # same as the next one once normalised
        {"messages": chat(("user", "ab"), ("assistant", "cd"))},
    ]
    stats = text_stats(examples)
    assert stats["kind"] == "chat" and stats["records"] == 4
    turns = (stats["assistant_turns"], stats["mean_assistant_turns"], stats["multi_turn_share"])
    assert turns == (5, 1.25, 0.25)
    assert (stats["duplicates"], stats["empty_answers"], stats["system_share"]) == (1, 0, 0.25)
    assert (stats["chars_p50"], stats["chars_max"]) == (5.5, 6)  # lengths 5, 6, 6, 4


def test_text_stats_text_mcq_and_empty():
    stats = text_stats([{"text": "阴阳"}, {"text": "五行学说"}, {"text": " 阴阳"}])
    assert (stats["kind"], stats["records"], stats["total_chars"]) == ("text", 3, 9)
    assert (stats["chars_max"], stats["duplicates"]) == (4, 1)
    mcq = text_stats([{"question": "q", "options": {"A": "1", "B": "2"}, "answer": "AB", "subject": "s",
                       "multi": True}])
    assert (mcq["kind"], mcq["multi_answer"], mcq["subjects"]) == ("mcq", 1, 1)
    assert text_stats([]) == {"records": 0}


def test_percentile():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5, 1, 3], 0) == 1 and percentile([5, 1, 3], 100) == 5
    assert percentile(list(range(101)), 95) == 95
    assert percentile([], 50) == 0.0
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_import_is_light():
    code = ("import sys, trainer_core.data; "
            "print([m for m in ('pandas', 'pyarrow', 'torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# The sample datasets shipped in data/
# ---------------------------------------------------------------------------------------------

def test_sample_datasets_read_without_problems():
    info = load_dataset_info(SAMPLE_DATA)
    assert info
    for name, entry in info.items():
        stage = {"text": "pt", "mcq": "mcq"}.get(entry["formatting"], "sft")
        if preference_kind(entry):  # pairs and KTO answers (tests/test_preference_data.py)
            examples, problems = read_preference_dataset(name, SAMPLE_DATA)
        else:
            examples, problems = read_dataset(name, SAMPLE_DATA, stage)
        assert problems == [], f"{name}: {problems[:3]}"
        assert examples, f"{name} holds no records"


def test_a_csv_with_a_header_and_no_rows_is_an_empty_dataset(tmp_path):
    from trainer_core.data import read_file

    path = tmp_path / "empty.csv"
    path.write_text("instruction,input,output\n", encoding="utf-8")
    examples, problems = read_file(path, "alpaca")
    assert examples == [] and [p.message for p in problems] == ["holds no records: the dataset is empty"]


# ---- Excel and Big5 --------------------------------------------------------------------------

def _workbook(path: Path, sheets: dict[str, list[list]]) -> Path:
    from openpyxl import Workbook

    book = Workbook()
    book.remove(book.active)
    for title, rows in sheets.items():
        sheet = book.create_sheet(title)
        for row in rows:
            sheet.append(row)
    book.save(path)
    return path


def test_an_excel_sheet_reads_like_a_csv_with_its_column_map(tmp_path):
    """A hospital export: Chinese headers, a blank row, a number cell; the first sheet by
    default, another one by name; problems name the record like a CSV's."""
    _workbook(tmp_path / "qa.xlsx", {
        "说明": [["这一页不是数据"]],
        "问答": [["问题", "回答", "序号"], ["何为四诊？", "望闻问切", 1], [None, None, None],
                 ["黄芪的功效？", "补气升阳", 2], ["", "没有问题的回答", 3]]})
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "qa": {"file_name": "qa.xlsx", "formatting": "alpaca", "sheet": "问答",
               "columns": {"instruction": "问题", "output": "回答"}},
        "first": {"file_name": "qa.xlsx", "formatting": "text", "columns": {"text": "这一页不是数据"}},
        "missing_sheet": {"file_name": "qa.xlsx", "formatting": "alpaca", "sheet": "病历"}}, ensure_ascii=False))
    examples, problems = read_dataset("qa", tmp_path)
    assert [e["messages"][0]["content"] for e in examples] == ["何为四诊？", "黄芪的功效？"]
    assert [(p.record, p.field) for p in problems] == [(2, "问题")]
    examples, problems = read_dataset("first", tmp_path, stage="pt")
    assert examples == [] and "holds no records" in problems[0].message  # the header row only
    _, problems = read_dataset("missing_sheet", tmp_path)
    assert problems[0].message == "has no sheet '病历' (its sheets: 说明, 问答)"


def test_excel_upload_preview_and_old_xls(tmp_path):
    path = _workbook(tmp_path / "upload.xlsx", {"Sheet1": [["instruction", "output"], ["何为四诊？", "望闻问切"]]})
    examples, problems = read_file(path, "alpaca")
    assert not problems and examples[0]["messages"][1]["content"] == "望闻问切"
    (tmp_path / "old.xls").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 60)
    _, problems = read_file(tmp_path / "old.xls", "alpaca")
    assert "save it as .xlsx" in problems[0].message
    (tmp_path / "broken.xlsx").write_bytes(b"not a workbook")
    _, problems = read_file(tmp_path / "broken.xlsx", "alpaca")
    assert problems[0].message.startswith("cannot read this Excel file")


def test_big5_is_told_apart_from_gb18030(tmp_path):
    """Both decode most bytes of the other: each file must come back as it was written."""
    traditional = ("問題,回答\n黃耆的功效是什麼？,補氣升陽，固表止汗，利水消腫。\n"
                   "四君子湯由哪些藥組成？,人參、白朮、茯苓、甘草。\n")
    simplified = ("问题,回答\n黄芪的功效是什么？,补气升阳，固表止汗，利水消肿。\n"
                  "四君子汤由哪些药组成？,人参、白术、茯苓、甘草。\n")
    columns = {"instruction": "問題", "output": "回答"}
    (tmp_path / "big5.csv").write_bytes(traditional.encode("big5"))
    examples, problems = read_file(tmp_path / "big5.csv", "alpaca", columns)
    assert not problems and examples[0]["messages"][1]["content"] == "補氣升陽，固表止汗，利水消腫。"
    (tmp_path / "gb.csv").write_bytes(simplified.encode("gb18030"))
    examples, problems = read_file(tmp_path / "gb.csv", "alpaca", {"instruction": "问题", "output": "回答"})
    assert not problems and examples[1]["messages"][1]["content"] == "人参、白术、茯苓、甘草。"


# ---- mixing by ratio -------------------------------------------------------------------------

def _mix_dir(tmp_path: Path, sizes: dict[str, int]) -> Path:
    info = {}
    for name, size in sizes.items():
        rows = [{"instruction": f"{name} 问题 {i}", "output": f"{name} 回答 {i}"} for i in range(size)]
        (tmp_path / f"{name}.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        info[name] = {"file_name": f"{name}.json", "formatting": "alpaca"}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return tmp_path


def _sources(examples: list[dict]) -> dict[str, int]:
    from trainer_core.data import mix_composition

    return mix_composition(examples)


def test_weights_draw_each_dataset_by_its_share_until_the_first_runs_out(tmp_path):
    folder = _mix_dir(tmp_path, {"classics": 300, "clinic": 300, "general": 300})
    train, _ = load_datasets("classics:0.6,clinic:0.3,general:0.1", folder, "sft", seed=7)
    counts = _sources(train)
    assert counts["classics"] == 300  # interleave_under: the heaviest one ran out first, and that is the end
    assert 120 <= counts["clinic"] <= 180 and 25 <= counts["general"] <= 75  # about 0.3 and 0.1 of 500
    assert len({e["messages"][0]["content"] for e in train}) == len(train)  # no record twice
    again, _ = load_datasets("classics:0.6,clinic:0.3,general:0.1", folder, "sft", seed=7)
    assert again == train  # the seed fixes the draw
    other, _ = load_datasets("classics:0.6,clinic:0.3,general:0.1", folder, "sft", seed=8)
    assert other != train
    same, _ = load_datasets("classics,clinic,general", folder, "sft", seed=7, interleave_probs="0.6,0.3,0.1")
    assert same == train  # LLaMA-Factory's spelling of the same weights


def test_interleave_over_repeats_the_small_datasets_and_concat_takes_each_record_once(tmp_path):
    folder = _mix_dir(tmp_path, {"big": 200, "small": 10})
    train, _ = load_datasets("big:0.5,small:0.5", folder, "sft", seed=1, mix_strategy="interleave_over")
    counts = _sources(train)
    assert counts["big"] == 200 and counts["small"] > 100  # the small one is oversampled to keep its share
    assert {e["messages"][0]["content"] for e in train if e["source"] == "small"} == {
        f"small 问题 {i}" for i in range(10)}
    plain, _ = load_datasets("big,small", folder, "sft", seed=1)
    assert _sources(plain) == {"big": 200, "small": 10} and len(plain) == 210


def test_mixing_weights_are_checked_with_the_config():
    from trainer_core.config import TrainConfig, validate

    def keys(**raw):
        return [p.keys for p in validate(raw, TrainConfig)[1]]

    assert keys(dataset="a:0.5,b:0.5") == [] and keys(dataset="a,b", interleave_probs="1,3") == []
    assert keys(dataset="a:0.5,b") == [("dataset",)]
    assert keys(dataset="a:0.5,b:0.5", interleave_probs="1,1") == [("dataset", "interleave_probs")]
    assert keys(dataset="a,b", interleave_probs="1") == [("interleave_probs",)]
    assert keys(dataset="a:0,b:1") == [("dataset",)] and keys(dataset="a:x,b:1") == [("dataset",)]
    assert keys(mix_strategy="interleave") == [("mix_strategy",)]


def test_the_run_folder_records_the_mix(tmp_path):
    from trainer_core.config import TrainConfig
    from trainer_core.train import record_mix

    (tmp_path / "data").mkdir()
    folder = _mix_dir(tmp_path / "data", {"a": 40, "b": 40})
    train, _ = load_datasets("a:3,b:1", folder, "sft", seed=3)
    lines: list[str] = []
    cfg = TrainConfig(dataset="a:3,b:1", output_dir=str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    record_mix(cfg, mix_composition(train), lines.append)
    mix = json.loads((tmp_path / "run" / "data_mix.json").read_text())
    assert mix["strategy"] == "interleave_under" and mix["weights"] == {"a": 3.0, "b": 1.0}
    assert mix["records_per_epoch"] == _sources(train) and mix["total"] == len(train)
    assert lines[0].startswith("train mix: a 40 (")
