"""The run folder (DESIGN.md section 1): the files through which a job, its launcher and any
watcher (CLI or UI) meet. Every write here is atomic, so a reader never sees half a file."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
LOG_FILE = "trainer_log.jsonl"
CONFIG_FILE = "run.yaml"
COMMAND_FILE = "command.txt"
CONSOLE_FILE = "console.log"
STATES = ("running", "finished", "failed", "aborted")
# Environment variables worth recording in command.txt; secrets are never among them.
RECORDED_ENV = ("CUDA_VISIBLE_DEVICES", "WANDB_MODE", "WANDB_PROJECT", "QIHUANG_HOME", "HF_HOME",
                "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "OMP_NUM_THREADS")
SECRET_PATTERN = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.IGNORECASE)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)


def read_status(run_dir: str | Path) -> dict:
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def update_status(run_dir: str | Path, **fields: Any) -> dict:
    """Merge fields into status.json (creating it), keeping what earlier writers put there."""
    path = Path(run_dir) / STATUS_FILE
    status = read_status(run_dir)
    status.update(fields)
    write_json_atomic(path, status)
    return status


def write_command(run_dir: str | Path, argv: list[str], env: dict[str, str] | None = None) -> None:
    env = {k: v for k, v in (env or {}).items() if not SECRET_PATTERN.search(k)}
    lines = ["# argv, one item per line (no shell)", *argv, "", "# environment set for this run"]
    lines += [f"{k}={v}" for k, v in sorted(env.items())]
    (Path(run_dir) / COMMAND_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


def checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first. A checkpoint counts only once its trainer_state.json
    exists, which the Trainer writes last, so one cut off mid-save is never resumed from."""
    found = []
    for path in Path(run_dir).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and path.is_dir() and (path / "trainer_state.json").is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def newest_checkpoint(run_dir: str | Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def read_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue  # a line being written right now
    return entries


def truncate_log_after(run_dir: str | Path, step: int) -> None:
    """On resume, drop log lines past the checkpoint's step: those steps are run again."""
    path = Path(run_dir) / LOG_FILE
    kept = [e for e in read_log(run_dir) if e.get("step", 0) <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in kept), encoding="utf-8")
    tmp.replace(path)


def append_log(run_dir: str | Path, entry: dict) -> None:
    with open(Path(run_dir) / LOG_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, ensure_ascii=False) + "\n")


def remove_incomplete_checkpoints(run_dir: str | Path, log=print) -> None:
    """A checkpoint folder without trainer_state.json was cut off while saving; it would make the
    Trainer's own resume logic fail, so move it out of the way (kept for inspection)."""
    for path in Path(run_dir).glob("checkpoint-*"):
        if path.is_dir() and not (path / "trainer_state.json").is_file():
            target = path.with_name(f"incomplete-{path.name}-{int(time.time())}")
            log(f"Checkpoint {path.name} is incomplete (cut off while saving); moved to {target.name}")
            shutil.move(str(path), str(target))


class Tee:
    """Copy what the process prints into console.log as well (when no launcher redirected it)."""

    def __init__(self, stream, log_file):
        self.stream, self.log_file = stream, log_file

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log_file.write(text)
        self.log_file.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log_file.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


def tee_console(run_dir: str | Path):
    log_file = open(Path(run_dir) / CONSOLE_FILE, "a", encoding="utf-8")
    sys.stdout = Tee(sys.stdout, log_file)
    sys.stderr = Tee(sys.stderr, log_file)
    return log_file


def log_progress(run_dir: str | Path, done: int, total: int, start_time: float, **metrics: Any) -> dict:
    """Progress of an eval or export job, in the same trainer_log.jsonl schema as training, so one
    watcher (CLI or UI) follows every kind of job."""
    elapsed = time.time() - start_time
    entry = {"step": done, "total_steps": total, "epoch": None, "loss": None, "eval_loss": None,
             "learning_rate": None, "grad_norm": None, "tokens_per_second": metrics.pop("tokens_per_second", None),
             "elapsed_seconds": round(elapsed, 2),
             "eta_seconds": round(elapsed / done * (total - done), 1) if done else None, "time": now_iso(), **metrics}
    append_log(run_dir, entry)
    return entry
