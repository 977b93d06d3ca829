"""Property-based tests (hypothesis) over the label masking and the data readers.

(a) Any valid conversation keeps exactly the assistant tokens trainable: the reply and its
    end-of-turn token, nothing of the system prompt, the questions or the turn headers.
(b) Any input — bytes, JSON values, record-shaped JSON, tables, registry entries — either loads
    into well-formed examples or yields validation problems (Problem, or a UserError/DataError for
    a mistake in the entry itself); never another exception.

max_examples is kept small so the file runs in well under a minute on two cores.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer_core.data import FORMATTINGS, read_dataset, read_file, text_stats
from trainer_core.errors import Problem, UserError
from trainer_core.tokenization import IGNORE_INDEX, encode_sft

END = "<|im_end|>"
SPECIALS = ("<|im_start|>", END, "<|endoftext|>")

# ---------------------------------------------------------------------------------------------
# (a) Label masking
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# Any characters (no surrogates: they are refused as data), with Chinese and whitespace made common.
characters = st.one_of(st.characters(codec="utf-8"), st.sampled_from("黄芪补气升阳，固表止汗。脉浮紧 \n\t"))
contents = st.text(characters, min_size=1, max_size=30).filter(
    lambda s: s.strip() and not any(special in s for special in SPECIALS))  # a valid turn is not blank


@st.composite
def conversations(draw) -> list[dict]:
    """[system?] user, assistant, user, assistant, ...: what the data readers let through."""
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(contents)})
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(contents)})
        messages.append({"role": "assistant", "content": draw(contents)})
    return messages


def chatml(messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The tiny model's template written out by hand, with the character span of every assistant
    reply through its end-of-turn token: the expected trainable text, found without the code under test."""
    text, spans = "", []
    for message in messages:
        text += f"<|im_start|>{message['role']}\n"
        start = len(text)
        text += message["content"] + END
        if message["role"] == "assistant":
            spans.append((start, len(text)))
        text += "\n"
    return text, spans


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=conversations())
def test_exactly_the_assistant_replies_are_trainable(tokenizer, messages):
    [sample], stats = encode_sft([{"messages": messages}], tokenizer, cutoff_len=100_000)
    assert stats.truncated == 0 and stats.dropped_no_trainable == 0

    text, spans = chatml(messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = sample["input_ids"], sample["labels"]
    assert ids == encoded["input_ids"]  # the conversation is rendered as the template says
    for token, label, (start, end) in zip(ids, labels, encoded["offset_mapping"]):
        in_reply = any(start < span_end and end > span_start for span_start, span_end in spans)
        assert label == (token if in_reply else IGNORE_INDEX), (text[start:end], in_reply)

    # Read back: each run of trainable tokens is one reply and its end-of-turn token, in order. The
    # first token of a reply may carry the template's newline when the reply starts with whitespace
    # (byte-level BPE merges "\n" + " "), which is the only text outside a reply ever trained on.
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs.append(current) if current else None
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(runs) == len(replies)
    for run, reply in zip(runs, replies):
        decoded = tokenizer.decode(run, clean_up_tokenization_spaces=False)
        assert decoded == reply + END or (reply[0].isspace() and decoded == "\n" + reply + END)
    end_id = tokenizer.convert_tokens_to_ids(END)
    assert sum(1 for t, label in zip(ids, labels) if t == end_id and label == end_id) == len(replies)


# ---------------------------------------------------------------------------------------------
# (b) The readers never crash
# ---------------------------------------------------------------------------------------------

STAGE = {"alpaca": "sft", "sharegpt": "sft", "openai": "sft", "text": "pt", "mcq": "mcq"}
EXTENSIONS = (".json", ".jsonl", ".csv", ".tsv", ".txt", ".parquet")
# Every field name the readers look for, so random records reach past "missing field".
FIELD_NAMES = ["instruction", "input", "output", "system", "history", "conversations", "messages", "from",
               "value", "role", "content", "text", "question", "options", "answer", "subject", "A", "B", "C",
               "D", "E", "Question", "Answer"]
ROLES = ["human", "gpt", "user", "assistant", "system", "observation", "tool", "function_call", "doctor"]

# Lone surrogates included: json.dumps escapes them as "\\ud800", valid JSON that is not text.
texts = st.text(st.one_of(st.characters(), st.sampled_from("黄芪 \n,\"ABab\ud800\udfff")), max_size=12)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(), texts,
                    st.sampled_from(["", " ", "A", "AB", "E", "NaN", *ROLES]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), texts), inner, max_size=5)),
    max_leaves=20)
