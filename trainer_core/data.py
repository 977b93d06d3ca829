"""Datasets: the registry (dataset_info.json), file readers, validation and text statistics.

A dataset is named in `<dataset_dir>/dataset_info.json`, in LLaMA-Factory's layout:

    {"tcm_qa": {"file_name": "tcm_qa.json", "formatting": "alpaca",
                "columns": {"instruction": "问题", "output": "回答"}}}

LLaMA-Factory's own entries work unchanged where they make sense offline (`_check_entry` names the
rest): file_name a file or a folder of files of one type, its pre-training shape (no formatting,
"columns": {"prompt": "text"}, .txt one document per line), tags, tools, num_samples; hub and
multimodal entries get a message saying why and what to do. Preference and KTO entries get one too
when read for sft or pt; `read_preference_dataset` reads them (see "Preference data" below).

Reading goes file -> rows -> examples:

1. A reader picked by the file extension (.json, .jsonl, .csv, .tsv, .parquet, .txt) decodes the
   file (UTF-8 with or without BOM, UTF-16/32 with a BOM, else GB18030) and returns raw rows, each
   with its 0-based index. NaN (pandas' mark for a missing value: a JSON NaN, a "NaN" CSV cell) is
   read as an empty value.
2. A converter picked by `formatting` turns each row into an example:
   - alpaca, sharegpt, openai -> {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}],
     "tools": [...]?}: a function call (LLaMA-Factory's function_call turn, OpenAI's tool_calls) is an
     assistant message with "tool_calls": [{"type": "function", "function": {"name", "arguments"}}] and
     content "", a tool result (observation) a "tool" message; "tools" (a record's function
     definitions, HF's {"type": "function", "function": {...}} form) is present only when non-empty.
     All of it goes to the model's chat template as HF's apply_chat_template(tools=...) takes it.
   - text -> {"text": str}
   - mcq  -> {"question": str, "options": {"A": str, ...}, "answer": "A", "subject": str | None,
              "multi": bool}
   Every example also keeps where it came from: "source" (dataset name), "file" (its file, as
   problems name it) and "index" (record in file).
3. Whatever is wrong becomes a `Problem(file, record, field, message)`. Reading never stops at the
   first one, so a user can fix a file in one pass; records with problems are left out.

`load_datasets` reads the datasets of a run, raises `DataError` with every problem, then mixes,
shuffles and splits them. `text_stats` summarises examples for the Data tab and `data check`.

Import stays light on purpose (the UI and the CLI import it): pyarrow is imported only to read parquet.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import json
import math
import random
import re
import sys
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trainer_core.errors import DataError, Problem, UserError

FORMATTINGS = ("alpaca", "sharegpt", "openai", "text", "mcq")
STAGES = ("sft", "pt", "mcq")
EXTENSIONS = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt", ".xlsx")

# Our field names per formatting: the keys that "columns" may map to the file's own names.
FIELDS = {
    "alpaca": ("instruction", "input", "output", "system", "history", "tools"),
    "sharegpt": ("conversations", "system", "tools"),
    "openai": ("messages", "system", "tools"),
    "text": ("text",),
    "mcq": ("question", "options", "answer", "subject"),
}
# LLaMA-Factory's names for the same fields, so its dataset_info.json entries work unchanged.
COLUMN_ALIASES = {
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output"},
    "sharegpt": {"messages": "conversations"},
    "openai": {"conversations": "messages"},
    "text": {"prompt": "text"},
    "mcq": {},
}
# How turns are spelled in the file (LLaMA-Factory's "tags"); an entry's "tags" override these.
DEFAULT_TAGS = {
    "sharegpt": {
        "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
        "system_tag": "system", "observation_tag": "observation", "function_tag": "function_call",
    },
    "openai": {
        "role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
        "system_tag": "system", "observation_tag": "tool", "function_tag": "function",
    },
}
# Role values understood whatever the tags say: files mix ShareGPT's and OpenAI's spellings.
# "function" is a function call (the assistant's), "tool" a tool's result (LLaMA-Factory's observation).
COMMON_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
    "observation": "tool", "tool": "tool", "function_call": "function", "function": "function",
}
# LLaMA-Factory columns that name data this text-only SFT/PT trainer cannot use (see _column_refusal).
MEDIA_COLUMNS = ("images", "videos", "audios")
PREFERENCE_COLUMNS = ("chosen", "rejected")
PREFERENCE_FIELDS = ("chosen", "rejected", "kto_tag")  # columns only preference data has
# Where LLaMA-Factory fetches a dataset from instead of file_name; none of them is reachable offline.
REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
PREFERENCE_MESSAGE = ("preference data (ranking: true, chosen/rejected answers) needs stage dpo; set stage: dpo "
                      "to train on its pairs")
OPTION_LETTERS = "ABCDEFGHIJ"
NAN_CELLS = {"nan", "NaN", "NAN"}  # how a CSV written from pandas (or str()) spells a missing value
_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone "\\ud800" escape in JSON: not valid Unicode
FIX_HINT = 'in the file or map it with "columns" in dataset_info.json'

Rows = list[tuple[int, Any]]  # (0-based record index in the file, the record as read)
Errors = list[tuple[str | None, str]]  # (field name in the file, message) for one record


# ---------------------------------------------------------------------------------------------
# The registry: dataset_info.json
# ---------------------------------------------------------------------------------------------

def load_dataset_info(dataset_dir: str | Path) -> dict[str, dict]:
    """Read `<dataset_dir>/dataset_info.json`: dataset name -> entry, with "formatting" filled in.

    Entries are checked only when a dataset is read, so a copied LLaMA-Factory file with hub
    entries we cannot use still works for its local ones.
    """
    path = Path(dataset_dir) / "dataset_info.json"
    if not path.is_file():
        raise UserError(f"{path} not found: a dataset folder needs a dataset_info.json naming its files, "
                        'e.g. {"tcm_qa": {"file_name": "tcm_qa.json", "formatting": "alpaca"}}')
    try:
        info = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    if not isinstance(info, dict):
        raise UserError(f"{path} must be a JSON object mapping dataset names to entries, "
                        f"got {_json_kind(info)}")
    for name, entry in info.items():
        if not isinstance(entry, dict):
            raise UserError(f'{path}: entry \'{name}\' must be an object like {{"file_name": "x.json", '
                            f'"formatting": "alpaca"}}, got {_json_kind(entry)}')
    return {name: {**entry, "formatting": entry.get("formatting", "alpaca")} for name, entry in info.items()}


@dataclass(frozen=True)
class _Spec:
    """How to read one file: its formatting, its column names and, for conversations, its role names."""

    formatting: str
    columns: dict[str, str]  # our field name -> key in the file
    role_tag: str = ""
    content_tag: str = ""
    roles: dict[str, str] = field(default_factory=dict)  # role in the file -> system|user|assistant|tool
    expected_roles: tuple[str, ...] = ()  # listed when a role is unknown
    sheet: str | int = 0  # .xlsx: the entry's "sheet" (a name), else the first sheet

    def key(self, name: str) -> str:
        return self.columns.get(name, name)


def _make_spec(formatting: str, columns: Any, tags: Any, where: str) -> _Spec:
    """Check an entry's formatting, columns and tags; a mistake here is a config error (UserError)."""
    if formatting not in FORMATTINGS:
        raise UserError(f"{where}: unknown formatting '{formatting}'{_did_you_mean(formatting, FORMATTINGS)} "
                        f"(expected one of {', '.join(FORMATTINGS)})")
    columns = columns or {}
    if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
        raise UserError(f'{where}: "columns" must map field names to column names, '
                        f'e.g. {{"instruction": "问题", "output": "回答"}}')
    mapped = {}
    for key, column in columns.items():
        refusal = _column_refusal(key)
        if refusal:
            raise UserError(f"{where}: {refusal}")
        ours = COLUMN_ALIASES[formatting].get(key, key)
        if ours not in FIELDS[formatting]:
            raise UserError(f"{where}: \"columns\" has '{key}', which formatting {formatting} does not use"
                            f"{_did_you_mean(key, FIELDS[formatting])} "
                            f"(expected some of {', '.join(FIELDS[formatting])})")
        mapped[ours] = column
    if formatting not in DEFAULT_TAGS:
        return _Spec(formatting, mapped)

    tags = tags or {}
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise UserError(f'{where}: "tags" must map tag names to strings, e.g. {{"role_tag": "role"}}')
    unknown = [k for k in tags if k not in DEFAULT_TAGS[formatting]]
    if unknown:
        hint = _did_you_mean(unknown[0], DEFAULT_TAGS[formatting])
        raise UserError(f"{where}: unknown tag '{unknown[0]}'{hint} "
                        f"(expected some of {', '.join(DEFAULT_TAGS[formatting])})")
    t = {**DEFAULT_TAGS[formatting], **tags}
    roles = {**COMMON_ROLES, t["user_tag"]: "user", t["assistant_tag"]: "assistant",
             t["system_tag"]: "system", t["observation_tag"]: "tool", t["function_tag"]: "function"}
    return _Spec(formatting, mapped, t["role_tag"], t["content_tag"], roles,
                 (t["user_tag"], t["assistant_tag"], t["system_tag"], t["function_tag"], t["observation_tag"]))


def _column_refusal(key: str) -> str | None:
    """Why a LLaMA-Factory column cannot be used here (with what to do), or None."""
    if key in MEDIA_COLUMNS:
        return (f'"columns" has \'{key}\': this trainer is text-only and cannot train on {key}; '
                f'use a text-only dataset, or remove \'{key}\' from "columns" (and the <{key[:-1]}> '
                "placeholders from the text) to train on the text alone")
    if key in PREFERENCE_COLUMNS:
        return f'"columns" has \'{key}\': {PREFERENCE_MESSAGE}'
    if key == "kto_tag":
        return ('"columns" has \'kto_tag\': KTO data (a good/bad label per answer) needs stage kto; set stage: '
                'kto, or remove "kto_tag" to train on the answers as plain sft data')
    return None


def _pretraining_shape(entry: dict) -> bool:
    """LLaMA-Factory's pre-training entry: alpaca (its default) whose "columns" name a "prompt" (the
    text) and no "response", like {"c4_demo": {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}}}.
    LLaMA-Factory's stage pt trains on the prompt column alone; its sft needs a response."""
    columns = entry.get("columns")
    return (entry.get("formatting") == "alpaca" and isinstance(columns, dict) and "prompt" in columns
            and not any(k in columns for k in ("response", "output", "history")))


