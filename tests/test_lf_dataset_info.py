"""LLaMA-Factory's dataset_info.json, unchanged: every entry shape either reads or is refused with
a message that names the entry and says what to do (README, "Data": the table of shapes).

The entries below are copied from LLaMA-Factory's own data/dataset_info.json (hiyouga/LLaMA-Factory;
its data/README.md documents the keys), each with a tiny local file in the layout of its demo file
(alpaca_en_demo.json, glaive_toolcall_en_demo.json, c4_demo.jsonl, wiki_demo.txt, dpo_en_demo.json ...).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from chat_templates import FAMILIES

from trainer_core.data import (
    dataset_outside,
    load_datasets,
    read_dataset,
    sample_records,
    text_stats,
)
from trainer_core.errors import UserError
from trainer_core.tokenization import IGNORE_INDEX, encode_sft

# Verbatim from LLaMA-Factory's data/dataset_info.json.
LF_ENTRIES = {
    "identity": {"file_name": "identity.json"},
    "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
    "glaive_toolcall_en_demo": {"file_name": "glaive_toolcall_en_demo.json", "formatting": "sharegpt",
                                "columns": {"messages": "conversations", "tools": "tools"}},
    "mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                  "columns": {"messages": "messages", "images": "images"},
                  "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                           "assistant_tag": "assistant"}},
    "mllm_audio_demo": {"file_name": "mllm_audio_demo.json", "formatting": "sharegpt",
                        "columns": {"messages": "messages", "audios": "audios"},
                        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                 "assistant_tag": "assistant"}},
    "mllm_video_demo": {"file_name": "mllm_video_demo.json", "formatting": "sharegpt",
                        "columns": {"messages": "messages", "videos": "videos"},
                        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                 "assistant_tag": "assistant"}},
    "alpaca_en": {"hf_hub_url": "llamafactory/alpaca_en", "ms_hub_url": "llamafactory/alpaca_en",
                  "om_hub_url": "HaM/alpaca_en"},
    "deepctrl": {"ms_hub_url": "deepctrl/deepctrl-sft-data"},
    "llava_1k_en": {"hf_hub_url": "BUAADreamer/llava-en-zh-2k", "subset": "en", "formatting": "sharegpt",
                    "columns": {"messages": "messages"},  # its "images" column left out here
                    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                             "assistant_tag": "assistant"}},
    "open_thoughts": {"hf_hub_url": "llamafactory/OpenThoughts-114k", "formatting": "sharegpt",
                      "columns": {"messages": "messages"},
                      "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                               "assistant_tag": "assistant", "system_tag": "system"}},
    "dpo_en_demo": {"file_name": "dpo_en_demo.json", "ranking": True, "formatting": "sharegpt",
                    "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
    "ultrafeedback": {"hf_hub_url": "llamafactory/ultrafeedback_binarized",
                      "ms_hub_url": "llamafactory/ultrafeedback_binarized", "ranking": True,
                      "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}},
    "nectar_rm": {"hf_hub_url": "AstraMindAI/RLAIF-Nectar", "ms_hub_url": "AI-ModelScope/RLAIF-Nectar",
                  "ranking": True},
    "pokemon_cap": {"hf_hub_url": "llamafactory/pokemon-gpt4o-captions", "formatting": "sharegpt",
                    "columns": {"messages": "conversations", "images": "images"}},
    "kto_en_demo": {"file_name": "kto_en_demo.json", "formatting": "sharegpt",
                    "columns": {"messages": "messages", "kto_tag": "label"},
                    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                             "assistant_tag": "assistant"}},
    "wiki_demo": {"file_name": "wiki_demo.txt", "columns": {"prompt": "text"}},
    "c4_demo": {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}},
    "adgen_eval": {"hf_hub_url": "HasturOfficial/adgen", "ms_hub_url": "AI-ModelScope/adgen",
                   "split": "validation", "columns": {"prompt": "content", "response": "summary"}},
    "openorca": {"hf_hub_url": "Open-Orca/OpenOrca", "ms_hub_url": "AI-ModelScope/OpenOrca",
                 "columns": {"prompt": "question", "response": "response", "system": "system_prompt"}},
}

CALL = {"name": "calculate_area", "arguments": {"shape": "rectangle", "dimensions": [5, 3]}}
TOOLS = [{"name": "calculate_area", "description": "Calculate the area of a given shape",
          "parameters": {"type": "object", "properties": {"shape": {"type": "string"},
                                                          "dimensions": {"type": "array"}},
                         "required": ["shape", "dimensions"]}}]
GLAIVE = [  # glaive_toolcall_en_demo.json's two kinds of record: plain chat ("tools": "[]") and tool calls
    {"conversations": [{"from": "human", "value": "什么是四诊？"}, {"from": "gpt", "value": "望闻问切。"}],
     "tools": "[]"},
    {"conversations": [{"from": "human", "value": "长 5 宽 3 的矩形面积？"},
                       {"from": "function_call", "value": json.dumps(CALL)},
                       {"from": "observation", "value": "{\"area\": 15}"},
                       {"from": "gpt", "value": "面积是 15 平方单位。"}],
     "tools": json.dumps(TOOLS)},
]
FILES = {
    "identity.json": [{"instruction": "hi", "input": "", "output": "Hello! I am {{name}}, built by {{author}}."},
                      {"instruction": "你是谁？", "input": "", "output": "我是 {{name}}。"}],
    "alpaca_en_demo.json": [{"instruction": "Describe a process of making crepes.", "input": "",
                             "output": "Making crepes is an easy and delicious process!"}],
    "glaive_toolcall_en_demo.json": GLAIVE,
    "mllm_demo.json": [{"messages": [{"content": "<image>Who are they?", "role": "user"},
                                     {"content": "They're Kane and Gretzka.", "role": "assistant"}],
                        "images": ["mllm_demo_data/1.jpg"]}],
    "dpo_en_demo.json": [{"conversations": [{"from": "human", "value": "何为四诊？"}],
                          "chosen": {"from": "gpt", "value": "望闻问切。"},
                          "rejected": {"from": "gpt", "value": "不知道。"}}],
    "kto_en_demo.json": [{"messages": [{"content": "何为四诊？", "role": "user"},
                                       {"content": "望闻问切。", "role": "assistant"}], "label": True}],
    "wiki_demo.txt": "Anarchism is a political philosophy.\n\nAutism is a developmental disorder.\n"
                     "黄芪补气升阳。\n",
    "c4_demo.jsonl": '{"text": "Beginners BBQ Class Taking Place in Missoula!"}\n'
                     '{"text": "Discussion in \'Mac OS X Lion (10.7)\' started by axboi87."}\n',
}


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def lf_dir(tmp_path) -> Path:
    """LLaMA-Factory's entries with their tiny demo files, as a data folder."""
    for name, data in FILES.items():
        write(tmp_path / name, data)
    write(tmp_path / "dataset_info.json", LF_ENTRIES)
    return tmp_path


