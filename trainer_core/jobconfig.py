"""The configs of eval and export jobs: one typed structure per job kind, like the run config.

`EvalConfig` and `ExportConfig` are validated by `trainer_core.config.validate` /
`config_from_dict(raw, schema=...)` exactly as `TrainConfig` is: each key converted and
range-checked on its own, then the schema's `rules()` over several keys, every problem a
`ConfigProblem(keys, message)`. The rules check only the keys themselves (no file is read), so a
config validates the same on the page, on the command line and inside the job; what needs a
folder on disk (is the run finished, is the adapter a folder) is checked by the job's module
before anything loads (`evaluate.resolve_target`, `export.check_options`).

The command line builds its flags from the schema (`job_parser`) and turns them, with an optional
job YAML beneath them, into the config (`config_from_args`). The launcher (`jobs.start_task`)
writes the config into the job folder as eval.yaml or export.yaml (every key, like run.yaml), and
the job runs `python -m trainer_core eval JOB_DIR/eval.yaml` (resp. export).

Kept apart from config.py, which is the run config the training process imports: this module
imports nothing heavy, so the CLI, the launcher and the page can use it at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from trainer_core.config import ConfigProblem, config_from_dict, config_key, read_yaml, save_config
from trainer_core.errors import UserError

TASKS = ("ppl", "generate", "mcq", "preference")
SPLITS = ("validation", "all")
TEMPLATES = ("auto", "chatml", "qwen", "llama3")
EVAL_DTYPES = ("auto", "float32", "bfloat16", "float16")
DTYPES = ("float32", "bfloat16", "float16")
GGUF_TYPES = ("f16", "q8_0")


def parse_tasks(values: list[str] | str | None) -> list[str]:
    """--task values (repeated and/or comma lists) as a list of known tasks, in the given order."""
    if not values:
        return []
    if isinstance(values, str):
        values = [values]
    tasks = [t.strip() for v in values for t in v.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task '{unknown[0]}': choose from {', '.join(TASKS)}")
    return list(dict.fromkeys(tasks))


def parse_gguf_types(value: str | None) -> list[str]:
    items = [v.strip().lower() for v in (value or "none").split(",") if v.strip()]
    if items in ([], ["none"]):
        return []
    unknown = [v for v in items if v not in GGUF_TYPES]
    if unknown:
        raise UserError(f"--gguf {value}: unknown {unknown}; choose none, f16, q8_0 or f16,q8_0")
    return list(dict.fromkeys(items))


def check_shard_size(value: str | int) -> str | int:
    if isinstance(value, int) or re.fullmatch(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", str(value).strip()):
        return value
    if str(value).isdigit():
        return int(value)
    raise UserError(f"--max_shard_size '{value}' is not a size; write it like 2GB, 500MB or 5000000")


def _names(text: str) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


@dataclass
class EvalConfig:
    # What to evaluate
    run: str = config_key("", "a training run: its adapter/ (or model/) on its base model")
    model: str = config_key("", "a model folder, a hub id or 'default' (instead of --run)")
    adapter: str = config_key("", "a LoRA adapter folder on top of --model")
    base_only: bool = config_key(False, "with --run: the run's base model without its adapter")
    label: str = config_key("", "the name of this model in results and comparisons "
                            "(default: base, tuned (adapter) or tuned (full))")
    # Tasks and data
    task: str = config_key("", "ppl, generate, mcq or preference; repeat or comma-separate "
                           "(default: mcq for multiple-choice data, preference for preference pairs, else "
                           "ppl,generate)")
    dataset: str = config_key("", "datasets from dataset_info.json (default with --run: the run's validation split)")
    dataset_dir: str = config_key("", "folder holding dataset_info.json (default: the run's, else data)")
    split: str | None = config_key(None, "validation: the records the run held out (needs --run); all: every record "
                                   "(default: validation with --run and no --dataset, else all)", choices=SPLITS,
                                   optional=True)
    max_samples: int | None = config_key(None, "at most this many records of each dataset", min=1, optional=True)
    n_shot: int = config_key(0, "mcq: examples from the dev set shown before each question", min=0)
    dev_dataset: str = config_key("", "mcq: the dev set for n-shot examples (default: <dataset>_dev)")
    subject: str = config_key("", "mcq: only questions of these subjects")
    # Settings
    cutoff_len: int | None = config_key(None, "maximum tokens per sample (default: the run's, else 1024)", min=1,
                                        optional=True)
    batch_size: int = config_key(4, "samples per forward pass or generate call", min=1)
    max_new_tokens: int = config_key(128, "generate: longest answer in tokens", min=1)
    do_sample: bool = config_key(False, "generate: sample instead of greedy decoding")
    temperature: float = config_key(0.7, "generate: sampling temperature", min=0)
    top_p: float = config_key(0.9, "generate: nucleus sampling share", min=0, max=1)
    seed: int = config_key(42, "random seed for sampling", min=0)
    template: str | None = config_key(None, "chat template (default: the run's, else auto = the tokenizer's own)",
                                      choices=TEMPLATES, optional=True)
    dtype: str = config_key("auto", "weights' dtype (auto: bfloat16 on a GPU that has it, else float32)",
                            choices=EVAL_DTYPES)
    output_dir: str = config_key("", "where results go (the eval job's folder)")

    def rules(self) -> list[ConfigProblem]:
        """What goes together: --run or --model, and the options that only one of them takes."""
        problems = []
        if self.run and self.model:
            problems.append(ConfigProblem(("run", "model"), "give either --run RUN_DIR or --model PATH, not both"))
        if not self.run and not self.model:
            problems.append(ConfigProblem(("run", "model"), "nothing to evaluate: give --run RUN_DIR (a training "
                                          "run) or --model PATH_OR_default"))
        if self.base_only and not self.run:
            problems.append(ConfigProblem(("base_only", "run"), "--base-only goes with --run (the run's base "
                                          "model without its adapter)"))
        if self.adapter and self.run:
            problems.append(ConfigProblem(("adapter", "run"), "--adapter goes with --model; with --run the run's "
                                          "own adapter/ is used"))
        try:
            parse_tasks(self.task)
        except UserError as exc:
            problems.append(ConfigProblem(("task",), str(exc)))
        if self.split == "validation" and not self.run:
            problems.append(ConfigProblem(("split", "run"), "--split validation needs --run: the split comes from "
                                          "the run's val_size and seed; with --model use --split all"))
        elif not _names(self.dataset) and (self.split == "all" or not self.run):
            problems.append(ConfigProblem(("dataset",), "no dataset: name one with --dataset NAME (from "
                                          "dataset_info.json)"))
        return problems


@dataclass
class ExportConfig:
    run: str = config_key("", "a training run's folder (RUN_DIR): its base + adapter/, or its model/")
    model: str = config_key("", "base model ('default', a folder or a hub id), instead of --run")
    adapter: str = config_key("", "a LoRA adapter folder to merge into --model")
    output_dir: str = config_key("", "where the export goes (default RUN_DIR/export)")
    dtype: str = config_key("float32", "dtype of the saved weights", choices=DTYPES)
    max_shard_size: str = config_key("2GB", "largest safetensors shard, e.g. 2GB or 500MB")
    gguf: str = config_key("f16", "GGUF files to write: none, f16, q8_0 or f16,q8_0")
    overwrite: bool = config_key(False, "replace an existing export in --output_dir")
    job_dir: str = config_key("", "the job's folder, for its progress (set by the launcher)")

    def rules(self) -> list[ConfigProblem]:
        problems = []
        if self.run and (self.model or self.adapter):
            problems.append(ConfigProblem(("run", "model", "adapter"),
                                          "give either --run RUN_DIR or --model BASE [--adapter DIR], not both"))
        if not (self.run or self.model or self.adapter):
            problems.append(ConfigProblem(("run", "model"), "nothing to export: give --run RUN_DIR, or --model BASE "
                                          "(with --adapter DIR for a LoRA adapter)"))
        for key, check in (("max_shard_size", check_shard_size), ("gguf", parse_gguf_types)):
            try:
                check(getattr(self, key))
            except UserError as exc:
                problems.append(ConfigProblem((key,), str(exc)))
        return problems


@dataclass
class LrFindConfig:
    """The learning-rate range test (trainer_core/lr_find.py): a run config trained for a few steps with
    a learning rate that grows exponentially from start_lr to end_lr."""

    run_config: str = config_key("", "the run config (YAML) whose model, method, template and data the test trains "
                                 "on, as a run would (the launcher writes it, overrides applied, to "
                                 "JOB_DIR/run_config.yaml)")
    num_steps: int = config_key(40, "optimizer steps of the test (fewer when the loss diverges first)", min=5)
    start_lr: float = config_key(1e-7, "learning rate of the first step", min=0, min_exclusive=True)
    end_lr: float = config_key(1.0, "learning rate of the last step; the steps between grow by one factor",
                               min=0, min_exclusive=True)
    max_samples: int | None = config_key(None, "records of each dataset to use (default: num_steps x batch size x "
                                         "gradient accumulation, a new batch every step)", min=1, optional=True)
    smooth_beta: float = config_key(0.6, "smoothing of the loss: exponential moving average weight of the past "
                                    "(0 = none)", min=0, max=0.99)
    job_dir: str = config_key("", "the job's folder (default: outputs/jobs/lr-find-<time>/)")

    def rules(self) -> list[ConfigProblem]:
        problems = []
        if not self.run_config.strip():
            problems.append(ConfigProblem(("run_config",), "run_config: give the run config to test (a .yaml file)"))
        if self.end_lr <= self.start_lr:
            problems.append(ConfigProblem(("start_lr", "end_lr"), f"end_lr ({self.end_lr:g}) must be larger than "
                                          f"start_lr ({self.start_lr:g}): the learning rate grows from one to "
                                          "the other"))
        return problems


JobConfig = EvalConfig | ExportConfig | LrFindConfig
SCHEMAS: dict[str, type[EvalConfig] | type[ExportConfig] | type[LrFindConfig]] = {
    "eval": EvalConfig, "export": ExportConfig, "lr_find": LrFindConfig}
# In the job folder, beside status.json.
CONFIG_FILES = {"eval": "eval.yaml", "export": "export.yaml", "lr_find": "lr_find.yaml"}
LR_FIND_RUN_CONFIG = "run_config.yaml"  # the run config an LR test trains on, in its job folder
METAVARS = {"run": "RUN_DIR", "model": "PATH", "adapter": "DIR", "task": "TASK", "dataset": "NAME[,NAME]",
            "subject": "NAME[,NAME]", "output_dir": "DIR"}


def schema_for(kind: str) -> type[EvalConfig] | type[ExportConfig] | type[LrFindConfig]:
    if kind not in SCHEMAS:
        raise UserError(f"unknown job kind '{kind}': choose {', '.join(SCHEMAS)}")
    return SCHEMAS[kind]


C = TypeVar("C", bound=EvalConfig | ExportConfig | LrFindConfig)


def checked(cfg: C) -> C:
    """The config validated as if read from a file: a config built in code gets every check too."""
    return config_from_dict(dataclasses.asdict(cfg), type(cfg))


def job_parser(kind: str) -> argparse.ArgumentParser:
    """`python -m trainer_core eval|export [FILE.yaml] [--key value ...]`: a flag per config key
    (also spelled with hyphens), a bool key a bare switch. Values stay text; the schema converts
    and checks them, so a wrong flag is reported with every other problem."""
    schema = schema_for(kind)
    parser = argparse.ArgumentParser(prog=f"python -m trainer_core {kind}", argument_default=argparse.SUPPRESS)
    parser.add_argument("config", nargs="?", metavar=CONFIG_FILES[kind],
                        help=f"a job's {CONFIG_FILES[kind]} to run again (flags given too override its keys)")
    for f in dataclasses.fields(schema):
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        meta = f.metadata
        if str(f.type).startswith("bool"):
            parser.add_argument(*names, dest=f.name, action="store_true", help=meta["help"])
            continue
        metavar = "{" + ",".join(str(c) for c in meta["choices"]) + "}" if meta["choices"] else METAVARS.get(f.name)
        action = "append" if f.name == "task" else "store"
        parser.add_argument(*names, dest=f.name, action=action, metavar=metavar, help=meta["help"])
    parser.add_argument("--detach", action="store_true", help="start the job and return at once")
    return parser


def config_from_args(kind: str, args: list[str]) -> JobConfig:
    """The config the command line describes: a job YAML (if given) with the flags on top."""
    options = vars(job_parser(kind).parse_args(list(args)))
    options.pop("detach", None)
    path = options.pop("config", None)
    raw: dict[str, Any] = {}
    if path is not None:
        if not str(path).endswith((".yaml", ".yml")):
            raise UserError(f"'{path}' is not a job config (a .yaml file such as JOB_DIR/{CONFIG_FILES[kind]}); "
                            f"give the options as flags, e.g. --run RUN_DIR")
        raw = read_yaml(Path(path))
    raw.update(options)
    return config_from_dict(raw, schema_for(kind))


def load_job_config(kind: str, path: str | Path) -> JobConfig:
    return config_from_dict(read_yaml(Path(path)), schema_for(kind))


def save_job_config(cfg: JobConfig, path: str | Path) -> None:
    """Every key, in schema order (as run.yaml), so the file reloads to exactly this job."""
    save_config(cfg, path)
