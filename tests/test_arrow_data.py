"""The Arrow path for data larger than memory (trainer_core/arrow_data.py): the same samples as
the in-memory path, problems capped per kind with exact counts and places, shards resumed after a
kill and reused from the cache, the run's mix and split drawn as in memory, ranks that wait."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trainer_core import arrow_data
from trainer_core.arrow_data import Settings, load_arrow_data, plan_shards, prepare_dataset, use_arrow
from trainer_core.config import TrainConfig
from trainer_core.data import dataset_source, interleave_order, load_datasets, mix_composition, read_dataset
from trainer_core.errors import DataError, UserError
from trainer_core.tokenization import encode_pt, encode_sft


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QIHUANG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def _write(folder: Path, entries: dict[str, tuple[str, str, str]]) -> Path:
    """entries: name -> (file name, formatting, content)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, (file_name, formatting, content) in entries.items():
        (folder / file_name).write_text(content, encoding="utf-8")
        info[name] = {"file_name": file_name, "formatting": formatting}
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def _qa_lines(n: int, tag: str = "") -> str:
    return "".join(json.dumps({"instruction": f"黄芪的功效？{tag}{i}", "input": "",
                               "output": "补气升阳，固表止汗。" * (1 + i % 4)}, ensure_ascii=False) + "\n"
                   for i in range(n))


def _key(sample: dict) -> tuple:
    return tuple(sample["input_ids"]), tuple(sample["labels"])


def _prepare(folder: Path, name: str, stage: str, tokenizer, *, packing: bool = False, workers: int = 1,
             shard_bytes: int = 2048, cutoff_len: int = 64):
    source, problems = dataset_source(name, folder, stage)
    assert problems == []
    settings = Settings(stage, cutoff_len, packing, source.spec)
    return prepare_dataset(source, settings, tokenizer, workers=workers, shard_bytes=shard_bytes)


def _samples(prepared) -> list[dict]:
    from datasets import Dataset

    return [dict(row) for r in prepared.results if r.samples
            for row in Dataset.from_file(str(prepared.folder / f"shard-{r.number:05d}.arrow"))]


@pytest.mark.parametrize("workers", [1, 2])
def test_sft_samples_are_the_in_memory_paths_across_many_shards(tmp_path, tokenizer, workers):
    folder = _write(tmp_path / "data", {"qa": ("qa.jsonl", "alpaca", "\n" + _qa_lines(300))})
    prepared = _prepare(folder, "qa", "sft", tokenizer, workers=workers, cutoff_len=24)
    assert len(prepared.shards) > 5 and prepared.records == 300 and prepared.reused == 0
    expected, _ = encode_sft(read_dataset("qa", folder, "sft")[0], tokenizer, 24)
    assert sorted(map(_key, _samples(prepared))) == sorted(map(_key, expected))
    assert sum(r.stats["truncated"] for r in prepared.results) > 0  # the cut is the in-memory one


@pytest.mark.parametrize("packing", [True, False])
def test_pt_blocks_are_the_in_memory_paths_in_one_shard(tmp_path, tokenizer, packing):
    text = "\n\n".join(f"四君子汤由人参、白术、茯苓、甘草组成，功用益气健脾。{i}" * (1 + i % 5) for i in range(80))
    folder = _write(tmp_path / "data", {"corpus": ("corpus.txt", "text", text)})
    prepared = _prepare(folder, "corpus", "pt", tokenizer, packing=packing, shard_bytes=1 << 20)
    assert len(prepared.shards) == 1 and prepared.shards[0].kind == "paragraphs"
    expected, _ = encode_pt(read_dataset("corpus", folder, "pt")[0], tokenizer, 64, packing=packing)
    assert [s["input_ids"] for s in _samples(prepared)] == [s["input_ids"] for s in expected]
    # the run reads them with their labels (the same ids), in a shuffled order
    cfg = TrainConfig(stage="pt", dataset="corpus", dataset_dir=str(folder), data_engine="arrow", cutoff_len=64,
                      packing=packing)
    train = load_arrow_data(cfg, tokenizer, lambda _: None).train
    assert sorted(map(_key, train)) == sorted(map(_key, expected))


