"""Measure the workbench on the built-in model, optionally against LLaMA-Factory on the same jobs.

    python bench/run.py                                   # our figures only
    python bench/run.py --compare-llamafactory /tmp/lf/venv --runs 3 --epoch-records 2000

Every figure is the median of --runs runs (min and max beside it). With a LLaMA-Factory venv
(../shared/bench/llamafactory/setup.sh builds one) each measurement alternates ours / theirs
(A B A B ...) on the same machine, and the table gives ours/theirs ratios. Results: a table on
stdout and every run's figures in bench/results/<time>.json (bench/RESULTS.md quotes one).

What is measured (issue 6):
  train       30-step LoRA SFT (rank 8, all linear layers, cutoff 256, batch 4, lr 1e-4, fp32 on
              CPU) on a deterministic synthetic TCM set of 2,000 alpaca records: process wall
              time, start to first finished step, seconds per step after the first, non-pad
              tokens per second, peak RSS of the training process, loss at steps 1 and 30
  epoch       one epoch over --epoch-records records, then the loss of each adapter on 100
              held-out records (one scorer for both: trainer_core.evaluate.perplexity)
  preprocess  data pipeline (read + convert + tokenize) of 50,000 records, cold and warm cache
  ui          `python launch.py` to HTTP 200, and the idle RSS of the server
  chat        time to first token and tokens/s of a greedy reply on the built-in model
  export      merge the LoRA adapter and save the model: wall time and peak RSS
  dpo         --dpo-steps of LoRA DPO (sigmoid loss, beta 0.1, rank 8 on all linear layers, cutoff
              256, batch 2 pairs, lr 1e-4 cosine as presets/dpo_lora.yaml, fp32 on CPU) on the
              first dpo-steps x 2 pairs of data/tcm_preference.json (one epoch up to 121 pairs, the
              same pairs for both tools, each in its own shuffled order; LLaMA-Factory reads them as its
              alpaca ranking format): process wall, start to first step, seconds per step after the
              first, peak RSS, loss and reward accuracy at the first and last logged step, and the
              held-out preference accuracy of the last run's adapter (and the base) on the file's
              last 32 pairs, one scorer for both (trainer_core.evaluate.preference_accuracy). Not in the
              default --only: ask for it (--only dpo).
Peak RSS is sampled every 0.1 s over the process tree; the figure is the largest single process
(the trainer, the exporter), measured the same way for both tools.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python bench/run.py`: our package from this checkout
from trainer_core.procs import free_port  # noqa: E402

LF_HARNESS = REPO.parent / "shared" / "bench" / "llamafactory"
DATASET = "tcm_bench"
PREF_DATASET = "tcm_bench_pref"  # the first pairs of data/tcm_preference.json; its _heldout: the last 32
PREF_COLUMNS = {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}
PROMPT = "请介绍黄芪的功效与主治。"

# ---- the synthetic dataset ----------------------------------------------------------------------

HERBS = [("黄芪", "甘", "微温", "肺、脾"), ("人参", "甘、微苦", "微温", "脾、肺、心"),
         ("当归", "甘、辛", "温", "肝、心、脾"), ("白术", "苦、甘", "温", "脾、胃"),
         ("茯苓", "甘、淡", "平", "心、肺、脾、肾"), ("甘草", "甘", "平", "心、肺、脾、胃"),
         ("麻黄", "辛、微苦", "温", "肺、膀胱"), ("桂枝", "辛、甘", "温", "心、肺、膀胱"),
         ("柴胡", "辛、苦", "微寒", "肝、胆、肺"), ("黄连", "苦", "寒", "心、脾、胃、肝、胆、大肠"),
         ("金银花", "甘", "寒", "肺、心、胃"), ("川芎", "辛", "温", "肝、胆、心包"),
         ("熟地黄", "甘", "微温", "肝、肾"), ("白芍", "苦、酸", "微寒", "肝、脾"),
         ("半夏", "辛", "温", "脾、胃、肺"), ("陈皮", "苦、辛", "温", "肺、脾"),
         ("丹参", "苦", "微寒", "心、肝"), ("附子", "辛、甘", "大热", "心、肾、脾"),
         ("石膏", "甘、辛", "大寒", "肺、胃"), ("大黄", "苦", "寒", "脾、胃、大肠、肝、心包")]
EFFECTS = ["补气升阳", "益卫固表", "利水消肿", "托毒生肌", "健脾益气", "燥湿利水", "活血调经", "润肠通便", "发汗解表",
           "温通经脉", "疏肝解郁", "清热燥湿", "泻火解毒", "养血敛阴", "燥湿化痰", "理气健脾", "回阳救逆", "清热泻火"]
USES = ["脾气虚证", "肺气虚证", "气虚自汗", "水肿", "血虚萎黄", "月经不调", "风寒感冒", "胸痹心痛",
        "湿热泻痢", "痰湿咳嗽", "肝郁胁痛", "热病烦渴", "疮痈肿毒", "脘腹胀满", "亡阳虚脱", "肠燥便秘"]
CAUTIONS = ["表实邪盛、内有积滞者不宜用。", "阴虚火旺者慎用。", "孕妇慎用。",
            "不宜与藜芦同用。", "用量不宜过大，中病即止。", "脾胃虚寒者慎服。"]
QUESTIONS = ["{h}的功效是什么？", "请介绍{h}的性味归经。", "{h}主治哪些病证？", "使用{h}有哪些注意事项？",
             "{h}在临床上如何配伍？", "简述{h}的药性特点与应用。"]


def make_records(n: int, seed: int) -> list[dict]:
    """n alpaca records; each answer 30-300 Chinese characters, built from the facts above."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        herb, flavor, nature, meridians = rng.choice(HERBS)
        target = rng.randint(30, 300)
        sentences = [f"{herb}味{flavor}，性{nature}，归{meridians}经。"]
        while sum(map(len, sentences)) < target:
            kind = rng.random()
            if kind < 0.4:
                sentences.append(f"功能{rng.choice(EFFECTS)}，{rng.choice(EFFECTS)}。")
            elif kind < 0.75:
                sentences.append(f"临床常用于{rng.choice(USES)}、{rng.choice(USES)}等证，可与{rng.choice(HERBS)[0]}配伍。")
            else:
                sentences.append(rng.choice(CAUTIONS))
        answer = "".join(sentences)[:target]
        if not answer.endswith("。"):
            answer = answer[: target - 1].rstrip("，、") + "。"
        records.append({"instruction": rng.choice(QUESTIONS).format(h=herb), "input": "", "output": answer})
    return records


