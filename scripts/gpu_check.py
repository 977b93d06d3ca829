"""One prepared GPU check: the model-zoo parity tests on the GPU, the planner against measured memory and
speed, then a random ~0.5B Qwen2 trained through our CLI in five modes, with speed and memory.

    bash scripts/gpu_check.sh                      # on a machine with one NVIDIA GPU, about 6-8 minutes
    bash scripts/gpu_check.sh --cpu-smoke          # the same flow on CPU with a tiny model (tests this script)
    bash scripts/gpu_check.sh --download-wheels    # on a machine with network: fill WHEELS_DIR for the GPU machine

Nothing is downloaded while checking: the tokenizer (byte-level BPE), the model (random weights, Qwen2
architecture) and the data (synthetic TCM alpaca records) are built here, in a temporary folder.
deepspeed and bitsandbytes, when missing, are installed from the wheels in WHEELS_DIR (default: .wheels
in the repository root). Each mode runs as a real job (`python -m trainer_core train ... --detach`);
a failing mode is recorded with the one-line error from its status.json, and the next one runs.
First, the model-zoo parity tests (every test marked `zoo`, tests/test_zoo_parity.py) run on the GPU:
`python -m pytest -m zoo -q -rA --junitxml ...` with QIHUANG_TEST_DEVICE=cuda, one PASS/FAIL line per case.
Then the planner comparison (bench/planner_gpu.py): eight LoRA/full cases with and without gradient
checkpointing on the same random model, each trained a few steps through the trainer's own path in one
process; peak CUDA memory and step time beside the plan, and the measured MFU (planner_gpu.json, which
`python -m trainer_core plan --mfu` reads).
The Markdown report goes to $OUT/gpu_check.md when OUT is set, else to bench/GPU-<card>.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_WHEELS_DIR = ROOT / ".wheels"
NEEDED_PACKAGES = ("deepspeed", "bitsandbytes")
# What deepspeed and bitsandbytes need beyond the GPU image's own packages (see the device notes).
WHEEL_EXTRAS = ("hjson", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions")
DATASET_NAME = "gpu_check_tcm"

# mode -> (CLI overrides, packages it needs, timeout in seconds on a GPU)
MODES: dict[str, tuple[list[str], tuple[str, ...], int]] = {
    "lora_bf16": (["finetuning_type=lora", "bf16=true"], (), 90),
    "qlora_4bit": (["finetuning_type=qlora", "bf16=true"], ("bitsandbytes",), 90),
    "full_z2": (["finetuning_type=full", "deepspeed=z2", "num_gpus=1", "bf16=true"], ("deepspeed",), 120),
    "full_z3": (["finetuning_type=full", "deepspeed=z3", "num_gpus=1", "bf16=true"], ("deepspeed",), 120),
    "full_z3_offload": (["finetuning_type=full", "deepspeed=z3_offload", "num_gpus=1", "bf16=true"],
                        ("deepspeed",), 180),
}
CPU_SMOKE_TIMEOUT = 240  # per mode; DeepSpeed compiles an op on its first CPU run
ZOO_TIMEOUT = 150  # seconds for the zoo parity tests on a GPU (--zoo-timeout); the modes get the rest of the budget
ZOO_SMOKE_CASES = 2  # --cpu-smoke runs only the first cases of the zoo tests: it checks this script, not the zoo
ZOO_MARK = "zoo"
PLANNER_TIMEOUT = 120  # seconds for the planner comparison (--planner-timeout); about 80 expected on an H100
PLANNER_SCRIPT = ROOT / "bench" / "planner_gpu.py"
# The 0.5B model's shape: the public numbers of Qwen2.5-0.5B, shipped as data (no download).
MODEL_CONFIG = ROOT / "presets" / "models" / "qwen2.5-0.5b" / "config.json"

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class ModeResult:
    mode: str
    state: str = "not run"
    error: str = ""
    seconds_per_step: float | None = None
    tokens_per_second: float | None = None
    peak_gib: float | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    steps: int = 0
    wall_seconds: float = 0.0
    console_tail: list[str] = field(default_factory=list)


# ---- packages -------------------------------------------------------------------------------------

def missing_packages(names: tuple[str, ...] = NEEDED_PACKAGES) -> list[str]:
    importlib.invalidate_caches()
    return [name for name in names if importlib.util.find_spec(name) is None]


def install_from_wheels(wheels_dir: Path) -> list[str]:
    """Install whatever of deepspeed/bitsandbytes is missing from local wheels; returns what is still missing."""
    missing = missing_packages()
    if not missing:
        return []
    print(f"Missing: {', '.join(missing)}; installing from {wheels_dir}", flush=True)
    if not wheels_dir.is_dir() or not any(wheels_dir.glob("*.whl")):
        print(f"  no wheels in {wheels_dir}; make them with `bash scripts/gpu_check.sh --download-wheels` on a "
              "machine with network and carry that folder", flush=True)
        return missing
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-cache-dir",
           "--find-links", str(wheels_dir)]
    done = subprocess.run([*pip, *missing], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        # A read-only environment or an unmet pin: install the wheels alone into a folder of their own.
        print("  pip install into this environment failed:\n    " + _last_lines(done.stderr, 6).replace("\n", "\n    "))
        target = Path(tempfile.gettempdir()) / "gpu_check_site"
        wheels = [str(p) for p in sorted(wheels_dir.glob("*.whl"))]
        done = subprocess.run([*pip, "--no-deps", "--target", str(target), "--upgrade", *wheels],
                              capture_output=True, text=True, timeout=300)
        if done.returncode == 0:
            _use_site_folder(target)
        else:
            print("  pip install --target failed too:\n    " + _last_lines(done.stderr, 6).replace("\n", "\n    "))
    still = missing_packages()
    for name in missing:
        print(f"  {name}: {'STILL MISSING' if name in still else 'installed'}", flush=True)
    return still


def _use_site_folder(target: Path) -> None:
    """Make a --target install visible to this process and to the jobs it starts (PATH: the deepspeed launcher)."""
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p)
    os.environ["PATH"] = os.pathsep.join((str(target / "bin"), os.environ.get("PATH", "")))


def download_wheels(wheels_dir: Path, python_version: str) -> int:
    """On a machine with network: the wheels the GPU machine lacks, at this machine's versions."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    pinned = [_pinned(name) for name in ("bitsandbytes", *WHEEL_EXTRAS)]
    platforms = [arg for tag in ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64",
                                 "manylinux_2_28_x86_64") for arg in ("--platform", tag)]
    abi = "cp" + python_version.replace(".", "")
    download = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                python_version, "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none",
                *platforms, "-d", str(wheels_dir), *pinned]
    # deepspeed ships only a source archive; its wheel is pure Python (ops are compiled at run time).
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels_dir),
             _pinned("deepspeed")]
    for argv in (download, build):
        print("+ " + " ".join(argv), flush=True)
        if subprocess.run(argv).returncode != 0:
            return 1
    for stale in wheels_dir.glob("*.tar.gz"):
        stale.unlink()
    total = sum(p.stat().st_size for p in wheels_dir.glob("*.whl"))
    print(f"{wheels_dir}: {total / 2**20:.0f} MiB of wheels. On the device tool, carry '{_relative(wheels_dir)}'.")
    return 0