def _check_stage(formatting: str, stage: str, what: str) -> None:
    """Each stage takes only some formattings: refuse the rest before reading anything."""
    if stage not in STAGES:
        raise UserError(f"unknown stage '{stage}' (expected one of {', '.join(STAGES)})")
    if formatting == "text" and stage != "pt":
        raise UserError(f"{what} is raw text (formatting: text) and can only be used for stage pt")
    if formatting == "mcq" and stage != "mcq":
        raise UserError(f"{what} is multiple-choice (formatting: mcq) and can only be used for evaluation")
    if stage == "mcq" and formatting != "mcq":
        raise UserError(f"{what} is not multiple-choice (formatting: {formatting}); "
                        "multiple-choice evaluation needs formatting: mcq")


# ---------------------------------------------------------------------------------------------
# Public readers
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetSource:
    """Where a registered dataset's records are and how to read them (`dataset_source`)."""

    name: str
    files: list[tuple[Path, str]]  # (path, the name problems show)
    spec: _Spec
    stage: str
    txt_lines: bool  # .txt holds one document per line (LLaMA-Factory's pre-training entries)
    pretraining: bool  # LLaMA-Factory's pre-training shape (see _pretraining_shape)
    where: str  # "dataset 'x' in .../dataset_info.json", for messages
    num_samples: int | None

    def text_hint(self) -> str:
        return (f'{self.where} is pre-training text in LLaMA-Factory\'s layout ("columns": {{"prompt": '
                f'"{self.spec.key("instruction")}"}} and no "response"): use it with stage pt, or map an answer '
                'column with "response" for sft')


def dataset_source(name: str, dataset_dir: str | Path, stage: str = "sft") -> tuple[DatasetSource, list[Problem]]:
    """The files and the reading spec of the dataset `name`; a file that cannot be opened is a
    problem. A mistake in the registry entry itself raises UserError."""
    dataset_dir = Path(dataset_dir)
    info = load_dataset_info(dataset_dir)
    info_path = dataset_dir / "dataset_info.json"
    entry = registry_entry(info, name, info_path)
    where = f"dataset '{name}' in {info_path}"
    _check_entry(entry, where, dataset_dir)
    file_name = entry["file_name"]
    spec = _make_spec(entry["formatting"], entry.get("columns"), entry.get("tags"), where)
    pretraining = _pretraining_shape(entry)
    if pretraining and stage == "pt":  # LLaMA-Factory's pt trains on the prompt column alone
        spec = _Spec("text", {"text": spec.key("instruction")})
    spec = replace(spec, sheet=_sheet_of(entry, where))
    _check_stage(spec.formatting, stage, f"dataset '{name}'")
    path = dataset_dir / file_name
    problem = _open_problem(path, file_name, f" ({where})")
    files, problems = ([], [problem]) if problem else _data_files(path, file_name)
    source = DatasetSource(name, files, spec, stage, pretraining, pretraining, where, entry.get("num_samples"))
    if pretraining and stage == "sft" and any(f.suffix.lower() == ".txt" for f, _ in files):
        raise UserError(source.text_hint())
    return source, problems


def read_dataset(name: str, dataset_dir: str | Path, stage: str = "sft", *, max_record_chars: int = 200_000,
                 max_file_bytes: int = 1 << 30) -> tuple[list[dict], list[Problem]]:
    """Read the dataset `name` registered in `<dataset_dir>/dataset_info.json`.

    Returns the good examples and every problem found (records with problems are left out).
    A mistake in the registry entry itself raises UserError.
    """
    source, problems = dataset_source(name, dataset_dir, stage)
    examples: list[dict] = []
    for file, display in source.files:
        found, trouble = _read(file, display, source.spec, stage, name, max_record_chars, max_file_bytes,
                               txt_lines=source.txt_lines)
        examples += found
        problems += trouble
    if no_answers(source, examples, problems):
        raise UserError(source.text_hint())  # not one record has an answer: it is the pt shape, not broken sft data
    return examples, problems


def no_answers(source: DatasetSource, examples: list, problems: list[Problem]) -> bool:
    """LLaMA-Factory's pre-training shape read for sft: not one record has an answer."""
    return (source.pretraining and source.stage == "sft" and not examples
            and any(p.field == source.spec.key("output") and p.message.startswith("missing") for p in problems))


def _sheet_of(entry: dict, where: str) -> str | int:
    """An entry's "sheet" (which sheet of an .xlsx file): a name, or 0 for the first one."""
    sheet = entry.get("sheet", 0)
    if sheet in (0, None, ""):
        return 0
    if not isinstance(sheet, str):
        raise UserError(f'{where}: "sheet" names a sheet of the .xlsx file, e.g. "sheet": "问答"; got {sheet!r}')
    return sheet


def _check_entry(entry: dict, where: str, dataset_dir: Path, preference: bool = False) -> None:
    """Refuse, with why and what to do, the LLaMA-Factory entries this workbench cannot read:
    preference and KTO data (unless `preference`: read by `read_preference_dataset`), multimodal
    columns, hub/script/cloud entries without a local file_name, a split other than train; and a
    num_samples that is not a count."""
    if not preference and (entry.get("ranking") or entry.get("formatting") == "trl"):
        raise UserError(f"{where}: {PREFERENCE_MESSAGE}")
    columns = entry.get("columns")
    if isinstance(columns, dict):
        for key in columns:
            refusal = None if preference and key in PREFERENCE_FIELDS else _column_refusal(key)
            if refusal:
                raise UserError(f"{where}: {refusal}")
    file_name = entry.get("file_name")
    if file_name is None or file_name == "":
        remote = next((k for k in REMOTE_KEYS if entry.get(k)), None)
        if remote:
            raise UserError(f"{where} {_remote_hint(remote, entry, dataset_dir)}")
        raise UserError(f'{where} has no "file_name"{_did_you_mean("file_name", entry)}')
    if not isinstance(file_name, str):
        raise UserError(f'{where}: "file_name" must be a file or folder name in {dataset_dir}, '
                        f"got {_json_kind(file_name)}")
    split = entry.get("split", "train")
    if split != "train":
        if isinstance(split, str) and split.startswith("train["):
            raise UserError(f"{where}: split '{split}' slices the records, which is not supported here; "
                            'remove "split" and take a part with "num_samples" (or max_samples in the run)')
        raise UserError(f"{where}: split {_short(split)} names a part of a hub dataset, but a local file has "
                        "only one part, train (LLaMA-Factory reads it as split train too); remove \"split\", "
                        "or register that part's file as its own entry (for evaluation: eval_dataset)")
    count = entry.get("num_samples")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise UserError(f"{where}: num_samples must be a whole number of at least 1, got {_short(count)}")


def _remote_hint(remote: str, entry: dict, dataset_dir: Path) -> str:
    """How to replace a hub, script or cloud entry by a local copy (this machine is offline)."""
    source = entry[remote]
    local = Path(str(source).rstrip("/")).name or "data"
    part = "".join(f", {key} '{entry[key]}'" for key in ("subset", "folder") if entry.get(key))
    if remote in ("hf_hub_url", "ms_hub_url", "om_hub_url"):
        hub = {"hf_hub_url": "the Hugging Face hub", "ms_hub_url": "ModelScope",
               "om_hub_url": "Modelers (openmind)"}[remote]
        command = {"hf_hub_url": f"huggingface-cli download --repo-type dataset {source} --local-dir {local}",
                   "ms_hub_url": f"modelscope download --dataset {source} --local_dir {local}",
                   "om_hub_url": f"openmind-cli pull {source} --local_dir {local}"}[remote]
        how = (f"is on {hub} ({remote}: {source}{part}), and this workbench reads local files only (no hub "
               f"access offline): on a machine with internet run `{command}`, copy the data files into {dataset_dir}")
    elif remote == "script_url":
        how = (f"is made by a loading script (script_url: {source}), which this workbench does not run: "
               "run it once where it works and save the records as .json, .jsonl, .csv or .parquet "
               f"in {dataset_dir}")
    else:
        how = (f"is in cloud storage (cloud_file_name: {source}), which this workbench does not reach: "
               f"copy the file into {dataset_dir}")
        local = Path(str(source)).name or local
    return (f'{how}, and set "file_name": "{local}" in this entry (a file, or a folder of files of one type: '
            f"{', '.join(EXTENSIONS)})")


def _data_files(path: Path, file_name: str) -> tuple[list[tuple[Path, str]], list[Problem]]:
    """The files of an entry, each with its name as problems show it: file_name itself, or for a
    folder every file directly inside it (hidden ones aside) in name order, all of one type."""
    if not path.is_dir():
        return [(path, file_name)], []
    try:
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as e:
        return [], [Problem(file_name, None, None, f"cannot list the folder: {e.strerror or e}")]
    if not files:
        return [], [Problem(file_name, None, None, "the folder holds no data files; put the dataset's files "
                            f"({', '.join(EXTENSIONS)}) directly inside it")]
    kinds = sorted({p.suffix.lower() or "(none)" for p in files})
    if len(kinds) > 1:
        return [], [Problem(file_name, None, None, f"the folder mixes file types ({', '.join(kinds)}); its files "
                            "must all be of one type, as in LLaMA-Factory: move the others out")]
    return [(p, f"{file_name.rstrip('/')}/{p.name}") for p in files], []


def dataset_outside(names: list[str], dataset_dir: str | Path, roots: list[Path]) -> list[str]:
    """One message for each dataset whose file_name resolves outside `roots` (symlinks followed):
    the workbench's page may read only its data folder and the folders added with --allow_path."""
    dataset_dir = Path(dataset_dir)
    info = load_dataset_info(dataset_dir)
    messages = []
    for name in names:
        file_name = info.get(name, {}).get("file_name")
        if not isinstance(file_name, str) or not file_name:
            continue  # read_dataset names that mistake
        path = dataset_dir / file_name
        try:  # a folder's files may be links to elsewhere: each one must stay inside too
            paths = [path, *(path.iterdir() if path.is_dir() else [])]
            resolved = [p.resolve() for p in paths]
        except (OSError, ValueError):
            continue  # read_dataset names an unreadable path
        if not all(any(p.is_relative_to(root.resolve()) for root in roots) for p in resolved):
            messages.append(f"dataset '{name}' in {dataset_dir / 'dataset_info.json'}: file_name '{file_name}' "
                            f"lies outside the data folder ({', '.join(str(r) for r in roots)}); move the file "
                            "into the data folder, or start the workbench with --allow_path DIR")
    return messages