def test_problems_are_counted_in_full_shown_per_kind_and_placed_exactly(tmp_path, tokenizer):
    lines = _qa_lines(400).splitlines()
    for i in range(0, 400, 7):
        lines[i] = json.dumps({"instruction": "问", "output": ""}, ensure_ascii=False)  # empty answer
    for i in range(3, 400, 11):
        lines[i] = "{not json"
    lines.insert(250, "")  # a blank line: not a record, but a line
    folder = _write(tmp_path / "data", {"qa": ("qa.jsonl", "alpaca", "\n".join(lines) + "\n")})
    memory_problems = read_dataset("qa", folder, "sft")[1]
    prepared = _prepare(folder, "qa", "sft", tokenizer, shard_bytes=3000)
    assert len(prepared.shards) > 5
    error = DataError(prepared.problems, totals=prepared.totals)
    assert sum(error.totals.values()) == len(memory_problems) == 52 + 37  # 6 lines are both: one problem
    shown = {(p.record, p.field, p.message) for p in error.problems}
    assert shown <= {(p.record, p.field, p.message) for p in memory_problems}  # same records, lines, words
    assert len(error.problems) == 2 * arrow_data.PROBLEMS_PER_KIND
    assert "58 in all" not in str(error) and "in all: line N: invalid JSON" in str(error)


def test_the_run_reports_a_data_error_with_counts(tmp_path, tokenizer):
    lines = _qa_lines(60).splitlines()
    lines[41] = json.dumps({"instruction": "问"}, ensure_ascii=False)
    folder = _write(tmp_path / "data", {"qa": ("qa.jsonl", "alpaca", "\n".join(lines) + "\n")})
    cfg = TrainConfig(dataset="qa", dataset_dir=str(folder), data_engine="arrow", cutoff_len=64)
    with pytest.raises(DataError) as caught:
        load_arrow_data(cfg, tokenizer, lambda _: None)
    assert "qa.jsonl, record 41, field 'output': missing" in str(caught.value)
    assert "1 in all: output: missing" in str(caught.value)


def test_a_killed_preparation_resumes_and_a_second_run_reads_the_cache(tmp_path, tokenizer):
    folder = _write(tmp_path / "data", {"qa": ("qa.jsonl", "alpaca", _qa_lines(200))})
    first = _prepare(folder, "qa", "sft", tokenizer)
    shard_folder = first.folder
    # a kill in the middle of shard 2: its .arrow is missing, a partial file lies there
    (shard_folder / "shard-00002.arrow").rename(shard_folder / "shard-00002.123.partial")
    again = _prepare(folder, "qa", "sft", tokenizer)
    assert again.folder == shard_folder and again.reused == len(first.shards) - 1
    assert sorted(map(_key, _samples(again))) == sorted(map(_key, _samples(first)))
    cached = _prepare(folder, "qa", "sft", tokenizer)
    assert cached.reused == len(first.shards)
    (folder / "qa.jsonl").write_text(_qa_lines(200, tag="x"), encoding="utf-8")  # changed data: prepared anew
    assert _prepare(folder, "qa", "sft", tokenizer).folder != shard_folder


def test_the_mix_and_the_split_are_the_in_memory_draws(tmp_path, tokenizer):
    folder = _write(tmp_path / "data", {"a": ("a.jsonl", "alpaca", _qa_lines(90, "a")),
                                        "b": ("b.jsonl", "alpaca", _qa_lines(40, "b"))})
    for dataset, strategy in (("a:0.7,b:0.3", "interleave_under"), ("a,b", "interleave_over"), ("a,b", "concat")):
        cfg = TrainConfig(dataset=dataset, dataset_dir=str(folder), data_engine="arrow", cutoff_len=512,
                          mix_strategy=strategy, val_size=0.1, seed=5)
        arrow = load_arrow_data(cfg, tokenizer, lambda _: None)
        train, evals = load_datasets(dataset, folder, "sft", seed=5, val_size=0.1, mix_strategy=strategy)
        assert arrow.composition == mix_composition(train), strategy
        assert (len(arrow.train), len(arrow.eval)) == (len(train), len(evals))
    drawn, _ = interleave_order([90, 40], [0.7, 0.3], 5)
    assert len(drawn) == len(load_datasets("a:0.7,b:0.3", folder, "sft", seed=5)[0])