def write_data(folder: Path, records: int = 2000, seed: int = 1234, preprocess_records: int = 50_000) -> Path:
    """The benchmark's data folder, readable by both tools (one dataset_info.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    sets = {DATASET: make_records(records, seed), f"{DATASET}_heldout": make_records(100, seed + 1),
            f"{DATASET}_many": make_records(preprocess_records, seed + 2)}
    info = {}
    for name, rows in sets.items():
        (folder / f"{name}.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        info[name] = {"file_name": f"{name}.json", "formatting": "alpaca"}
    (folder / "dataset_info.json").write_text(json.dumps(info, ensure_ascii=False, indent=1), encoding="utf-8")
    return folder


def write_preference_data(folder: Path, train_pairs: int, heldout_pairs: int = 32) -> tuple[int, int]:
    """Split data/tcm_preference.json into PREF_DATASET (its first `train_pairs`, fewer where the
    file has not that many besides the held-out ones) and PREF_DATASET_heldout (its last
    `heldout_pairs`), registered in the folder's dataset_info.json as LLaMA-Factory's alpaca ranking
    format, which both tools read. Returns (train, held-out) pair counts."""
    pairs = json.loads((REPO / "data" / "tcm_preference.json").read_text(encoding="utf-8"))
    heldout = pairs[len(pairs) - heldout_pairs:]
    train = pairs[:max(1, min(train_pairs, len(pairs) - heldout_pairs))]
    info_path = folder / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    for name, rows in ((PREF_DATASET, train), (f"{PREF_DATASET}_heldout", heldout)):
        (folder / f"{name}.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        info[name] = {"file_name": f"{name}.json", "ranking": True, "columns": PREF_COLUMNS}
    info_path.write_text(json.dumps(info, ensure_ascii=False, indent=1), encoding="utf-8")
    return len(train), len(heldout)


# ---- measuring a process ------------------------------------------------------------------------

def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        try:  # a process may end between the listing and the read
            for task in list(Path(f"/proc/{p}/task").glob("*")):
                todo += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return seen


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Sampler(threading.Thread):
    """Largest RSS of any single process in the tree, and the first time `first_step` says yes."""

    def __init__(self, pid: int, start: float, first_step=None):
        super().__init__(daemon=True)
        self.pid, self.start_time, self.first_step = pid, start, first_step
        self.peak_mb = 0.0
        self.first_step_s: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for p in _tree(self.pid):
                self.peak_mb = max(self.peak_mb, _rss_mb(p))
            if self.first_step_s is None and self.first_step and self.first_step():
                self.first_step_s = time.perf_counter() - self.start_time
            time.sleep(0.1 if self.first_step_s is not None or not self.first_step else 0.02)


def _busy_cpu_seconds() -> float:
    """CPU seconds all processes of the machine have used since boot (/proc/stat: all but idle, iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the measured command, once waited for)."""
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def timed(argv: list[str], log: Path, env: dict | None = None, cwd: Path | None = None, first_step=None,
          timeout: float = 7200) -> dict:
    """Run a command to the end: wall seconds, peak RSS (MB), first-step seconds, exit code, and the
    cores other processes used meanwhile (a run beside another one's training is not comparable)."""
    busy, own = _busy_cpu_seconds(), _own_cpu_seconds()
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                cwd=cwd or REPO, start_new_session=True)
        sampler = Sampler(proc.pid, start, first_step)
        sampler.start()
        try:
            code = proc.wait(timeout=timeout)
        finally:
            sampler.done.set()
            sampler.join()
    wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed with exit code {code}; see {log}")
    others = (_busy_cpu_seconds() - busy) - (_own_cpu_seconds() - own)
    return {"wall_s": wall, "peak_rss_mb": sampler.peak_mb, "first_step_s": sampler.first_step_s,
            "others_cores": max(others, 0.0) / wall}


def _first_log_line(path: Path):
    """True once trainer_log.jsonl (both tools write one) holds its first entry."""
    def check() -> bool:
        try:
            return path.stat().st_size > 0 and b"\n" in path.read_bytes()
        except OSError:
            return False
    return check