def read_file(path: str | Path, formatting: str, columns: dict | None = None, stage: str = "sft", *,
              tags: dict | None = None, max_record_chars: int = 200_000,
              max_file_bytes: int = 1 << 30) -> tuple[list[dict], list[Problem]]:
    """Read one file that is not in a registry (the UI's upload preview), like `read_dataset`."""
    display = str(path)
    path = Path(path)
    spec = _make_spec(formatting, columns, tags, f"file '{display}'")
    _check_stage(formatting, stage, f"file '{display}'")
    problem = _open_problem(path, display)
    if problem:
        return [], [problem]
    return _read(path, display, spec, stage, path.name, max_record_chars, max_file_bytes)


def registry_entry(info: dict[str, dict], name: str, info_path: Path) -> dict:
    if name in info:
        return info[name]
    available = ", ".join(sorted(info)) or "none"
    raise UserError(f"unknown dataset '{name}' in {info_path}{_did_you_mean(name, info)} "
                    f"(available: {available})")


def _open_problem(path: Path, display: str, where: str = "") -> Problem | None:
    """A problem when `path` is absent or a name the system refuses (too long, a NUL byte in it)."""
    try:
        if path.exists():
            return None
        message = f"file not found: {path.resolve()}"
    except (OSError, ValueError) as e:
        message = f"cannot open the file: {e}"
    return Problem(display, None, None, message + where)


def _read(path: Path, display: str, spec: _Spec, stage: str, source: str, max_record_chars: int,
          max_file_bytes: int, txt_lines: bool = False) -> tuple[list[dict], list[Problem]]:
    """Read rows, check their size, convert them; collect every problem on the way.
    `txt_lines`: a .txt file holds one document per line (LLaMA-Factory's pre-training entries)."""
    try:
        rows, problems = read_rows(path, display, spec.formatting, max_file_bytes, txt_lines, spec.sheet)
    except OSError as e:  # no permission, a file that vanished, a device
        return [], [Problem(display, None, None, f"cannot read the file: {e.strerror or e}")]
    examples = []
    for index, row in rows:
        example, trouble = convert_row(index, row, display, spec, stage, source, max_record_chars)
        problems += trouble
        if example is not None:
            examples.append(example)
    if not rows and not problems:  # a header with no rows, an empty list: nothing to train on
        problems.append(Problem(display, None, None, "holds no records: the dataset is empty"))
    problems.sort(key=lambda p: -1 if p.record is None else p.record)  # file order; whole-file first
    return examples, [_printable(p) for p in problems]


def convert_row(index: int, row: Any, display: str, spec: _Spec, stage: str, source: str,
                max_record_chars: int = 200_000) -> tuple[dict | None, list[Problem]]:
    """One row as read -> (its example, or None with the problems that keep it out). The one
    check and conversion of a record, for the in-memory reader and the Arrow path alike."""
    # Checked before converting: the tokenizer would truncate anyway; this guards memory.
    size = _record_chars(row)
    if size > max_record_chars:
        return None, [Problem(display, index, None, f"record is {size:,} characters; "
                              f"the limit is {max_record_chars:,} (max_record_chars)")]
    bad_unicode = _surrogate_problem(row)
    if bad_unicode is not None:  # it could not be printed, tokenized or saved
        return None, [Problem(display, index, *bad_unicode)]
    example, errors = CONVERTERS[spec.formatting](row, spec)
    if errors or example is None:  # a converter returns None only together with its errors
        return None, [Problem(display, index, key, message) for key, message in errors]
    if stage == "pt" and "messages" in example:
        # Pre-training reads conversations as plain text.
        example = {"text": "\n".join(message_text(m) for m in example["messages"])}
    example["source"] = source
    example["file"] = display
    example["index"] = index
    return example, []


# ---------------------------------------------------------------------------------------------
# File readers: bytes -> rows [(index, row)]
# ---------------------------------------------------------------------------------------------

def read_rows(path: Path, display: str, formatting: str, max_file_bytes: int,
               txt_lines: bool = False, sheet: str | int = 0) -> tuple[Rows, list[Problem]]:
    def fail(message: str) -> tuple[Rows, list[Problem]]:
        return [], [Problem(display, None, None, message)]

    suffix = path.suffix.lower()
    if path.is_dir():
        return fail("is a folder; point file_name at one file")
    if suffix == ".xls":  # the old binary format: no maintained reader for it beside xlrd's last releases
        return fail("an .xls file (Excel 97-2003): open it in Excel or LibreOffice and save it as .xlsx")
    if suffix not in EXTENSIONS:
        return fail(f"unsupported file type '{suffix}' (expected one of {', '.join(EXTENSIONS)})")
    if suffix == ".txt" and formatting != "text":
        return fail(f'a .txt file holds raw text for stage pt: register it with "formatting": "text" (or, '
                    f'as LLaMA-Factory does, "columns": {{"prompt": "text"}}), not {formatting}')
    size = path.stat().st_size
    if size > max_file_bytes:  # refused before reading: the file is loaded into memory whole
        return fail(f"file is {human_size(size)}; the limit is {human_size(max_file_bytes)} "
                    "(max_file_bytes): split it or raise the limit")
    if suffix == ".parquet":
        return _read_parquet(path, display)
    if suffix == ".xlsx":
        return _read_xlsx(path, display, sheet)
    text, problem = _decode(path.read_bytes(), display)
    if problem:
        return [], [problem]
    if suffix in (".json", ".jsonl", ".txt") and not text.strip():
        return fail("the file is empty")
    if suffix == ".json":
        return _parse_json(text, display)
    if suffix == ".jsonl":
        return _parse_jsonl(text, display)
    if suffix in (".csv", ".tsv"):
        return _parse_csv(text, display, "\t" if suffix == ".tsv" else ",")
    return (_parse_txt_lines(text) if txt_lines else _parse_txt(text)), []


def _decode(data: bytes, display: str) -> tuple[str, Problem | None]:
    encoding, problem = detect_encoding(data, display)
    if problem:
        return "", problem
    return data.decode(encoding), None


