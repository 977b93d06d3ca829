"""Bad input, case by case, each with the exact message a user gets.

Data: the committed corpus in tests/bad_data/ (registered in its dataset_info.json) plus files that
are generated here because they are huge (a sparse 2 GB file, a 1 MB answer) or many (JSON
variants). Every expected problem is the whole line `data check` prints: file, record, field and
the explanation. Config: every key of trainer_core.config.KEYS with a value of the wrong type and
one out of range. Models: a missing folder, a folder without tokenizer files, a model that needs
its own code (never run unless trust_remote_code is set). And the CLI: exit code 2, the message,
no traceback.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from trainer_core.config import DEEPSPEED_PRESETS, KEYS, allowed_values, config_from_dict, load_config
from trainer_core.data import load_dataset_info, load_datasets, preference_kind, read_dataset, read_file
from trainer_core.errors import DataError, UserError

BAD = Path(__file__).parent / "bad_data"
REPO = Path(__file__).resolve().parent.parent
GIB = 1 << 30


def problems_of(name: str, **kwargs) -> list[str]:
    """The problems of a dataset in tests/bad_data, as `data check` prints them."""
    formatting = load_dataset_info(BAD)[name]["formatting"]
    stage = {"mcq": "mcq", "text": "pt"}.get(formatting, "sft")
    _, problems = read_dataset(name, BAD, stage, **kwargs)
    return [str(p) for p in problems]


def examples_of(name: str) -> list[dict]:
    formatting = load_dataset_info(BAD)[name]["formatting"]
    examples, problems = read_dataset(name, BAD, "mcq" if formatting == "mcq" else "sft")
    assert problems == []
    return examples


def qa(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


# ---------------------------------------------------------------------------------------------
# The committed corpus: each file and every problem it must give, word for word
# ---------------------------------------------------------------------------------------------

RENAME = 'in the file or map it with "columns" in dataset_info.json'
NUL = ("not a text file (it contains NUL bytes); save it as UTF-8 text "
       "(UTF-16 without a byte-order mark looks like this too)")

EXPECTED = {
    # Broken JSON and JSONL: line and column.
    "broken_json": ["broken.json: invalid JSON at line 3, column 2: Expecting ',' delimiter"],
    "broken_line": ["broken_line.jsonl, record 1: line 2: invalid JSON at column 36: Expecting value"],
    "broken_openai": ["broken_openai.jsonl, record 1: line 2: invalid JSON at column 49: Expecting ',' delimiter"],
    # Wrong top-level type, records that are not objects.
    "top_level_object": ["top_level_object.json: expected a JSON list of records, got an object "
                         "(the records seem to be under 'data': put that list at the top level)"],
    "top_level_string": ["top_level_string.json: expected a JSON list of records, got a string"],
    "records_not_objects": ["records_not_objects.json, record 0: record must be a JSON object, got list",
                            "records_not_objects.json, record 1: record must be a JSON object, got str",
                            "records_not_objects.json, record 2: record must be a JSON object, got int"],
    "wrong_type": ["wrong_type.json, record 0, field 'output': must be a string, got int"],
    # Missing and misspelled fields: the right name is suggested.
    "misspelled": [f"misspelled.json, record 0, field 'instruction': missing; the record has 'instrution' "
                   f"instead: rename it to 'instruction' {RENAME}"],
    "misspelled_conversations": [f"misspelled_conversations.json, record 0, field 'conversations': missing; the "
                                 f"record has 'conversation' instead: rename it to 'conversations' {RENAME}"],
    "misspelled_messages": [f"misspelled_messages.json, record 0, field 'messages': missing; the record has "
                            f"'mesages' instead: rename it to 'messages' {RENAME}"],
    "three_problems": ["three_problems.json, record 1, field 'output': missing; add it to the record",
                       "three_problems.json, record 2, field 'output': must be a string, got list",
                       "three_problems.json, record 3, field 'instruction': empty question"],
    # Empty strings.
    "empty_strings": ["empty_strings.json, record 0, field 'instruction': empty question",
                      "empty_strings.json, record 1, field 'output': empty answer"],
    "empty_answer": ["empty_answer.json, record 1, field 'output': empty answer"],
    "empty_turn": ["empty_turn.json, record 0, field 'conversations': turn 3: empty question"],
    "empty_jsonl": ["empty.jsonl: the file is empty"],
    # Roles out of order, two users in a row, a system turn in the wrong place.
    "role_order": [
        "role_order.json, record 0, field 'conversations': turn 3 is 'assistant' but a 'user' turn must come "
        "after 'assistant' (two assistant turns in a row: turns 2 and 3)",
        "role_order.json, record 1, field 'conversations': turn 1 is 'assistant' but the conversation must "
        "start with a 'user' turn",
        "role_order.json, record 2, field 'conversations': turn 2: system turn must be first",
        "role_order.json, record 3, field 'conversations': conversation ends with a user turn and has no "
        "answer to train on"],
    "two_users": ["two_users.json, record 0, field 'conversations': turn 2 is 'user' but an 'assistant' turn "
                  "must come after 'user' (two user turns in a row: turns 1 and 2)"],
    "assistant_first": ["assistant_first.json, record 0, field 'messages': turn 1 is 'assistant' but the "
                        "conversation must start with a 'user' turn"],
    "system_late": ["system_late.json, record 0, field 'messages': turn 3: system turn must be first"],
    "unknown_role": [
        "unknown_role.json, record 0, field 'conversations': turn 2: unknown role 'doctor' "
        "(expected one of human, gpt, system, function_call, observation)",
        "unknown_role.json, record 1, field 'conversations': turn 2: a function call must be JSON like "
        '{"name": "get_weather", "arguments": {"city": "北京"}} (or a list of them); got {}, which has no "name"'],
    # Binary files and encodings that are not text.
    "binary": [f"binary.json: {NUL}"],
    "binary_jsonl": [f"binary.jsonl: {NUL}"],
    "bad_encoding": ["bad_encoding.csv: unknown encoding: the file is neither UTF-8, GB18030 nor Big5; "
                     "save it as UTF-8"],
    "lone_surrogate": ["lone_surrogate.json, record 0, field 'output': holds a lone surrogate escape such as "
                       "\\ud800, which is not a character; fix the escape sequence in the file"],
    # Tables: NaN cells, duplicated and ragged columns, an answer letter with no option.
    "nan_cells": ["nan_cells.csv, record 1, field 'output': empty answer (NaN: a missing value in the table)"],
    "nan_json": ["nan.json, record 1, field 'output': empty answer (NaN: a missing value in the table)"],
    "nan_mcq": ["nan_mcq.json, record 0, field 'answer': answer 'C' names option C, which is missing or empty "
                "(options: A, B)"],
    "duplicate_header": ["duplicate_header.csv, field 'A': column 'A' appears 2 times in the header; "
                         "rename the copies"],
    "ragged_csv": ["ragged.csv, record 1: line 3: 3 cells, but the header has 2"],
    "mcq_missing_option": ["mcq_missing_option.csv, record 1, field 'answer': answer 'E' names option E, which "
                           "is missing or empty (options: A, B, C, D)"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_file_gives_exactly_these_problems(name):
    assert problems_of(name) == EXPECTED[name]


def test_missing_file_names_the_path_and_the_dataset():
    info = BAD / "dataset_info.json"
    assert problems_of("missing_file") == [
        f"not_here.json: file not found: {(BAD / 'not_here.json').resolve()} (dataset 'missing_file' in {info})"]


def test_every_committed_bad_file_is_covered():
    """A file added to tests/bad_data must get its expected messages here (or load, below)."""
    info = load_dataset_info(BAD)
    preference = {name for name, entry in info.items() if preference_kind(entry)}  # test_preference_data.py
    covered = set(EXPECTED) | set(LOADS) | {"missing_file", "long_record", "tcm_corpus", "special_token"} | preference
    assert set(info) == covered
    registered = {entry["file_name"] for entry in info.values()}
    on_disk = {p.name for p in BAD.iterdir() if p.name != "dataset_info.json"}
    assert on_disk <= registered


def test_good_records_beside_bad_ones_still_load():
    assert [e["index"] for e in read_dataset("nan_cells", BAD)[0]] == [0]
    assert read_dataset("nan_json", BAD)[0][0]["messages"] == qa("何为四诊？", "望闻问切")  # NaN input: empty
    assert [e["index"] for e in read_dataset("broken_openai", BAD)[0]] == [0]


# ---------------------------------------------------------------------------------------------
# Files that must load: GB18030, BOMs, quoted newlines
# ---------------------------------------------------------------------------------------------

LOADS = {
    "gb18030_csv": [qa("何为四诊？", "望闻问切"), qa("㐀字（扩展A）", "𠀀字（扩展B，四字节）")],
    "bom_jsonl": [qa("何为四诊？", "望闻问切")],
    "utf16_bom_csv": [qa("何为四诊？", "望闻问切")],
    "quoted_newlines": [qa("头痛，恶寒\n无汗而喘\n脉浮紧", '麻黄汤。\n\n方中麻黄为君，"发汗解表"。'),
                        qa("何为四诊？", "望闻问切")],
    "bom_mcq_csv": None,  # checked below: a BOM before the header must not rename the first column
}


@pytest.mark.parametrize("name", sorted(n for n, v in LOADS.items() if v is not None))
def test_encodings_and_quoted_newlines_load_exactly(name):
    assert [e["messages"] for e in examples_of(name)] == LOADS[name]


def test_bom_before_a_csv_header_keeps_the_first_column_name():
    [example] = examples_of("bom_mcq_csv")
    assert example["question"] == "五行中属木的是" and example["answer"] == "A"
    assert example["options"] == {"A": "肝", "B": "心"}


# ---------------------------------------------------------------------------------------------
# Generated cases: JSON variants, top-level types, huge answers and files
# ---------------------------------------------------------------------------------------------

BROKEN_JSON = {
    "trailing_comma.json": ('[{"instruction": "一", "output": "1"},]',
                            "invalid JSON at line 1, column 38: Expecting value"),
    "single_quotes.json": ("[{'instruction': '一', 'output': '1'}]",
                           "invalid JSON at line 1, column 3: Expecting property name enclosed in double quotes"),
    "raw_newline.json": ('[{"instruction": "一",\n  "output": "第一行\n第二行"}]',
                         "invalid JSON at line 2, column 17: a control character inside a string "
                         "(a raw line break or tab? write it as \\n or \\t)"),
    "truncated.json": ('[{"instruction": "一", "output": "1"}', "invalid JSON at line 1, column 37: Expecting ',' "
                       "delimiter"),
    "lines.json": ('{"instruction": "一", "output": "1"}\n{"instruction": "二", "output": "2"}\n',
                   "invalid JSON at line 2, column 1: Extra data (one JSON object per line? then name the file "
                   ".jsonl)"),
    "deep.json": ("[" * 5000 + "]" * 5000, "invalid JSON: values are nested too deeply"),
    "huge_number.json": ('[{"instruction": "一", "output": ' + "9" * 5000 + "}]",
                         "invalid JSON: a number has too many digits"),
    "empty.json": (" \n", "the file is empty"),
    "null.json": ("null", "expected a JSON list of records, got null"),
    "number.json": ("3.5", "expected a JSON list of records, got a number"),
    "boolean.json": ("true", "expected a JSON list of records, got a boolean"),
}


@pytest.mark.parametrize("file_name", sorted(BROKEN_JSON))
def test_broken_json_and_wrong_top_level_types(tmp_path, file_name):
    content, message = BROKEN_JSON[file_name]
    path = tmp_path / file_name
    path.write_text(content, encoding="utf-8")
    examples, problems = read_file(path, "alpaca")
    assert examples == [] and [str(p) for p in problems] == [f"{path}: {message}"]


def test_broken_jsonl_lines_each_named_with_line_and_column(tmp_path):
    path = tmp_path / "qa.jsonl"
    lines = ['{"instruction": "一", "output": "1"}', "", '{"instruction": "二", "output": "2",}', "[1, 2",
             '"只是一个字符串"', "[" * 5000, '{"instruction": "三", "output": ' + "9" * 5000 + "}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    examples, problems = read_file(path, "alpaca")
    assert [e["index"] for e in examples] == [0]
    assert [str(p) for p in problems] == [
        f"{path}, record 1: line 3: invalid JSON at column 36: Expecting property name enclosed in double quotes",
        f"{path}, record 2: line 4: invalid JSON at column 6: Expecting ',' delimiter",
        f"{path}, record 3: record must be a JSON object, got str",
        f"{path}, record 4: line 6: invalid JSON: values are nested too deeply",
        f"{path}, record 5: line 7: invalid JSON: a number has too many digits",
    ]


def test_deeply_nested_value_inside_a_record(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text('[{"instruction": "一", "output": "1", "history": ' + "[" * 500 + "]" * 500 + "}]")
    assert [str(p) for p in read_file(path, "alpaca")[1]] == [
        f"{path}, record 0, field 'history': item 1 must be a [question, answer] pair of strings"]


def test_a_lone_surrogate_quoted_in_a_message_is_escaped(tmp_path):
    """The message would quote the key; printing a lone surrogate fails, so it is written as an escape."""
    path = tmp_path / "qa.json"
    path.write_text('{"\\ud800": [{"instruction": "一", "output": "1"}]}')
    [problem] = [str(p) for p in read_file(path, "alpaca")[1]]
    assert problem == (f"{path}: expected a JSON list of records, got an object (the records seem to be under "
                       "'\\ud800': put that list at the top level)")
    problem.encode("utf-8")


def test_a_1mb_answer_is_a_clear_problem_fast_and_loads_when_allowed(tmp_path):
    answer = "气" * (1 << 20)  # a million characters, 3 MB of UTF-8
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"instruction": "何为气？", "output": answer}, ensure_ascii=False) + "\n"
                    + json.dumps({"instruction": "何为血？", "output": "血"}, ensure_ascii=False) + "\n")
    start = time.perf_counter()
    examples, problems = read_file(path, "alpaca")
    assert time.perf_counter() - start < 2
    assert [e["index"] for e in examples] == [1]
    assert [str(p) for p in problems] == [
        f"{path}, record 0: record is 1,048,580 characters; the limit is 200,000 (max_record_chars)"]
    examples, problems = read_file(path, "alpaca", max_record_chars=2_000_000)
    assert problems == [] and examples[0]["messages"][1]["content"] == answer


def sparse_file(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk space and no time to write."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.mark.parametrize("file_name,formatting", [("big.json", "alpaca"), ("big.jsonl", "sharegpt"),
                                                  ("big.csv", "alpaca"), ("big.txt", "text"),
                                                  ("big.parquet", "openai")])
def test_a_2gb_file_is_refused_by_size_without_being_read(tmp_path, file_name, formatting):
    path = sparse_file(tmp_path / file_name, 2 * GIB)
    assert os.stat(path).st_blocks * 512 < 1 << 20  # really sparse: the test costs no disk
    tracemalloc.start()
    start = time.perf_counter()
    try:
        examples, problems = read_file(path, formatting, stage="pt" if formatting == "text" else "sft")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1
    assert peak < 1 << 20  # never read: a read would allocate 2 GB
    assert examples == []
    assert [str(p) for p in problems] == [
        f"{path}: file is 2.0 GiB; the limit is 1.0 GiB (max_file_bytes): split it or raise the limit"]


def test_a_2gb_file_in_a_run_raises_one_data_error(tmp_path):
    sparse_file(tmp_path / "big.jsonl", 2 * GIB)
    (tmp_path / "dataset_info.json").write_text(json.dumps({"big": {"file_name": "big.jsonl"}}))
    with pytest.raises(DataError) as caught:
        load_datasets("big", tmp_path, "sft")
    assert str(caught.value) == ("1 problem(s) in the data:\n  - big.jsonl: file is 2.0 GiB; the limit is 1.0 GiB "
                                 "(max_file_bytes): split it or raise the limit")


def test_random_bytes_and_utf16_without_bom_are_not_text(tmp_path):
    noise = bytes((i * 7919 + 13) % 256 for i in range(4096))
    for name in ("noise.csv", "noise.json", "noise.jsonl"):
        path = tmp_path / name
        path.write_bytes(noise)
        assert [str(p) for p in read_file(path, "alpaca")[1]] == [f"{path}: {NUL}"]
    path = tmp_path / "utf16.json"
    path.write_bytes('[{"instruction": "一", "output": "1"}]'.encode("utf-16-le"))
    assert [str(p) for p in read_file(path, "alpaca")[1]] == [f"{path}: {NUL}"]


def test_gb18030_jsonl_and_bom_json_load(tmp_path):
    path = tmp_path / "gb.jsonl"
    path.write_bytes('{"instruction": "何为四诊？", "output": "望闻问切"}\n'.encode("gb18030"))
    assert read_file(path, "alpaca")[0][0]["messages"] == qa("何为四诊？", "望闻问切")
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + '[{"messages": [{"role": "user", "content": "头痛"}, '
                     '{"role": "assistant", "content": "可用川芎茶调散"}]}]'.encode())
    assert read_file(path, "openai")[0][0]["messages"] == qa("头痛", "可用川芎茶调散")


def test_duplicated_header_after_trimming_spaces(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("question, A ,A,B,answer\n四诊不包括,望,闻,补,B\n", encoding="utf-8")
    assert [str(p) for p in read_file(path, "mcq", stage="mcq")[1]] == [
        f"{path}, field 'A': column 'A' appears 2 times in the header; rename the copies"]


def test_mcq_option_that_is_nan_is_absent_not_the_text_nan(tmp_path):
    path = tmp_path / "mcq.csv"
    path.write_text("question,A,B,C,answer\n五行中属木的是,肝,心,NaN,A\n", encoding="utf-8")
    [example] = read_file(path, "mcq", stage="mcq")[0]
    assert example["options"] == {"A": "肝", "B": "心"}


# ---------------------------------------------------------------------------------------------
# Config: every key with a wrong type and a value out of range
# ---------------------------------------------------------------------------------------------

def kind_of(name: str) -> str:
    text = str(KEYS[name].type)
    return next(kind for kind in ("bool", "int", "float", "str") if text.startswith(kind))


WRONG_TYPES = {
    "bool": ["maybe", 2, [True]],
    "int": ["abc", 1.5, True, [1]],
    "float": ["fast", True, "nan", "inf", [0.1]],
    "str": [{"a": 1}, True, [["q_proj"]]],
}


def config_message(raw: dict) -> str:
    with pytest.raises(UserError) as caught:
        config_from_dict(raw)
    return str(caught.value)


@pytest.mark.parametrize("name", sorted(KEYS))
def test_every_key_refuses_a_wrong_type(name):
    kind = kind_of(name)
    for value in WRONG_TYPES[kind]:
        assert config_message({name: value}) == (
            f"config problem(s):\n  - {name}: '{value}' is not a valid {kind} ({allowed_values(name)})")


def out_of_range(name: str) -> tuple[object, str]:
    """A value just outside what the key allows, and the message for it."""
    meta = KEYS[name].metadata
    if meta["choices"]:
        value = 3 if kind_of(name) == "int" else "bogus"
        return value, f"{name}: '{value}' is not allowed; choose one of {', '.join(map(str, meta['choices']))}"
    if meta["max"] is not None:
        value = meta["max"] + 1
    else:
        value = meta["min"] if meta["min_exclusive"] else meta["min"] - 1
    return value, f"{name}: {value} is out of range ({allowed_values(name)})"


RANGED = sorted(n for n in KEYS if KEYS[n].metadata["choices"] or KEYS[n].metadata["min"] is not None)


@pytest.mark.parametrize("name", RANGED)
def test_every_key_with_a_range_refuses_a_value_outside_it(name):
    value, message = out_of_range(name)
    assert config_message({name: value}) == f"config problem(s):\n  - {message}"
    meta = KEYS[name].metadata
    if meta["min"] is not None and meta["max"] is not None:  # both ends
        low = meta["min"] - 1
        assert config_message({name: low}) == (
            f"config problem(s):\n  - {name}: {low} is out of range ({allowed_values(name)})")


def test_keys_without_a_range_are_the_free_text_and_yes_no_keys():
    """Free text is checked where it is used (model folder, dataset names, DeepSpeed preset) or by
    the config's rules over several keys (mixing weights)."""
    unranged = {n for n in KEYS if n not in RANGED}
    assert {n for n in unranged if kind_of(n) != "bool"} == {
        "model_name_or_path", "dataset_dir", "dataset", "eval_dataset", "lora_target", "output_dir",
        "resume_from_checkpoint", "deepspeed", "hostfile", "interleave_probs"}


