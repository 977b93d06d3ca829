"""Data larger than memory: a plain-text corpus and a JSONL SFT set, generated on the fly, validated,
tokenized and trained from (2 steps) through `python -m trainer_core train`, cold (empty cache) and
warm (the cache of the cold run). Peak RSS is the sum over the whole process tree (the trainer and
its data workers), sampled every 0.2 s.

    python bench/large_data.py                       # 5 GB corpus (pt) and 2,000,000 records (sft)
    python bench/large_data.py --only sft --engine memory   # the in-memory path on the same files
    python bench/large_data.py --dry-run             # tiny files, the same steps
    python bench/large_data.py --only sft --compare-llamafactory /tmp/lf/venv   # LLaMA-Factory on the same file

Writes bench/results/large_data-<time>.json and prints a Markdown table for RESULTS.md. The files
go to --workdir (default /tmp/qihuang-large), never into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SENTENCES_FROM = REPO / "data" / "tcm_corpus.txt"


def sentences() -> list[str]:
    text = SENTENCES_FROM.read_text(encoding="utf-8")
    return [s + "。" for s in re.split(r"[。\n]", text) if len(s.strip()) > 4]


def make_corpus(path: Path, size: int, seed: int = 0) -> None:
    """One document per line (LLaMA-Factory's pre-training .txt), each a few hundred characters of
    shuffled TCM sentences and a document number, until `size` bytes."""
    rng = random.Random(seed)
    pool = sentences()
    written, number = 0, 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < size:
            lines = []
            for _ in range(1000):
                doc = f"第{number}篇 " + "".join(rng.choices(pool, k=rng.randint(3, 12)))
                lines.append(doc)
                number += 1
            chunk = ("\n".join(lines) + "\n").encode("utf-8")
            fh.write(chunk.decode("utf-8"))
            written += len(chunk)


def make_sft(path: Path, records: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    pool = sentences()
    with open(path, "w", encoding="utf-8") as fh:
        for start in range(0, records, 1000):
            rows = []
            for i in range(start, min(records, start + 1000)):
                rows.append(json.dumps({"instruction": f"问题{i}：" + rng.choice(pool), "input": "",
                                        "output": "".join(rng.choices(pool, k=rng.randint(1, 4)))},
                                       ensure_ascii=False))
            fh.write("\n".join(rows) + "\n")


def write_registry(folder: Path, corpus_file: str = "corpus.txt", sft_file: str = "sft.jsonl") -> None:
    info = {"corpus": {"file_name": corpus_file, "columns": {"prompt": "text"}},  # LLaMA-Factory's pt shape
            "sft": {"file_name": sft_file, "formatting": "alpaca"}}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")


class TreeRss:
    """Peak of the summed RSS of a process and all its descendants."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry))
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo += children.get(pid, [])
        return tree

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self._tree():
                try:
                    with open(f"/proc/{pid}/status") as fh:
                        total += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) * 1024
                except (OSError, StopIteration):
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_once(name: str, stage: str, workdir: Path, engine: str, steps: int, extra: list[str]) -> dict:
    out = workdir / "runs" / f"{name}-{engine}-{time.strftime('%H%M%S')}"
    argv = [sys.executable, "-m", "trainer_core", "train", f"stage={stage}", f"dataset={name}",
            f"dataset_dir={workdir}", f"data_engine={engine}", f"max_steps={steps}", "cutoff_len=512",
            "per_device_train_batch_size=2", "logging_steps=1", f"output_dir={out}", "save_steps=100000",
            "resume_from_checkpoint=none", *extra]
    env = {**os.environ, "QIHUANG_HOME": str(workdir / "home"), "PYTHONUNBUFFERED": "1"}
    (workdir / "home" / "models").mkdir(parents=True, exist_ok=True)
    models = Path.home() / ".cache" / "qihuang" / "models"
    for model in models.iterdir() if models.is_dir() else []:  # the built-in model, not converted again
        link = workdir / "home" / "models" / model.name
        if not link.exists():
            link.symlink_to(model)
    began = time.monotonic()
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rss = TreeRss(process.pid)
    lines, marks = [], {}
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        now = time.monotonic() - began
        if "records →" in line and "prepared" not in marks:
            marks["prepared"] = now
        if line.startswith("step 1/") and "first_step" not in marks:
            marks["first_step"] = now
    code = process.wait()
    wall = time.monotonic() - began
    peak = rss.stop()
    prepared = next((line for line in lines if "records →" in line), "")
    found = re.search(r"([\d,]+) records → ([\d,]+) samples \((.*?) in ([\d.]+) s", prepared)
    records = int(found.group(1).replace(",", "")) if found else 0
    seconds = float(found.group(4)) if found else float("nan")
    return {"dataset": name, "stage": stage, "engine": engine, "exit_code": code, "wall_s": round(wall, 1),
            "data_s": seconds, "records": records, "records_per_s": round(records / seconds) if seconds else None,
            "how": found.group(3) if found else "", "to_prepared_s": round(marks.get("prepared", 0), 1),
            "to_first_step_s": round(marks.get("first_step", 0), 1), "peak_rss_gb": round(peak / 1e9, 2),
            "log_tail": lines[-5:] if code else []}


