"""The arena: two to four models answer the same question, the reviewer votes blind, and the
votes become a preference dataset.

Files, all in the data folder (the one holding dataset_info.json):
- `arena_votes.jsonl`, the vote log: one JSON object per line, appended, never rewritten. Each
  holds the question (and system prompt), every answer with the model behind it, the vote, an
  optional corrected answer, the time (ISO 8601, UTC) and an optional reviewer name.
- `arena_pairs.jsonl`, the pairs the votes give (`pairs_of`), rewritten from the whole log after
  every vote, registered in dataset_info.json as `arena_pairs`: LLaMA-Factory's alpaca ranking
  format (`ranking: true`), read by `trainer_core.data.read_preference_dataset` as it is.
- `.arena.lock`: every vote holds an exclusive lock on it (fcntl.flock) while it appends to the
  log, rewrites the pairs and registers them, so voters in several threads or processes at once
  never interleave a line, lose a record or a dataset_info.json entry.

Votes: "A", "B", "C", "D" (that answer is the best), "tie" or "bad" (none is good). How votes
become pairs and the tally are described in README.md (Data, "Arena votes").

Generation goes through trainer_core.chat.ChatSession (`ArenaModels` below), the Chat tab's path.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainer_core.chat import ChatSession, GenerationSettings
from trainer_core.errors import UserError

VOTES_FILE = "arena_votes.jsonl"
PAIRS_FILE = "arena_pairs.jsonl"
LOCK_FILE = ".arena.lock"
DATASET_NAME = "arena_pairs"
LETTERS = "ABCD"
MIN_CONTESTANTS, MAX_CONTESTANTS = 2, 4
DRAWS = ("tie", "bad")  # no answer is better: a tie, or all of them bad
Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile: a two-sided 95 % interval

# The dataset_info.json entry of the pairs: LLaMA-Factory reads it too.
DATASET_ENTRY: dict[str, Any] = {
    "file_name": PAIRS_FILE, "formatting": "alpaca", "ranking": True,
    "columns": {"prompt": "instruction", "system": "system", "chosen": "chosen", "rejected": "rejected"},
    "description": f"preference pairs from the Chat tab's arena votes ({VOTES_FILE}), rewritten after each vote",
}


# ---- votes ---------------------------------------------------------------------------------

def allowed_votes(n_answers: int) -> tuple[str, ...]:
    return (*LETTERS[:n_answers], *DRAWS)


def _same(a: str, b: str) -> bool:
    """Equal but for whitespace and case, as read_preference_dataset compares chosen and rejected."""
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def make_vote(question: str, models: list[str], answers: list[str], vote: str, *, system: str = "",
              correction: str = "", reviewer: str = "", now: datetime | None = None) -> dict:
    """One vote record, checked: every mistake is a UserError naming the field."""
    question, system = (question or "").strip(), (system or "").strip()
    correction, reviewer = (correction or "").strip(), (reviewer or "").strip()
    if not question:
        raise UserError("arena vote: the question is empty")
    if len(models) != len(answers):
        raise UserError(f"arena vote: {len(models)} models for {len(answers)} answers")
    if not MIN_CONTESTANTS <= len(answers) <= MAX_CONTESTANTS:
        raise UserError(f"arena vote: {len(answers)} answers; the arena compares "
                        f"{MIN_CONTESTANTS} to {MAX_CONTESTANTS}")
    if any(not str(m).strip() for m in models) or len(set(models)) != len(models):
        raise UserError(f"arena vote: every answer needs its own model name, got {models}")
    for letter, answer in zip(LETTERS, answers):
        if not isinstance(answer, str) or not answer.strip():
            raise UserError(f"arena vote: answer {letter} is empty; ask again (or allow more new tokens)")
    allowed = allowed_votes(len(answers))
    if vote not in allowed:
        raise UserError(f"arena vote: '{vote}' is not a vote; choose one of {', '.join(allowed)}")
    if vote in LETTERS:
        winner = LETTERS.index(vote)
        for letter, answer in zip(LETTERS, answers):
            if letter != vote and _same(answer, answers[winner]):
                raise UserError(f"arena vote: answers {vote} and {letter} are the same text; vote tie")
    if correction:
        against = [n for n in range(len(answers)) if vote in DRAWS or n != LETTERS.index(vote)]
        for n in against:
            if _same(correction, answers[n]):
                raise UserError(f"arena vote: the corrected answer is the same as answer {LETTERS[n]}; "
                                "edit it or leave it empty")
    record: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "time": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "question": question, "system": system,
        "answers": [{"label": letter, "model": str(model), "text": answer}
                    for letter, model, answer in zip(LETTERS, models, answers)],
        "vote": vote, "correction": correction, "reviewer": reviewer,
    }
    return record


def pairs_of(vote: dict) -> list[dict]:
    """The preference pairs one vote gives, as rows of the pairs file:
    - "A" (or B, C, D) without a correction: A chosen over each other answer;
    - with a correction: the correction chosen over each answer the vote did not pick (for A: the
      others; for tie or bad: every answer);
    - tie or bad without a correction: none (the vote counts in the tally only)."""
    answers = vote["answers"]
    correction = vote.get("correction") or ""
    if vote["vote"] in DRAWS:
        winner = None
        losers = answers if correction else []
    else:
        winner = next(a for a in answers if a["label"] == vote["vote"])
        losers = [a for a in answers if a is not winner]
    chosen_text, chosen_model = (correction, "correction") if correction else \
        (winner["text"], winner["model"]) if winner else ("", "")
    rows = []
    for loser in losers:
        row: dict[str, Any] = {"instruction": vote["question"]}
        if vote.get("system"):
            row["system"] = vote["system"]
        row.update(chosen=chosen_text, rejected=loser["text"], chosen_model=chosen_model,
                   rejected_model=loser["model"], vote_id=vote["id"], vote=vote["vote"],
                   reviewer=vote.get("reviewer", ""), time=vote["time"])
        rows.append(row)
    return rows


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    with open(data_dir / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record_vote(data_dir: str | Path, question: str, models: list[str], answers: list[str], vote: str, *,
                system: str = "", correction: str = "", reviewer: str = "") -> dict:
    """Check a vote, append it to the log, rewrite the pairs and register them (all under the
    arena's lock); returns the record. Nothing is written when the vote or the data folder's
    dataset_info.json is wrong."""
    data_dir = Path(data_dir)
    record = make_vote(question, models, answers, vote, system=system, correction=correction, reviewer=reviewer)
    if not data_dir.is_dir():
        raise UserError(f"arena: the data folder '{data_dir}' does not exist")
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    with _locked(data_dir):
        registry = _registry_with_pairs(data_dir)  # refuses before anything is written
        append_line(data_dir / VOTES_FILE, line)
        _write_pairs(data_dir)
        if registry is not None:
            _write_json_atomic(data_dir / "dataset_info.json", registry)
    return record


def append_line(path: Path, line: bytes) -> None:
    """Append one line with one write() on a file opened O_APPEND: the kernel puts each such write
    at the end whole, so even writers that hold no lock never interleave their lines (a buffered
    file object would split a long line into several writes)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        if os.fstat(fd).st_size and not _ends_with_newline(path):
            line = b"\n" + line  # a line cut off by a crash stays a line of its own (skipped on reading)
        written = os.write(fd, line)
        if written != len(line):  # a full disk: say so rather than leave half a record
            raise OSError(f"{path}: wrote {written} of {len(line)} bytes (is the disk full?)")
        os.fsync(fd)  # the log is the source of truth: on disk before the vote is reported saved
    finally:
        os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _registry_with_pairs(data_dir: Path) -> dict | None:
    """dataset_info.json with the pairs' entry added (None when it is there already); refuses a
    registry that is no JSON object, or an entry of that name that is someone else's."""
    path = data_dir / "dataset_info.json"
    if not path.is_file():
        return {DATASET_NAME: DATASET_ENTRY}
    try:
        registry = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"arena: {path} is not valid JSON ({exc}); fix it before voting") from None
    if not isinstance(registry, dict):
        raise UserError(f"arena: {path} must be a JSON object mapping dataset names to entries")
    entry = registry.get(DATASET_NAME)
    if entry is None:
        return {**registry, DATASET_NAME: DATASET_ENTRY}
    if not isinstance(entry, dict) or entry.get("file_name") != PAIRS_FILE:
        raise UserError(f"arena: {path} has a dataset '{DATASET_NAME}' that is not the arena's "
                        f"(file_name {entry.get('file_name') if isinstance(entry, dict) else entry!r}); "
                        "rename it so the votes can be registered")
    return None


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)  # a reader (a training job) sees the old file or the new, never half of one