def test_allowed_values_are_spelled_out():
    assert allowed_values("lora_dropout") == "a number >= 0 and <= 0.9"
    assert allowed_values("learning_rate") == "a number > 0"
    assert allowed_values("max_samples") == "an integer >= 1, or null"
    assert allowed_values("quantization_bit") == "one of 4, 8"
    assert allowed_values("bf16") == "true or false"


def test_every_key_wrong_at_once_is_reported_at_once():
    raw = {name: WRONG_TYPES[kind_of(name)][0] for name in KEYS}
    lines = config_message(raw).splitlines()
    assert lines[0] == "config problem(s):" and len(lines) == 1 + len(KEYS)


def test_wrong_values_in_a_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lora_rank: eight\nlearning_rate: .nan\ndataset: {tcm_qa: 1}\nlora_dropout: 0.95\n")
    with pytest.raises(UserError) as caught:
        load_config(path)
    assert str(caught.value) == (
        "config problem(s):\n"
        "  - lora_rank: 'eight' is not a valid int (an integer >= 1)\n"
        "  - learning_rate: 'nan' is not a valid float (a number > 0)\n"
        "  - dataset: '{'tcm_qa': 1}' is not a valid str (text)\n"
        "  - lora_dropout: 0.95 is out of range (a number >= 0 and <= 0.9)")