def registry(folder: Path, entries: dict, files: dict | None = None) -> Path:
    for name, data in (files or {}).items():
        write(folder / name, data)
    write(folder / "dataset_info.json", entries)
    return folder


def refused(name: str, folder: Path, stage: str = "sft") -> str:
    with pytest.raises(UserError) as caught:
        read_dataset(name, folder, stage)
    message = str(caught.value)
    assert f"dataset '{name}' in {folder / 'dataset_info.json'}" in message  # names the file and the entry
    return message


# ---------------------------------------------------------------------------------------------
# The demo entries, as LLaMA-Factory ships them
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["identity", "alpaca_en_demo"])
def test_alpaca_demo_entries_read(lf_dir, name):
    examples, problems = read_dataset(name, lf_dir, "sft")
    assert problems == [] and len(examples) == len(FILES[f"{name}.json"])
    assert examples[0]["messages"][-1] == {"role": "assistant", "content": FILES[f"{name}.json"][0]["output"]}


def test_glaive_toolcall_demo_reads_tools_and_tool_turns(lf_dir):
    (plain, tool), problems = read_dataset("glaive_toolcall_en_demo", lf_dir, "sft")
    assert problems == []
    assert "tools" not in plain  # "tools": "[]" is no tools
    assert tool["tools"] == [{"type": "function", "function": TOOLS[0]}]
    user, call, result, answer = tool["messages"]
    assert call == {"role": "assistant", "content": "",
                    "tool_calls": [{"type": "function", "function": CALL, "id": "000001000"}]}
    assert result == {"role": "tool", "content": "{\"area\": 15}", "tool_call_id": "000001000"}
    assert answer == {"role": "assistant", "content": "面积是 15 平方单位。"}
    assert text_stats([plain, tool])["empty_answers"] == 0  # a function call is an answer