def _pinned(name: str) -> str:
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "deepspeed", "bitsandbytes"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# ---- the GPU --------------------------------------------------------------------------------------

def nvidia_smi(query: str) -> list[str]:
    """One nvidia-smi query, a line per GPU; [] when there is no nvidia-smi or it fails."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


def gpu_memory_used_mib() -> int | None:
    lines = nvidia_smi("memory.used")
    try:
        return int(lines[0]) if lines else None
    except ValueError:
        return None


def sample_gpu_memory(stop: threading.Event, samples: list[int], interval: float = 0.5) -> None:
    """Thread body: append the GPU's used memory (MiB) every `interval` seconds until `stop` is set."""
    while not stop.is_set():
        used = gpu_memory_used_mib()
        if used is not None:
            samples.append(used)
        stop.wait(interval)


# ---- model, tokenizer, data -----------------------------------------------------------------------

HERBS = [
    ("黄芪", "甘，微温", "肺、脾经", "补气升阳，固表止汗，利水消肿，托毒生肌"),
    ("人参", "甘、微苦，微温", "脾、肺、心、肾经", "大补元气，复脉固脱，补脾益肺，生津养血，安神益智"),
    ("白术", "苦、甘，温", "脾、胃经", "健脾益气，燥湿利水，止汗，安胎"),
    ("茯苓", "甘、淡，平", "心、肺、脾、肾经", "利水渗湿，健脾，宁心"),
    ("甘草", "甘，平", "心、肺、脾、胃经", "补脾益气，清热解毒，祛痰止咳，缓急止痛，调和诸药"),
    ("当归", "甘、辛，温", "肝、心、脾经", "补血活血，调经止痛，润肠通便"),
    ("川芎", "辛，温", "肝、胆、心包经", "活血行气，祛风止痛"),
    ("柴胡", "辛、苦，微寒", "肝、胆、肺经", "疏散退热，疏肝解郁，升举阳气"),
    ("麻黄", "辛、微苦，温", "肺、膀胱经", "发汗散寒，宣肺平喘，利水消肿"),
    ("桂枝", "辛、甘，温", "心、肺、膀胱经", "发汗解肌，温通经脉，助阳化气，平冲降气"),
    ("黄连", "苦，寒", "心、脾、胃、肝、胆、大肠经", "清热燥湿，泻火解毒"),
    ("金银花", "甘，寒", "肺、心、胃经", "清热解毒，疏散风热"),
    ("半夏", "辛，温；有毒", "脾、胃、肺经", "燥湿化痰，降逆止呕，消痞散结"),
    ("丹参", "苦，微寒", "心、肝经", "活血祛瘀，通经止痛，清心除烦，凉血消痈"),
]
FORMULAS = [
    ("四君子汤", "人参、白术、茯苓、甘草", "益气健脾", "脾胃气虚证，面色萎白，语声低微，气短乏力，食少便溏"),
    ("小柴胡汤", "柴胡、黄芩、人参、半夏、甘草、生姜、大枣", "和解少阳", "伤寒少阳证，往来寒热，胸胁苦满，心烦喜呕"),
    ("桂枝汤", "桂枝、芍药、甘草、生姜、大枣", "解肌发表，调和营卫", "外感风寒表虚证，恶风发热，汗出头痛"),
    ("四物汤", "当归、川芎、白芍、熟地黄", "补血调血", "营血虚滞证，头晕目眩，心悸失眠，面色无华"),
    ("补中益气汤", "黄芪、人参、白术、甘草、当归、陈皮、升麻、柴胡", "补中益气，升阳举陷",
     "脾虚气陷证，饮食减少，体倦肢软，少气懒言"),
    ("银翘散", "金银花、连翘、桔梗、薄荷、竹叶、甘草、荆芥穗、淡豆豉、牛蒡子", "辛凉透表，清热解毒",
     "温病初起，发热，微恶风寒，无汗或有汗不畅，口渴，咽痛"),
]
SYMPTOMS = ["神疲乏力", "食少便溏", "心悸失眠", "头晕目眩", "胸胁胀满", "咳嗽痰多", "口干咽燥", "畏寒肢冷",
            "自汗", "腰膝酸软", "脘腹胀满", "面色萎黄"]
