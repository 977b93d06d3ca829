"""Jobs: start a run as a detached process group, watch it, abort it.

One launcher for the CLI and the UI. `build_command` turns a config into an argv (never a shell
string): plain `python -m trainer_core train run.yaml`, the `deepspeed` launcher, or `torchrun`.
`start_job` runs that argv under a small supervisor in a new session, with its output in
console.log; the supervisor records the exit in status.json even when the trainer could not
(killed by the system, a crash before Python started). The caller may exit at once; anyone can
find the job again from the run folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from trainer_core import runs
from trainer_core.config import TrainConfig, save_config
from trainer_core.errors import UserError
from trainer_core.jobconfig import (
    CONFIG_FILES,
    LR_FIND_RUN_CONFIG,
    EvalConfig,
    JobConfig,
    LrFindConfig,
    checked,
    save_job_config,
    schema_for,
)
from trainer_core.procs import RANKS_DIR, explain_console, free_port, registered_rank_pids

ABORT_GRACE_SECONDS = 120


def launcher_kind(cfg: TrainConfig) -> str:
    """python (one process), deepspeed, or torchrun (several processes without DeepSpeed)."""
    if cfg.deepspeed:
        return "deepspeed"
    if cfg.num_gpus > 1 or cfg.hostfile or int(os.environ.get("NNODES", "1")) > 1:
        return "torchrun"
    return "python"


def build_command(cfg: TrainConfig, run_yaml: str | Path, port: int | None = None) -> list[str]:
    """The exact argv of the job; multi-node settings come from the hostfile (DeepSpeed) or from
    NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT (torchrun), as with LLaMA-Factory."""
    kind = launcher_kind(cfg)
    entry = ["trainer_core", "train", str(run_yaml)]
    if kind == "python":
        return [sys.executable, "-m", *entry]
    port = port or int(os.environ.get("MASTER_PORT", 0)) or free_port()
    if kind == "deepspeed":
        argv = [_tool("deepspeed"), "--master_port", str(port)]
        if cfg.hostfile:
            if not Path(cfg.hostfile).is_file():
                raise UserError(f"hostfile '{cfg.hostfile}' does not exist")
            argv += ["--hostfile", cfg.hostfile]
            if os.environ.get("MASTER_ADDR"):
                argv += ["--master_addr", os.environ["MASTER_ADDR"]]
            if os.environ.get("NNODES"):
                argv += ["--num_nodes", os.environ["NNODES"]]
        argv += ["--num_gpus", str(max(cfg.num_gpus, 1))]
        # --no_local_rank: ranks read LOCAL_RANK from the environment instead of an extra argument.
        return argv + ["--no_local_rank", "--module", *entry]
    nnodes = int(os.environ.get("NNODES", "1"))
    argv = [_tool("torchrun"), "--nproc_per_node", str(max(cfg.num_gpus, 1)), "--master_port", str(port)]
    if nnodes > 1:
        argv += ["--nnodes", str(nnodes), "--node_rank", os.environ.get("NODE_RANK", "0"),
                 "--master_addr", os.environ.get("MASTER_ADDR", "127.0.0.1")]
    return argv + ["-m", *entry]


def _tool(name: str) -> str:
    """A launcher installed beside this Python (the venv's bin), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if not found:
        package = "deepspeed" if name == "deepspeed" else "torch"
        raise UserError(f"the '{name}' launcher is not installed; pip install {package}")
    return found


# Where jobs keep their status.json under an outputs root: training runs, and the eval and export
# jobs inside them (RUN/eval/<time>, RUN/jobs/export-<time>) or beside them (outputs/eval/<time>).
JOB_PATTERNS = ("*/", "*/eval/*/", "*/jobs/*/", "eval/*/", "jobs/*/")


def running_jobs(root: str | Path) -> list[Path]:
    """Job folders under root (training runs, eval and export jobs) whose job is alive (stale
    'running' states are corrected)."""
    found = []
    for pattern in JOB_PATTERNS:
        for status_path in Path(root).glob(pattern + runs.STATUS_FILE):
            run_dir = status_path.parent
            if run_dir not in found and refresh_status(run_dir).get("state") == "running":
                found.append(run_dir)
    return found


def start_job(cfg: TrainConfig, outputs_root: str | Path = "outputs", extra_env: dict | None = None,
              log=None) -> Path:
    """Start training detached; returns the run folder at once. The one start of a training job,
    for the CLI and the UI: the run folder prepared (runs.prepare_run_dir), a job holding the same
    devices refused with its name, per_device_train_batch_size auto decided (`resolve_batch`: its
    line to `log` and to console.log), run.yaml written, then `launch`."""
    key = current_devices()
    root = Path(cfg.output_dir).parent if cfg.output_dir else Path(outputs_root)
    refuse_if_busy(root, key, Path(cfg.output_dir or ""))
    cfg, auto_line = resolve_batch(cfg, log)
    run_dir = runs.prepare_run_dir(cfg, outputs_root)
    save_config(cfg, run_dir / runs.CONFIG_FILE, runs.auto_batch_note(auto_line) if auto_line else "")
    if auto_line:
        # Every rank of the job reads these numbers from run.yaml; the variable tells the job they came
        # from auto, so that it confirms them on the GPU (trainer_core/train.py probe_auto_batch).
        extra_env = {**(extra_env or {}), runs.AUTO_BATCH_ENV: "1"}
        with open(run_dir / runs.CONSOLE_FILE, "a", encoding="utf-8") as console:
            console.write(f"{LAUNCHER_PREFIX} {auto_line}\n")
    return launch(run_dir, build_command(cfg, run_dir / runs.CONFIG_FILE), key, launcher_kind(cfg), extra_env)


LAUNCHER_PREFIX = "[launcher]"  # console.log lines the launcher writes (the CLI printed them itself)


def resolve_batch(cfg: TrainConfig, log=None) -> tuple[TrainConfig, str | None]:
    """The config the job runs: per_device_train_batch_size auto decided here, once, for every rank
    (trainer_core.planner.auto_batch_here), and the line that says what was chosen (None for a
    number). `log` gets the line too. Used by start_job, `train --dry-run`, a job torchrun or deepspeed
started directly (cli `_train_in_this_process`) and the workbench's preview."""
    from trainer_core.planner import auto_batch_here

    chosen = auto_batch_here(cfg)
    if chosen is None:
        return cfg, None
    if log is not None:
        log(chosen.line)
    return chosen.config, chosen.line



def registered_jobs() -> list[Path]:
    """Job folders started on this machine (wherever their output_dir lies) that still run; the
    registry is $QIHUANG_HOME/running/, one file per job, dropped once its job has ended."""
    from trainer_core.models import qihuang_home

    found = []
    for entry in sorted((qihuang_home() / "running").glob("*.json")):
        try:
            job_dir = Path(json.loads(entry.read_text(encoding="utf-8"))["run_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            job_dir = None
        if job_dir is not None and refresh_status(job_dir).get("state") == "running":
            found.append(job_dir)
        else:
            entry.unlink(missing_ok=True)
    return found


def _register(run_dir: Path) -> None:
    import hashlib

    from trainer_core.models import qihuang_home

    folder = qihuang_home() / "running"
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
    (folder / f"{name}.json").write_text(json.dumps({"run_dir": str(run_dir.resolve())}), encoding="utf-8")


def refuse_if_busy(root: Path, key: str, own_dir: Path) -> None:
    """Refuse a job whose devices a running one holds: any job under root and any job started on
    this machine (the registry), so one writing elsewhere is seen too."""
    others = dict.fromkeys(p.resolve() for p in [*running_jobs(root), *registered_jobs()])
    for other in others:
        if runs.read_status(other).get("devices") == key and other != own_dir.resolve():
            raise UserError(f"the devices ({key}) are busy with the running job {other}; wait for it or abort it "
                            f"with: python -m trainer_core runs --abort {other}")


TCMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib64/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4")


def allocator_env() -> dict[str, str]:
    """Jobs run with tcmalloc when the system has it (Debian: libtcmalloc-minimal4). glibc's malloc
    hands the step's large activation buffers back and forth to the kernel, so each CPU training
    step pays hundreds of thousands of page faults and the peak RSS grows by fragmentation
    (bench/README.md: 4.1 GB → 3.2 GB on the built-in model). QIHUANG_ALLOCATOR=system opts out."""
    if os.environ.get("QIHUANG_ALLOCATOR", "tcmalloc") == "system" or os.environ.get("LD_PRELOAD"):
        return {}
    found = next((path for path in TCMALLOC_PATHS if os.path.isfile(path)), None)
    return {"LD_PRELOAD": found} if found else {}


def launch(run_dir: Path, argv: list[str], devices: str, launcher: str, extra_env: dict | None = None) -> Path:
    """Run argv detached under the supervisor, output to console.log, state in status.json.
    Used for every job kind: train, eval, export."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if refresh_status(run_dir).get("state") == "running":
        raise UserError(f"{run_dir} is already running")
    env = {"QIHUANG_LAUNCHED": "1", "PYTHONUNBUFFERED": "1", **allocator_env(), **(extra_env or {})}
    runs.write_command(run_dir, argv, {**{k: os.environ[k] for k in runs.RECORDED_ENV if k in os.environ}, **env})
    shutil.rmtree(run_dir / RANKS_DIR, ignore_errors=True)
    supervisor = [sys.executable, "-m", "trainer_core.jobs", "supervise", str(run_dir), "--", *argv]
    with open(run_dir / runs.CONSOLE_FILE, "ab") as console:
        proc = subprocess.Popen(supervisor, stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **env}, start_new_session=True, cwd=os.getcwd())
    runs.update_status(run_dir, state="running", pid=proc.pid, pgid=proc.pid, started_at=runs.now_iso(),
                       ended_at=None, exit_code=None, error=None, devices=devices, launcher=launcher)
    _register(run_dir)
    return run_dir


def task_job_dir(kind: str, cfg: JobConfig, outputs_root: str | Path | None = None) -> Path:
    """Where an eval, export or LR range test job keeps its config, status, console and results:
    RUN_DIR/eval/<time>/ and RUN_DIR/jobs/export-<time>/, or under outputs/ without a run (an LR
    test has none: outputs/jobs/lr-find-<time>/); an eval's output_dir (an export's or LR test's
    job_dir) when set, e.g. by the job's own eval.yaml."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    own = cfg.output_dir if isinstance(cfg, EvalConfig) else cfg.job_dir
    if own:
        return Path(own)
    if isinstance(cfg, LrFindConfig):
        return Path(outputs_root or "outputs") / "jobs" / f"lr-find-{stamp}"
    base = Path(cfg.run) if cfg.run else Path(outputs_root or "outputs")
    return base / "eval" / stamp if kind == "eval" else base / "jobs" / f"export-{stamp}"


TASK_COMMANDS = {"eval": "eval", "export": "export", "lr_find": "lr-find"}  # job kind -> CLI command


def task_command(kind: str, config_file: str | Path) -> list[str]:
    """The argv of an eval, export or LR test job: `python -m trainer_core eval|export|lr-find
    JOB_DIR/eval.yaml` (export.yaml, lr_find.yaml)."""
    return [sys.executable, "-m", "trainer_core", TASK_COMMANDS[kind], str(config_file)]


def start_task(kind: str, cfg: JobConfig, outputs_root: str | Path | None = None) -> Path:
    """Start an eval, export or LR range test job detached; returns its folder at once. The one
    start of these jobs, for the CLI and the workbench alike (an LR test: `start_lr_find` with the
    run config its run_config names): the config checked (keys and rules), the job's
    folder picked (task_job_dir), the job refused while another holds the same devices under
    outputs_root (default: the folder holding the job's run, else outputs/) or anywhere on this
    machine, the mistakes that need no model reported (the run, the adapter, an export's output
    folder and GGUF architecture), all before any folder is made; then the config written as
    JOB_DIR/eval.yaml (export.yaml) with its folder in it, and `task_command` launched."""
    schema = schema_for(kind)
    if not isinstance(cfg, schema):
        raise UserError(f"{kind} jobs take an {schema.__name__}, not an {type(cfg).__name__}")
    cfg = checked(cfg)
    if isinstance(cfg, LrFindConfig):
        from trainer_core.config import load_config

        return start_lr_find(load_config(cfg.run_config), cfg, outputs_root)
    job_dir = task_job_dir(kind, cfg)
    key = current_devices()
    refuse_if_busy(Path(outputs_root) if outputs_root else _outputs_root_of(job_dir), key, job_dir)
    if cfg.run and not (Path(cfg.run) / runs.CONFIG_FILE).is_file():
        raise UserError(f"'{cfg.run}' is not a training run folder (no run.yaml)")
    if isinstance(cfg, EvalConfig):
        from trainer_core.evaluate import resolve_target

        resolve_target(cfg)
        cfg = dataclasses.replace(cfg, output_dir=str(job_dir))
    else:
        from trainer_core.export import check_options

        check_options(cfg)
        cfg = dataclasses.replace(cfg, job_dir=str(job_dir))
    if refresh_status(job_dir).get("state") == "running":
        raise UserError(f"{job_dir} is already running")
    config_file = job_dir / CONFIG_FILES[kind]
    save_job_config(cfg, config_file)
    return launch(job_dir, task_command(kind, config_file), key, "python")


def start_lr_find(run: TrainConfig, cfg: LrFindConfig, outputs_root: str | Path | None = None) -> Path:
    """Start an LR range test of the run config `run` detached; returns its folder at once
    (outputs/jobs/lr-find-<time>/, or cfg.job_dir). Like start_task: checked and refused while
    another job holds the devices before any folder is made; then the run config is written to
    JOB_DIR/run_config.yaml, the test's config (naming it) to JOB_DIR/lr_find.yaml, and
    `python -m trainer_core lr-find JOB_DIR/lr_find.yaml` launched (one process)."""
    job_dir = task_job_dir("lr_find", cfg, outputs_root)
    cfg = checked(dataclasses.replace(cfg, run_config=str(job_dir / LR_FIND_RUN_CONFIG), job_dir=str(job_dir)))
    key = current_devices()
    # The jobs beside it (as start_job looks beside a run's output_dir), and every job on this machine.
    refuse_if_busy(Path(outputs_root) if outputs_root else job_dir.parent.parent, key, job_dir)
    if refresh_status(job_dir).get("state") == "running":
        raise UserError(f"{job_dir} is already running")
    run, auto_line = resolve_batch(run)  # per_device_train_batch_size auto: decided as a run's launch does
    save_config(dataclasses.replace(run, output_dir=str(job_dir)), job_dir / LR_FIND_RUN_CONFIG,
                runs.auto_batch_note(auto_line) if auto_line else "")
    config_file = job_dir / CONFIG_FILES["lr_find"]
    save_job_config(cfg, config_file)
    return launch(job_dir, task_command("lr_find", config_file), key, "python")


def _outputs_root_of(job_dir: Path) -> Path:
    """The outputs folder a job belongs to: the parent of the training run that holds it."""
    for folder in job_dir.resolve().parents:
        if (folder / runs.CONFIG_FILE).is_file():
            return folder.parent
    return Path("outputs")


def current_devices() -> str:
    """Which devices a job takes; two jobs with the same answer may not run at once. Read from
    the system, not from torch, so the UI can ask without importing torch."""
    if not Path("/dev/nvidia0").exists():
        return "cpu"
    return "cuda:" + os.environ.get("CUDA_VISIBLE_DEVICES", "all")


def supervise(run_dir: Path, argv: list[str]) -> int:
    """Run the job and record how it ended, whatever the job itself managed to write."""
    # An abort signals the ranks first; the supervisor must outlive them to write the outcome.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(f"[supervisor] {' '.join(argv)}", flush=True)
    child = subprocess.Popen(argv, preexec_fn=_restore_default_signals)
    code = child.wait()
    status = runs.read_status(run_dir)
    if status.get("pid") not in (None, os.getpid()):
        return code  # a newer job in this folder (e.g. a resume) owns status.json now
    if status.get("state") == "running" or status.get("exit_code") is None:
        state, error = explain_exit(run_dir, code)
        runs.update_status(run_dir, state=state, exit_code=code, error=error, ended_at=runs.now_iso())
    return code


def _restore_default_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def explain_exit(run_dir: Path, code: int) -> tuple[str, str | None]:
    """The state and one-sentence reason for an exit the job did not report itself."""
    if code == 0:
        return "finished", None
    tail = tail_text(run_dir / runs.CONSOLE_FILE, 20_000)
    lines = tail.splitlines()
    # A job that explained itself ("error: ..." from the CLI, exit code 2) is quoted as it said it.
    explained = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    if code == 2 and explained:
        return "failed", explained[-1]
    last = next((line.strip() for line in reversed(lines)
                 if line.strip() and not line.startswith("[supervisor]")), "")
    return "failed", explain_console(tail, code) + (f" ({last[:300]})" if last else "")


def tail_text(path: Path, max_bytes: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def group_alive(pgid: int | None) -> bool:
    if not pgid:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(pid_alive(pid) for pid in group_members(pgid))


def group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split(")")[-1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def refresh_status(run_dir: str | Path) -> dict:
    """status.json, corrected when it says running but no process of the job is left."""
    status = runs.read_status(run_dir)
    if status.get("state") == "running" and not group_alive(status.get("pgid")) and not pid_alive(status.get("pid")):
        status = runs.update_status(run_dir, state="failed", ended_at=runs.now_iso(),
                                    error="The job's processes are gone without a report (killed, or the machine "
                                    "restarted); resume with resume_from_checkpoint=auto.")
    return status


def abort_job(run_dir: str | Path, grace_seconds: float = ABORT_GRACE_SECONDS, log=print) -> dict:
    """SIGTERM to the training processes (they save a checkpoint and stop), then to the whole
    group; whatever is left after the grace period is killed. No process of the job survives."""
    run_dir = Path(run_dir)
    status = refresh_status(run_dir)
    if status.get("state") != "running":
        raise UserError(f"{run_dir} is not running (state: {status.get('state', 'unknown')})")
    pgid = status["pgid"]
    targets = [pid for pid in registered_rank_pids(run_dir) if pid_alive(pid)]
    log(f"Asking {len(targets) or 'all'} training process(es) to save a checkpoint and stop ...")
    for pid in targets:
        _signal(pid, signal.SIGTERM)
    if not targets:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.time() + grace_seconds
    while time.time() < deadline and group_alive(pgid):
        time.sleep(0.3)
    if group_alive(pgid):
        log(f"Still running after {grace_seconds:.0f} s; killing the process group.")
        _signal_group(pgid, signal.SIGKILL)
        time.sleep(0.5)
    status = runs.read_status(run_dir)
    if status.get("state") == "running":
        status = runs.update_status(run_dir, state="aborted", ended_at=runs.now_iso(), exit_code=-9,
                                    error="Aborted; the job did not stop within the grace period and was killed.")
    return status


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


# ---- watching -------------------------------------------------------------------------------

def progress(run_dir: str | Path) -> dict:
    """A summary for lists and progress bars: state, step/total, losses, speed, times."""
    run_dir = Path(run_dir)
    status = refresh_status(run_dir)
    log = runs.read_log(run_dir)
    last = log[-1] if log else {}
    losses = [e["loss"] for e in log if e.get("loss") is not None]
    evals = [e["eval_loss"] for e in log if e.get("eval_loss") is not None]
    return {
        "run_dir": str(run_dir), "state": status.get("state", "unknown"), "error": status.get("error"),
        "step": last.get("step", 0), "total_steps": last.get("total_steps"),
        "loss": losses[-1] if losses else None, "eval_loss": evals[-1] if evals else None,
        "tokens_per_second": last.get("tokens_per_second"), "elapsed_seconds": last.get("elapsed_seconds"),
        "eta_seconds": last.get("eta_seconds"), "started_at": status.get("started_at"),
        "ended_at": status.get("ended_at"),
        "preparing": _preparing(run_dir) if not log else None,
    }


def _preparing(run_dir: Path) -> dict | None:
    """The Arrow path's data preparation while no step has run yet (data_progress.json)."""
    try:
        found = json.loads((run_dir / runs.DATA_PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and found.get("done_bytes", 0) < found.get("total_bytes", 0) else None


class Tail:
    """Reads only what was appended to a file since the last call."""

    def __init__(self, path: Path, from_start: bool = True):
        self.path, self.offset = path, 0
        if not from_start and path.exists():
            self.offset = path.stat().st_size
        self._partial = b""

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an unfinished last line waits for its end
        return [line.decode("utf-8", errors="replace").rstrip("\r") for line in lines]


def watch(run_dir: str | Path, poll_seconds: float = 1.0, from_start: bool = True) -> Iterator[dict]:
    """Yield {"console": [new lines], "log": [new trainer_log entries], "progress": {...}} while the
    job runs, and once more after it ended."""
    run_dir = Path(run_dir)
    console, log = Tail(run_dir / runs.CONSOLE_FILE, from_start), Tail(run_dir / runs.LOG_FILE, from_start)
    while True:
        status = refresh_status(run_dir)
        entries = []
        for line in log.new_lines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        yield {"console": console.new_lines(), "log": entries, "progress": progress(run_dir)}
        if status.get("state") != "running":
            return
        time.sleep(poll_seconds)


def list_runs(root: str | Path = "outputs") -> list[dict]:
    found = [progress(p.parent) for p in Path(root).glob("*/" + runs.STATUS_FILE)]
    return sorted(found, key=lambda r: r.get("started_at") or "", reverse=True)


def _main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "supervise" and "--" in argv:
        split = argv.index("--")
        return supervise(Path(argv[1]), argv[split + 1:])
    print("usage: python -m trainer_core.jobs supervise RUN_DIR -- ARGV...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