def run_llamafactory(venv: Path, name: str, stage: str, workdir: Path, steps: int, cold: bool) -> dict:
    """The same job under LLaMA-Factory (its CLI, the same file and dataset_info.json entry, the
    built-in model's folder, two preprocessing workers like ours): wall, the data phase (its first
    dataset line to "Running training"), start → first step, peak tree RSS, its cache's size."""
    import yaml

    from trainer_core.models import default_model_dir

    out = workdir / "runs" / f"lf-{name}-{time.strftime('%H%M%S')}"
    cache = workdir / "lf-cache"
    if cold:
        subprocess.run(["rm", "-rf", str(cache)], check=True)
    config = {"model_name_or_path": str(default_model_dir()), "stage": stage, "do_train": True,
              "finetuning_type": "lora", "lora_target": "all", "dataset": name, "dataset_dir": str(workdir),
              "template": "smollm2", "cutoff_len": 512, "preprocessing_num_workers": 2, "overwrite_cache": False,
              "output_dir": str(out), "overwrite_output_dir": True, "max_steps": steps,
              "per_device_train_batch_size": 2, "logging_steps": 1, "save_steps": 100000, "report_to": "none",
              "bf16": False, "fp16": False, "seed": 42}
    out.mkdir(parents=True, exist_ok=True)
    (out / "lf.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {**os.environ, "HF_HOME": str(cache / "hf"), "HF_DATASETS_CACHE": str(cache / "datasets"),
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(cache / "tmp")}
    (cache / "tmp").mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    process = subprocess.Popen([str(venv / "bin" / "llamafactory-cli"), "train", str(out / "lf.yaml")], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rss = TreeRss(process.pid)
    marks: dict[str, float] = {}
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        now = time.monotonic() - began
        tail = (tail + [line.rstrip()])[-8:]
        if "data_start" not in marks and ("Loading dataset" in line or "Converting format" in line
                                          or "Generating train split" in line):
            marks["data_start"] = now
        if "Running training" in line:
            marks["data_end"] = now
        if "first_step" not in marks and "'loss'" in line:
            marks["first_step"] = now
    code = process.wait()
    peak = rss.stop()
    size = subprocess.run(["du", "-sb", str(cache / "datasets")], capture_output=True, text=True).stdout.split()
    data_s = marks.get("data_end", 0) - marks.get("data_start", 0)
    return {"tool": "llamafactory", "dataset": name, "stage": stage, "engine": "datasets.map", "exit_code": code,
            "wall_s": round(time.monotonic() - began, 1), "data_s": round(data_s, 1),
            "to_first_step_s": round(marks.get("first_step", 0), 1), "peak_rss_gb": round(peak / 1e9, 2),
            "cache_gb": round(int(size[0]) / 1e9, 2) if size else None, "log_tail": tail if code else []}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/qihuang-large")
    parser.add_argument("--corpus-gb", type=float, default=5.0)
    parser.add_argument("--sft-records", type=int, default=2_000_000)
    parser.add_argument("--only", choices=("corpus", "sft"))
    parser.add_argument("--engine", default="auto", choices=("auto", "memory", "arrow"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--keep-cache", action="store_true", help="do not empty the cache before the cold run")
    parser.add_argument("--cold-only", action="store_true", help="leave out the warm run")
    parser.add_argument("--compare-llamafactory", metavar="VENV", help="also run LLaMA-Factory from this venv "
                        "(../shared/bench/llamafactory/setup.sh makes one) on the same files, after ours")
    parser.add_argument("--dry-run", action="store_true", help="tiny files (1 MB, 2,000 records), data_engine arrow")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    corpus_bytes = 1 << 20 if args.dry_run else int(args.corpus_gb * 1e9)
    sft_records = 2000 if args.dry_run else args.sft_records
    engine = "arrow" if args.dry_run and args.engine == "auto" else args.engine
    write_registry(workdir)
    results = []
    for name, stage in (("corpus", "pt"), ("sft", "sft")):
        if args.only and args.only != name:
            continue
        path = workdir / ("corpus.txt" if name == "corpus" else "sft.jsonl")
        if not args.dry_run and name == "sft" and sft_records != 2_000_000:
            path = workdir / f"sft-{sft_records}.jsonl"  # a smaller set beside the 2M one
        if not args.dry_run and name == "corpus" and corpus_bytes != int(5e9):
            path = workdir / f"corpus-{corpus_bytes}.txt"  # a slice beside the 5 GB one
        write_registry(workdir, **{f"{name}_file": path.name})
        stamp = workdir / f"{path.name}.made"
        wanted = str(corpus_bytes if name == "corpus" else sft_records)
        if not path.is_file() or not stamp.is_file() or stamp.read_text() != wanted:
            began = time.monotonic()
            (make_corpus(path, corpus_bytes) if name == "corpus" else make_sft(path, sft_records))
            stamp.write_text(wanted)
            print(f"made {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.monotonic() - began:.0f} s", flush=True)
        if not args.keep_cache:
            subprocess.run(["rm", "-rf", str(workdir / "home" / "cache")], check=True)
        for temperature in ("cold",) if args.cold_only else ("cold", "warm"):
            result = run_once(name, stage, workdir, engine, args.steps, [])
            result.update(temperature=temperature, file_gb=round(path.stat().st_size / 1e9, 3), tool="ours")
            print(json.dumps(result, ensure_ascii=False), flush=True)
            results.append(result)
        for temperature in ("cold",) if args.cold_only else ("cold", "warm"):
            if not args.compare_llamafactory:
                break
            result = run_llamafactory(Path(args.compare_llamafactory), name, stage, workdir, args.steps,
                                      cold=temperature == "cold")
            result.update(temperature=temperature, file_gb=round(path.stat().st_size / 1e9, 3))
            result["records"] = next((r["records"] for r in results if r["dataset"] == name), 0)
            result["records_per_s"] = round(result["records"] / result["data_s"]) if result["data_s"] else None
            print(json.dumps(result, ensure_ascii=False), flush=True)
            results.append(result)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    target = Path(args.out) / f"large_data{'-dry' if args.dry_run else ''}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.write_text(json.dumps({"machine": os.uname().nodename, "cores": os.cpu_count(), "runs": results},
                                 indent=1, ensure_ascii=False), encoding="utf-8")
    print("\n| data | tool, engine | run | file | records | data prep | records/s | start → first step "
          "| peak RSS (tree) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['dataset']} ({r['stage']}) | {r.get('tool', 'ours')}, {r['engine']} | {r['temperature']} | "
              f"{r['file_gb']} GB | "
              f"{r['records']:,} | {r['data_s']:.1f} s | {r['records_per_s'] or 0:,} | {r['to_first_step_s']} s | "
              f"{r['peak_rss_gb']} GB |")
    print(f"\nwritten {target}")
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