def _write_pairs(data_dir: Path) -> int:
    votes, _ = read_votes(data_dir)
    rows = [row for vote in votes for row in pairs_of(vote)]
    tmp = data_dir / f".{PAIRS_FILE}.{os.getpid()}.tmp"
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(data_dir / PAIRS_FILE)
    return len(rows)


def rebuild_pairs(data_dir: str | Path) -> int:
    """Rewrite arena_pairs.jsonl from the vote log (after editing the log by hand); the number of pairs."""
    data_dir = Path(data_dir)
    with _locked(data_dir):
        return _write_pairs(data_dir)


def read_votes(data_dir: str | Path) -> tuple[list[dict], list[str]]:
    """The votes in the log, and a problem for each line that is not one (line number and why)."""
    path = Path(data_dir) / VOTES_FILE
    if not path.is_file():
        return [], []
    votes, problems = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                vote = json.loads(line)
            except ValueError as exc:
                problems.append(f"{VOTES_FILE} line {number}: not JSON ({exc})")
                continue
            why = _not_a_vote(vote)
            if why:
                problems.append(f"{VOTES_FILE} line {number}: {why}")
            else:
                votes.append(vote)
    return votes, problems


def _not_a_vote(vote: Any) -> str | None:
    if not isinstance(vote, dict):
        return "not a JSON object"
    for key in ("id", "time", "question", "answers", "vote"):
        if key not in vote:
            return f"no '{key}'"
    answers = vote["answers"]
    if not isinstance(answers, list) or not MIN_CONTESTANTS <= len(answers) <= MAX_CONTESTANTS or not all(
            isinstance(a, dict) and {"label", "model", "text"} <= set(a) for a in answers):
        return "'answers' must be 2 to 4 objects with label, model and text"
    if vote["vote"] not in allowed_votes(len(answers)):
        return f"'vote' {vote['vote']!r} is not one of {', '.join(allowed_votes(len(answers)))}"
    return None