def test_c4_demo_is_pretraining_text(lf_dir):
    examples, problems = read_dataset("c4_demo", lf_dir, "pt")
    assert problems == [] and [e["text"] for e in examples] == [
        "Beginners BBQ Class Taking Place in Missoula!", "Discussion in 'Mac OS X Lion (10.7)' started by axboi87."]
    message = refused("c4_demo", lf_dir, "sft")
    assert "pre-training text" in message and '"columns": {"prompt": "text"}' in message
    assert "stage pt" in message


def test_wiki_demo_txt_is_one_document_per_line(lf_dir):
    examples, problems = read_dataset("wiki_demo", lf_dir, "pt")
    # As LLaMA-Factory's `text` loader reads it: every line a document (blank ones skipped), even
    # where blank lines would make paragraphs of a "formatting": "text" file.
    assert problems == [] and [e["text"] for e in examples] == [
        "Anarchism is a political philosophy.", "Autism is a developmental disorder.", "黄芪补气升阳。"]
    assert "stage pt" in refused("wiki_demo", lf_dir, "sft")


@pytest.mark.parametrize("name", ["dpo_en_demo", "ultrafeedback", "nectar_rm"])
def test_preference_entries_need_stage_dpo(lf_dir, name):
    message = refused(name, lf_dir)  # before the hub message: a download would not help
    assert "preference data (ranking: true" in message and "needs stage dpo" in message


def test_chosen_rejected_without_ranking_and_kto(lf_dir, tmp_path):
    assert "needs stage kto" in refused("kto_en_demo", lf_dir)
    registry(tmp_path, {"pairs": {"file_name": "alpaca_en_demo.json", "columns": {"chosen": "chosen"}}})
    assert "needs stage dpo" in refused("pairs", tmp_path)


@pytest.mark.parametrize(("name", "column"), [("mllm_demo", "images"), ("mllm_audio_demo", "audios"),
                                              ("mllm_video_demo", "videos")])
def test_multimodal_entries_are_refused_as_text_only(lf_dir, name, column):
    message = refused(name, lf_dir)
    assert "this trainer is text-only" in message and f"'{column}'" in message


def test_multimodal_columns_come_before_the_hub_and_in_an_upload(lf_dir, tmp_path):
    assert "this trainer is text-only" in refused("pokemon_cap", lf_dir)
    from trainer_core.data import read_file

    with pytest.raises(UserError, match="this trainer is text-only"):
        read_file(write(tmp_path / "up.json", []), "sharegpt", columns={"images": "images"})


def test_hub_entries_say_how_to_point_file_name_at_a_local_copy(lf_dir):
    message = refused("alpaca_en", lf_dir)
    assert "hf_hub_url: llamafactory/alpaca_en" in message and "local files only" in message
    assert "huggingface-cli download --repo-type dataset llamafactory/alpaca_en" in message
    assert '"file_name": "alpaca_en"' in message
    message = refused("deepctrl", lf_dir)
    assert "modelscope download --dataset deepctrl/deepctrl-sft-data" in message
    assert '"file_name": "deepctrl-sft-data"' in message
    assert "subset 'en'" in refused("llava_1k_en", lf_dir)  # which part to download
    assert "hf_hub_url" in refused("open_thoughts", lf_dir)
    # A hub entry whose split is not train: the hub message comes first (the split is a hub matter).
    assert "hf_hub_url" in refused("adgen_eval", lf_dir)