def test_auto_takes_arrow_from_the_threshold_on(tmp_path, monkeypatch):
    folder = _write(tmp_path / "data", {"qa": ("qa.jsonl", "alpaca", _qa_lines(50))})
    size = (folder / "qa.jsonl").stat().st_size
    monkeypatch.setattr(arrow_data, "ARROW_FROM_BYTES", size)
    assert use_arrow("auto", ["qa"], folder, "sft") and use_arrow("arrow", ["qa"], folder, "sft")
    monkeypatch.setattr(arrow_data, "ARROW_FROM_BYTES", size + 1)
    assert not use_arrow("auto", ["qa"], folder, "sft") and not use_arrow("memory", ["qa"], folder, "sft")


def test_a_rank_other_than_local_zero_waits_for_the_prepared_data(tmp_path, tokenizer, monkeypatch):
    folder = _write(tmp_path / "data", {"qa": ("qa.jsonl", "alpaca", _qa_lines(30))})
    cfg = TrainConfig(dataset="qa", dataset_dir=str(folder), data_engine="arrow", cutoff_len=64)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(arrow_data, "WAIT_SECONDS", 0.5)
    with pytest.raises(UserError, match="for local rank 0 to prepare the data"):
        load_arrow_data(cfg, tokenizer, lambda _: None)
    monkeypatch.setenv("LOCAL_RANK", "0")
    first = load_arrow_data(cfg, tokenizer, lambda _: None)
    monkeypatch.setenv("LOCAL_RANK", "1")
    lines: list[str] = []
    second = load_arrow_data(cfg, tokenizer, lines.append)
    assert "from cache" in lines[-1] and first.train[:] == second.train[:]


def test_utf16_and_empty_files_are_refused_by_name(tmp_path, tokenizer):
    folder = _write(tmp_path / "data", {"qa": ("qa.jsonl", "alpaca", ""), "wide": ("wide.jsonl", "alpaca", "")})
    (folder / "wide.jsonl").write_bytes(_qa_lines(3).encode("utf-16"))
    for name, message in (("qa", "the file is empty"), ("wide", "is UTF-16 text; a file read in parts must be UTF-8")):
        source, _ = dataset_source(name, folder, "sft")
        shards, problems = plan_shards(source)
        assert shards == [] and message in problems[0].message and problems[0].file == f"{name}.jsonl"


def test_data_check_of_a_large_file_counts_every_problem_and_samples_the_statistics(tmp_path, capsys):
    from trainer_core.cli import main

    lines = _qa_lines(3000).splitlines()
    for i in range(5, 3000, 10):
        lines[i] = json.dumps({"instruction": "问"}, ensure_ascii=False)
    folder = _write(tmp_path / "data", {"qa": ("qa.jsonl", "alpaca", "\n".join(lines) + "\n")})
    code = main(["data", "check", "qa", "--dataset_dir", str(folder), "--data_engine", "arrow", "--no-tokens"])
    out = capsys.readouterr().out
    assert code == 2
    assert "3,000 records checked, 2,700 without a problem; the statistics below are of a sample of 2,700" in out
    assert "300 problem(s), the first of each kind:" in out and "300 in all: output: missing" in out
    assert "qa.jsonl, record 2995, field 'output': missing" not in out  # the first 20 of the kind only
    assert out.count("field 'output': missing") == arrow_data.PROBLEMS_PER_KIND