def _log_entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- the two tools --------------------------------------------------------------------------------

def builtin_model_dir() -> str:
    sys.path.insert(0, str(REPO))
    from trainer_core.models import resolve_model_path

    return str(resolve_model_path("default", lambda *a: None))


JOB = dict(stage="sft", cutoff_len=256, finetuning_type="lora", lora_rank=8, lora_alpha=16, lora_dropout=0.0,
           lora_target="all", per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-4,
           lr_scheduler_type="cosine", warmup_ratio=0.1, bf16=False, seed=42, logging_steps=5, save_steps=100000)


# The DPO job: presets/dpo_lora.yaml's settings (lr, schedule, LoRA) at the SFT job's cutoff, 2 pairs a step.
DPO_JOB = dict(stage="dpo", pref_loss="sigmoid", pref_beta=0.1, cutoff_len=256, finetuning_type="lora", lora_rank=8,
               lora_alpha=16, lora_dropout=0.0, lora_target="all", per_device_train_batch_size=2,
               gradient_accumulation_steps=1, learning_rate=1e-4, lr_scheduler_type="cosine", warmup_ratio=0.1,
               bf16=False, seed=42, logging_steps=5, save_steps=100000)


def _dpo_result(result: dict, entries: list[dict], step_key: str, elapsed_key: str, accuracy_key: str,
                margin_key: str) -> dict:
    """The DPO figures from a tool's log entries (those with a loss, in order): loss and reward
    accuracy and margin at the first and the last logged step (TRL averages the rewards over the
    steps since the previous log), seconds per step between them."""
    first, last = entries[0], entries[-1]
    steps_after_first = last[step_key] - first[step_key]
    result.update(
        steps=last[step_key], loss_first=first["loss"], loss_last=last["loss"],
        s_per_step=(_seconds(last[elapsed_key]) - _seconds(first[elapsed_key])) / max(steps_after_first, 1),
        accuracy_first=first.get(accuracy_key), accuracy_last=last.get(accuracy_key),
        margin_last=last.get(margin_key))
    return result


class Ours:
    name = "ours"

    def __init__(self, work: Path, data: Path, model: str, overrides: dict, variant: dict | None = None):
        # A variant (e.g. gradient_checkpointing=true) is our job with more overrides, in its own column.
        if variant:
            self.name = "ours, " + ", ".join(f"{k}={v}" for k, v in variant.items())
        folder = "ours" if not variant else "ours-" + "-".join(str(k) for k in variant)
        self.work, self.data, self.model = work / folder, data, model
        self.overrides = {**overrides, **(variant or {})}
        self.work.mkdir(parents=True, exist_ok=True)

    def train(self, tag: str, max_steps: int, max_samples: int | None = None) -> dict:
        import yaml

        out = self.work / tag
        shutil.rmtree(out, ignore_errors=True)
        # LLaMA-Factory's side re-tokenizes every run; so does ours (the warm cache is its own figure).
        from trainer_core.models import qihuang_home

        shutil.rmtree(qihuang_home() / "cache" / "tokenized", ignore_errors=True)
        config = {**JOB, "model_name_or_path": self.model, "dataset_dir": str(self.data), "dataset": DATASET,
                  "template": "auto", "output_dir": str(out), "num_gpus": 0, "resume_from_checkpoint": "none",
                  "packing": True, "max_steps": max_steps, "num_train_epochs": 1.0, **self.overrides}
        if max_samples:
            config["max_samples"] = max_samples
        path = self.work / f"{tag}.yaml"
        path.write_text(yaml.safe_dump(config, allow_unicode=True))
        result = timed([sys.executable, "-m", "trainer_core", "train", str(path)], self.work / f"{tag}.log",
                       first_step=_first_log_line(out / "trainer_log.jsonl"))
        entries = [e for e in _log_entries(out / "trainer_log.jsonl") if e.get("loss") is not None]
        first, last = entries[0], entries[-1]
        steps_after_first = last["step"] - first["step"]
        result.update(
            steps=last["step"], loss_first=first["loss"], loss_last=last["loss"],
            s_per_step=(last["elapsed_seconds"] - first["elapsed_seconds"]) / max(steps_after_first, 1),
            tokens_per_s=last["tokens_per_second"], adapter=str(out / "adapter"))
        return result

    def dpo(self, tag: str, max_steps: int) -> dict:
        import yaml

        out = self.work / tag
        shutil.rmtree(out, ignore_errors=True)
        config = {**DPO_JOB, "model_name_or_path": self.model, "dataset_dir": str(self.data), "dataset": PREF_DATASET,
                  "template": "auto", "output_dir": str(out), "num_gpus": 0, "resume_from_checkpoint": "none",
                  "max_steps": max_steps, "num_train_epochs": 1.0, **self.overrides}
        path = self.work / f"{tag}.yaml"
        path.write_text(yaml.safe_dump(config, allow_unicode=True))
        result = timed([sys.executable, "-m", "trainer_core", "train", str(path)], self.work / f"{tag}.log",
                       first_step=_first_log_line(out / "trainer_log.jsonl"))
        entries = [e for e in _log_entries(out / "trainer_log.jsonl") if e.get("loss") is not None]
        result["adapter"] = str(out / "adapter")
        return _dpo_result(result, entries, "step", "elapsed_seconds", "rewards_accuracy", "rewards_margin")

    def preprocess(self, cold: bool) -> dict:
        cache = self.work / "token-cache"
        if cold:
            shutil.rmtree(cache, ignore_errors=True)
        script = (
            "import json,sys,time\n"
            "t=time.perf_counter()\n"
            "from trainer_core.data import load_datasets\n"
            "from trainer_core.models import load_tokenizer\n"
            "from trainer_core.tokenization import tokenize_dataset\n"
            f"tok=load_tokenizer({self.model!r}, False)\n"
            "t0=time.perf_counter()\n"
            f"ex,_=load_datasets('{DATASET}_many',{str(self.data)!r},'sft')\n"
            f"s,st=tokenize_dataset(ex,tok,'sft',256,{str(cache)!r},lambda *a:None)\n"
            "print(json.dumps({'records':len(ex),'pipeline_s':time.perf_counter()-t0,'cached':st.cached}))\n")
        return _pipeline_result(self.work / "preprocess.log", [sys.executable, "-c", script], None, None)

    def ui(self, port: int) -> dict:
        return probe_ui([sys.executable, "launch.py", "--port", str(port), "--workdir", str(self.work / "ui")],
                        port, self.work / "ui.log", REPO, None)

    def chat(self) -> dict:
        script = (
            "import json,time\n"
            "from trainer_core.chat import ChatSession, GenerationSettings\n"
            f"s=ChatSession(); s.load({self.model!r}, log=lambda *a: None)\n"
            "settings=GenerationSettings(max_new_tokens=128, do_sample=False, repetition_penalty=1.0)\n"
            "out=[]\n"
            "for _ in range(4):\n"
            "    t=time.perf_counter(); first=None; text=''\n"
            f"    for text in s.stream([], {PROMPT!r}, settings=settings):\n"
            "        first = first or (time.perf_counter()-t if text else None)\n"
            "    total=time.perf_counter()-t; n=len(s.tokenizer(text, add_special_tokens=False)['input_ids'])\n"
            "    out.append({'ttft_s':first,'tokens':n,'tokens_per_s':(n-1)/(total-first) if n>1 else 0})\n"
            "print(json.dumps(out[1:]))\n")
        return _chat_result(self.work / "chat.log", [sys.executable, "-c", script], None)

    def export(self, adapter: str) -> dict:
        out = self.work / "export"
        shutil.rmtree(out, ignore_errors=True)
        return timed([sys.executable, "-m", "trainer_core", "export", "--model", self.model, "--adapter", adapter,
                      "--output_dir", str(out), "--gguf", "none"], self.work / "export.log")