def test_problems_come_as_data_with_their_keys():
    """validate collects every problem, each with the keys it is about, the one-key and the
    several-key rules together; ConfigError carries the same list the CLI prints."""
    from trainer_core.config import ConfigError, ConfigProblem, TrainConfig, validate

    raw = {"lora_rank": 0, "bf16": True, "fp16": True, "lora_rnk": 8, "finetuning_type": "qlora",
           "deepspeed": "z3"}
    cfg, problems = validate(raw, TrainConfig)
    assert cfg is None
    assert [p.keys for p in problems] == [("lora_rank",), (), ("bf16", "fp16"), ("finetuning_type", "deepspeed")]
    assert problems[0] == ConfigProblem(("lora_rank",), "lora_rank: 0 is out of range (an integer >= 1)")
    assert "did you mean 'lora_rank'" in problems[1].message
    with pytest.raises(ConfigError) as caught:
        config_from_dict(raw)
    assert caught.value.problems == problems
    assert str(caught.value).splitlines()[1:] == [f"  - {p.message}" for p in problems]
    assert validate({"lora_rank": 16}, TrainConfig) == (TrainConfig(lora_rank=16), [])


def test_unknown_deepspeed_preset():
    presets = ", ".join(DEEPSPEED_PRESETS)
    assert config_message({"deepspeed": "z4"}) == (
        f"config problem(s):\n  - deepspeed: 'z4' is neither a preset ({presets}) nor a .json file")
    assert config_message({"deepspeed": "z3_ofload"}) == (
        f"config problem(s):\n  - deepspeed: 'z3_ofload' is neither a preset ({presets}) nor a .json file; "
        "did you mean 'z3_offload'?")