# ---- the tally -----------------------------------------------------------------------------

def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion (Wilson 1927; Newcombe 1998, method 3):
    better than p ± z·sqrt(p(1-p)/n) for few votes and rates near 0 or 1, and never outside [0, 1]."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n and n > 0, got {successes} of {n}")
    if successes in (0, n):  # the closed form, exact where rounding would leave 1e-16 off the bound
        bound = n / (n + z * z)
        return (0.0, 1 - bound) if successes == 0 else (bound, 1.0)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@dataclass
class PairTally:
    """What the votes say about two models (first and second in name order)."""

    first: str
    second: str
    first_wins: int = 0
    second_wins: int = 0
    ties: int = 0
    both_bad: int = 0

    @property
    def decided(self) -> int:
        return self.first_wins + self.second_wins

    @property
    def win_rate(self) -> float | None:
        """The first model's share of the decided votes; ties and both-bad are left out."""
        return self.first_wins / self.decided if self.decided else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson_interval(self.first_wins, self.decided) if self.decided else None


def tally(votes: list[dict]) -> list[PairTally]:
    """Per pair of models that answered the same question: wins, ties, both bad. A vote for one
    answer of N is a win over each of the other N-1; a tie (or "bad") is a tie (a both-bad) for
    every pair of its answers. Sorted by the number of votes, then by name."""
    pairs: dict[tuple[str, str], PairTally] = {}
    for vote in votes:
        answers = vote["answers"]
        for i, a in enumerate(answers):
            for b in answers[i + 1:]:
                first, second = sorted((a["model"], b["model"]))
                entry = pairs.setdefault((first, second), PairTally(first, second))
                if vote["vote"] == "tie":
                    entry.ties += 1
                elif vote["vote"] == "bad":
                    entry.both_bad += 1
                elif vote["vote"] in (a["label"], b["label"]):
                    won = a if vote["vote"] == a["label"] else b
                    if won["model"] == first:
                        entry.first_wins += 1
                    else:
                        entry.second_wins += 1
                # else: a third answer won; the vote says nothing about a against b
    return sorted(pairs.values(), key=lambda p: (-(p.decided + p.ties + p.both_bad), p.first, p.second))