TONGUES = ["淡胖有齿痕，苔白", "红，苔薄黄", "淡，苔薄白", "暗红有瘀点", "红少苔"]
PULSES = ["细弱", "弦", "浮缓", "滑数", "沉细", "细数"]
WESTERN = ["慢性胃炎", "功能性消化不良", "2型糖尿病", "高血压病", "慢性支气管炎", "失眠障碍", "缺铁性贫血"]
ENGLISH = ["Integrated medicine note: combine syndrome differentiation with the biomedical diagnosis.",
           "Check liver and kidney function before long-term use of herbal formulas.",
           "Evidence-based practice: record symptoms, tongue and pulse at every visit."]


def synthetic_records(count: int, seed: int = 0) -> list[dict]:
    """Deterministic alpaca records of TCM-like text, long enough to fill most of a 512-token sample."""
    rng = random.Random(seed)
    records = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            name, nature, meridian, effect = rng.choice(HERBS)
            instruction = f"请介绍中药{name}的性味归经、功效与临床应用。"
            parts = [f"{name}味{nature}，归{meridian}。功效：{effect}。"]
            partner = rng.choice(HERBS)
            parts.append(f"临床常与{partner[0]}配伍，{partner[0]}能{partner[3]}，二者相须为用，增强疗效。")
            parts.append(f"现代研究提示其可用于{rng.choice(WESTERN)}等疾病的辅助治疗，但须辨证使用，不可一概而论。")
            parts.append(f"使用注意：{rng.choice(['阴虚火旺者慎用', '孕妇慎用', '实热证忌用', '不宜久服'])}。")
            text_input = ""
        elif kind == 1:
            name, herbs, effect, indication = rng.choice(FORMULAS)
            instruction = f"{name}的组成、功用和主治是什么？"
            parts = [f"{name}由{herbs}组成。功用：{effect}。主治：{indication}。"]
            parts.append(f"方解：本方以{herbs.split('、')[0]}为君药，配伍诸药，共奏{effect}之功。")
            parts.append(f"加减：若兼{rng.choice(SYMPTOMS)}，可酌加{rng.choice(HERBS)[0]}；"
                         f"若兼{rng.choice(SYMPTOMS)}，可去{herbs.split('、')[-1]}。")
            parts.append(f"中西医结合：可用于{rng.choice(WESTERN)}属本证者。")
            text_input = ""
        else:
            symptoms = "，".join(rng.sample(SYMPTOMS, 4))
            tongue, pulse = rng.choice(TONGUES), rng.choice(PULSES)
            instruction = "请根据以下病情进行辨证，并给出治法与方药。"
            text_input = (f"患者{rng.randint(20, 80)}岁，{symptoms}，舌{tongue}，脉{pulse}。"
                          f"西医诊断：{rng.choice(WESTERN)}。")
            name, herbs, effect, indication = rng.choice(FORMULAS)
            parts = [f"辨证：根据{symptoms}，结合舌{tongue}、脉{pulse}，四诊合参，证属{indication.split('，')[0]}。"]
            parts.append(f"治法：{effect}。方药：{name}加减，药用{herbs}。")
            parts.append(f"调护：饮食清淡，规律作息，{rng.choice(['适度运动', '调畅情志', '避风寒'])}，两周后复诊。")
        rest = parts[1:]
        rng.shuffle(rest)
        notes = [related_note(rng) for _ in range(2 + i % 8)]
        output = "".join([parts[0], *rest, "相关知识：", *notes, rng.choice(ENGLISH)])
        records.append({"instruction": instruction, "input": text_input, "output": output})
    return records