def test_streaming_needs_max_steps_and_no_val_split():
    from trainer_core.config import validate

    _, problems = validate({"streaming": True}, TrainConfig)
    assert [p.keys for p in problems] == [("streaming", "max_steps")]
    _, problems = validate({"streaming": True, "max_steps": 10, "val_size": 0.1}, TrainConfig)
    assert [p.keys for p in problems] == [("streaming", "val_size")]
    assert validate({"streaming": True, "max_steps": 10}, TrainConfig)[1] == []


def test_the_train_tab_shows_the_preparation_as_its_progress_bar(tmp_path):
    from app import jobview
    from trainer_core import runs

    run = tmp_path / "run"
    run.mkdir()
    runs.update_status(run, state="running", pid=os.getpid(), pgid=os.getpgid(0), started_at=runs.now_iso())
    lines: list[str] = []
    report = arrow_data.print_progress(lines.append, every=3600, record=run, dataset="corpus")
    report(0, 4 << 30, 0, 64)
    report(1 << 30, 4 << 30, 16, 64)
    assert lines == ["preparing data: 0% (0 bytes of 4.0 GiB, 0/64 shards, 0 bytes/s)"]  # one line an hour
    shown = jobview.progress_html(jobview.job_progress(str(run)), "en")
    assert "preparing data corpus · 16 / 64" in shown and "width:25.0%" in shown and "ETA 0:0" in shown
    assert "准备数据 corpus · 16 / 64" in jobview.progress_html(jobview.job_progress(str(run)), "zh")
    report(4 << 30, 4 << 30, 64, 64)  # done: the bar goes back to steps
    assert lines[-1].startswith("preparing data: 100% (4.0 GiB of 4.0 GiB, 64/64 shards")
    assert "preparing" not in jobview.progress_html(jobview.job_progress(str(run)), "en")


def test_text_lines_are_the_in_memory_readers_records(tmp_path, tokenizer):
    from trainer_core.arrow_data import iter_records

    text = "  indented doc 1\r\nsecond\rthird after a lone CR\n\n \t\nlast  "
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "wiki.txt").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    (folder / "dataset_info.json").write_text(json.dumps({"wiki": {"file_name": "wiki.txt",
                                                                   "columns": {"prompt": "text"}}}))
    source, _ = dataset_source("wiki", folder, "pt")
    shards, _ = plan_shards(source, 8)
    assert len(shards) > 1
    records = [row for shard in shards for _, row, _ in iter_records(shard)]
    assert records == [e["text"] for e in read_dataset("wiki", folder, "pt")[0]]


def test_the_data_tab_checks_a_large_dataset_in_full_and_shows_a_sample(tmp_path, monkeypatch):
    from app.i18n import t
    from app.tabs import data as data_tab

    lines = _qa_lines(3000).splitlines()
    for i in range(7, 3000, 100):
        lines[i] = "{broken"
    folder = _write(tmp_path / "data", {"qa": ("qa.jsonl", "alpaca", "\n".join(lines) + "\n")})
    monkeypatch.setattr(arrow_data, "ARROW_FROM_BYTES", 1)
    monkeypatch.setattr(arrow_data, "SHARD_BYTES", 50_000)
    monkeypatch.setattr(arrow_data, "SAMPLE_RECORDS", 600)
    seen: list[tuple] = []
    examples, problems, large = data_tab.inspect_dataset("qa", str(folder), "sft", [tmp_path],
                                                         progress=lambda *a: seen.append(a))
    kind = "line N: invalid JSON at column N: Expecting property name enclosed in double quotes"
    assert large == {"records": 3000, "valid": 2970, "sampled": len(examples), "totals": {kind: 30}}
    assert 600 <= len(examples) < 700 and max(e["index"] for e in examples) > 2500  # spread over the file
    assert len(problems) == arrow_data.PROBLEMS_PER_KIND and problems[0].record == 7
    assert len(seen) > 3 and seen[-1][0] == seen[-1][1]  # the page's progress bar reached its end
    for lang in ("zh", "en"):
        assert "{" not in t("data.inspected_large", lang, what="qa", records="3,000", valid="2,970", problems="30",
                            sampled="600")