def test_script_and_cloud_entries(tmp_path):
    registry(tmp_path, {"scripted": {"script_url": "belle_multiturn"},
                        "cloud": {"cloud_file_name": "s3://bucket/cpt/merged.jsonl", "columns": {"prompt": "text"}}})
    message = refused("scripted", tmp_path)
    assert "loading script (script_url: belle_multiturn)" in message and '"file_name"' in message
    message = refused("cloud", tmp_path)
    assert "cloud_file_name: s3://bucket/cpt/merged.jsonl" in message and '"file_name": "merged.jsonl"' in message


def test_a_hub_entry_with_a_local_file_name_reads_the_local_copy(tmp_path):
    entry = {**LF_ENTRIES["openorca"], "file_name": "openorca"}
    registry(tmp_path, {"openorca": entry}, {"openorca/part-0.json": [
        {"system_prompt": "你是中医", "question": "何为四诊？", "response": "望闻问切。"}]})
    [example], problems = read_dataset("openorca", tmp_path, "sft")
    assert problems == [] and [m["role"] for m in example["messages"]] == ["system", "user", "assistant"]


# ---------------------------------------------------------------------------------------------
# The other keys of an entry
# ---------------------------------------------------------------------------------------------

def test_alpaca_columns_of_the_readme(tmp_path):
    """data/README.md's alpaca entry: prompt, query, response, system, history (and tools)."""
    registry(tmp_path, {"d": {"file_name": "data.json", "columns": {
        "prompt": "instruction", "query": "input", "response": "output", "system": "system",
        "history": "history", "tools": "functions"}}}, {"data.json": [
            {"instruction": "何为四诊", "input": "简答", "output": "望闻问切", "system": "你是中医",
             "history": [["你好", "你好！"]], "functions": TOOLS}]})
    [example], problems = read_dataset("d", tmp_path)
    assert problems == [] and example["tools"] == [{"type": "function", "function": TOOLS[0]}]
    assert example["messages"] == [
        {"role": "system", "content": "你是中医"}, {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！"}, {"role": "user", "content": "何为四诊\n简答"},
        {"role": "assistant", "content": "望闻问切"}]


def test_sharegpt_with_every_tag(tmp_path):
    tags = {"role_tag": "speaker", "content_tag": "text", "user_tag": "患者", "assistant_tag": "医生",
            "observation_tag": "结果", "function_tag": "调用", "system_tag": "设定"}
    registry(tmp_path, {"d": {"file_name": "d.json", "formatting": "sharegpt",
                              "columns": {"messages": "turns", "system": "sys", "tools": "tools"}, "tags": tags}},
             {"d.json": [{"turns": [{"speaker": "设定", "text": "你是中医助手"},
                                    {"speaker": "患者", "text": "查一下"},
                                    {"speaker": "调用", "text": json.dumps(CALL)},
                                    {"speaker": "结果", "text": "15"},
                                    {"speaker": "医生", "text": "是 15"}], "tools": TOOLS},
                         {"turns": [{"speaker": "患者", "text": "头痛"}, {"speaker": "医生", "text": "多久了"}],
                          "sys": "你是中医"},
                         {"turns": [{"speaker": "护士", "text": "?"}]}]})
    examples, problems = read_dataset("d", tmp_path)
    assert [[m["role"] for m in e["messages"]] for e in examples] == [
        ["system", "user", "assistant", "tool", "assistant"], ["system", "user", "assistant"]]
    [problem] = problems
    assert problem.record == 2
    assert "unknown role '护士' (expected one of 患者, 医生, 设定, 调用, 结果)" in problem.message


def test_openai_formatting_with_tool_calls(tmp_path):
    registry(tmp_path, {"d": {"file_name": "d.jsonl", "formatting": "openai", "columns": {"tools": "tools"}}},
             {"d.jsonl": json.dumps({"messages": [
                 {"role": "system", "content": "你是助手"},
                 {"role": "user", "content": "北京天气？"},
                 {"role": "assistant", "content": None, "tool_calls": [
                     {"id": "abc123xyz", "type": "function",
                      "function": {"name": "get_weather", "arguments": "{\"city\": \"北京\"}"}}]},
                 {"role": "tool", "tool_call_id": "abc123xyz", "content": "晴"},
                 {"role": "assistant", "content": "北京晴。"}],
                 "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]},
                 ensure_ascii=False) + "\n"})
    [example], problems = read_dataset("d", tmp_path)
    assert problems == []
    assert example["messages"][2]["tool_calls"] == [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}, "id": "abc123xyz"}]
    assert example["messages"][3] == {"role": "tool", "content": "晴", "tool_call_id": "abc123xyz"}