class LlamaFactory:
    name = "llamafactory"

    def __init__(self, work: Path, data: Path, model: str, venv: Path, overrides: dict | None = None):
        self.work, self.data, self.model, self.venv = work / "llamafactory", data, model, venv
        self.overrides = overrides or {}  # its training config, e.g. bf16=true use_cpu=true
        self.work.mkdir(parents=True, exist_ok=True)
        home = self.work / "home"
        # As ../shared/bench/llamafactory/run.sh: every cache inside the work folder, no hub.
        self.env = {"HF_HOME": str(home / "hf"), "XDG_CACHE_HOME": str(home / "cache"), "TMPDIR": str(home / "tmp"),
                    "GRADIO_TEMP_DIR": str(home / "tmp" / "gradio"), "MPLCONFIGDIR": str(home / "mpl"),
                    "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
                    "QIHUANG_ALLOCATOR": "system"}
        for key in ("TMPDIR", "GRADIO_TEMP_DIR"):
            Path(self.env[key]).mkdir(parents=True, exist_ok=True)

    def _yaml(self, tag: str, config: dict) -> Path:
        import yaml

        path = self.work / f"{tag}.yaml"
        path.write_text(yaml.safe_dump(config, allow_unicode=True))
        return path

    def train(self, tag: str, max_steps: int, max_samples: int | None = None) -> dict:
        out = self.work / tag
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(Path(self.env["HF_HOME"]) / "datasets", ignore_errors=True)  # re-tokenize every run
        config = {**JOB, "model_name_or_path": self.model, "trust_remote_code": False, "do_train": True,
                  "template": "smollm2", "dataset_dir": str(self.data), "dataset": DATASET, "output_dir": str(out),
                  "overwrite_cache": True, "preprocessing_num_workers": 1, "dataloader_num_workers": 0,
                  "logging_first_step": True, "plot_loss": True, "overwrite_output_dir": True, "report_to": "none",
                  "fp16": False, "include_num_input_tokens_seen": "non_padding", **self.overrides}
        config.update(max_steps=max_steps) if max_steps > 0 else config.update(num_train_epochs=1.0)
        if max_samples:
            config["max_samples"] = max_samples
        path = self._yaml(tag, config)
        result = timed([str(self.venv / "bin" / "llamafactory-cli"), "train", str(path)], self.work / f"{tag}.log",
                       env=self.env, cwd=self.work, first_step=_first_log_line(out / "trainer_log.jsonl"))
        entries = [e for e in _log_entries(out / "trainer_log.jsonl") if e.get("loss") is not None]
        first, last = entries[0], entries[-1]
        steps_after_first = last["current_steps"] - first["current_steps"]
        elapsed = _seconds(last["elapsed_time"])
        result.update(
            steps=last["current_steps"], loss_first=first["loss"], loss_last=last["loss"],
            s_per_step=(elapsed - _seconds(first["elapsed_time"])) / max(steps_after_first, 1),
            tokens_per_s=last.get("total_tokens", 0) / elapsed if elapsed else None, adapter=str(out))
        return result

    def dpo(self, tag: str, max_steps: int) -> dict:
        out = self.work / tag
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(Path(self.env["HF_HOME"]) / "datasets", ignore_errors=True)
        # pref_ftx 0: no SFT term beside the DPO loss (its default; said so it stays the job).
        config = {**DPO_JOB, "model_name_or_path": self.model, "trust_remote_code": False, "do_train": True,
                  "template": "smollm2", "dataset_dir": str(self.data), "dataset": PREF_DATASET, "output_dir": str(out),
                  "pref_ftx": 0.0, "overwrite_cache": True, "preprocessing_num_workers": 1,
                  "dataloader_num_workers": 0, "logging_first_step": True, "plot_loss": True,
                  "overwrite_output_dir": True, "report_to": "none", "fp16": False, "max_steps": max_steps,
                  **self.overrides}
        path = self._yaml(tag, config)
        result = timed([str(self.venv / "bin" / "llamafactory-cli"), "train", str(path)], self.work / f"{tag}.log",
                       env=self.env, cwd=self.work, first_step=_first_log_line(out / "trainer_log.jsonl"))
        result["adapter"] = str(out)
        return _dpo_result(result, llamafactory_dpo_entries(out), "step", "elapsed_time", "rewards/accuracies",
                           "rewards/margins")

    def preprocess(self, cold: bool) -> dict:
        if cold:
            shutil.rmtree(Path(self.env["HF_HOME"]) / "datasets", ignore_errors=True)
        args = {"model_name_or_path": self.model, "stage": "sft", "do_train": True, "finetuning_type": "lora",
                "template": "smollm2", "dataset_dir": str(self.data), "dataset": f"{DATASET}_many", "cutoff_len": 256,
                "overwrite_cache": cold, "preprocessing_num_workers": 1, "output_dir": str(self.work / "pre"),
                "report_to": "none"}
        script = (
            "import json,time\n"
            "from llamafactory.hparams import get_train_args\n"
            "from llamafactory.model import load_tokenizer\n"
            "from llamafactory.data import get_dataset, get_template_and_fix_tokenizer\n"
            f"m,d,t,f,g=get_train_args({args!r})\n"
            "mod=load_tokenizer(m); tpl=get_template_and_fix_tokenizer(mod['tokenizer'], d)\n"
            "t0=time.perf_counter()\n"
            "ds=get_dataset(tpl,m,d,t,stage='sft',**mod)\n"
            "print(json.dumps({'records':len(ds['train_dataset']),'pipeline_s':time.perf_counter()-t0,"
            f"'cached':{not cold}}}))\n")
        return _pipeline_result(self.work / "preprocess.log", [str(self.venv / "bin" / "python"), "-c", script],
                                self.env, self.work)

    def ui(self, port: int) -> dict:
        env = {**self.env, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
        return probe_ui([str(self.venv / "bin" / "llamafactory-cli"), "webui"], port, self.work / "ui.log",
                        self.work, env)

    def chat(self) -> dict:
        args = {"model_name_or_path": self.model, "template": "smollm2", "infer_backend": "huggingface",
                "do_sample": False, "max_new_tokens": 128, "repetition_penalty": 1.0}
        script = (
            "import json,time\n"
            "from llamafactory.chat import ChatModel\n"
            f"c=ChatModel({args!r}); tok=c.engine.tokenizer\n"
            "out=[]\n"
            "for _ in range(4):\n"
            "    t=time.perf_counter(); first=None; text=''\n"
            f"    for piece in c.stream_chat([{{'role':'user','content':{PROMPT!r}}}]):\n"
            "        first = first or (time.perf_counter()-t if piece else None); text += piece\n"
            "    total=time.perf_counter()-t; n=len(tok(text, add_special_tokens=False)['input_ids'])\n"
            "    out.append({'ttft_s':first,'tokens':n,'tokens_per_s':(n-1)/(total-first) if n>1 else 0})\n"
            "print(json.dumps(out[1:]))\n")
        return _chat_result(self.work / "chat.log", [str(self.venv / "bin" / "python"), "-c", script], self.env)

    def export(self, adapter: str) -> dict:
        out = self.work / "export"
        shutil.rmtree(out, ignore_errors=True)
        path = self._yaml("export", {"model_name_or_path": self.model, "adapter_name_or_path": adapter,
                                     "template": "smollm2", "finetuning_type": "lora", "export_dir": str(out),
                                     "export_size": 5, "export_device": "cpu", "export_legacy_format": False})
        return timed([str(self.venv / "bin" / "llamafactory-cli"), "export", str(path)], self.work / "export.log",
                     env=self.env, cwd=self.work)


def llamafactory_dpo_entries(out: Path) -> list[dict]:
    """LLaMA-Factory's training log entries of a run folder, each with its elapsed time. Its
    trainer_log.jsonl has the times (H:MM:SS) and the reward accuracy but no margins; the Trainer's
    log history (trainer_state.json, written at the end) has every reward figure, keyed by step."""
    timing = {e["current_steps"]: e for e in _log_entries(out / "trainer_log.jsonl")}
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [{**h, "elapsed_time": timing[h["step"]]["elapsed_time"]} for h in history
            if h.get("loss") is not None and h["step"] in timing]


def _seconds(text: str | float) -> float:
    """LLaMA-Factory logs elapsed time as H:MM:SS."""
    if isinstance(text, (int, float)):
        return float(text)
    seconds = 0.0
    for part in str(text).split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def _pipeline_result(log: Path, argv: list[str], env: dict | None, cwd: Path | None) -> dict:
    result = timed(argv, log, env=env, cwd=cwd)
    data = json.loads(log.read_text().strip().splitlines()[-1])
    result.update(data, records_per_s=data["records"] / data["pipeline_s"])
    return result


def _chat_result(log: Path, argv: list[str], env: dict | None) -> dict:
    try:
        timed(argv, log, env=env)
    except RuntimeError:
        # LLaMA-Factory's chat aborts at interpreter exit ("terminate called without an active
        # exception", exit -6) after printing its figures; keep them when they are there.
        if not log.read_text().strip().splitlines()[-2].startswith("[{"):
            raise
    lines = [line for line in log.read_text().strip().splitlines() if line.startswith("[{")]
    replies = json.loads(lines[-1])
    return {"ttft_s": statistics.median(r["ttft_s"] for r in replies),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in replies),
            "reply_tokens": replies[0]["tokens"]}