def detect_encoding(data: bytes, display: str, sample: bool = False) -> tuple[str, Problem | None]:
    """The encoding of a text file's bytes: UTF-8 with or without BOM, UTF-16/32 with a BOM, else
    GB18030 or Big5 (the one that reads as fewer odd characters). `sample`: `data` is the start of
    a larger file, possibly cut inside a character, so its end is not held against UTF-8."""
    # Excel's "Unicode text" is UTF-16 with a BOM; UTF-32's BOM starts like UTF-16's, so it goes first.
    for bom, encoding in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                          (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            try:
                if not sample:  # a sample may end inside a character
                    data.decode(encoding)
                return encoding, None
            except UnicodeDecodeError:
                return "", Problem(display, None, None, f"starts with a {encoding.upper()} byte-order mark "
                                   f"but is not valid {encoding.upper()} text; save it as UTF-8")
    # NUL bytes never occur in UTF-8 or GB18030 text; they mean a binary (or UTF-16) file.
    if b"\x00" in data[:8192]:
        return "", Problem(display, None, None, "not a text file (it contains NUL bytes); "
                           "save it as UTF-8 text (UTF-16 without a byte-order mark looks like this too)")
    if sample:
        data = data[:data.rfind(b"\n") + 1] or data  # whole lines only
    candidates = {}
    for encoding in ("utf-8-sig", "gb18030", "big5"):  # utf-8-sig also reads UTF-8 without a BOM
        try:
            candidates[encoding] = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if encoding == "utf-8-sig":
            return encoding, None
    text, big5 = candidates.get("gb18030"), candidates.get("big5")
    if text is not None and big5 is not None and _odd_characters(big5) < _odd_characters(text):
        return "big5", None  # GB18030 decodes almost any bytes: Big5 text read as it is mojibake
    if text is not None:
        return "gb18030", None
    if big5 is not None:
        return "big5", None
    return "", Problem(display, None, None, "unknown encoding: the file is neither UTF-8, GB18030 nor Big5; "
                       "save it as UTF-8")


# Characters that Chinese text almost never holds and that a wrong decoding scatters everywhere:
# Big5 read as GB18030 shows kana and hangul, GB18030 read as Big5 shows bopomofo and modifiers.
_ODD_RANGES = ((0x02B0, 0x02FF), (0x1100, 0x11FF), (0x2500, 0x257F), (0x3040, 0x30FF), (0x3100, 0x312F),
               (0x3130, 0x318F), (0xAC00, 0xD7AF), (0xE000, 0xF8FF), (0xFF61, 0xFF9F))


def _odd_characters(text: str) -> int:
    return sum(any(low <= ord(c) <= high for low, high in _ODD_RANGES) for c in text if ord(c) > 0x7F)


def json_error(error: ValueError | RecursionError) -> str:
    """Why json.loads refused a text; its line and column are added by the caller."""
    if isinstance(error, json.JSONDecodeError):
        if error.msg.startswith("Invalid control character"):  # Python's message ends in a dangling "at"
            return "a control character inside a string (a raw line break or tab? write it as \\n or \\t)"
        return error.msg
    if isinstance(error, RecursionError):
        return "values are nested too deeply"
    return "a number has too many digits"  # Python refuses integers of more than 4300 digits


def _parse_json(text: str, display: str) -> tuple[Rows, list[Problem]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        hint = " (one JSON object per line? then name the file .jsonl)" if e.msg == "Extra data" else ""
        message = f"invalid JSON at line {e.lineno}, column {e.colno}: {json_error(e)}{hint}"
        return [], [Problem(display, None, None, message)]
    except (ValueError, RecursionError) as e:
        return [], [Problem(display, None, None, f"invalid JSON: {json_error(e)}")]
    if not isinstance(data, list):
        message = f"expected a JSON list of records, got {_json_kind(data)}"
        lists = [k for k, v in data.items() if isinstance(v, list)] if isinstance(data, dict) else []
        if len(lists) == 1:
            message += f" (the records seem to be under '{lists[0]}': put that list at the top level)"
        return [], [Problem(display, None, None, message)]
    return list(enumerate(data)), []


def _parse_jsonl(text: str, display: str) -> tuple[Rows, list[Problem]]:
    """One JSON value per line; blank lines are skipped and do not count as records."""
    rows, problems = [], []
    index = 0
    # split("\n"), not splitlines(): U+2028 and friends may stand raw inside JSON strings.
    for line_number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append((index, json.loads(line)))
        except (ValueError, RecursionError) as e:
            column = f" at column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
            message = f"line {line_number}: invalid JSON{column}: {json_error(e)}"
            problems.append(Problem(display, index, None, message))
        index += 1
    return rows, problems


def _parse_csv(text: str, display: str, delimiter: str) -> tuple[Rows, list[Problem]]:
    """A header row, then one record per row; quoted cells may hold newlines and delimiters."""
    # The default cell limit (128 KiB) is below max_record_chars; the record size check guards memory.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    problems: list[Problem] = []
    try:
        return _table(reader, display, lambda: f"line {reader.line_num}")
    except csv.Error as e:
        problems.append(Problem(display, None, None, f"line {reader.line_num}: {e}"))
    return [], problems


def _table(lines: Iterator[list[str]], display: str, where: Callable[[], str]) -> tuple[Rows, list[Problem]]:
    """A header row, then one record per row (a CSV file or a sheet); `where` names the current row."""
    rows, problems = [], []
    header = next(lines, None)
    if header is None:
        return [], [Problem(display, None, None, "the file is empty; expected a header row")]
    header = [name.strip() for name in header]
    # An unnamed column (the index pandas writes, as in CMMLU) is fine; two with one name are not.
    doubled = sorted({name for name in header if name and header.count(name) > 1})
    if doubled:
        return [], [Problem(display, None, name, f"column '{name}' appears {header.count(name)} times in "
                            "the header; rename the copies") for name in doubled]
    index = 0
    for cells in lines:
        if not any(cell.strip() for cell in cells):  # blank lines and rows of empty cells
            continue
        if len(cells) != len(header):
            message = f"{where()}: {len(cells)} cells, but the header has {len(header)}"
            problems.append(Problem(display, index, None, message))
        else:
            rows.append((index, {name: math.nan if cell.strip() in NAN_CELLS else cell
                                 for name, cell in zip(header, cells)}))
        index += 1
    return rows, problems


def _read_xlsx(path: Path, display: str, sheet: str | int) -> tuple[Rows, list[Problem]]:
    """One sheet of an Excel workbook (the first, or the entry's "sheet"), read by pandas with
    openpyxl as a table of text cells, then checked like a CSV file (header, blank rows)."""
    import zipfile

    try:
        import pandas as pd
    except ImportError:
        return [], [Problem(display, None, None, "reading .xlsx needs pandas and openpyxl: "
                            "pip install pandas openpyxl")]
    try:
        with pd.ExcelFile(path, engine="openpyxl") as book:
            if sheet != 0 and sheet not in book.sheet_names:
                names = ", ".join(map(str, book.sheet_names))
                return [], [Problem(display, None, None, f"has no sheet '{sheet}' (its sheets: {names})")]
            frame = book.parse(sheet, header=None, dtype=str, keep_default_na=False)
    except ImportError:
        return [], [Problem(display, None, None, "reading .xlsx needs openpyxl: pip install openpyxl")]
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:  # not a workbook, or a broken one
        return [], [Problem(display, None, None, f"cannot read this Excel file ({type(e).__name__}: {e}); "
                            "save it again from Excel as .xlsx, or as .csv (UTF-8)")]
    cells = [[str(cell) for cell in row] for row in frame.itertuples(index=False, name=None)]
    position = {"row": 0}

    def lines() -> Iterator[list[str]]:
        for number, row in enumerate(cells, start=1):
            position["row"] = number
            yield row

    return _table(lines(), display, lambda: f"row {position['row']} of the sheet")


def _parse_txt(text: str) -> Rows:
    """Paragraphs split on blank lines; a file without blank lines gives one record per line."""
    # Stripped first: a blank line at the very end does not make the file "paragraphs".
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    parts = re.split(r"\n\s*\n", text) if re.search(r"\n\s*\n", text) else text.split("\n")
    return list(enumerate(part.strip() for part in parts if part.strip()))


def _parse_txt_lines(text: str) -> Rows:
    """One document per line, as the `text` loader of Hugging Face datasets reads a .txt file for
    LLaMA-Factory (blank lines, which would be empty documents, are skipped)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return list(enumerate(line for line in lines if line.strip()))


def _read_parquet(path: Path, display: str) -> tuple[Rows, list[Problem]]:
    try:
        import pyarrow  # imported here: pyarrow is heavy and only parquet needs it
        import pyarrow.parquet as pq
    except ImportError:
        return [], [Problem(display, None, None, "reading .parquet needs pyarrow: pip install pyarrow")]
    try:
        records = pq.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError, ValueError) as e:  # a broken or foreign file
        return [], [Problem(display, None, None, f"cannot read this parquet file: {e}")]
    # Empty cells come back as None (or NaN in float columns): treat them as empty strings, like CSV.
    rows = [{k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v for k, v in r.items()}
            for r in records]
    return list(enumerate(rows)), []


# ---------------------------------------------------------------------------------------------
# Converters: row -> (example, [(field, message)])
# ---------------------------------------------------------------------------------------------

def _alpaca(row: Any, spec: _Spec) -> tuple[dict | None, Errors]:
    """instruction + input -> user, output -> assistant; optional system and history pairs before them."""
    if not isinstance(row, dict):
        return None, [(None, f"record must be a JSON object, got {_type_name(row)}")]
    errors: Errors = []
    k = {name: spec.key(name) for name in FIELDS["alpaca"]}
    for name in ("instruction", "output"):
        if k[name] not in row:
            errors.append((k[name], _missing(k[name], row, set(k.values()))))
    instruction = _string(row, k["instruction"], errors)
    extra = _string(row, k["input"], errors)
    output = _string(row, k["output"], errors)
    system = _string(row, k["system"], errors)
    question = "\n".join(part for part in (instruction, extra) if part and part.strip())
    if k["instruction"] in row and instruction is not None and extra is not None and not question:
        errors.append((k["instruction"], _empty("question", row[k["instruction"]], row.get(k["input"]))))
    if k["output"] in row and output is not None and not output.strip():
        errors.append((k["output"], _empty("answer", row[k["output"]])))

    messages = [{"role": "system", "content": system}] if system and system.strip() else []
    h_key = k["history"]
    history = row.get(h_key)
    if history not in (None, "", []):
        if not isinstance(history, list):
            errors.append((h_key, f"must be a list of [question, answer] pairs, got {_type_name(history)}"))
        else:
            for n, pair in enumerate(history, 1):
                if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                        and all(isinstance(s, str) for s in pair)):
                    errors.append((h_key, f"item {n} must be a [question, answer] pair of strings"))
                elif not pair[0].strip():
                    errors.append((h_key, f"item {n}: empty question"))
                elif not pair[1].strip():
                    errors.append((h_key, f"item {n}: empty answer"))
                else:
                    messages.append({"role": "user", "content": pair[0]})
                    messages.append({"role": "assistant", "content": pair[1]})
    tools = _tools(row, k["tools"], errors)
    if errors or output is None:  # output is None only when _string noted an error for it
        return None, errors
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": output}]
    return _chat(messages, tools), []


def _conversation(row: Any, spec: _Spec) -> tuple[dict | None, Errors]:
    """sharegpt ({from, value} turns) and openai ({role, content} turns): both are a list of turns.
    A function call is LLaMA-Factory's function_call turn (its value the call as JSON) or an OpenAI
    assistant turn with "tool_calls"; a tool's result is an observation (or "tool") turn."""
    if not isinstance(row, dict):
        return None, [(None, f"record must be a JSON object, got {_type_name(row)}")]
    key = spec.key("conversations" if spec.formatting == "sharegpt" else "messages")
    system_key = spec.key("system")
    if key not in row:
        return None, [(key, _missing(key, row, {key, system_key, spec.key("tools")}))]
    turns = row[key]
    if not isinstance(turns, list):
        return None, [(key, f"must be a list of turns, got {_type_name(turns)}")]
    errors: Errors = []
    system = _string(row, system_key, errors)
    tools = _tools(row, spec.key("tools"), errors)
    parsed: list[_Turn] = []
    for n, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            errors.append((key, (f"turn {n} must be an object with '{spec.role_tag}' and "
                                 f"'{spec.content_tag}', got {_type_name(turn)}")))
            continue
        openai_calls = turn.get("tool_calls")  # OpenAI's assistant turn may have no content at all
        if spec.role_tag not in turn or (spec.content_tag not in turn and not openai_calls):
            errors.append((key, _missing_tag(n, turn, spec)))
            break  # the other turns are most likely spelled the same way: one message is enough
        value = turn[spec.role_tag]
        role = spec.roles.get(value) if isinstance(value, str) else None
        content = turn.get(spec.content_tag)
        if role is None:
            expected = ", ".join(dict.fromkeys(spec.expected_roles))
            errors.append((key, f"turn {n}: unknown role {_short(value)} (expected one of {expected})"))
        elif role == "function" or (role == "assistant" and openai_calls):
            calls, problem = _tool_calls(openai_calls if openai_calls else content)
            if calls is None:
                errors.append((key, f"turn {n}: {problem}"))
            else:  # the text an OpenAI turn may say before its calls is kept; a function_call's is the call
                text = content if openai_calls and isinstance(content, str) else ""
                parsed.append(_Turn("assistant", text, n, calls))
        elif not isinstance(content, str):
            errors.append((key, f"turn {n}: '{spec.content_tag}' must be a string, got {_type_name(content)}"))
        else:
            call_id = turn.get("tool_call_id") if role == "tool" else None
            parsed.append(_Turn(role, content, n, call_id=call_id if isinstance(call_id, str) else None))
    if errors:  # the order of the turns means little while some turns are unreadable
        return None, errors

    if system and system.strip():
        if parsed and parsed[0].role == "system":
            return None, [(system_key, f"system prompt given twice: in '{system_key}' and in turn 1")]
        parsed.insert(0, _Turn("system", system, 0))
    errors = [(key, message) for message in _check_turns(parsed)]
    if errors:
        return None, errors
    messages: list[dict] = []
    pending: list[str] = []  # ids of the calls whose results are still to come
    for turn in parsed:
        if turn.role == "system" and not turn.content.strip():
            continue  # an empty system prompt is just left out
        message: dict[str, Any] = {"role": turn.role, "content": turn.content}
        if turn.calls:
            # Every call gets an id and its result the same one: some templates (Mistral's) need them.
            # Nine digits, as Mistral's template wants: the turn's place, then the call's.
            message["tool_calls"] = [{**call, "id": call.get("id") or f"{len(messages):06d}{k:03d}"}
                                     for k, call in enumerate(turn.calls)]
            pending = [call["id"] for call in message["tool_calls"]]
        elif turn.role == "tool" and (turn.call_id or pending):
            message["tool_call_id"] = turn.call_id or pending.pop(0)
        messages.append(message)
    return _chat(messages, tools), []


@dataclass(frozen=True)
class _Turn:
    role: str  # system | user | assistant | tool
    content: str
    n: int  # turn number in the file, from 1 (0: the record's system field)
    calls: list[dict] | None = None  # an assistant turn's function calls
    call_id: str | None = None  # a tool result's tool_call_id, where the file gives one


def _chat(messages: list[dict], tools: list[dict] | None) -> dict:
    return {"messages": messages, "tools": tools} if tools else {"messages": messages}


def message_text(message: dict) -> str:
    """A message as text: its content, and a function call's JSON (whose content is empty)."""
    calls = message.get("tool_calls")
    if not calls:
        return message["content"]
    text = json.dumps([c["function"] for c in calls], ensure_ascii=False)
    return f"{message['content']}\n{text}" if message["content"] else text


CALL_SHAPE = '{"name": "get_weather", "arguments": {"city": "北京"}}'


def _tool_calls(value: Any) -> tuple[list[dict] | None, str]:
    """A function call turn's value (JSON text, an object or a list of them; or OpenAI's tool_calls)
    as [{"type": "function", "function": {"name", "arguments"}}], or (None, why not)."""
    what = f"a function call must be JSON like {CALL_SHAPE} (or a list of them)"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return None, f"{what}; got {_short(value)}, which is not valid JSON"
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list) or not items:
        return None, f"{what}; got {_short(value)}"
    calls = []
    for item in items:
        function = item.get("function") if isinstance(item, dict) else None
        call = function if isinstance(function, dict) else item  # OpenAI's {"type": "function", "function": {...}}
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"].strip():
            return None, f"{what}; got {_short(item)}, which has no \"name\""
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):  # OpenAI writes the arguments as a JSON string
            try:
                parsed = json.loads(arguments) if arguments.strip() else {}
            except (ValueError, RecursionError):
                return None, f"the arguments of function call '{call['name']}' are not valid JSON: {_short(arguments)}"
            arguments = parsed if isinstance(parsed, dict) else arguments
        call_id = item.get("id") if isinstance(item, dict) and isinstance(item.get("id"), str) else None
        calls.append({"type": "function", "function": {"name": call["name"], "arguments": arguments},
                      **({"id": call_id} if call_id else {})})
    return calls, ""


