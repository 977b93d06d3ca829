"""The run folder (README.md, "The run folder"): the files through which a job, its launcher and
any watcher (CLI or UI) meet. Every write here is atomic, so a reader never sees half a file.

status.json has one writer, `update_status`, which merges under a lock (the supervisor, a rank
and an abort may write at once). Its states, and who writes each:

| state    | written by                                                                           |
|----------|--------------------------------------------------------------------------------------|
| running  | jobs.launch (the launcher, before the job starts); train.run_training for a run      |
|          | started without the launcher (python -m trainer_core train in the foreground)         |
| finished | the job on success (train.run_training), else the supervisor on exit code 0           |
| failed   | the job with its reason (train.run_training); the supervisor on any other exit it did |
|          | not report (jobs.supervise, jobs.explain_exit); any reader that finds no process left |
|          | (jobs.refresh_status)                                                                 |
| aborted  | the job stopping on SIGTERM (train.run_training); jobs.abort_job when the job had to  |
|          | be killed after the grace period                                                      |
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import struct
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

from trainer_core.config import TrainConfig, default_output_dir
from trainer_core.errors import UserError

STATUS_FILE = "status.json"
LOG_FILE = "trainer_log.jsonl"
CONFIG_FILE = "run.yaml"
COMMAND_FILE = "command.txt"
CONSOLE_FILE = "console.log"
MIX_FILE = "data_mix.json"  # records of each dataset in the training split, per epoch
DATA_PROGRESS_FILE = "data_progress.json"  # the Arrow path's preparation, while it runs (arrow_data)
STATES = ("running", "finished", "failed", "aborted")
# Environment variables worth recording in command.txt; secrets are never among them.
RECORDED_ENV = ("CUDA_VISIBLE_DEVICES", "WANDB_MODE", "WANDB_PROJECT", "QIHUANG_HOME", "HF_HOME",
                "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "OMP_NUM_THREADS")
SECRET_PATTERN = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.IGNORECASE)


# Set for a job whose per_device_train_batch_size came from auto (trainer_core/jobs.py start_job):
# the job then confirms it before its first step (trainer_core/train.py settle_auto_batch).
AUTO_BATCH_ENV = "QIHUANG_AUTO_BATCH"


def auto_batch_note(line: str) -> str:
    """run.yaml's comment on numbers that came from auto: what was chosen, and what a rerun does."""
    return (f"{line}\nper_device_train_batch_size was auto: `train run.yaml` (and a resume) keeps these numbers; "
            "the config with auto decides again")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def format_duration(seconds: float | None, always_hours: bool = False) -> str:
    """A duration to the nearest second: M:SS under an hour (H:MM:SS with `always_hours`, as the
    training log writes its ETA), else H:MM:SS; "–" when unknown (the page's ETA and elapsed)."""
    if seconds is None:
        return "–"
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours or always_hours else f"{minutes}:{secs:02d}"


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)


def honour_umask(folder: str | Path) -> None:
    """safetensors (0.8) writes its files with mode 0600, readable by their owner alone; give every
    file below `folder` the mode the user's umask gives new files, so an exported model or adapter
    can be served by another account (Ollama, a shared group folder)."""
    mask = _umask()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~mask)


def _umask() -> int:
    try:  # Linux names it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def prepare_run_dir(cfg: TrainConfig, outputs_root: str | Path = "outputs") -> Path:
    """The run folder of a training config, made: output_dir, when empty, is set here once
    (outputs_root/<stage>-<method>-<time>); starting where checkpoints exist is refused unless the
    config resumes, so starting cannot destroy earlier work."""
    if not cfg.output_dir:
        cfg.output_dir = default_output_dir(cfg, outputs_root)
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.resume_from_checkpoint == "none" and checkpoints(run_dir):
        raise UserError(f"output_dir '{run_dir}' already holds checkpoints; set resume_from_checkpoint=auto to "
                        "continue that run, or choose another output_dir")
    return run_dir


def read_status(run_dir: str | Path) -> dict:
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def update_status(run_dir: str | Path, **fields: Any) -> dict:
    """Merge fields into status.json (creating it), keeping what earlier writers put there; the
    one writer of status.json (see the table above). The read-merge-write holds an exclusive lock
    on .status.lock, so two writers at once cannot lose each other's fields."""
    path = Path(run_dir) / STATUS_FILE
    with open(path.with_name(".status.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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
    exists, which the Trainer writes last, and every weight file in it is whole (see
    checkpoint_problem), so one cut off mid-save is never resumed from."""
    found = []
    for path in Path(run_dir).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and path.is_dir() and checkpoint_problem(path) is None:
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def checkpoint_problem(path: str | Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when it is complete. Cheap: reads
    trainer_state.json, the safetensors headers and the zip directories of torch files (.pt, .pth,
    .bin), which sit at their ends, so a file cut off by a kill or a full disk shows up."""
    path = Path(path)
    state = path / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (cut off while saving)"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "trainer_state.json is cut off"
    for file in sorted(path.rglob("*")):
        if not file.is_file():
            continue
        if file.suffix == ".safetensors" and not _safetensors_whole(file):
            return f"{file.relative_to(path)} is cut off"
        if file.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(file):
            return f"{file.relative_to(path)} is cut off"
    return None


def _safetensors_whole(path: Path) -> bool:
    """The header parses and the file is exactly as long as the header says."""
    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size == 8 + length + end
    except (OSError, ValueError, struct.error, KeyError, TypeError, IndexError):
        return False


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


def remove_incomplete_checkpoints(run_dir: str | Path, log=print, delete: bool = False) -> list[Path]:
    """A checkpoint folder without trainer_state.json, or with a file cut off, was interrupted
    while saving; it would make the Trainer's own resume logic fail, so move it out of the way
    (kept for inspection), or delete it (delete=True: after a full disk, to give the space back).
    Returns the checkpoint folders that were incomplete."""
    found = []
    for path in sorted(Path(run_dir).glob("checkpoint-*")):
        problem = checkpoint_problem(path) if path.is_dir() else None
        if problem is None:
            continue
        found.append(path)
        if delete:
            log(f"Checkpoint {path.name} is incomplete ({problem}); deleted it")
            shutil.rmtree(path, ignore_errors=True)
            continue
        target = path.with_name(f"incomplete-{path.name}-{int(time.time())}")
        log(f"Checkpoint {path.name} is incomplete ({problem}); moved to {target.name}")
        shutil.move(str(path), str(target))
    return found


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
DISK_FULL_TEXT = ("no space left on device", "file too large", "disk quota exceeded", "os error 28", "os error 27",
                  "os error 122",
                  # torch.save's zip writer loses the errno and says only that a write went wrong
                  "pytorchstreamwriter failed writing", "file write failed", "iostream error")


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether an exception (or one it came from) is a write refused for lack of space: a full
    disk (ENOSPC), a quota, or a file size limit (EFBIG), whichever library raised it."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(exc).lower() for text in DISK_FULL_TEXT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def disk_full_message(exc: BaseException, where: str | Path) -> str:
    """One sentence for a write that failed for lack of space, naming the folder it was writing."""
    free = ""
    if isinstance(where, Path):
        with contextlib.suppress(OSError):
            free = f" ({shutil.disk_usage(where.parent).free / 1e6:.0f} MB free there)"
    last = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    return (f"Out of disk space (no space left on the device, or a file size limit reached) while writing "
            f"{where}{free}: free some space and start again. ({last[:300]})")


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
