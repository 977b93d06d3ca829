"""The arena: vote records, votes -> preference pairs read back by read_preference_dataset, the
dataset_info.json entry (other entries kept), concurrent voters in several processes, the tally
and its Wilson interval, bad votes; and several contestants of one base from one copy of it."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from trainer_core import arena
from trainer_core.arena import (
    DATASET_NAME,
    PAIRS_FILE,
    VOTES_FILE,
    ArenaModels,
    Contestant,
    base_contestant,
    pairs_of,
    read_votes,
    record_vote,
    tally,
    wilson_interval,
)
from trainer_core.chat import ChatSession, GenerationSettings
from trainer_core.data import read_preference_dataset
from trainer_core.errors import UserError

OTHERS = {"qa": {"file_name": "qa.json", "formatting": "alpaca"},
          "dialog": {"file_name": "dialog.json", "formatting": "sharegpt", "columns": {"messages": "conversations"}}}
Q = "附子的用量？"
GOOD, BAD, WORSE = "3～15g，先煎、久煎，孕妇慎用。", "随意。", "越多越好。"


def data_folder(tmp_path: Path) -> Path:
    (tmp_path / "dataset_info.json").write_text(json.dumps(OTHERS, ensure_ascii=False, indent=4), encoding="utf-8")
    return tmp_path


def log_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / VOTES_FILE).read_text(encoding="utf-8").splitlines()]


def test_a_vote_is_one_line_with_everything_and_the_names_revealed(tmp_path):
    folder = data_folder(tmp_path)
    saved = record_vote(folder, Q, ["base: tiny", "sft-run"], [BAD, GOOD], "B", system="你是中医助手",
                        reviewer="张医生")
    [line] = log_lines(folder)
    assert line == saved
    assert line["question"] == Q and line["system"] == "你是中医助手" and line["vote"] == "B"
    assert line["answers"] == [{"label": "A", "model": "base: tiny", "text": BAD},
                               {"label": "B", "model": "sft-run", "text": GOOD}]
    assert line["reviewer"] == "张医生" and line["correction"] == "" and len(line["id"]) == 32
    assert line["time"].endswith("+00:00") and line["time"][:4].isdigit()  # ISO 8601, UTC


def test_votes_become_pairs_that_the_preference_reader_reads(tmp_path):
    folder = data_folder(tmp_path)
    models = ["base", "run"]
    record_vote(folder, Q, models, [GOOD, BAD], "A")  # A chosen over B
    record_vote(folder, Q, models, [BAD, GOOD], "B")  # B chosen over A
    record_vote(folder, Q, models, [GOOD, BAD], "tie")  # no pair: the tally only
    record_vote(folder, Q, models, [BAD, WORSE], "bad")  # no pair without a correction
    record_vote(folder, Q, models, [BAD, WORSE], "bad", correction=GOOD)  # the correction over each: 2 pairs
    record_vote(folder, Q, models, [BAD, WORSE], "A", correction=GOOD)  # the correction over the loser
    record_vote(folder, "麻黄的禁忌？", ["base", "run", "run2"], [WORSE, BAD, GOOD], "C", system="中医")  # C over A, B
    records, problems = read_preference_dataset(DATASET_NAME, folder)
    assert problems == []
    got = [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in records]
    assert got == [(GOOD, BAD), (GOOD, BAD), (GOOD, BAD), (GOOD, WORSE), (GOOD, WORSE), (GOOD, WORSE), (GOOD, BAD)]
    assert records[0]["prompt"] == [{"role": "user", "content": Q}]
    assert records[-1]["prompt"] == [{"role": "system", "content": "中医"}, {"role": "user", "content": "麻黄的禁忌？"}]
    rows = [json.loads(x) for x in (folder / PAIRS_FILE).read_text(encoding="utf-8").splitlines()]
    assert [(r["chosen_model"], r["rejected_model"]) for r in rows] == [
        ("base", "run"), ("run", "base"), ("correction", "base"), ("correction", "run"), ("correction", "run"),
        ("run2", "base"), ("run2", "run")]
    assert len(log_lines(folder)) == 7  # every vote kept, the tie and the plain "bad" too


def test_registration_adds_one_entry_and_keeps_every_other(tmp_path):
    folder = data_folder(tmp_path)
    record_vote(folder, Q, ["a", "b"], [GOOD, BAD], "A")
    info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
    assert list(info) == ["qa", "dialog", DATASET_NAME]
    assert {k: info[k] for k in OTHERS} == OTHERS  # unchanged (no "formatting" filled in, nothing dropped)
    assert info[DATASET_NAME]["ranking"] is True and info[DATASET_NAME]["file_name"] == PAIRS_FILE
    record_vote(folder, Q, ["a", "b"], [GOOD, BAD], "A")
    assert json.loads((folder / "dataset_info.json").read_text(encoding="utf-8")) == info  # registered once
    assert not list(folder.glob(".*.tmp"))  # the atomic writes left no temporary file


def test_a_registry_the_arena_cannot_use_is_refused_before_anything_is_written(tmp_path):
    folder = data_folder(tmp_path)
    (folder / "dataset_info.json").write_text(json.dumps({**OTHERS, DATASET_NAME: {"file_name": "mine.json"}}))
    with pytest.raises(UserError, match=f"has a dataset '{DATASET_NAME}' that is not the arena's .*mine.json"):
        record_vote(folder, Q, ["a", "b"], [GOOD, BAD], "A")
    (folder / "dataset_info.json").write_text("{not json")
    with pytest.raises(UserError, match="dataset_info.json is not valid JSON"):
        record_vote(folder, Q, ["a", "b"], [GOOD, BAD], "A")
    assert not (folder / VOTES_FILE).exists() and not (folder / PAIRS_FILE).exists()
    empty = tmp_path / "fresh"
    empty.mkdir()
    record_vote(empty, Q, ["a", "b"], [GOOD, BAD], "A")  # no registry yet: one is made
    assert list(json.loads((empty / "dataset_info.json").read_text())) == [DATASET_NAME]


def _vote_many(folder: str, worker: int, count: int, start=None) -> None:
    if start is not None:
        start.wait()  # every process votes at once
    for n in range(count):
        long = "长" * 3000 if n % 3 == 0 else ""  # lines of ~9 KB: more than one write of an 8 KB buffer
        record_vote(folder, f"问题 {worker}-{n}：{long}", ["base", f"run{worker}"],
                    [f"答 {worker}-{n} " + "好" * 50, f"答 {worker}-{n} 差"], "A", reviewer=f"reviewer {worker}")


def test_concurrent_voters_never_lose_or_interleave_a_line(tmp_path, monkeypatch):
    """4 processes x 50 votes at once: every line parses, 200 of them, each vote once; the pairs
    and the registry agree."""
    # fsync (durability across a power cut, which no test here can see) is most of the time: skipped.
    monkeypatch.setattr(arena.os, "fsync", lambda fd: None)
    folder = data_folder(tmp_path)
    workers, count = 4, 50
    context = multiprocessing.get_context("fork")  # the children start with the module imported
    start = context.Barrier(workers)
    procs = [context.Process(target=_vote_many, args=(str(folder), w, count, start)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * workers
    lines = log_lines(folder)  # json.loads of every line: one garbled line fails here
    assert len(lines) == workers * count == 200
    assert len({v["id"] for v in lines}) == 200
    assert sorted(v["question"].split("：")[0] for v in lines) == sorted(
        f"问题 {w}-{n}" for w in range(workers) for n in range(count))
    records, problems = read_preference_dataset(DATASET_NAME, folder)
    assert problems == [] and len(records) == 200
    assert list(json.loads((folder / "dataset_info.json").read_text())) == ["qa", "dialog", DATASET_NAME]


def _append_many(path: str, worker: int, count: int, start) -> None:
    start.wait()
    for n in range(count):
        arena.append_line(Path(path), (json.dumps({"w": worker, "n": n, "pad": "x" * 40_000}) + "\n").encode())


def test_appends_of_long_lines_from_several_processes_never_interleave(tmp_path, monkeypatch):
    """The append itself, without the lock, hammered: 4 processes x 100 lines of 40 KB each (a
    buffered file would write each in five pieces, and the pieces of different writers would mix)."""
    monkeypatch.setattr(arena.os, "fsync", lambda fd: None)
    path = tmp_path / "log.jsonl"
    context = multiprocessing.get_context("fork")
    start = context.Barrier(4)
    procs = [context.Process(target=_append_many, args=(str(path), w, 100, start)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * 4
    # Blank lines may appear (read_votes skips them): without the lock, a writer can see another's
    # line half copied and start its own on a new line, as after a crash.
    lines = [json.loads(line) for line in path.read_text().splitlines() if line]
    assert sorted((x["w"], x["n"]) for x in lines) == [(w, n) for w in range(4) for n in range(100)]


def test_a_line_cut_off_by_a_crash_is_skipped_and_the_next_vote_starts_its_own(tmp_path):
    folder = data_folder(tmp_path)
    record_vote(folder, Q, ["a", "b"], [GOOD, BAD], "A")
    with open(folder / VOTES_FILE, "a", encoding="utf-8") as f:
        f.write('{"id": "cut off')
    record_vote(folder, Q, ["a", "b"], [GOOD, BAD], "B")
    votes, problems = read_votes(folder)
    assert [v["vote"] for v in votes] == ["A", "B"]
    assert len(problems) == 1 and problems[0].startswith(f"{VOTES_FILE} line 2: not JSON")
    assert len(read_preference_dataset(DATASET_NAME, folder)[0]) == 2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"vote": "A better"}, "'A better' is not a vote; choose one of A, B, tie, bad"),
    ({"vote": "C"}, "'C' is not a vote; choose one of A, B, tie, bad"),
    ({"answers": [GOOD, "  "]}, "answer B is empty"),
    ({"answers": ["", BAD]}, "answer A is empty"),
    ({"question": " "}, "the question is empty"),
    ({"answers": [GOOD], "models": ["a"]}, "1 answers; the arena compares 2 to 4"),
    ({"models": ["a", "a"]}, "every answer needs its own model name"),
    ({"answers": [GOOD, " " + GOOD.upper()]}, "answers A and B are the same text; vote tie"),
    ({"correction": BAD}, "the corrected answer is the same as answer B"),
    ({"vote": "bad", "correction": GOOD}, "the corrected answer is the same as answer A"),
])
def test_bad_votes_are_refused_with_what_is_wrong(tmp_path, kwargs, message):
    folder = data_folder(tmp_path)
    vote = {"question": Q, "models": ["a", "b"], "answers": [GOOD, BAD], "vote": "A", **kwargs}
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        record_vote(folder, vote.pop("question"), vote.pop("models"), vote.pop("answers"), vote.pop("vote"), **vote)
    assert not (folder / VOTES_FILE).exists()


def test_wilson_interval_matches_newcombes_table():
    """Newcombe (1998), Statistics in Medicine 17:857, table I, method 3 (score interval)."""
    for (x, n), (low, high) in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605), (0, 20): (0.0, 0.1611),
                                (1, 29): (0.0061, 0.1718)}.items():
        got = wilson_interval(x, n)
        assert (round(got[0], 4), round(got[1], 4)) == (low, high), (x, n, got)
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + 1.96 ** 2), 1.0), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_tally_counts_wins_ties_and_both_bad_per_pair(tmp_path):
    folder = data_folder(tmp_path)
    for answers, vote in (([GOOD, BAD], "A"), ([GOOD, BAD], "A"), ([BAD, GOOD], "B"), ([GOOD, BAD], "tie"),
                          ([GOOD, BAD], "bad")):
        record_vote(folder, Q, ["sft", "base"], answers, vote)
    record_vote(folder, Q, ["base", "sft"], [BAD, GOOD], "B")  # the other order: sft wins
    record_vote(folder, Q, ["base", "sft", "dpo"], [BAD, WORSE, GOOD], "C")  # dpo over both; base-sft undecided
    rows = tally(read_votes(folder)[0])
    by_pair = {(r.first, r.second): r for r in rows}
    sft_base = by_pair[("base", "sft")]
    assert (sft_base.first_wins, sft_base.second_wins, sft_base.ties, sft_base.both_bad) == (1, 3, 1, 1)
    assert sft_base.decided == 4 and sft_base.win_rate == 0.25
    assert sft_base.interval == wilson_interval(1, 4)
    assert (by_pair[("base", "dpo")].second_wins, by_pair[("dpo", "sft")].first_wins) == (1, 1)
    assert by_pair[("base", "dpo")].first_wins == 0 and by_pair[("base", "dpo")].win_rate == 0.0
    assert rows[0] is sft_base  # the most voted pair first


def test_pairs_of_a_three_way_tie_with_a_correction():
    vote = arena.make_vote(Q, ["a", "b", "c"], [BAD, WORSE, "少量。"], "tie", correction=GOOD)
    assert [(p["chosen"], p["rejected_model"]) for p in pairs_of(vote)] == [(GOOD, "a"), (GOOD, "b"), (GOOD, "c")]


# ---- the contestants in memory ---------------------------------------------------------------

GREEDY = GenerationSettings(max_new_tokens=6, do_sample=False, repetition_penalty=1.0)


def random_adapter(model_dir: Path, folder: Path, seed: int) -> Path:
    """A LoRA adapter with random, non-zero B matrices: it changes the tiny model's answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    lora.save_pretrained(folder)
    return folder