# ---------------------------------------------------------------------------------------------
# Models: missing folder, no tokenizer, code of its own
# ---------------------------------------------------------------------------------------------

def test_missing_model_folder(tmp_path):
    from trainer_core.models import resolve_model_path

    missing = tmp_path / "no-model"
    with pytest.raises(UserError) as caught:
        resolve_model_path(str(missing))
    assert str(caught.value) == (f"model folder '{missing}' does not exist. Set model_name_or_path to a local "
                                 "model folder, or to 'default' for the built-in model.")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(UserError, match="is a file; give the model's folder"):
        resolve_model_path(str(tmp_path / "weights.bin"))
    with pytest.raises(UserError) as caught:
        resolve_model_path(str(tmp_path))
    assert str(caught.value) == f"model folder '{tmp_path}' has no config.json; is it the right folder?"


def test_model_folder_without_tokenizer(tiny_model_dir, tmp_path):
    from trainer_core.models import load_tokenizer

    folder = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_model_dir, folder,
                    ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json", "vocab*", "merges.txt"))
    assert (folder / "config.json").is_file()
    with pytest.raises(UserError) as caught:
        load_tokenizer(str(folder))
    assert str(caught.value) == (
        f"model folder '{folder}' has no tokenizer files (one of tokenizer.json, tokenizer_config.json, "
        "tokenizer.model, vocab.json, vocab.txt, spiece.model, tekken.json); copy them from the original model "
        "into the folder")