def _tools(row: dict, key: str, errors: Errors) -> list[dict] | None:
    """A record's function definitions (LLaMA-Factory's tools column: JSON text or a list) in HF's
    [{"type": "function", "function": {...}}] form; None when there are none."""
    value = row.get(key)
    if value is None or _is_nan(value) or (isinstance(value, str) and not value.strip()):
        return None
    what = ('must be a list of function definitions like [{"name": "get_weather", "description": "...", '
            '"parameters": {...}}]')
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            errors.append((key, f"{what}; it is not valid JSON"))
            return None
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list):
        errors.append((key, f"{what}; got {_type_name(value)}"))
        return None
    tools = []
    for n, tool in enumerate(items, 1):
        if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
            tools.append(tool)
        elif isinstance(tool, dict) and isinstance(tool.get("name"), str):
            tools.append({"type": "function", "function": tool})
        else:
            errors.append((key, f'{what}; tool {n} has no "name"'))
            return None
    return tools or None


def _check_turns(turns: list[_Turn]) -> list[str]:
    """[system?] then user, assistant, user, assistant ..., ending with an assistant turn; a tool's
    result (one or more "tool" turns) may stand where a user turn does, as in LLaMA-Factory, whose
    observation turns take the user's places. No empty question, and no empty answer unless the
    answer is a function call."""
    if not turns or all(t.role == "system" for t in turns):
        return ["empty conversation: no user or assistant turns"]
    body = turns[1:] if turns[0].role == "system" else turns
    messages = []
    previous: _Turn | None = None
    for turn in body:
        role, n = turn.role, turn.n
        if role == "system":
            return [f"turn {n}: system turn must be first"]
        if previous is None:
            allowed: tuple[str, ...] = ("user",)
        elif previous.role == "assistant":
            allowed = ("user", "tool")
        else:  # after a question or a tool's result comes an answer (or the next result)
            allowed = ("assistant", "tool") if previous.role == "tool" else ("assistant",)
        if role not in allowed:
            if previous is None:
                return [f"turn {n} is '{role}' but the conversation must start with a 'user' turn"]
            expected = allowed[0]
            article = "an" if expected == "assistant" else "a"
            twice = f" (two {role} turns in a row: turns {previous.n} and {n})" if role == previous.role else ""
            return [f"turn {n} is '{role}' but {article} '{expected}' turn must come after '{previous.role}'{twice}"]
        if role in ("user", "assistant") and not turn.calls and not turn.content.strip():
            messages.append(f"turn {n}: empty {'question' if role == 'user' else 'answer'}")
        previous = turn
    if previous is not None and previous.role == "user":  # never None here: body holds a non-system turn
        messages.append("conversation ends with a user turn and has no answer to train on")
    elif previous is not None and previous.role == "tool":
        messages.append("conversation ends with a tool result and has no answer to train on")
    return messages


def _text(row: Any, spec: _Spec) -> tuple[dict | None, Errors]:
    """A .txt paragraph, a bare JSON string, or a record's "text" field (or the one "columns" names)."""
    key = spec.key("text")
    if isinstance(row, str):
        text: str | None = row
    elif isinstance(row, dict):
        if key not in row:
            return None, [(key, _missing(key, row, {key}))]
        errors: Errors = []
        text = _string(row, key, errors)
        if errors:
            return None, errors
    else:
        return None, [(None, f"record must be a JSON object or a string, got {_type_name(row)}")]
    if not text or not text.strip():
        return None, [(key, _empty("text", row.get(key) if isinstance(row, dict) else row))]
    return {"text": text}, []


def _mcq(row: Any, spec: _Spec) -> tuple[dict | None, Errors]:
    """C-Eval/CMMLU rows (question, A..E, answer, subject?) or records with an "options" list or map."""
    if not isinstance(row, dict):
        return None, [(None, f"record must be a JSON object, got {_type_name(row)}")]
    # Column names match case-insensitively: C-Eval says "question", CMMLU "Question".
    by_lower = {str(k).strip().lower(): k for k in row}

    def key(name: str) -> str:
        wanted = spec.key(name)
        return by_lower.get(wanted.lower(), wanted)

    errors: Errors = []
    q_key, a_key, s_key, o_key = key("question"), key("answer"), key("subject"), key("options")
    known = {q_key, a_key, s_key, o_key, *(key(letter) for letter in OPTION_LETTERS)}
    for name in (q_key, a_key):
        if name not in row:
            errors.append((name, _missing(name, row, known)))
    question = _string(row, q_key, errors)
    if q_key in row and question is not None and not question.strip():
        errors.append((q_key, _empty("question", row[q_key])))
    subject = _string(row, s_key, errors)

    raw: dict = {}
    if o_key in row:
        value = row[o_key]
        if isinstance(value, list):
            if len(value) > len(OPTION_LETTERS):
                errors.append((o_key, f"has {len(value)} options; at most {len(OPTION_LETTERS)} are allowed"))
            raw = dict(zip(OPTION_LETTERS, value))
        elif isinstance(value, dict):
            raw = {str(letter).strip().upper(): text for letter, text in value.items()}
        else:
            got = _type_name(value)
            errors.append((o_key, f"must be a list of options or a letter -> option map, got {got}"))
    else:
        raw = {letter: row[key(letter)] for letter in OPTION_LETTERS if key(letter) in row}
    options = {}
    for letter, text in raw.items():
        if isinstance(text, (int, float)) and not isinstance(text, bool) and not _is_nan(text):
            text = str(text)  # an option may well be a number ("3")
        if text is None or _is_nan(text) or (isinstance(text, str) and not text.strip()):
            continue  # C-Eval has 4 options, some files 5: an empty option is simply absent
        if not isinstance(text, str):
            errors.append((o_key if o_key in row else key(letter),
                           f"option {letter} must be a string, got {_type_name(text)}"))
            continue
        options[letter] = text
    if len(options) < 2 and not any(name == o_key for name, _ in errors):
        errors.append((o_key if o_key in row else None,
                       (f"found {len(options)} option(s); a question needs at least 2 "
                        '(columns A, B, ... or an "options" list)')))

    answer = _string(row, a_key, errors)
    letters = ""
    if a_key in row and answer is not None:
        letters = re.sub(r"[\s,，、;；]", "", answer).upper()
        if not letters:
            errors.append((a_key, _empty("answer", row[a_key])))
        elif not re.fullmatch(r"[A-Z]+", letters):
            errors.append((a_key, f"must be option letters such as 'A' or 'AB', got {_short(answer)}"))
        else:
            letters = "".join(dict.fromkeys(letters))  # "AAB" -> "AB"
            absent = [letter for letter in letters if letter not in options]
            if absent:
                errors.append((a_key, (f"answer '{answer}' names option {', '.join(absent)}, which is "
                                       f"missing or empty (options: {', '.join(options) or 'none'})")))
    if errors:
        return None, errors
    # Several letters ("AB") are kept but marked: the evaluator reports them as unsupported.
    subject = subject.strip() if subject else ""
    return {"question": question, "options": options, "answer": letters, "subject": subject or None,
            "multi": len(letters) > 1}, []


CONVERTERS: dict[str, Callable[[Any, _Spec], tuple[dict | None, Errors]]] = {
    "alpaca": _alpaca, "sharegpt": _conversation, "openai": _conversation, "text": _text, "mcq": _mcq,
}


def _string(row: dict, key: str, errors: Errors) -> str | None:
    """row[key] as a string: '' when absent, null or NaN; None (and a problem noted) when of another type."""
    value = row.get(key)
    if value is None or _is_nan(value):
        return ""
    if isinstance(value, str):
        return value
    errors.append((key, f"must be a string, got {_type_name(value)}"))
    return None


def _missing(wanted: str, row: dict, known: set[str]) -> str:
    """'missing' plus the record key that looks like a misspelling of `wanted`, if there is one."""
    others = [str(k) for k in row if k not in known]
    close = _nearest(wanted, others)
    if close is not None:
        return f"missing; the record has '{close}' instead: rename it to '{wanted}' {FIX_HINT}"
    if not others:
        return "missing; add it to the record"
    keys = ", ".join(others[:10]) + (", ..." if len(others) > 10 else "")
    return f'missing (other keys: {keys}); add it or map one of them with "columns" in dataset_info.json'