# ---- the contestants in memory ---------------------------------------------------------------

@dataclass(frozen=True)
class Contestant:
    name: str  # what the record and the revealed page call it
    model: str  # the base model ('default', a folder) or a full model's folder
    adapter: str | None = None  # a LoRA adapter folder on that model


def base_contestant(model: str) -> Contestant:
    shown = "default" if model in ("", "default") else Path(model).name
    return Contestant(f"base: {shown}", model or "default")


def run_contestant(run_dir: str | Path) -> Contestant:
    """A finished run: its base with adapter/, or its full model/ (as ChatSession.load_run)."""
    from trainer_core.models import run_base_model

    run_dir = Path(run_dir)
    if (run_dir / "adapter" / "adapter_config.json").is_file():
        return Contestant(run_dir.name, run_base_model(run_dir), str(run_dir / "adapter"))
    if (run_dir / "model" / "config.json").is_file():
        return Contestant(run_dir.name, str(run_dir / "model"))
    raise UserError(f"'{run_dir}' holds no finished adapter/ or model/ (has the run finished?)")


def _model_key(model: str) -> str:
    return model if model == "default" else str(Path(model).resolve())


class ArenaModels:
    """The contestants in memory. Contestants on the same base share one ChatSession: its weights
    once, each LoRA adapter added to it by name (peft load_adapter) and picked per answer
    (set_adapter), the base answering with the adapters disabled. So a base and three runs of it
    cost one copy of the weights plus the adapters, not four copies; only a full-FT model (or
    another base) needs a session, and a copy, of its own. One answer at a time per session."""

    def __init__(self) -> None:
        self.sessions: dict[str, ChatSession] = {}  # model key -> its session
        self.slots: dict[str, tuple[ChatSession, str | None]] = {}  # contestant -> (session, adapter name)

    @property
    def names(self) -> list[str]:
        return list(self.slots)

    def load(self, contestants: list[Contestant], log=print) -> list[str]:
        """Load 2 to 4 contestants (replacing the loaded ones); their names."""
        names = [c.name for c in contestants]
        if not MIN_CONTESTANTS <= len(contestants) <= MAX_CONTESTANTS:
            raise UserError(f"the arena compares {MIN_CONTESTANTS} to {MAX_CONTESTANTS} models; "
                            f"{len(contestants)} picked")
        if len(set(names)) != len(names):
            raise UserError(f"two contestants have the same name: {names}")
        self.unload()
        try:
            for contestant in contestants:
                key = _model_key(contestant.model)
                session = self.sessions.get(key)
                if session is None:
                    session = self.sessions[key] = ChatSession()
                    session.load(contestant.model, log=log)
                adapter = None
                if contestant.adapter:
                    adapter = f"arena{len(session.adapters)}"
                    session.add_adapter(contestant.adapter, adapter)
                self.slots[contestant.name] = (session, adapter)
        except BaseException:
            self.unload()
            raise
        return names

    def unload(self) -> None:
        for session in self.sessions.values():
            session.unload()
        self.sessions, self.slots = {}, {}

    def stream(self, name: str, question: str, system: str = "",
               settings: GenerationSettings | None = None) -> Iterator[str]:
        """One contestant's answer as it grows (ChatSession.stream: no history, one question)."""
        if name not in self.slots:
            raise UserError(f"'{name}' is not loaded in the arena; load the contestants again")
        session, adapter = self.slots[name]
        return session.stream([], question, system, settings, use_adapter=adapter is not None, adapter=adapter)