def probe_ui(argv: list[str], port: int, log: Path, cwd: Path, env: dict | None, idle_s: float = 10) -> dict:
    """Start the web UI, time it to HTTP 200, sample its idle RSS, stop exactly what was started."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env={**os.environ, **(env or {})},
                                start_new_session=True)
    try:
        ready = None
        while time.perf_counter() - start < 240 and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    if response.status == 200:
                        ready = time.perf_counter() - start
                        break
            except OSError:
                time.sleep(0.05)
        if ready is None:
            raise RuntimeError(f"{argv[0]} web UI never answered HTTP 200; see {log}")
        time.sleep(idle_s)
        idle = sum(_rss_mb(p) for p in _tree(proc.pid))
        return {"ready_s": ready, "idle_rss_mb": idle}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def heldout_loss(model: str, adapter: str, data: Path) -> float:
    """Loss of base + adapter on the held-out records, scored by one implementation for both tools
    (tokens from the base model's own chat template)."""
    script = (
        "import json\n"
        "from peft import PeftModel\n"
        "from trainer_core.data import load_datasets\n"
        "from trainer_core.evaluate import perplexity\n"
        "from trainer_core.models import load_for_inference, load_tokenizer\n"
        f"model,_=load_for_inference({model!r}, log=lambda *a: None)\n"
        f"model=PeftModel.from_pretrained(model,{adapter!r}).eval()\n"
        f"tok=load_tokenizer({model!r}, False)\n"
        f"ex,_=load_datasets('{DATASET}_heldout',{str(data)!r},'sft')\n"
        "print(json.dumps(perplexity(model,tok,ex,cutoff_len=256)))\n")
    log = Path(adapter).parent / "heldout.log"
    timed([sys.executable, "-c", script], log)
    return json.loads(log.read_text().strip().splitlines()[-1])["loss"]


def heldout_preference(model: str, adapter: str | None, data: Path) -> dict:
    """Preference accuracy of base (+ adapter) on the held-out pairs, scored by one implementation for
    both tools (our tokens: the base model's own chat template, cutoff 256 as in training)."""
    script = (
        "import json\n"
        "from trainer_core.data import read_preference_dataset\n"
        "from trainer_core.evaluate import preference_accuracy\n"
        "from trainer_core.models import load_for_inference, load_tokenizer\n"
        f"model,_=load_for_inference({model!r}, log=lambda *a: None)\n"
        + (f"from peft import PeftModel\nmodel=PeftModel.from_pretrained(model,{adapter!r})\n" if adapter else "")
        + "model=model.eval()\n"
        f"tok=load_tokenizer({model!r}, False)\n"
        f"pairs,problems=read_preference_dataset('{PREF_DATASET}_heldout',{str(data)!r})\n"
        "assert not problems, problems\n"
        "print(json.dumps(preference_accuracy(model,tok,pairs,cutoff_len=256)))\n")
    log = (Path(adapter).parent if adapter else data) / "heldout_preference.log"
    timed([sys.executable, "-c", script], log)
    return json.loads(log.read_text().strip().splitlines()[-1])


# ---- the run ----------------------------------------------------------------------------------------

FIGURES = [  # (section, key, label, unit, lower is better)
    ("train", "wall_s", "30-step LoRA SFT, process wall", "s", True),
    ("train", "first_step_s", "start → first finished step", "s", True),
    ("train", "s_per_step", "seconds per step after the first", "s", True),
    ("train", "tokens_per_s", "non-pad tokens / s", "tok/s", False),
    ("train", "peak_rss_mb", "peak RSS of the trainer", "MB", True),
    ("train", "loss_first", "loss at step 1", "", None),
    ("train", "loss_last", "loss at step 30", "", None),
    ("epoch", "wall_s", "one epoch, process wall", "s", True),
    ("epoch", "steps", "optimizer steps in the epoch", "", None),
    ("epoch", "heldout_loss", "held-out loss after the epoch", "", True),
    ("preprocess_cold", "records_per_s", "preprocess (read+tokenize), cold", "rec/s", False),
    ("preprocess_warm", "records_per_s", "preprocess (read+tokenize), warm cache", "rec/s", False),
    ("ui", "ready_s", "web UI start → HTTP 200", "s", True),
    ("ui", "idle_rss_mb", "web UI idle RSS", "MB", True),
    ("chat", "ttft_s", "chat: time to first token", "s", True),
    ("chat", "tokens_per_s", "chat: tokens / s", "tok/s", False),
    ("export", "wall_s", "export (merge + save), wall", "s", True),
    ("export", "peak_rss_mb", "export peak RSS", "MB", True),
    ("dpo", "wall_s", "DPO LoRA, process wall", "s", True),
    ("dpo", "first_step_s", "DPO: start → first finished step", "s", True),
    ("dpo", "s_per_step", "DPO: seconds per step after the first", "s", True),
    ("dpo", "peak_rss_mb", "DPO: peak RSS of the trainer", "MB", True),
    ("dpo", "loss_first", "DPO: loss at step 1", "", None),
    ("dpo", "loss_last", "DPO: loss at the last step", "", None),
    ("dpo", "accuracy_last", "DPO: reward accuracy, last logged steps", "", False),
    ("dpo", "margin_last", "DPO: reward margin, last logged steps", "", None),
    ("dpo", "others_cores", "DPO: cores other processes used meanwhile", "", None),
    ("dpo", "heldout_accuracy_base", "DPO: held-out preference accuracy of the base", "", None),
    ("dpo", "heldout_accuracy", "DPO: held-out preference accuracy after (last run)", "", False),
    ("dpo", "heldout_margin", "DPO: held-out mean log-prob margin after (last run)", "", False),
]


def alternate(tools: list, runs: int, measure, label: str) -> dict[str, list[dict]]:
    """Run `measure(tool, i)` for each tool in turn, `runs` rounds: A B A B ..."""
    results: dict[str, list[dict]] = {tool.name: [] for tool in tools}
    for i in range(runs):
        for tool in tools:
            print(f"[{time.strftime('%H:%M:%S')}] {label} {tool.name} {i + 1}/{runs}", flush=True)
            results[tool.name].append(measure(tool, i))
    return results


def summarize(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare-llamafactory", metavar="VENV", help="a LLaMA-Factory 0.9.5 venv (its setup.sh)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median, min, max)")
    parser.add_argument("--epoch-records", type=int, default=2000, help="records in the one-epoch run")
    parser.add_argument("--epoch-runs", type=int, default=1, help="runs of the epoch (it is long)")
    parser.add_argument("--train-steps", type=int, default=30, help="steps of the short training run")
    parser.add_argument("--dpo-steps", type=int, default=20, help="steps of the DPO run (2 pairs a step)")
    parser.add_argument("--preprocess-records", type=int, default=50_000, help="records in the preprocessing run")
    parser.add_argument("--only", default="train,epoch,preprocess,ui,chat,export",
                        help="which sections to run (also: dpo)")
    parser.add_argument("--workdir", default="/tmp/qihuang-bench", help="scratch folder (data, runs, logs)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="our config overrides")
    parser.add_argument("--lf-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="LLaMA-Factory's training overrides (e.g. bf16=true use_cpu=true beside --set bf16=true)")
    parser.add_argument("--train-variant", nargs="*", default=[], metavar="KEY=VALUE",
                        help="also run the training figures with these overrides, as a third column")
    opts = parser.parse_args(argv)

    work = Path(opts.workdir)
    data = write_data(work / "data", preprocess_records=opts.preprocess_records)
    model = builtin_model_dir()
    overrides = {k: yaml_value(v) for k, v in (item.split("=", 1) for item in opts.set)}
    tools: list = [Ours(work, data, model, overrides)]
    if opts.compare_llamafactory:
        lf_overrides = {k: yaml_value(v) for k, v in (item.split("=", 1) for item in opts.lf_set)}
        tools.append(LlamaFactory(work, data, model, Path(opts.compare_llamafactory), lf_overrides))
    sections = opts.only.split(",")
    raw: dict[str, dict[str, list[dict]]] = {}
    adapters: dict[str, str] = {}
    # written after every section, so a failure late in a long run keeps what was measured
    path = REPO / "bench" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"

    if "train" in sections:
        train_tools = list(tools)
        if opts.train_variant:
            variant = {k: yaml_value(v) for k, v in (item.split("=", 1) for item in opts.train_variant)}
            train_tools.insert(1, Ours(work, data, model, overrides, variant))
        raw["train"] = alternate(train_tools, opts.runs, lambda t, i: t.train(f"train-{i}", opts.train_steps),
                                 f"train {opts.train_steps} steps")
        write_report(path, raw, opts)
        adapters = {t.name: raw["train"][t.name][-1]["adapter"] for t in tools}
    if "epoch" in sections:
        def epoch(tool, i):
            result = tool.train(f"epoch-{i}", -1, opts.epoch_records)
            result["heldout_loss"] = heldout_loss(model, result["adapter"], data)
            return result
        raw["epoch"] = alternate(tools, opts.epoch_runs, epoch, f"epoch of {opts.epoch_records}")
        write_report(path, raw, opts)
    if "preprocess" in sections:
        raw["preprocess_cold"] = alternate(tools, opts.runs, lambda t, i: t.preprocess(cold=True), "preprocess cold")
        write_report(path, raw, opts)
        raw["preprocess_warm"] = alternate(tools, opts.runs, lambda t, i: t.preprocess(cold=False), "preprocess warm")
        write_report(path, raw, opts)
    if "ui" in sections:
        raw["ui"] = alternate(tools, opts.runs, lambda t, i: t.ui(free_port()), "web UI")
        write_report(path, raw, opts)
    if "chat" in sections:
        raw["chat"] = alternate(tools, opts.runs, lambda t, i: t.chat(), "chat")
        write_report(path, raw, opts)
    if "export" in sections:
        if not adapters:
            adapters = {t.name: t.train("export-source", 2)["adapter"] for t in tools}
        raw["export"] = alternate(tools, opts.runs, lambda t, i: t.export(adapters[t.name]), "export")
        write_report(path, raw, opts)

    if "dpo" in sections:
        pairs, heldout = write_preference_data(data, opts.dpo_steps * DPO_JOB["per_device_train_batch_size"])
        print(f"DPO: {pairs} training pairs, {heldout} held out; load average {open('/proc/loadavg').read()[:14]}",
              flush=True)
        raw["dpo"] = alternate(tools, opts.runs, lambda t, i: t.dpo(f"dpo-{i}", opts.dpo_steps),
                               f"dpo {opts.dpo_steps} steps")
        write_report(path, raw, opts)
        base = heldout_preference(model, None, data)
        for tool in tools:  # the last run's adapter, one scorer for both tools; the base beside it
            last = raw["dpo"][tool.name][-1]
            scored = heldout_preference(model, last["adapter"], data)
            last.update(heldout_accuracy=scored["accuracy"] / 100, heldout_margin=scored["margin"],
                        heldout_pairs=scored["total"], heldout_accuracy_base=base["accuracy"] / 100,
                        heldout_margin_base=base["margin"])
        write_report(path, raw, opts)

    summary = write_report(path, raw, opts)
    print(table(summary, opts.epoch_records))
    print(f"\nAll figures: {path}")
    return 0


def write_report(path: Path, raw: dict, opts: argparse.Namespace) -> dict:
    """The figures so far (medians, min, max per tool) and every run's raw values, as JSON."""
    summary = {section: {name: {key: summarize([r.get(key) for r in runs]) for key in runs[0]
                                if isinstance(runs[0].get(key), (int, float))}
                         for name, runs in by_tool.items()} for section, by_tool in raw.items()}
    report = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "command": " ".join([sys.executable, *sys.argv]),
              "machine": machine(), "versions": versions(opts.compare_llamafactory), "options": vars(opts),
              "summary": summary, "raw": raw}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, ensure_ascii=False, indent=1, default=str))
    return summary