def _missing_tag(n: int, turn: dict, spec: _Spec) -> str:
    """A turn without the role or content key; say so, and spot OpenAI turns read as ShareGPT and back."""
    tag = spec.role_tag if spec.role_tag not in turn else spec.content_tag
    message = f"turn {n} has no '{tag}' key (it has: {', '.join(map(str, turn)) or 'nothing'})"
    if spec.formatting == "sharegpt" and "role" in turn and "content" in turn:
        message += '; these are OpenAI turns: use "formatting": "openai"'
    elif spec.formatting == "openai" and "from" in turn and "value" in turn:
        message += '; these are ShareGPT turns: use "formatting": "sharegpt"'
    return message


# ---------------------------------------------------------------------------------------------
# Preference data: pairs (chosen / rejected) and KTO's good / bad answers
# ---------------------------------------------------------------------------------------------
#
# An entry is preference data when it has "ranking": true (pairs, as in LLaMA-Factory), when its
# "columns" name a "kto_tag" (KTO: one answer with a true/false label), or when its formatting is
# "trl" (TRL's conversational preference records; ours, LLaMA-Factory does not read it). Records:
#   pairs: {"prompt": [messages], "chosen": [assistant messages], "rejected": [assistant messages]}
#   kto:   {"prompt": [messages], "completion": [assistant message], "label": bool}
# each with "tools" where the record has function definitions, and "source", "file", "index" and
# "prompt_field" (the field holding the prompt, for problems found later, e.g. a prompt over cutoff).

TRL_FIELDS = ("prompt", "chosen", "rejected")


def preference_kind(entry: dict) -> str | None:
    """"pairs", "kto" or None (not preference data) for a dataset_info.json entry."""
    columns = entry.get("columns")
    if isinstance(columns, dict) and "kto_tag" in columns:
        return "kto"
    if entry.get("ranking") or entry.get("formatting") == "trl":
        return "pairs"
    return None


@dataclass(frozen=True)
class _PreferenceSpec:
    kind: str  # pairs | kto
    formatting: str  # as registered: alpaca, sharegpt, openai or trl
    base: _Spec  # how the prompt is read (trl: as openai, its "messages" column the prompt's)
    chosen: str  # the file's column names
    rejected: str
    kto_tag: str
    prompt: str  # trl only


def _preference_spec(entry: dict, where: str) -> _PreferenceSpec:
    kind = preference_kind(entry)
    if kind is None:
        columns = entry["columns"] if isinstance(entry.get("columns"), dict) else {}
        hint = (' ("columns" names chosen/rejected: add "ranking": true)'
                if any(k in columns for k in PREFERENCE_COLUMNS) else "")
        raise UserError(f'{where} is not preference data{hint}: a preference entry has "ranking": true '
                        '(chosen/rejected pairs), a "kto_tag" in "columns" (KTO) or "formatting": "trl"')
    formatting = entry["formatting"]
    columns = entry.get("columns") or {}
    if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
        raise UserError(f'{where}: "columns" must map field names to column names, e.g. {{"chosen": "好回答"}}')
    columns = dict(columns)
    own = {name: columns.pop(name, name) for name in ("chosen", "rejected", "kto_tag")}
    if formatting == "trl":
        if kind == "kto":
            raise UserError(f'{where}: formatting trl holds pairs (prompt/chosen/rejected); for KTO use '
                            'LLaMA-Factory\'s shape (formatting sharegpt or alpaca with a "kto_tag" column)')
        unknown = [k for k in columns if k not in TRL_FIELDS]
        if unknown:
            raise UserError(f"{where}: \"columns\" has '{unknown[0]}', which formatting trl does not use"
                            f"{_did_you_mean(unknown[0], TRL_FIELDS)} (expected some of {', '.join(TRL_FIELDS)})")
        prompt = columns.get("prompt", "prompt")
        base = _make_spec("openai", {"messages": prompt}, entry.get("tags"), where)
        return _PreferenceSpec(kind, formatting, base, own["chosen"], own["rejected"], own["kto_tag"], prompt)
    base = _make_spec(formatting, columns, entry.get("tags"), where)
    if formatting not in ("alpaca", "sharegpt", "openai"):
        raise UserError(f"{where}: preference data is formatting alpaca, sharegpt, openai or trl, not {formatting}")
    return _PreferenceSpec(kind, formatting, base, own["chosen"], own["rejected"], own["kto_tag"], "")


def read_preference_dataset(name: str, dataset_dir: str | Path, *, max_record_chars: int = 200_000,
                            max_file_bytes: int = 1 << 30) -> tuple[list[dict], list[Problem]]:
    """Read the preference dataset `name` (pairs or KTO, see `preference_kind`) registered in
    `<dataset_dir>/dataset_info.json`: the good records and every problem (file, record, field).
    A mistake in the registry entry itself raises UserError."""
    dataset_dir = Path(dataset_dir)
    info_path = dataset_dir / "dataset_info.json"
    entry = registry_entry(load_dataset_info(dataset_dir), name, info_path)
    where = f"dataset '{name}' in {info_path}"
    _check_entry(entry, where, dataset_dir, preference=True)
    spec = _preference_spec(entry, where)
    sheet = _sheet_of(entry, where)
    path = dataset_dir / entry["file_name"]
    problem = _open_problem(path, entry["file_name"], f" ({where})")
    files, problems = ([], [problem]) if problem else _data_files(path, entry["file_name"])
    records: list[dict] = []
    for file, display in files:
        try:
            rows, trouble = read_rows(file, display, spec.base.formatting, max_file_bytes, sheet=sheet)
        except OSError as e:
            problems.append(Problem(display, None, None, f"cannot read the file: {e.strerror or e}"))
            continue
        file_problems = list(trouble)
        for index, row in rows:
            record, found = convert_preference_row(index, row, display, spec, name, max_record_chars)
            file_problems += found
            if record is not None:
                records.append(record)
        if not rows and not file_problems:
            file_problems.append(Problem(display, None, None, "holds no records: the dataset is empty"))
        file_problems.sort(key=lambda p: -1 if p.record is None else p.record)
        problems += [_printable(p) for p in file_problems]
    return records, problems


def convert_preference_row(index: int, row: Any, display: str, spec: _PreferenceSpec, source: str,
                           max_record_chars: int = 200_000) -> tuple[dict | None, list[Problem]]:
    """One preference row -> (its record, or None with every problem that keeps it out)."""
    size = _record_chars(row)
    if size > max_record_chars:
        return None, [Problem(display, index, None, f"record is {size:,} characters; "
                              f"the limit is {max_record_chars:,} (max_record_chars)")]
    bad_unicode = _surrogate_problem(row)
    if bad_unicode is not None:
        return None, [Problem(display, index, *bad_unicode)]
    if not isinstance(row, dict):
        return None, [Problem(display, index, None, f"record must be a JSON object, got {_type_name(row)}")]
    if spec.kind == "kto":
        record, errors = _kto_record(row, spec)
    elif spec.formatting == "alpaca":
        record, errors = _alpaca_pair(row, spec)
    elif spec.formatting == "trl":
        record, errors = _trl_pair(row, spec)
    else:
        record, errors = _conversation_pair(row, spec)
    if record is not None and not errors and spec.kind == "pairs":
        if [_normalise(message_text(m)) for m in record["chosen"]] == \
                [_normalise(message_text(m)) for m in record["rejected"]]:
            errors = [(spec.rejected, f"is identical to '{spec.chosen}': a pair must prefer one answer over "
                                      "a different one; fix or remove the record")]
    if errors or record is None:
        unique = list(dict.fromkeys(errors))  # the prompt is read once per side: its problems once
        return None, [Problem(display, index, key, message) for key, message in unique]
    record.update(source=source, file=display, index=index)
    return record, []


def _pair(prompt: list[dict], chosen: list[dict], rejected: list[dict], tools: list | None, field: str) -> dict:
    record: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "prompt_field": field}
    if tools:
        record["tools"] = tools
    return record


def _alpaca_pair(row: dict, spec: _PreferenceSpec) -> tuple[dict | None, Errors]:
    """LLaMA-Factory's alpaca ranking record: instruction (+ input, system, history) and two answers
    as strings."""
    known = {spec.base.key(n) for n in FIELDS["alpaca"]} | {spec.chosen, spec.rejected}
    errors: Errors = []
    sides = {}
    for side in (spec.chosen, spec.rejected):
        answer = _answer_string(row, side, known, errors)
        if answer is not None:
            sides[side] = [{"role": "assistant", "content": answer}]
    prompt, tools, trouble = _alpaca_prompt(row, spec.base)
    errors += trouble
    if errors or prompt is None:
        return None, errors
    return _pair(prompt, sides[spec.chosen], sides[spec.rejected], tools, spec.base.key("instruction")), []


_ANSWER_KEY = "\0answer"  # a stand-in answer: the alpaca converter reads the prompt around it


def _alpaca_prompt(row: dict, base: _Spec) -> tuple[list[dict] | None, list | None, Errors]:
    """The messages before the answer of an alpaca record (system, history, the question)."""
    spec = replace(base, columns={**base.columns, "output": _ANSWER_KEY})
    example, errors = _alpaca({**row, _ANSWER_KEY: "-"}, spec)
    if errors or example is None:
        return None, None, errors
    return example["messages"][:-1], example.get("tools"), []


def _answer_string(row: dict, key: str, known: set[str], errors: Errors) -> str | None:
    """An answer given as a string (alpaca), or None with its problem noted."""
    if key not in row:
        errors.append((key, _missing(key, row, known)))
        return None
    value = row[key]
    if isinstance(value, dict):
        errors.append((key, "must be a string in an alpaca ranking record; answers given as message objects "
                            'are the sharegpt shape: use "formatting": "sharegpt"'))
        return None
    if value is not None and not _is_nan(value) and not isinstance(value, str):
        errors.append((key, f"must be a string, got {_type_name(value)}"))
        return None
    if value is None or _is_nan(value) or not value.strip():
        errors.append((key, _empty("answer", value)))
        return None
    return value


def _conversation_pair(row: dict, spec: _PreferenceSpec) -> tuple[dict | None, Errors]:
    """LLaMA-Factory's sharegpt/openai ranking record: the conversation up to the last question,
    and chosen/rejected as one assistant message object each."""
    base = spec.base
    key = base.key("conversations" if base.formatting == "sharegpt" else "messages")
    known = {key, base.key("system"), base.key("tools"), spec.chosen, spec.rejected}
    errors: Errors = []
    sides = {side: _answer_message(row, side, base, known, errors) for side in (spec.chosen, spec.rejected)}
    prompt, tools, trouble = _conversation_prompt(row, base, key, known, (spec.chosen, spec.rejected))
    errors += trouble
    if errors or prompt is None:
        return None, errors
    chosen, rejected = sides[spec.chosen], sides[spec.rejected]
    assert chosen is not None and rejected is not None  # no error noted: both were read
    return _pair(prompt, [chosen], [rejected], tools, key), []