@pytest.fixture
def remote_code_model(tiny_model_dir, tmp_path) -> Path:
    """The tiny model, renamed to an architecture transformers does not know, whose config.json maps
    the Auto classes to .py files in the folder. Importing them leaves a marker file."""
    folder = tmp_path / "custom-model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "qihuang_custom"
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig",
                          "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "REMOTE_CODE_RAN"
    for module in ("configuration_custom.py", "modeling_custom.py"):
        (folder / module).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return folder


def remote_code_message(folder: Path) -> str:
    return (f"the model '{folder}' needs code of its own (configuration_custom.py, modeling_custom.py), which is "
            "never run unless you allow it: if you trust this model, set trust_remote_code: true "
            "(on the command line: trust_remote_code=true)")


def test_trust_remote_code_is_off_by_default():
    assert KEYS["trust_remote_code"].default is False
    assert config_from_dict({}).trust_remote_code is False


def test_model_with_its_own_code_asks_for_the_explicit_flag(remote_code_model):
    from trainer_core.models import load_for_inference, load_tokenizer

    with pytest.raises(UserError) as caught:
        load_tokenizer(str(remote_code_model))
    assert str(caught.value) == remote_code_message(remote_code_model)
    with pytest.raises(UserError) as caught:
        load_for_inference(str(remote_code_model))
    assert str(caught.value) == remote_code_message(remote_code_model)
    assert not (remote_code_model.parent / "REMOTE_CODE_RAN").exists()


