"""What the launcher (jobs.py) and the processes it starts (train.py) share, so that neither
imports the other: a free port, the registration of each training rank (an abort signals the
ranks first), and the sentences that explain a failure, whether seen as an exception inside the
job (explain_failure) or only as its console and exit code from outside (explain_console)."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from trainer_core import runs
from trainer_core.errors import UserError

RANKS_DIR = "ranks"  # each training process writes <rank>.pid here, so an abort reaches it directly
OUT_OF_MEMORY_ADVICE = ("Out of memory: lower per_device_train_batch_size or cutoff_len, turn on "
                        "gradient_checkpointing, or use deepspeed z3_offload.")


def free_port() -> int:
    """A TCP port free on this machine now (for a rendezvous, or a test's server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def register_rank(run_dir: str | Path) -> None:
    """Called by each training process: lets an abort reach it directly."""
    folder = Path(run_dir) / RANKS_DIR
    folder.mkdir(exist_ok=True)
    (folder / f"{os.environ.get('RANK', '0')}.pid").write_text(str(os.getpid()))


def registered_rank_pids(run_dir: str | Path) -> list[int]:
    return [int(p.read_text()) for p in (Path(run_dir) / RANKS_DIR).glob("*.pid") if p.read_text().strip()]


def explain_failure(exc: BaseException, where: str | Path | None = None) -> str:
    """One human sentence from the real cause, plus the last traceback line. `where`: the folder
    being written when the failure came (for a full disk)."""
    message = str(exc).strip()
    last = f"{type(exc).__name__}: {message.splitlines()[0] if message else ''}".strip()
    text = str(exc)
    if isinstance(exc, UserError):
        return text
    if runs.is_disk_full(exc):
        return runs.disk_full_message(exc, where or "the run folder")
    if "out of memory" in text.lower():
        return f"{OUT_OF_MEMORY_ADVICE} ({last})"
    if isinstance(exc, KeyboardInterrupt):
        return "Interrupted (Ctrl-C)."
    return f"Training failed with an unexpected error; see console.log. ({last})"


def explain_console(text: str, code: int) -> str:
    """The reason for an exit the job did not report itself, from its console's tail and code."""
    lowered = text.lower()
    if "out of memory" in lowered:
        return OUT_OF_MEMORY_ADVICE
    if any(marker in lowered for marker in runs.DISK_FULL_TEXT):
        return ("Out of disk space (no space left on the device, or a file size limit reached) while writing; "
                "free some space and start again.")
    if "address already in use" in lowered or "eaddrinuse" in lowered:
        return "The rendezvous port is in use by another job; start again (a free port is picked each time)."
    if "nccl" in lowered and "error" in lowered:
        return "NCCL (GPU communication) failed: check that all GPUs are visible and the nodes can reach each other."
    if code in (-9, 137) or "killed" in lowered.splitlines()[-1:] or code == -signal.SIGKILL:
        return "The job was killed by the system (often out of memory: lower the batch size or cutoff_len)."
    if code < 0:
        return f"The job ended on signal {signal.Signals(-code).name}."
    return f"The job failed with exit code {code}; see console.log."