def _answer_message(row: dict, key: str, base: _Spec, known: set[str], errors: Errors) -> dict | None:
    """One answer as a message object in the file's tags ({"from": "gpt", "value": "..."})."""
    shape = f"{{'{base.role_tag}': '{base.expected_roles[1]}', '{base.content_tag}': '...'}}"
    if key not in row:
        errors.append((key, _missing(key, row, known)))
        return None
    value = row[key]
    if isinstance(value, list):
        errors.append((key, f"must be one message object like {shape}, got a list (TRL's shape, where "
                            'the answers are message lists: use "formatting": "trl")'))
        return None
    if not isinstance(value, dict):
        errors.append((key, f"must be one message object like {shape}, got {_type_name(value)}"))
        return None
    if base.role_tag not in value or base.content_tag not in value:
        errors.append((key, _missing_tag(1, value, base).replace("turn 1", "the answer", 1)))
        return None
    role = base.roles.get(value[base.role_tag]) if isinstance(value[base.role_tag], str) else None
    if role != "assistant":
        errors.append((key, f"wrong role {_short(value[base.role_tag])}: the answer must be an assistant "
                            f"message ('{base.expected_roles[1]}')"))
        return None
    content = value[base.content_tag]
    if not isinstance(content, str):
        errors.append((key, f"'{base.content_tag}' must be a string, got {_type_name(content)}"))
        return None
    if not content.strip():
        errors.append((key, "empty answer"))
        return None
    return {"role": "assistant", "content": content}


def _conversation_prompt(row: dict, base: _Spec, key: str, known: set[str], answers: tuple[str, ...]
                         ) -> tuple[list[dict] | None, list | None, Errors]:
    """The prompt of a conversation record: its turns, which must end with a question (a user
    turn, or a tool's result), read by the conversation converter around a stand-in answer."""
    if key not in row:
        return None, None, [(key, _missing(key, row, known))]
    turns = row[key]
    if not isinstance(turns, list):
        return None, None, [(key, f"must be a list of turns, got {_type_name(turns)}")]
    last = turns[-1] if turns and isinstance(turns[-1], dict) else {}
    tag = last.get(base.role_tag)
    if isinstance(tag, str) and base.roles.get(tag) in ("assistant", "function"):
        return None, None, [(key, f"turn {len(turns)}, the last, is an answer ('{tag}'): in "
                                  "preference data the conversation is the prompt and ends with a question; "
                                  f"the answers go in {' and '.join(repr(a) for a in answers)}")]
    stand_in = {base.role_tag: base.expected_roles[1], base.content_tag: "-"}
    example, errors = _conversation({**row, key: [*turns, stand_in]}, base)
    if errors or example is None:
        return None, None, errors
    return example["messages"][:-1], example.get("tools"), []


def _trl_pair(row: dict, spec: _PreferenceSpec) -> tuple[dict | None, Errors]:
    """TRL's conversational preference record: "prompt" (messages) with "chosen" and "rejected" (the
    assistant messages after it), or, without a prompt (TRL's implicit prompt), chosen and rejected
    as whole conversations whose shared beginning is the prompt."""
    base = spec.base
    known = {spec.prompt, spec.chosen, spec.rejected, base.key("tools")}
    errors: Errors = []
    sides: dict[str, list] = {}
    for side in (spec.chosen, spec.rejected):
        if side not in row:
            errors.append((side, _missing(side, row, known)))
        elif not isinstance(row[side], list) or not all(isinstance(m, dict) for m in row[side]):
            errors.append((side, f"must be a list of messages like [{{'role': 'assistant', 'content': '...'}}], "
                                 f"got {_type_name(row[side])}"))
        else:
            sides[side] = row[side]
    if errors:
        return None, errors
    chosen, rejected = sides[spec.chosen], sides[spec.rejected]
    explicit = spec.prompt in row
    if explicit:
        turns, field, offset = row[spec.prompt], spec.prompt, 0
        if not isinstance(turns, list):
            return None, [(field, f"must be a list of messages, got {_type_name(turns)}")]
    else:  # implicit prompt: the messages both conversations share, as TRL's extract_prompt takes it
        if chosen == rejected:
            return None, [(spec.rejected, f"is identical to '{spec.chosen}': a pair must prefer one answer "
                                          "over a different one; fix or remove the record")]
        offset = 0
        while offset < min(len(chosen), len(rejected)) and chosen[offset] == rejected[offset]:
            offset += 1
        turns, field = chosen[:offset], spec.chosen
    answers = {spec.chosen: chosen[offset:], spec.rejected: rejected[offset:]}
    for side, messages in answers.items():
        if not messages:
            errors.append((side, "has no answer after the prompt" if explicit else
                           "has no answer of its own: it ends where the other side's answer begins"))
        for n, message in enumerate(messages, offset + 1):  # numbered as in the file
            role = base.roles.get(message.get(base.role_tag)) if isinstance(message.get(base.role_tag), str) else None
            content = message.get(base.content_tag)
            if role != "assistant" and explicit:
                errors.append((side, f"message {n} has wrong role {_short(message.get(base.role_tag))}: the answer "
                                     "after the prompt holds 'assistant' messages only"))
            elif role != "assistant":
                errors.append((side, f"message {n} ({_short(message.get(base.role_tag))}) differs from the other "
                                     f"side's: without '{spec.prompt}', both sides must share the conversation up to "
                                     "the answer and differ only in 'assistant' messages"))
            elif not isinstance(content, str):
                errors.append((side, f"message {n}: '{base.content_tag}' must be a string, got {_type_name(content)}"))
            elif not content.strip():
                errors.append((side, f"message {n}: empty answer"))
    if errors:
        return None, errors
    prompt_spec = replace(base, columns={**base.columns, "messages": field})
    prompt, tools, trouble = _conversation_prompt({**row, field: turns}, prompt_spec, field, known,
                                                  (spec.chosen, spec.rejected))
    if trouble or prompt is None:
        return None, trouble
    as_messages = {side: [{"role": "assistant", "content": m[base.content_tag]} for m in messages]
                   for side, messages in answers.items()}
    return _pair(prompt, as_messages[spec.chosen], as_messages[spec.rejected], tools, field), []


def _kto_record(row: dict, spec: _PreferenceSpec) -> tuple[dict | None, Errors]:
    """LLaMA-Factory's KTO record: an alpaca or sharegpt/openai SFT record (one answer) and a
    true/false "kto_tag" saying whether the answer is desirable."""
    errors: Errors = []
    if spec.kto_tag not in row:
        known = {spec.kto_tag} | {spec.base.key(n) for n in FIELDS[spec.base.formatting]}
        errors.append((spec.kto_tag, _missing(spec.kto_tag, row, known)))
    elif not isinstance(row[spec.kto_tag], bool):
        errors.append((spec.kto_tag, f"must be true or false (a JSON boolean: is the answer desirable?), got "
                                     f"{_type_name(row[spec.kto_tag])} {_short(row[spec.kto_tag])}"))
    example, trouble = CONVERTERS[spec.base.formatting](row, spec.base)
    errors += trouble
    if errors or example is None:
        return None, errors
    messages = example["messages"]
    key = spec.base.key("instruction" if spec.base.formatting == "alpaca" else
                        "conversations" if spec.base.formatting == "sharegpt" else "messages")
    record: dict[str, Any] = {"prompt": messages[:-1], "completion": messages[-1:], "label": row[spec.kto_tag],
                              "prompt_field": key}
    if example.get("tools"):
        record["tools"] = example["tools"]
    return record, []


def preference_stats(records: list[dict]) -> dict:
    """Counts and character lengths of preference records (pairs or KTO) for `data check`."""
    n = len(records)
    if n == 0:
        return {"records": 0}
    prompts = [_normalise("\n".join(message_text(m) for m in r["prompt"])) for r in records]
    stats: dict[str, Any] = {"kind": "kto" if "completion" in records[0] else "pairs", "records": n}
    if stats["kind"] == "kto":
        answers = [sum(len(message_text(m)) for m in r["completion"]) for r in records]
        stats.update(desirable=sum(bool(r["label"]) for r in records),
                     undesirable=sum(not r["label"] for r in records),
                     **{f"answer_{k}": v for k, v in _length_stats(answers).items()})
        stats["duplicates"] = n - len({(p, _normalise(message_text(r["completion"][-1])))
                                       for p, r in zip(prompts, records)})
    else:
        for side in ("chosen", "rejected"):
            lengths = [sum(len(message_text(m)) for m in r[side]) for r in records]
            stats.update({f"{side}_{k}": v for k, v in _length_stats(lengths).items()})
        stats["chosen_longer_share"] = round(sum(
            sum(len(message_text(m)) for m in r["chosen"]) > sum(len(message_text(m)) for m in r["rejected"])
            for r in records) / n, 4)
    stats["duplicate_prompts"] = n - len(set(prompts))
    stats["multi_turn_share"] = round(sum(any(m["role"] == "assistant" for m in r["prompt"]) for r in records) / n, 4)
    return stats


# ---------------------------------------------------------------------------------------------
# Loading the datasets of a run
# ---------------------------------------------------------------------------------------------