def yaml_value(text: str):
    import yaml

    return yaml.safe_load(text)


def table(summary: dict, epoch_records: int) -> str:
    """Markdown: each figure as median (min–max) per tool, and ours/theirs (each of our columns)."""
    names = list(dict.fromkeys(name for section in summary.values() for name in section))
    ours_names = [n for n in names if n != "llamafactory"]
    titles = {"ours": "ours", "llamafactory": "LLaMA-Factory"}
    header = [titles.get(n, n) for n in names]
    if "llamafactory" in names:
        header += [f"{titles.get(n, n)} / theirs" for n in ours_names]
    lines = ["| figure | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for section, key, label, unit, _ in FIGURES:
        if section not in summary:
            continue
        label = label.replace("one epoch", f"one epoch ({epoch_records} records)")
        cells = [summary[section].get(n, {}).get(key, {}) for n in names]
        row = [_cell(stats, unit) for stats in cells]
        if "llamafactory" in names:
            theirs = summary[section].get("llamafactory", {}).get(key, {})
            for n in ours_names:
                ours = summary[section].get(n, {}).get(key, {})
                row.append(f"{ours['median'] / theirs['median']:.2f}" if ours and theirs and theirs["median"] else "–")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _cell(stats: dict, unit: str) -> str:
    if not stats:
        return "–"
    text = f"{_num(stats['median'])} {unit}".strip()
    if stats["n"] > 1:
        text += f" ({_num(stats['min'])}–{_num(stats['max'])})"
    return text


def _num(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem / 2**20, 1), "python": platform.python_version(),
            "loadavg_at_end": open("/proc/loadavg").read().split()[:3]}


def versions(venv: str | None) -> dict:
    import importlib.metadata as md

    ours = {p: md.version(p) for p in ("torch", "transformers", "peft", "accelerate", "gradio")}
    result = {"ours": ours}
    if venv:
        script = ("import importlib.metadata as md, json; print(json.dumps({p: md.version(p) for p in "
                  "('llamafactory','torch','transformers','peft','datasets','gradio')}))")
        out = subprocess.run([str(Path(venv) / "bin" / "python"), "-c", script], capture_output=True, text=True)
        result["llamafactory"] = json.loads(out.stdout) if out.returncode == 0 else out.stderr[-300:]
    return result


if __name__ == "__main__":
    sys.exit(main())