def test_model_load_itself_also_refuses_remote_code(remote_code_model, tiny_model_dir):
    """Past the folder check (a hub id gets none), transformers' own refusal is put in the same words."""
    from trainer_core.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    with pytest.raises(UserError) as caught:
        load_model(config_from_dict({}), str(remote_code_model), tokenizer, log=lambda m: None)
    assert str(caught.value) == remote_code_message(remote_code_model)
    assert not (remote_code_model.parent / "REMOTE_CODE_RAN").exists()


def test_known_architecture_with_auto_map_needs_no_flag(tiny_model_dir, tmp_path):
    """Many checkpoints keep an auto_map for old transformers; a known model_type loads without their code."""
    from trainer_core.models import load_tokenizer

    folder = tmp_path / "llama-with-auto-map"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_old.OldLlama"}
    (folder / "config.json").write_text(json.dumps(config))
    assert load_tokenizer(str(folder)).eos_token == "<|im_end|>"


# ---------------------------------------------------------------------------------------------
# The CLI: the message, exit code 2, no traceback
# ---------------------------------------------------------------------------------------------

CLI_CASES = ["broken_json", "broken_line", "misspelled", "two_users", "system_late", "binary", "nan_cells",
             "duplicate_header", "mcq_missing_option", "lone_surrogate"]