def related_note(rng: random.Random) -> str:
    """One more sentence of background, so that samples reach a few hundred tokens."""
    if rng.random() < 0.5:
        name, nature, meridian, effect = rng.choice(HERBS)
        return f"{name}性味{nature}，入{meridian}，长于{effect.split('，')[0]}，亦能{effect.split('，')[-1]}。"
    name, herbs, effect, indication = rng.choice(FORMULAS)
    return f"{name}（{herbs}）功在{effect}，用于{indication}。"


def write_dataset(dataset_dir: Path, records: list[dict]) -> None:
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / f"{DATASET_NAME}.json").write_text(json.dumps(records, ensure_ascii=False, indent=1),
                                                      encoding="utf-8")
    info = {DATASET_NAME: {"file_name": f"{DATASET_NAME}.json", "formatting": "alpaca",
                           "description": "synthetic TCM alpaca records for scripts/gpu_check.py"}}
    (dataset_dir / "dataset_info.json").write_text(json.dumps(info, ensure_ascii=False, indent=1), encoding="utf-8")


def build_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained here on Chinese and English text, with ChatML specials and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    return tokenizer


def build_model(folder: Path, tokenizer, tiny: bool) -> int:
    """A randomly initialised Qwen2 (0.5B shape, or a tiny one for the CPU smoke run), saved in bf16."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if tiny:
        shape = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                     rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
    else:
        shape = json.loads(MODEL_CONFIG.read_text(encoding="utf-8"))
        for key in ("architectures", "model_type", "torch_dtype", "bos_token_id", "eos_token_id"):
            shape.pop(key, None)
        shape["vocab_size"] = max(int(shape["vocab_size"]), len(tokenizer))
    config = Qwen2Config(**shape, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)  # on the CPU: the GPU stays empty for the measurements
    parameters = sum(p.numel() for p in model.parameters())
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return parameters


def prepare_inputs(work: Path, tiny: bool) -> tuple[Path, Path]:
    """Model folder and dataset folder under `work`."""
    records = synthetic_records(400)
    dataset_dir = work / "data"
    write_dataset(dataset_dir, records)
    corpus = [r["instruction"] + r["input"] + r["output"] for r in records] + ENGLISH * 20
    tokenizer = build_tokenizer(corpus, vocab_size=1000)
    model_dir = work / "model"
    parameters = build_model(model_dir, tokenizer, tiny)
    lengths = sorted(len(tokenizer(r["instruction"] + r["input"] + r["output"]).input_ids) for r in records)
    print(f"Model: random Qwen2, {parameters / 1e6:.1f}M parameters, tokenizer {len(tokenizer)} tokens "
          f"({model_dir}); data: {len(records)} records, median {lengths[len(lengths) // 2]} tokens", flush=True)
    return model_dir, dataset_dir


# ---- one mode -------------------------------------------------------------------------------------

def run_mode(mode: str, overrides: list[str], common: list[str], run_dir: Path, env: dict[str, str],
             timeout: float, gpu: bool) -> ModeResult:
    """Start the job through our CLI, wait for it (or abort it at the timeout), then read its run folder."""
    from trainer_core import jobs, runs

    result = ModeResult(mode)
    baseline = gpu_memory_used_mib() if gpu else None
    samples: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_gpu_memory, args=(stop, samples), daemon=True)
    if gpu:
        sampler.start()
    started = time.time()
    argv = [sys.executable, "-m", "trainer_core", "train", *common, *overrides, f"output_dir={run_dir}", "--detach"]
    print(f"\n== {mode}: {' '.join(overrides)} (timeout {timeout:.0f} s)", flush=True)
    try:
        launch = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        if launch.returncode != 0:
            result.state, result.error = "failed", _last_lines(launch.stderr or launch.stdout, 1)
        else:
            result.state = wait_for_job(run_dir, started + timeout)
            if result.state == "timeout":
                subprocess.run([sys.executable, "-m", "trainer_core", "runs", "--abort", str(run_dir), "--grace", "15"],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
                result.error = f"no end within {timeout:.0f} s; aborted"
            elif result.state != "finished":
                result.error = jobs.refresh_status(run_dir).get("error") or result.state
    except subprocess.TimeoutExpired as exc:
        result.state, result.error = "failed", f"the CLI did not answer: {exc}"
    finally:
        stop.set()
        if gpu:
            sampler.join(timeout=5)
    result.wall_seconds = time.time() - started
    read_metrics(result, runs.read_log(run_dir))
    if samples and baseline is not None:
        result.peak_gib = max(0, max(samples) - baseline) / 1024
    result.console_tail = jobs.tail_text(run_dir / runs.CONSOLE_FILE, 6000).splitlines()[-40:]
    print(f"   {result.state} after {result.wall_seconds:.0f} s, {result.steps} steps"
          + (f": {result.error}" if result.error else ""), flush=True)
    return result


def wait_for_job(run_dir: Path, deadline: float) -> str:
    """The job's final state, or "timeout"; prints each logged step as it comes."""
    from trainer_core import jobs, runs

    shown = 0
    while True:
        state = jobs.refresh_status(run_dir).get("state", "running")
        log = runs.read_log(run_dir)
        for entry in log[shown:]:
            print(f"   step {entry.get('step')}  loss {entry.get('loss')}  {entry.get('elapsed_seconds')} s",
                  flush=True)
        shown = len(log)
        if state != "running":
            return state
        if time.time() > deadline:
            return "timeout"
        time.sleep(0.5)