turns = st.lists(st.fixed_dictionaries({}, optional={
    "from": st.sampled_from(ROLES), "value": st.one_of(texts, scalars),
    "role": st.sampled_from(ROLES), "content": st.one_of(texts, scalars)}), max_size=5)
records = st.dictionaries(
    st.sampled_from(FIELD_NAMES),
    st.one_of(texts, scalars, turns, st.lists(st.lists(texts, max_size=3), max_size=3), json_values),
    max_size=8)


@pytest.fixture(scope="module")
def folder():
    path = Path(tempfile.mkdtemp(prefix="qihuang-properties-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def assert_loads_or_reports(path: Path, formatting: str) -> None:
    """Read `path`: a UserError is a reported mistake; otherwise examples and problems must be sound."""
    try:
        examples, problems = read_file(path, formatting, stage=STAGE[formatting])
    except UserError as exc:
        assert str(exc)
        return
    for problem in problems:
        assert isinstance(problem, Problem) and problem.file == str(path) and problem.message
        assert problem.record is None or (isinstance(problem.record, int) and problem.record >= 0)
        assert problem.field is None or isinstance(problem.field, str)
        str(problem).encode("utf-8")  # printable by `data check`
    bad_records = {p.record for p in problems}
    for example in examples:
        assert example["index"] not in bad_records  # records with problems are left out
        check_example(example, formatting)
    if examples:
        text_stats(examples)


def check_example(example: dict, formatting: str) -> None:
    if formatting == "mcq":
        assert example["question"].strip() and len(example["options"]) >= 2
        assert example["answer"] and set(example["answer"]) <= set(example["options"])
        assert all(isinstance(o, str) and o.strip() for o in example["options"].values())
        return
    if formatting == "text":
        assert isinstance(example["text"], str) and example["text"].strip()
        example["text"].encode("utf-8")
        return
    roles = [m["role"] for m in example["messages"]]
    body = roles[1:] if roles[0] == "system" else roles
    assert body and body == ["user", "assistant"] * (len(body) // 2)
    for message in example["messages"]:
        assert isinstance(message["content"], str) and message["content"].strip()
        message["content"].encode("utf-8")  # tokenizable and savable


def write_json(path: Path, value: object, ascii_only: bool) -> None:
    if path.suffix == ".jsonl" and isinstance(value, list):
        text = "\n".join(json.dumps(v, ensure_ascii=ascii_only) for v in value)
    else:
        text = json.dumps(value, ensure_ascii=ascii_only)
    path.write_bytes(text.encode("utf-8", "surrogatepass"))  # a raw surrogate makes the file not UTF-8


# No example database: nothing is written into the repository.
PROPERTY = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("formatting", FORMATTINGS)
@PROPERTY
@given(data=st.binary(max_size=400), suffix=st.sampled_from(EXTENSIONS))
def test_any_bytes(folder, formatting, data, suffix):
    path = folder / f"bytes-{formatting}{suffix}"
    path.write_bytes(data)
    assert_loads_or_reports(path, formatting)


@pytest.mark.parametrize("formatting", FORMATTINGS)
@PROPERTY
@given(value=json_values, suffix=st.sampled_from([".json", ".jsonl"]), ascii_only=st.booleans())
def test_any_json_value(folder, formatting, value, suffix, ascii_only):
    path = folder / f"value-{formatting}{suffix}"
    write_json(path, value, ascii_only)
    assert_loads_or_reports(path, formatting)


@pytest.mark.parametrize("formatting", FORMATTINGS)
@PROPERTY
@given(rows=st.lists(records, max_size=4), suffix=st.sampled_from([".json", ".jsonl"]), ascii_only=st.booleans())
def test_any_record_shaped_json(folder, formatting, rows, suffix, ascii_only):
    path = folder / f"records-{formatting}{suffix}"
    write_json(path, rows, ascii_only)
    assert_loads_or_reports(path, formatting)


@st.composite
def well_formed_records(draw, formatting: str) -> dict:
    """A record of the right shape with arbitrary text in it: blank, NaN-like, surrogates, Chinese."""
    if formatting == "alpaca":
        record = {"instruction": draw(texts), "output": draw(texts)}
        for name in draw(st.sets(st.sampled_from(["input", "system", "history"]))):
            record[name] = [[draw(texts), draw(texts)]] if name == "history" else draw(texts)
        return record
    if formatting in ("sharegpt", "openai"):
        role, content = ("from", "value") if formatting == "sharegpt" else ("role", "content")
        user, assistant = ("human", "gpt") if formatting == "sharegpt" else ("user", "assistant")
        turns = [{role: "system", content: draw(texts)}] if draw(st.booleans()) else []
        for _ in range(draw(st.integers(1, 3))):
            turns += [{role: user, content: draw(texts)}, {role: assistant, content: draw(texts)}]
        return {"conversations" if formatting == "sharegpt" else "messages": turns}
    if formatting == "text":
        return {"text": draw(texts)}
    return {"question": draw(texts), "A": draw(texts), "B": draw(texts), "C": draw(texts),
            "answer": draw(st.sampled_from(["A", "B", "AB", "c", ""]))}


@pytest.mark.parametrize("formatting", FORMATTINGS)
@PROPERTY
@given(data=st.data(), suffix=st.sampled_from([".json", ".jsonl"]))
def test_any_text_in_well_formed_records(folder, formatting, data, suffix):
    rows = data.draw(st.lists(well_formed_records(formatting), min_size=1, max_size=4))
    path = folder / f"well-formed-{formatting}{suffix}"
    write_json(path, rows, ascii_only=True)
    assert_loads_or_reports(path, formatting)


cells = st.one_of(st.text(st.characters(codec="utf-8"), max_size=10), st.sampled_from(
    ["", "NaN", "nan", "A", "AB", "E", "黄芪", 'say "hi"', "a,b", "two\nlines", "\t"]))


@pytest.mark.parametrize("formatting", FORMATTINGS)
@PROPERTY
@given(header=st.lists(st.one_of(st.sampled_from(FIELD_NAMES), cells), min_size=1, max_size=6),
       rows=st.lists(st.lists(cells, max_size=7), max_size=5), suffix=st.sampled_from([".csv", ".tsv"]),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "gb18030", "utf-16"]))
def test_any_table(folder, formatting, header, rows, suffix, encoding):
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t" if suffix == ".tsv" else ",")
    writer.writerow(header)
    writer.writerows(rows)
    path = folder / f"table-{formatting}{suffix}"
    try:
        path.write_bytes(buffer.getvalue().encode(encoding))
    except UnicodeEncodeError:  # a character GB18030 cannot hold: write it as UTF-8 instead
        path.write_bytes(buffer.getvalue().encode("utf-8"))
    assert_loads_or_reports(path, formatting)


entries = st.dictionaries(
    st.sampled_from(["file_name", "formatting", "columns", "tags", "ranking", "hf_hub_url"]),
    st.one_of(json_values, st.sampled_from(["data.json", "data.csv", "none.json", "../data.json", "a\x00b.json",
                                            "x" * 300 + ".json", *FORMATTINGS]),
              st.dictionaries(st.sampled_from(FIELD_NAMES + ["role_tag", "user_tag", "prompt", "query"]),
                              st.one_of(texts, st.sampled_from(FIELD_NAMES)), max_size=3)),
    max_size=5)


@PROPERTY
@given(entry=entries, stage=st.sampled_from(["sft", "pt", "mcq"]))
def test_any_registry_entry(folder, entry, stage):
    registry = folder / "registry"
    registry.mkdir(exist_ok=True)
    (registry / "data.json").write_text('[{"instruction": "何为四诊？", "output": "望闻问切"}]', encoding="utf-8")
    (registry / "data.csv").write_text("question,A,B,answer\n五行中属木的是,肝,心,A\n", encoding="utf-8")
    (registry / "dataset_info.json").write_text(json.dumps({"d": entry}), encoding="utf-8")
    try:
        examples, problems = read_dataset("d", registry, stage)
    except UserError as exc:
        assert str(exc)
        return
    for problem in problems:
        assert isinstance(problem, Problem) and problem.message
        str(problem).encode("utf-8")
    assert all("index" in example for example in examples)