def test_a_base_and_two_adapters_of_it_share_one_copy_and_answer_as_loaded_alone(tiny_model_dir, tmp_path):
    first = random_adapter(tiny_model_dir, tmp_path / "one", 1)
    second = random_adapter(tiny_model_dir, tmp_path / "two", 2)
    contestants = [base_contestant(str(tiny_model_dir)), Contestant("one", str(tiny_model_dir), str(first)),
                   Contestant("two", str(tiny_model_dir), str(second))]
    models = ArenaModels()
    assert models.load(contestants, log=lambda _: None) == [f"base: {tiny_model_dir.name}", "one", "two"]
    assert len(models.sessions) == 1  # one copy of the weights for all three
    together = {name: list(models.stream(name, Q, settings=GREEDY))[-1] for name in reversed(models.names)}
    alone = {}
    for contestant in contestants:
        session = ChatSession()
        session.load(contestant.model, contestant.adapter, log=lambda _: None)
        alone[contestant.name] = session.reply([], Q, settings=GREEDY)
    assert together == alone
    assert len(set(alone.values())) == 3  # the adapters do change the answer: the comparison means something
    with pytest.raises(UserError, match="'x' is not loaded in the arena"):
        models.stream("x", Q)
    with pytest.raises(UserError, match="the arena compares 2 to 4 models; 1 picked"):
        models.load(contestants[:1])
    models.unload()
    assert models.names == [] and models.sessions == {}


