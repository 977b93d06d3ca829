"""Load test: 20 short jobs in a row through the same core the workbench and the CLI use.

    python bench/load_jobs.py [--jobs 20] [--model PATH]

The jobs cycle through four endings: finished (2 steps), aborted (stopped at its first step),
failed (a dataset with no usable record) and killed (SIGKILL to the trainer mid-run). Each must
end in its own state. Before and after, it counts this process's open file handles and threads,
the processes left in each job's process group, and any process still naming a run folder:
a leak shows as a difference. By default the model is a tiny random Llama built in a second
(tests/tiny_model.py), so the figures measure the job machinery, not training.
Writes bench/results/load_jobs-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer_core import jobs, runs  # noqa: E402
from trainer_core.config import load_config  # noqa: E402

ENDINGS = ("finished", "aborted", "failed", "killed")


def open_handles() -> int:
    return len(os.listdir("/proc/self/fd"))


def processes_naming(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace") and int(cmdline.parent.name) != os.getpid():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def make_data(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    qa = [{"instruction": f"黄芪的功效是什么？（{i}）", "input": "", "output": "补气升阳，固表止汗，利水消肿。"}
          for i in range(64)]
    (folder / "qa.json").write_text(json.dumps(qa, ensure_ascii=False), encoding="utf-8")
    (folder / "empty.json").write_text(json.dumps([{"instruction": "", "input": "", "output": ""}]), encoding="utf-8")
    info = {"qa": {"file_name": "qa.json"}, "empty": {"file_name": "empty.json"}}
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def run_one(index: int, ending: str, model: str, data: Path, outputs: Path) -> dict:
    out = outputs / f"job-{index:02d}-{ending}"
    long_run = ending in ("aborted", "killed")
    cfg = load_config(None, [f"model_name_or_path={model}", f"dataset_dir={data}",
                             f"dataset={'empty' if ending == 'failed' else 'qa'}", f"output_dir={out}",
                             f"max_steps={100000 if long_run else 2}", "cutoff_len=64", "logging_steps=1",
                             "save_steps=100000", "per_device_train_batch_size=2"])
    started = time.perf_counter()
    run_dir = jobs.start_job(cfg, outputs)
    if long_run:
        wait_until(lambda: bool(runs.read_log(run_dir)), 120)
        if ending == "aborted":
            jobs.abort_job(run_dir, log=lambda _: None)
        else:
            rank0 = int((run_dir / "ranks" / "0.pid").read_text())
            os.kill(rank0, 9)
    wait_until(lambda: jobs.refresh_status(run_dir).get("state") != "running", 180)
    status = jobs.refresh_status(run_dir)
    state = status.get("state")
    expected = "failed" if ending == "killed" else ending
    pgid = status.get("pgid")
    wait_until(lambda: not (pgid and jobs.group_alive(pgid)), 30)
    left = processes_naming(str(run_dir))
    return {"job": index, "ending": ending, "state": state, "ok": state == expected and not left,
            "error": (status.get("error") or "")[:160], "seconds": round(time.perf_counter() - started, 1),
            "group_alive_after": bool(pgid and jobs.group_alive(pgid)), "processes_left": left}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--model", help="a local model folder (default: a tiny random Llama)")
    parser.add_argument("--workdir", default="/tmp/qihuang-load-jobs")
    opts = parser.parse_args(argv)

    work = Path(opts.workdir)
    shutil.rmtree(work, ignore_errors=True)
    model = opts.model
    if not model:
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_model import build_tiny_model

        model = str(build_tiny_model(work / "tiny-model"))
    data = make_data(work / "data")
    outputs = work / "outputs"

    before = {"handles": open_handles(), "threads": threading.active_count(), "children": _children()}
    results = []
    started = time.time()
    for i in range(opts.jobs):
        result = run_one(i, ENDINGS[i % len(ENDINGS)], model, data, outputs)
        results.append(result)
        print(f"job {i:2d} {result['ending']:9s} -> {result['state']:9s} {result['seconds']:5.1f} s "
              f"{'ok' if result['ok'] else 'WRONG: ' + result['error']}", flush=True)
    # The last job's supervisor writes its status and then exits: give it a moment, and reap it.
    wait_until(lambda: not [pid for pid in _children() if _reap(pid)], 15)
    after = {"handles": open_handles(), "threads": threading.active_count(), "children": _children()}
    report = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "jobs": len(results), "wall_s": round(time.time() - started),
              "right_state": sum(r["ok"] for r in results), "before": before, "after": after,
              "leaked_handles": after["handles"] - before["handles"],
              "leaked_threads": after["threads"] - before["threads"],
              "leftover_processes": sorted({p for r in results for p in r["processes_left"]}), "results": results}
    out = REPO / "bench" / "results" / f"load_jobs-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, ensure_ascii=False, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=1))
    clean = (report["right_state"] == len(results) and report["leaked_handles"] <= 0
             and not report["leftover_processes"] and not after["children"])
    return 0 if clean else 1


def _reap(pid: int) -> bool:
    """True while the child still runs; a finished one is reaped (so it is no zombie)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == 0


def _children() -> list[int]:
    """Live child processes of this one (zombies would show here too)."""
    path = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


if __name__ == "__main__":
    sys.exit(main())