def test_bad_tool_records_are_problems_of_their_own_records(tmp_path):
    records = [*GLAIVE,
               {"conversations": [{"from": "human", "value": "算"}, {"from": "function_call", "value": "算面积"},
                                  {"from": "observation", "value": "1"}, {"from": "gpt", "value": "1"}]},
               {"conversations": [{"from": "human", "value": "算"}, {"from": "gpt", "value": "好"}],
                "tools": "[{\"name\": "},
               {"conversations": [{"from": "human", "value": "算"},
                                  {"from": "function_call", "value": json.dumps(CALL)},
                                  {"from": "observation", "value": "1"}]},
               {"conversations": [{"from": "human", "value": "算"}, {"from": "observation", "value": "1"},
                                  {"from": "gpt", "value": "1"}]}]
    registry(tmp_path, {"d": LF_ENTRIES["glaive_toolcall_en_demo"] | {"file_name": "d.json"}}, {"d.json": records})
    examples, problems = read_dataset("d", tmp_path)
    assert len(examples) == 2  # the good records still load
    assert [(p.record, p.field) for p in problems] == [(2, "conversations"), (3, "tools"), (4, "conversations"),
                                                         (5, "conversations")]
    assert "turn 2: a function call must be JSON like" in problems[0].message
    assert "not valid JSON" in problems[0].message and "not valid JSON" in problems[1].message
    assert problems[2].message == "conversation ends with a tool result and has no answer to train on"
    assert problems[3].message == "turn 2 is 'tool' but an 'assistant' turn must come after 'user'"


def test_tool_records_as_pretraining_text(lf_dir):
    _, tool = read_dataset("glaive_toolcall_en_demo", lf_dir, "pt")[0]
    assert tool["text"].split("\n")[1] == json.dumps([CALL], ensure_ascii=False)


def test_folder_file_name_reads_every_file_in_name_order(tmp_path):
    registry(tmp_path, {"d": {"file_name": "parts"}, "pt": {"file_name": "pages", "columns": {"prompt": "text"}},
                        "mixed": {"file_name": "mixed"}, "empty": {"file_name": "empty/"}},
             {"parts/b.jsonl": '{"instruction": "二", "output": "2"}\n',
              "parts/a.jsonl": '{"instruction": "一", "output": "1"}\n{"instruction": "", "output": "x"}\n',
              "parts/.DS_Store": "junk", "pages/1.txt": "第一页\n", "pages/2.txt": "第二页\n第三行\n",
              "mixed/a.json": "[]", "mixed/b.csv": "instruction,output\n"})
    (tmp_path / "empty").mkdir()
    examples, problems = read_dataset("d", tmp_path)
    assert [(e["file"], e["index"], e["messages"][0]["content"]) for e in examples] == [
        ("parts/a.jsonl", 0, "一"), ("parts/b.jsonl", 0, "二")]
    assert [(p.file, p.record) for p in problems] == [("parts/a.jsonl", 1)]
    assert [e["text"] for e in read_dataset("pt", tmp_path, "pt")[0]] == ["第一页", "第二页", "第三行"]
    [problem] = read_dataset("mixed", tmp_path)[1]
    assert problem.file == "mixed" and "mixes file types (.csv, .json)" in problem.message
    [problem] = read_dataset("empty", tmp_path)[1]
    assert "holds no data files" in problem.message


def test_a_folder_with_a_link_out_of_the_data_folder_is_outside(tmp_path):
    outside = write(tmp_path / "elsewhere" / "secret.json", [{"instruction": "x", "output": "y"}])
    data = registry(tmp_path / "data", {"d": {"file_name": "parts"}}, {"parts/a.json": "[]"})
    (data / "parts" / "b.json").symlink_to(outside)
    [message] = dataset_outside(["d"], data, [data])
    assert "dataset 'd'" in message and "--allow_path" in message