def read_metrics(result: ModeResult, log: list[dict]) -> None:
    """s/step: median of elapsed_seconds deltas per step after the first; tokens/s: the last logged value."""
    entries = sorted((e for e in log if e.get("loss") is not None), key=lambda e: e["step"])
    if not entries:
        return
    result.steps = entries[-1]["step"]
    result.loss_first, result.loss_last = entries[0]["loss"], entries[-1]["loss"]
    result.tokens_per_second = entries[-1].get("tokens_per_second")
    deltas = [(b["elapsed_seconds"] - a["elapsed_seconds"]) / (b["step"] - a["step"])
              for a, b in zip(entries, entries[1:]) if b["step"] > a["step"]]
    if deltas:
        result.seconds_per_step = statistics.median(deltas)


# ---- the model-zoo parity tests -------------------------------------------------------------------

@dataclass
class ZooCase:
    case: str  # the pytest node id
    outcome: str  # PASS, FAIL, ERROR, XFAIL, SKIP
    message: str = ""


@dataclass
class ZooResult:
    state: str = "not run"  # finished, failed (some case failed), timeout, error, skipped
    error: str = ""
    cases: list[ZooCase] = field(default_factory=list)
    exit_code: int | None = None
    wall_seconds: float = 0.0
    console_tail: list[str] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for c in self.cases if c.outcome == outcome)

    def ok(self) -> bool:
        return self.state in ("finished", "skipped") and not any(c.outcome in ("FAIL", "ERROR") for c in self.cases)


def zoo_test_files() -> list[str]:
    """The test files that hold zoo-marked tests. Naming them keeps the other test modules (the
    workbench's, the browser's) out of the collection: their imports may be missing on a GPU image."""
    found = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if f"mark.{ZOO_MARK}" in text:
            found.append(str(path.relative_to(ROOT)))
    return found


def junit_cases(xml_path: Path) -> list[ZooCase]:
    """One ZooCase per <testcase> of a pytest --junitxml file."""
    cases = []
    for testcase in ElementTree.parse(xml_path).getroot().iter("testcase"):
        if not testcase.get("name"):
            continue  # the case a SIGINT cut short: pytest writes it without a name or a result
        module = testcase.get("classname", "").replace(".", "/")
        name = f"{module}.py::{testcase.get('name', '?')}" if module else testcase.get("name", "?")
        outcome, message = "PASS", ""
        for child in testcase:
            if child.tag in ("failure", "error", "skipped"):
                message = child.get("message") or (child.text or "").strip()
                if child.tag == "failure":
                    outcome = "FAIL"
                elif child.tag == "error":
                    outcome = "ERROR"
                else:
                    outcome = "XFAIL" if child.get("type") == "pytest.xfail" else "SKIP"
                if outcome in ("FAIL", "ERROR"):
                    break  # a failing test whose teardown also errs: the failure is the news
        cases.append(ZooCase(name, outcome, " ".join(message.split())[:300]))
    return cases


_SUMMARY_LINE = re.compile(r"^(PASSED|FAILED|ERROR|XFAIL|XPASS|SKIPPED)\s+(\S+)(?:\s+-\s+(.*))?$")
_SUMMARY_OUTCOME = {"PASSED": "PASS", "FAILED": "FAIL", "ERROR": "ERROR", "XFAIL": "XFAIL", "XPASS": "FAIL",
                    "SKIPPED": "SKIP"}


def summary_cases(text: str) -> list[ZooCase]:
    """The same from pytest's -rA short summary, when no junit file was written (pytest killed)."""
    cases = []
    for line in text.splitlines():
        match = _SUMMARY_LINE.match(line.strip())
        if match:
            cases.append(ZooCase(match.group(2), _SUMMARY_OUTCOME[match.group(1)], (match.group(3) or "")[:300]))
    return cases