def test_data_check_prints_every_problem_and_exits_2(cli):
    result = cli("data", "check", *CLI_CASES, f"--dataset_dir={BAD}", "--no-tokens")
    assert result.returncode == 2, result.stderr
    for name in CLI_CASES:
        for problem in EXPECTED[name]:
            assert f"    - {problem}\n" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_data_check_on_good_encodings_exits_0(cli):
    result = cli("data", "check", "gb18030_csv", "bom_jsonl", "utf16_bom_csv", "quoted_newlines", "bom_mcq_csv",
                 f"--dataset_dir={BAD}", "--no-tokens")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("  no problems") == 5


def test_data_check_refuses_a_2gb_file_within_a_small_memory_limit(tmp_path):
    sparse_file(tmp_path / "big.jsonl", 2 * GIB)
    (tmp_path / "dataset_info.json").write_text(json.dumps({"big": {"file_name": "big.jsonl"}}))

    def limit_memory() -> None:  # reading the file whole would need 2 GB: it would fail, not pass
        resource.setrlimit(resource.RLIMIT_AS, (3 * GIB // 2, 3 * GIB // 2))

    def check(*options: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "trainer_core", "data", "check", "big",
                               f"--dataset_dir={tmp_path}", "--no-tokens", *options], cwd=REPO, capture_output=True,
                              text=True, timeout=120, preexec_fn=limit_memory)

    result = check("--data_engine", "memory")  # the in-memory path refuses it before reading
    assert result.returncode == 2, result.stderr
    assert ("    - big.jsonl: file is 2.0 GiB; the limit is 1.0 GiB (max_file_bytes): split it or raise the limit"
            in result.stdout)
    assert "Traceback" not in result.stdout + result.stderr
    result = check()  # auto: the Arrow path reads it in parts, and finds NUL bytes, not text
    assert result.returncode == 2, result.stderr
    assert "    - big.jsonl: not a text file (it contains NUL bytes)" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


SPECIAL_TOKEN_PROBLEM = ("special_token.json, record 1, field 'messages[1].content (assistant)': contains "
                         "'<|im_end|>', which this model's tokenizer reads as its special token, not as text; "
                         "training would teach the model that control token there. Remove it.")


def test_data_check_names_a_record_holding_special_token_text(cli, tiny_model_dir):
    assert problems_of("special_token") == []  # well-formed JSON and fields: only the tokenizer can tell
    result = cli("data", "check", "special_token", f"--dataset_dir={BAD}", f"--model_name_or_path={tiny_model_dir}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"    - {SPECIAL_TOKEN_PROBLEM}\n" in result.stdout
    assert result.stdout.count("    - ") == 1  # record 0 is clean


@pytest.mark.train
def test_training_warns_about_special_token_text_and_names_it(cli, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = cli("train", f"model_name_or_path={tiny_model_dir}", f"dataset_dir={BAD}", "dataset=special_token",
                 f"output_dir={out}", "max_steps=1", "cutoff_len=64", "save_steps=100")
    assert result.returncode == 0, result.stdout + result.stderr
    console = (out / "console.log").read_text()
    assert "warning: 1 train record field(s) hold special-token text" in console
    assert f"  - {SPECIAL_TOKEN_PROBLEM}\n" in console


def test_data_check_with_a_model_that_needs_its_own_code(cli, remote_code_model):
    result = cli("data", "check", "gb18030_csv", f"--dataset_dir={BAD}", f"--model_name_or_path={remote_code_model}")
    assert result.returncode == 2
    assert f"error: {remote_code_message(remote_code_model)}" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (remote_code_model.parent / "REMOTE_CODE_RAN").exists()


def test_train_dry_run_with_wrong_values_exits_2(cli):
    result = cli("train", "presets/sft_lora.yaml", "lora_dropout=nan", "--dry-run")
    assert result.returncode == 2
    assert "lora_dropout: 'nan' is not a valid float (a number >= 0 and <= 0.9)" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