# ---- what the Chat tab shows of it -----------------------------------------------------------

def test_every_refused_vote_reads_in_chinese_on_the_page(tmp_path):
    from app.i18n import translate

    folder = data_folder(tmp_path)
    messages = []
    for kwargs in ({"vote": "X"}, {"answers": [GOOD, ""]}, {"question": ""}, {"answers": [GOOD, GOOD]},
                   {"correction": BAD}):
        vote = {"question": Q, "models": ["a", "b"], "answers": [GOOD, BAD], "vote": "A", **kwargs}
        with pytest.raises(UserError) as caught:
            record_vote(folder, vote.pop("question"), vote.pop("models"), vote.pop("answers"), vote.pop("vote"),
                        **vote)
        messages.append(str(caught.value))
    (folder / "dataset_info.json").write_text(json.dumps({DATASET_NAME: {"file_name": "x.json"}}))
    with pytest.raises(UserError) as caught:
        record_vote(folder, Q, ["a", "b"], [GOOD, BAD], "A")
    messages.append(str(caught.value))
    with pytest.raises(UserError) as caught:
        ArenaModels().load([base_contestant("default")])
    messages.append(str(caught.value))
    untranslated = [m for m in messages if translate(m, "zh") == m]
    assert not untranslated


def test_the_tally_table_shows_the_interval_and_a_dash_when_nothing_is_decided(tmp_path):
    from app.tabs.chat import tally_markdown

    folder = data_folder(tmp_path)
    assert "还没有投票" in tally_markdown(folder, "zh")
    record_vote(folder, Q, ["base", "sft"], [BAD, GOOD], "B")
    record_vote(folder, Q, ["base", "dpo"], [BAD, GOOD], "tie")
    table = tally_markdown(folder, "en")
    low, high = wilson_interval(0, 1)
    assert f"| base | sft | 0 | 1 | 0 | 0 | 0% | {low:.0%} – {high:.0%} |" in table
    assert "| base | dpo | 0 | 0 | 1 | 0 | — | — |" in table
    assert "2 vote(s)" in table and "ties and all-bad left out" in table