def collect_zoo_cases(files: list[str], env: dict[str, str], timeout: float) -> list[str]:
    """The node ids of the zoo tests (pytest --collect-only)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", ZOO_MARK, "-q", "--collect-only",
                           "-p", "no:cacheprovider", *files], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return [line.strip() for line in done.stdout.splitlines() if "::" in line and not line.startswith(" ")]


def run_zoo_tests(device: str, env: dict[str, str], timeout: float, work: Path, limit: int = 0) -> ZooResult:
    """`python -m pytest -m zoo -q -rA --junitxml ...` with QIHUANG_TEST_DEVICE=device; limit > 0 runs only the
    first `limit` cases. At the timeout pytest gets SIGINT: it still writes the junit file for the cases it ran."""
    result = ZooResult()
    started = time.time()
    files = zoo_test_files()
    if not files:
        result.state, result.error = "skipped", "no test file under tests/ holds a test marked zoo"
        return result
    env = {**env, "QIHUANG_TEST_DEVICE": device}
    xml_path = work / "zoo-junit.xml"
    targets = files
    print(f"\n== zoo parity tests on {device}: {', '.join(files)} (timeout {timeout:.0f} s)", flush=True)
    try:
        if limit > 0:
            targets = collect_zoo_cases(files, env, timeout)[:limit]
            if not targets:
                result.state, result.error = "error", "pytest collected no zoo case"
                return result
        argv = [sys.executable, "-m", "pytest", "-m", ZOO_MARK, "-q", "-rA", "-p", "no:cacheprovider",
                "--continue-on-collection-errors", f"--junitxml={xml_path}", *targets]
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=max(timeout - (time.time() - started), 10))
        except subprocess.TimeoutExpired:
            result.state, result.error = "timeout", f"no end within {timeout:.0f} s; interrupted"
            os.killpg(proc.pid, signal.SIGINT)  # pytest ends the session and writes the junit file
            try:
                output, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                output, _ = proc.communicate()
    except (OSError, subprocess.TimeoutExpired) as exc:
        result.state, result.error = "error", f"pytest did not run: {exc}"
        result.wall_seconds = time.time() - started
        return result
    result.exit_code = proc.returncode
    result.wall_seconds = time.time() - started
    result.console_tail = (output or "").splitlines()[-60:]
    result.cases = junit_cases(xml_path) if xml_path.is_file() else summary_cases(output or "")
    if result.state == "not run":
        if result.exit_code in (0, 1) and result.cases:
            result.state = "finished" if result.exit_code == 0 else "failed"
        else:
            result.state = "error"
            result.error = f"pytest exit code {result.exit_code}: {_last_lines(output, 1)}"
    for case in result.cases:
        print(f"{case.outcome:5} {case.case}" + (f"  ({case.message})" if case.message and case.outcome != "PASS"
                                                 else ""), flush=True)
    print(f"   zoo: {result.state} after {result.wall_seconds:.0f} s; " + zoo_counts(result)
          + (f"; {result.error}" if result.error else ""), flush=True)
    return result


def zoo_counts(zoo: ZooResult) -> str:
    return ", ".join(f"{zoo.count(o)} {o}" for o in ("PASS", "FAIL", "ERROR", "XFAIL", "SKIP") if zoo.count(o)) or \
        "no cases"


def zoo_report(zoo: ZooResult, device: str) -> str:
    lines = [f"Zoo parity tests (`python -m pytest -m zoo`, QIHUANG_TEST_DEVICE={device}): {zoo.state}, "
             f"{zoo_counts(zoo)}, {zoo.wall_seconds:.0f} s" + (f"; {_table_safe(zoo.error)}" if zoo.error else ""), ""]
    if zoo.cases:
        lines += ["| case | result |", "|---|---|"]
        for case in zoo.cases:
            note = f": {_table_safe(case.message, 160)}" if case.message and case.outcome != "PASS" else ""
            lines.append(f"| `{case.case}` | {case.outcome}{note} |")
    return "\n".join(lines) + "\n"


# ---- the planner against measurement ----------------------------------------------------------------

@dataclass
class PlannerResult:
    state: str = "not run"  # finished, failed (a case did not finish, or none ran), timeout, skipped
    error: str = ""
    table: str = ""  # planner_gpu.md
    wall_seconds: float = 0.0
    console_tail: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return self.state in ("finished", "skipped")


def run_planner_check(model_dir: Path, env: dict[str, str], timeout: float, out_dir: Path,
                      smoke: bool) -> PlannerResult:
    """bench/planner_gpu.py on the check's model (its one tiny CPU case with --cpu-smoke): the plan beside the
    measured peak memory and step time; planner_gpu.json and planner_gpu.md go to `out_dir`. The script stops
    starting cases 20 s before the timeout and writes after every case, so a cut-short run still reports."""
    result = PlannerResult()
    started = time.time()
    argv = [sys.executable, str(PLANNER_SCRIPT), "--model", str(model_dir), "--out", str(out_dir),
            "--budget", str(max(timeout - 20, 10))] + (["--cpu"] if smoke else [])
    print(f"\n== planner against measurement: {PLANNER_SCRIPT.relative_to(ROOT)} (timeout {timeout:.0f} s)", flush=True)
    try:
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        output = (done.stdout or "") + (done.stderr or "")
        result.state = "finished" if done.returncode == 0 else "failed"
        if done.returncode != 0:
            result.error = f"exit code {done.returncode}: {_last_lines(done.stderr or done.stdout, 1)}"
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        result.state, result.error = "timeout", f"no end within {timeout:.0f} s"
    result.wall_seconds = time.time() - started
    result.console_tail = output.splitlines()[-40:]
    table = out_dir / "planner_gpu.md"
    result.table = table.read_text(encoding="utf-8") if table.is_file() else ""
    print(f"   planner: {result.state} after {result.wall_seconds:.0f} s"
          + (f"; {result.error}" if result.error else ""), flush=True)
    return result


def planner_report(planner: PlannerResult) -> str:
    lines = [f"Planner against measurement (`bench/planner_gpu.py`): {planner.state}, {planner.wall_seconds:.0f} s"
             + (f"; {_table_safe(planner.error)}" if planner.error else ""), ""]
    if planner.table:
        lines.append(planner.table)
    return "\n".join(lines) + "\n"


# ---- the report -----------------------------------------------------------------------------------

def markdown_report(results: list[ModeResult], card: str, versions: dict[str, str], settings: str) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    lines = [f"Card: {card}", "",
             "Versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()), "",
             f"Settings: {settings}", "",
             "| mode | state | s/step | tokens/s | peak GPU mem GiB | loss first → last |",
             "|---|---|---|---|---|---|"]
    for r in results:
        state = r.state if not r.error else f"{r.state}: {_table_safe(r.error)}"
        loss = f"{num(r.loss_first, '.3f')} → {num(r.loss_last, '.3f')}" if r.loss_first is not None else "n/a"
        lines.append(f"| {r.mode} | {state} | {num(r.seconds_per_step, '.3f')} | {num(r.tokens_per_second, '.0f')} "
                     f"| {num(r.peak_gib, '.2f')} | {loss} |")
    return "\n".join(lines) + "\n"


def console_tails(results: list[ModeResult]) -> str:
    parts = []
    for r in results:
        if r.console_tail:
            parts.append(f"===== {r.mode} ({r.state}) console.log, last lines =====\n" + "\n".join(r.console_tail))
    return "\n\n".join(parts) + "\n"


def _table_safe(text: str, limit: int = 220) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _last_lines(text: str, count: int) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return "\n".join(lines[-count:]) if lines else "(no output)"


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def planner_dir(card: str, cpu_smoke: bool) -> Path:
    """Where planner_gpu.json and planner_gpu.md go: $OUT when set; else bench/results/planner_gpu-<card>/
    (a CPU smoke run's to the temp folder)."""
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    if cpu_smoke:
        return Path(tempfile.gettempdir()) / "gpu_check-cpu-smoke-planner"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", card).strip("-") or "unknown"
    return ROOT / "bench" / "results" / f"planner_gpu-{name}"


def report_paths(card: str, cpu_smoke: bool) -> tuple[Path, Path]:
    """Report and console tails: into $OUT when set (the device tool brings it back); else the report goes to
    bench/GPU-<card>.md (a CPU smoke run's to the temp folder) and the tails to the temp folder."""
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"])
        return out / "gpu_check.md", out / "gpu_check-logs.txt"
    tmp = Path(tempfile.gettempdir())
    if cpu_smoke:
        return tmp / "gpu_check-cpu-smoke.md", tmp / "gpu_check-cpu-smoke-logs.txt"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", card).strip("-") or "unknown"
    return ROOT / "bench" / f"GPU-{name}.md", tmp / "gpu_check-logs.txt"


# ---- main -----------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", default=os.environ.get("GPU_CHECK_CPU_SMOKE") == "1",
                        help="tiny model on CPU, 3 steps, no nvidia-smi (also GPU_CHECK_CPU_SMOKE=1)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma list of: " + ", ".join(MODES) + "; 'none' for the zoo tests alone")
    parser.add_argument("--no-zoo", action="store_true", help="leave out the model-zoo parity tests")
    parser.add_argument("--zoo-timeout", type=float, default=None,
                        help=f"seconds for the zoo parity tests (default {ZOO_TIMEOUT}; "
                             f"{CPU_SMOKE_TIMEOUT} with --cpu-smoke)")
    parser.add_argument("--zoo-cases", type=int, default=None,
                        help=f"run only the first N zoo cases (default: all; {ZOO_SMOKE_CASES} with --cpu-smoke)")
    parser.add_argument("--no-planner", action="store_true", help="leave out the planner comparison")
    parser.add_argument("--planner-timeout", type=float, default=PLANNER_TIMEOUT,
                        help=f"seconds for the planner comparison (default {PLANNER_TIMEOUT})")
    parser.add_argument("--max-steps", type=int, default=None, help="steps per mode (default 20; 3 with --cpu-smoke)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole check (default 480; 1500 with --cpu-smoke)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (model, data, run folders)")
    parser.add_argument("--download-wheels", action="store_true",
                        help="download/build the deepspeed and bitsandbytes wheels into WHEELS_DIR, then exit")
    parser.add_argument("--wheel-python", default="3.12", help="Python version of the GPU machine's wheels")
    opts = parser.parse_args(argv)
    if opts.modes.strip() == "none":
        opts.modes = ""
    unknown = [m for m in opts.modes.split(",") if m and m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    return opts


def run_modes(modes: list[str], work: Path, model_dir: Path, dataset_dir: Path, env: dict[str, str], deadline: float,
              still_missing: list[str], smoke: bool, gpu: bool, max_steps: int) -> list[ModeResult]:
    """Run each mode through our CLI on the prepared model and data until the budget is spent."""
    results: list[ModeResult] = []
    common = [f"model_name_or_path={model_dir}", f"dataset_dir={dataset_dir}", f"dataset={DATASET_NAME}",
              "stage=sft", "template=auto", "cutoff_len=512", "per_device_train_batch_size=4",
              "gradient_accumulation_steps=1", f"max_steps={max_steps}", "logging_steps=1",
              "save_steps=100000", "report_to=none", "resume_from_checkpoint=none", "val_size=0",
              "learning_rate=1e-4", "seed=42"]
    for mode in modes:
        overrides, needs, gpu_timeout = MODES[mode]
        left = deadline - time.time() - 15
        absent = [name for name in needs if name in still_missing]
        if absent:
            results.append(ModeResult(mode, "skipped", f"{', '.join(absent)} not installed"))
        elif left < 30:
            results.append(ModeResult(mode, "skipped", "time budget spent"))
        else:
            timeout = min(CPU_SMOKE_TIMEOUT if smoke else gpu_timeout, left)
            results.append(run_mode(mode, overrides, common, work / "runs" / mode, env, timeout, gpu))
    return results


def main(argv: list[str] | None = None) -> int:
    start = time.time()
    opts = parse_args(argv)
    wheels_dir = Path(os.environ.get("WHEELS_DIR") or DEFAULT_WHEELS_DIR)
    if not wheels_dir.is_absolute():
        wheels_dir = ROOT / wheels_dir
    if opts.download_wheels:
        return download_wheels(wheels_dir, opts.wheel_python)

    smoke = opts.cpu_smoke
    deadline = start + (opts.budget or (1500 if smoke else 480))
    max_steps = opts.max_steps or (3 if smoke else 20)
    modes = [m for m in opts.modes.split(",") if m]
    still_missing = install_from_wheels(wheels_dir)

    card_names = [] if smoke else nvidia_smi("name")
    gpu = bool(card_names)
    if not smoke and not gpu:
        print("error: nvidia-smi finds no GPU; for a run on this CPU use --cpu-smoke", file=sys.stderr)
        return 2
    card = card_names[0] if gpu else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    versions = package_versions()
    print(f"Card: {card}\nVersions: {versions}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    env = {**os.environ, "QIHUANG_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
    results: list[ModeResult] = []
    zoo_device = "cuda" if gpu else "cpu"
    zoo = ZooResult(state="skipped", error="--no-zoo")
    planner = PlannerResult(state="skipped", error="--no-planner")
    try:
        if not opts.no_zoo:
            # First, while the GPU is empty: its figures below are not disturbed, and a slow zoo run
            # leaves the modes less time instead of being cut itself.
            zoo_timeout = opts.zoo_timeout or (CPU_SMOKE_TIMEOUT if smoke else ZOO_TIMEOUT)
            zoo_cases = opts.zoo_cases if opts.zoo_cases is not None else (ZOO_SMOKE_CASES if smoke else 0)
            zoo = run_zoo_tests(zoo_device, env, min(zoo_timeout, max(deadline - time.time() - 60, 30)), work,
                                zoo_cases)
        if modes or not opts.no_planner:
            model_dir, dataset_dir = prepare_inputs(work, tiny=smoke)
            if not opts.no_planner:
                # Before the modes, on an empty GPU: the planner's cases are the check's new figures.
                planner = run_planner_check(model_dir, env, min(opts.planner_timeout,
                                                                max(deadline - time.time() - 60, 30)),
                                            planner_dir(card, smoke), smoke)
            if modes:
                results = run_modes(modes, work, model_dir, dataset_dir, env, deadline, still_missing, smoke, gpu,
                                    max_steps)
    finally:
        if opts.keep:
            print(f"Kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    memory_note = ("no GPU, so no peak memory" if smoke else
                   "peak memory = max nvidia-smi memory.used during the run minus the idle baseline")
    settings = (f"random Qwen2 {'tiny (hidden 64, 2 layers)' if smoke else '0.5B shape'}, cutoff_len 512, "
                f"batch 4, {max_steps} steps, through `python -m trainer_core train`; {memory_note}; "
                f"check took {time.time() - start:.0f} s")
    if still_missing:
        settings += f"; MISSING packages: {', '.join(still_missing)} (no wheels for them in {wheels_dir})"
    report = (markdown_report(results, card, versions, settings) + "\n" + zoo_report(zoo, zoo_device) + "\n"
              + planner_report(planner))
    print("\n" + report, flush=True)
    report_path, logs_path = report_paths(card, smoke)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    title = "# GPU check (CPU smoke run)" if smoke else "# GPU check"
    report_path.write_text(f"{title}, {time.strftime('%Y-%m-%d %H:%M')}\n\n{report}", encoding="utf-8")
    zoo_tail = f"===== zoo parity tests ({zoo.state}), pytest output, last lines =====\n" + "\n".join(zoo.console_tail)
    planner_tail = f"===== planner ({planner.state}), last lines =====\n" + "\n".join(planner.console_tail)
    logs_path.write_text(console_tails(results) + ("\n" + zoo_tail + "\n" if zoo.console_tail else "")
                         + ("\n" + planner_tail + "\n" if planner.console_tail else ""), encoding="utf-8")
    print(f"Wrote {report_path} and {logs_path}")
    modes_ok = all(r.state == "finished" for r in results) and (bool(results) or not modes)
    ran = results or zoo.cases or planner.state != "skipped"
    return 0 if modes_ok and zoo.ok() and planner.ok() and ran else 1


if __name__ == "__main__":
    sys.exit(main())