def load_datasets(names: list[str] | str, dataset_dir: str | Path, stage: str, *,
                  max_samples: int | None = None, val_size: float = 0, seed: int = 42,
                  eval_names: list[str] | str | None = None, mix_strategy: str = "concat",
                  interleave_probs: str = "") -> tuple[list[dict], list[dict]]:
    """Read, check, mix, shuffle and split the datasets of a run: (train_examples, eval_examples).

    - `names` (a list or a comma-separated string, each name with an optional ":weight") are read in
      order; an entry's "num_samples" draws N of its valid records (see `sample_records`), then
      `max_samples` keeps the first N of each, in that order (as LLaMA-Factory does).
    - With weights (in the names or `interleave_probs`) or an interleave `mix_strategy`, the
      datasets are interleaved (`interleave`); otherwise concatenated.
    - Any problem in any dataset raises one DataError listing all of them.
    - The training examples are shuffled with random.Random(seed): the same seed gives the same order.
    - `eval_names`, when given, are the eval split; otherwise `val_size` (a fraction 0 < x < 1 or a
      whole number of records) is split off the shuffled training examples.
    """
    from trainer_core.config import dataset_mix

    train_names, weights = dataset_mix(",".join(name_list(names)), interleave_probs)
    eval_list = name_list(eval_names)
    if not train_names:
        raise UserError('no dataset given: set "dataset" to one or more names from dataset_info.json')
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                    or max_samples < 1):
        raise UserError(f"max_samples must be a whole number of at least 1, got {max_samples!r}")
    # Check every name before reading anything: one message for all typos, no minutes lost reading.
    info = load_dataset_info(dataset_dir)
    for name in train_names + eval_list:
        registry_entry(info, name, Path(dataset_dir) / "dataset_info.json")

    problems: list[Problem] = []

    def read_each(names: list[str]) -> list[list[dict]]:
        groups = []
        for name in names:
            found, trouble = read_dataset(name, dataset_dir, stage)
            problems.extend(trouble)
            if info[name].get("num_samples") and found:  # read_dataset checked it is a count
                found = sample_records(found, info[name]["num_samples"], f"{seed}:{name}")
            groups.append(found[:max_samples] if max_samples else found)
        return groups

    groups = read_each(train_names)
    evals = [e for group in read_each(eval_list) for e in group]
    if problems:
        raise DataError(problems)
    if not any(groups):
        raise UserError(f"dataset {', '.join(train_names)} holds no records")
    if weights is None and mix_strategy == "concat":
        train = [e for group in groups for e in group]
        random.Random(seed).shuffle(train)
    else:
        empty = [name for name, group in zip(train_names, groups) if not group]
        if empty:
            raise UserError(f"dataset {empty[0]} holds no records to mix")
        train = interleave(groups, weights or [1.0] * len(groups), seed,
                           until_all=mix_strategy == "interleave_over")
    if not eval_list and val_size:
        count = val_count(val_size, len(train))
        evals, train = train[:count], train[count:]
    return train, evals


def interleave(groups: list[list[dict]], weights: list[float], seed: Any, until_all: bool = False) -> list[dict]:
    """The records of several datasets drawn by weight (see `interleave_order`); a record drawn
    twice is two records."""
    which, positions = interleave_order([len(group) for group in groups], weights, seed, until_all)
    return [dict(groups[i][position]) for i, position in zip(which, positions)]


def interleave_order(sizes: list[int], weights: list[float], seed: Any, until_all: bool = False
                     ) -> tuple[array, array]:
    """Records drawn one at a time, as (dataset of each draw, record of each draw) in two compact
    arrays: each draw picks a dataset with probability weight / sum(weights), and takes that
    dataset's next record in a shuffled order (seeded).
    As Hugging Face datasets' `interleave_datasets` (LLaMA-Factory's interleave_under / _over):
    stop when the first dataset runs out, or (`until_all`) when each has run out at least once,
    a dataset that ran out starting over in a new order."""
    if len(weights) != len(sizes) or not all(w > 0 for w in weights):
        raise UserError(f"mixing weights must be one number > 0 per dataset, got {weights}")
    rng = random.Random(seed)
    orders = []
    for size in sizes:
        order = list(range(size))
        rng.shuffle(order)
        orders.append(order)
    positions = [0] * len(sizes)
    ran_out: set[int] = set()
    which, picked = array("l"), array("q")  # 8 bytes a draw, not a tuple's 100: corpora have millions
    while True:
        i = rng.choices(range(len(sizes)), weights=weights)[0]
        if positions[i] == len(orders[i]):
            if not until_all:
                break
            ran_out.add(i)
            if len(ran_out) == len(sizes):
                break
            rng.shuffle(orders[i])
            positions[i] = 0
        which.append(i)
        picked.append(orders[i][positions[i]])
        positions[i] += 1
    return which, picked


def mix_composition(examples: list[dict]) -> dict[str, int]:
    """How many records of each dataset (by "source"), in order of first appearance."""
    counts: dict[str, int] = {}
    for example in examples:
        counts[example.get("source", "?")] = counts.get(example.get("source", "?"), 0) + 1
    return counts


def sample_records(examples: list[dict], count: int, seed: Any) -> list[dict]:
    """`count` records drawn as LLaMA-Factory's num_samples draws them (see `sample_order`)."""
    return [dict(examples[i]) for i in sample_order(len(examples), count, seed)]  # drawn twice: two records


def sample_order(size: int, count: int, seed: Any) -> list[int]:
    """Which of `size` records `count` draws take, as LLaMA-Factory's num_samples draws them: a
    random permutation cut to `count`, and when `count` exceeds the records, every record once
    plus the rest drawn with replacement. Deterministic: the same seed gives the same draw
    (LLaMA-Factory uses numpy's global generator; here it is random.Random(seed))."""
    rng = random.Random(seed)
    order = list(range(size))
    rng.shuffle(order)
    return order[:count] + [rng.randrange(size) for _ in range(count - len(order))]


def name_list(names: list[str] | str | None) -> list[str]:
    if not names:
        return []
    if isinstance(names, str):
        names = names.split(",")
    return [name.strip() for name in names if name and name.strip()]


def val_count(val_size: float, total: int) -> int:
    """Number of eval records: a fraction of `total` (at least 1) or a count."""
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)) or val_size < 0:
        raise UserError(f"val_size must be a fraction between 0 and 1 or a whole number, got {val_size!r}")
    if val_size < 1:
        count = max(1, round(total * val_size))
    elif float(val_size).is_integer():
        count = int(val_size)
    else:
        raise UserError(f"val_size must be a fraction between 0 and 1 or a whole number, got {val_size!r}")
    if count >= total:
        raise UserError(f"val_size {val_size} takes {count} of the {total} records "
                        "and leaves none to train on")
    return count


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------

def text_stats(examples: list[dict]) -> dict:
    """Counts and character lengths for the Data tab and `data check` (tokens are counted elsewhere)."""
    n = len(examples)
    if n == 0:
        return {"records": 0}
    if all("messages" in e for e in examples):
        conversations = [e["messages"] for e in examples]
        lengths = [sum(len(message_text(m)) for m in c) for c in conversations]
        answers = [[message_text(m) for m in c if m["role"] == "assistant"] for c in conversations]
        total = sum(len(a) for a in answers)
        keys = [tuple((m["role"], _normalise(message_text(m))) for m in c) for c in conversations]
        return {
            "kind": "chat",
            "records": n,
            "assistant_turns": total,
            "mean_assistant_turns": round(total / n, 4),
            "multi_turn_share": round(sum(len(a) > 1 for a in answers) / n, 4),
            **_length_stats(lengths),
            "duplicates": n - len(set(keys)),
            "empty_answers": sum(not a or any(not s.strip() for s in a) for a in answers),
            "system_share": round(sum(any(m["role"] == "system" for m in c) for c in conversations) / n, 4),
        }
    if all("text" in e for e in examples):
        lengths = [len(e["text"]) for e in examples]
        return {"kind": "text", "records": n, **_length_stats(lengths), "total_chars": sum(lengths),
                "duplicates": n - len({_normalise(e["text"]) for e in examples})}
    if all("question" in e for e in examples):
        lengths = [len(e["question"]) + sum(len(o) for o in e["options"].values()) for e in examples]
        distinct = {(_normalise(e["question"]), tuple(sorted(e["options"].items()))) for e in examples}
        return {"kind": "mcq", "records": n, **_length_stats(lengths), "duplicates": n - len(distinct),
                "multi_answer": sum(bool(e.get("multi")) for e in examples),
                "subjects": len({e.get("subject") for e in examples if e.get("subject")})}
    raise ValueError("text_stats needs examples of one kind: all chat, all text or all multiple-choice")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (q in 0..100) with linear interpolation, as numpy's default; 0.0 if empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be between 0 and 100, got {q}")
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def _length_stats(lengths: list[int]) -> dict:
    return {"chars_p50": percentile(lengths, 50), "chars_p95": percentile(lengths, 95),
            "chars_max": max(lengths)}


def _normalise(text: str) -> str:
    """For spotting duplicates: whitespace and case differences do not make a record new."""
    return " ".join(text.split()).casefold()


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def _strings(value: Any, keys: bool = False) -> Iterator[str]:
    """Every string in a value, nested ones included (and dict keys if asked); iterative, since a
    JSON record may nest deeper than Python's recursion limit."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
            if keys:
                stack.extend(k for k in item if isinstance(k, str))
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def _record_chars(row: Any) -> int:
    """Characters in all strings of a record, nested ones included."""
    return sum(len(s) for s in _strings(row))


def _surrogate_problem(row: Any) -> tuple[str | None, str] | None:
    """(field, message) when a record holds a lone UTF-16 surrogate (JSON "\\ud800"), else None."""
    if not any(_SURROGATE.search(s) for s in _strings(row, keys=True)):
        return None
    field_name = None
    if isinstance(row, dict):
        field_name = next((k for k, v in row.items() if any(_SURROGATE.search(s) for s in _strings(v, keys=True))
                           and not _SURROGATE.search(k)), None)
    return field_name, ("holds a lone surrogate escape such as \\ud800, which is not a character; "
                        "fix the escape sequence in the file")


def _printable(problem: Problem) -> Problem:
    """A lone surrogate quoted from the file (a key, a role) would make printing the problem fail: escape it."""
    if not _SURROGATE.search(f"{problem.file}{problem.field}{problem.message}"):
        return problem

    def escape(text: str) -> str:
        return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)

    return Problem(escape(problem.file), problem.record, problem.field and escape(problem.field),
                   escape(problem.message))


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _empty(what: str, *values: Any) -> str:
    """'empty answer', saying so when the value was NaN (pandas' mark for a missing cell)."""
    nan = any(_is_nan(v) for v in values)
    return f"empty {what}" + (" (NaN: a missing value in the table)" if nan else "")


def _short(value: Any, limit: int = 60) -> str:
    """A value quoted for a message, cut so that a huge value never floods the output."""
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _nearest(word: str, choices: Any) -> str | None:
    """The choice closest to `word`, ignoring case, or None if nothing is close."""
    lowered = {str(c).lower(): str(c) for c in choices}
    match = difflib.get_close_matches(str(word).lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def _did_you_mean(word: str, choices: Any) -> str:
    close = _nearest(word, choices)
    return f"; did you mean '{close}'?" if close is not None else ""


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if _is_nan(value):
        return "NaN"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _json_kind(value: Any) -> str:
    """A JSON value's type with its article, for messages: 'an object', 'a string'."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "null"


def human_size(size: float) -> str:
    """Bytes as a person reads them (the UI shows file sizes with it too)."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