def test_split_and_subset(tmp_path):
    registry(tmp_path, {"train": {"file_name": "a.json", "split": "train", "subset": "en"},
                        "validation": {"file_name": "a.json", "split": "validation"},
                        "sliced": {"file_name": "a.json", "split": "train[:10%]"}},
             {"a.json": FILES["alpaca_en_demo.json"]})
    assert len(read_dataset("train", tmp_path)[0]) == 1  # subset, like LLaMA-Factory, matters for hubs only
    message = refused("validation", tmp_path)
    assert "split 'validation'" in message and "only one part, train" in message and "eval_dataset" in message
    assert "num_samples" in refused("sliced", tmp_path)


def test_num_samples_draws_like_llamafactory(tmp_path):
    records = [{"instruction": f"问{i}", "output": f"答{i}"} for i in range(5)]
    registry(tmp_path, {"three": {"file_name": "a.json", "num_samples": 3},
                        "eight": {"file_name": "a.json", "num_samples": 8},
                        "bad": {"file_name": "a.json", "num_samples": "3"}}, {"a.json": records})

    def questions(name: str, seed: int = 42) -> list[str]:
        train, _ = load_datasets(name, tmp_path, "sft", seed=seed)
        return sorted(e["messages"][0]["content"] for e in train)

    three = questions("three")
    assert len(three) == len(set(three)) == 3 and questions("three") == three  # without replacement; seeded
    eight = questions("eight")
    assert len(eight) == 8 and set(eight) == {f"问{i}" for i in range(5)}  # every record, then 3 drawn again
    assert questions("eight", seed=1) != eight or questions("three", seed=1) != three
    assert "num_samples must be a whole number" in refused("bad", tmp_path)
    assert len(load_datasets("eight", tmp_path, "sft", max_samples=2)[0]) == 2  # then max_samples cuts
    assert sample_records([{"i": 0}], 2, 0) == [{"i": 0}, {"i": 0}]


# ---------------------------------------------------------------------------------------------
# Tool-calling records through the model's chat template
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def trained_text(tokenizer, sample: dict) -> list[str]:
    spans, current = [], []
    for token, label in zip(sample["input_ids"], sample["labels"]):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    return spans + ([tokenizer.decode(current)] if current else [])


@pytest.mark.parametrize("family", ["qwen2.5", "qwen3", "llama3.2", "mistral-nemo"])
def test_tool_calls_train_through_a_template_with_tools(lf_dir, tokenizer, family):
    examples, _ = read_dataset("glaive_toolcall_en_demo", lf_dir, "sft")
    tokenizer.chat_template = FAMILIES[family][0]
    samples, stats = encode_sft(examples, tokenizer, 4096)
    assert stats.samples == 2
    text = tokenizer.decode(samples[1]["input_ids"])
    assert "Calculate the area of a given shape" in text  # the tools reach the prompt
    call, answer = trained_text(tokenizer, samples[1])  # the call and the answer are trained, not the result
    assert "calculate_area" in call and "rectangle" in call and "15" not in call
    assert "面积是 15 平方单位。" in answer


def test_tool_calls_are_refused_by_a_template_without_tools(lf_dir, tokenizer):
    examples, _ = read_dataset("glaive_toolcall_en_demo", lf_dir, "sft")
    tokenizer.chat_template = FAMILIES["fallback-chatml"][0]
    encode_sft(examples[:1], tokenizer, 4096)  # plain records are fine
    with pytest.raises(UserError, match=re.escape("dataset 'glaive_toolcall_en_demo' (1 record) holds "
                                                  "tool-calling records")):
        encode_sft(examples, tokenizer, 4096)


def test_the_tools_are_part_of_the_tokenization_fingerprint(lf_dir, tokenizer):
    from trainer_core.tokenization import fingerprint

    examples, _ = read_dataset("glaive_toolcall_en_demo", lf_dir, "sft")
    other = [examples[0], {**examples[1], "tools": [{"type": "function", "function": {"name": "other"}}]}]
    assert fingerprint(examples, tokenizer, {}) != fingerprint(other, tokenizer, {})
    assert fingerprint(examples[:1], tokenizer, {}) == fingerprint([{"messages": examples[0]["messages"]}],
                                                                   tokenizer, {})
