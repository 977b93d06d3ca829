"""The run config: one typed structure for the UI, the CLI and the scripts.

Key names follow LLaMA-Factory's where they exist. `load_config` reads YAML, applies overrides
(`key=value` or `--key value`), converts and checks every value, and reports every mistake at
once; `save_config` writes the resolved config (run.yaml), which loads back to the same run.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from trainer_core.errors import UserError

DEEPSPEED_PRESETS = ("z0", "z2", "z3", "z3_offload")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
              "constant_with_warmup", "inverse_sqrt", "cosine_with_min_lr")


def _key(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None,
         max: float | None = None, min_exclusive: bool = False, optional: bool = False) -> Any:
    """A config key: its default, a one-line help, and the values it allows."""
    meta = {"help": help, "choices": choices, "min": min, "max": max,
            "min_exclusive": min_exclusive, "optional": optional}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    # What to train
    stage: str = _key("sft", "sft: supervised fine-tuning on conversations; pt: continued pre-training on text",
                      choices=("sft", "pt"))
    model_name_or_path: str = _key("default", "a local model folder, a hub id, or 'default' for the built-in "
                                   "SmolLM2-135M-Instruct")
    template: str = _key("auto", "chat template: auto (the tokenizer's own) or a built-in fallback",
                         choices=("auto", "chatml", "qwen", "llama3"))
    trust_remote_code: bool = _key(False, "run code shipped with the model (only for models you trust)")
    # Data
    dataset_dir: str = _key("data", "folder holding dataset_info.json")
    dataset: str = _key("tcm_qa", "comma-separated dataset names from dataset_info.json")
    eval_dataset: str = _key("", "datasets used for evaluation instead of a val_size split")
    val_size: float = _key(0.0, "share (0-1) or number (>=1) of records held out for eval loss", min=0)
    max_samples: int | None = _key(None, "use at most this many records of each dataset", min=1, optional=True)
    cutoff_len: int = _key(1024, "maximum tokens per sample (SFT) or block (PT)", min=16)
    packing: bool | None = _key(None, "concatenate samples into cutoff_len blocks (default: on for pt, off "
                                "for sft)", optional=True)
    # Method
    finetuning_type: str = _key("lora", "lora, qlora (4-bit base + LoRA) or full", choices=("lora", "qlora", "full"))
    lora_rank: int = _key(8, "LoRA rank r", min=1)
    lora_alpha: int = _key(16, "LoRA alpha (scale = alpha / rank)", min=1)
    lora_dropout: float = _key(0.0, "dropout on the LoRA path", min=0, max=0.9)
    lora_target: str = _key("all", "'all' linear layers, or a comma list such as q_proj,v_proj")
    quantization_bit: int = _key(4, "QLoRA base weight bits", choices=(4, 8))
    # Output
    output_dir: str = _key("", "run folder; default outputs/<stage>-<finetuning_type>-<time>")
    # Optimisation
    per_device_train_batch_size: int = _key(4, "samples per device per step", min=1)
    per_device_eval_batch_size: int = _key(4, "samples per device per eval step", min=1)
    gradient_accumulation_steps: int = _key(1, "micro-batches per optimizer step", min=1)
    learning_rate: float = _key(1e-4, "peak learning rate", min=0, min_exclusive=True)
    num_train_epochs: float = _key(3.0, "epochs (ignored when max_steps > 0)", min=0, min_exclusive=True)
    max_steps: int = _key(-1, "stop after this many optimizer steps; -1 = use num_train_epochs", min=-1)
    lr_scheduler_type: str = _key("cosine", "learning-rate schedule", choices=SCHEDULERS)
    warmup_steps: int = _key(0, "linear warm-up steps (overrides warmup_ratio when > 0)", min=0)
    warmup_ratio: float = _key(0.0, "share of steps used for warm-up", min=0, max=1)
    weight_decay: float = _key(0.0, "AdamW weight decay", min=0)
    max_grad_norm: float = _key(1.0, "gradient clipping norm (0 = off)", min=0)
    seed: int = _key(42, "random seed for data order, split and initialisation", min=0)
    # Logging and saving
    logging_steps: int = _key(5, "log loss every N steps", min=1)
    save_steps: int = _key(500, "save a checkpoint every N steps (and always at the end)", min=1)
    save_total_limit: int | None = _key(None, "keep at most N checkpoints", min=1, optional=True)
    eval_steps: int | None = _key(None, "evaluate every N steps (default: logging_steps x 10)", min=1,
                                  optional=True)
    report_to: str = _key("none", "where metrics also go", choices=("none", "wandb", "tensorboard"))
    resume_from_checkpoint: str = _key("auto", "auto: continue from the newest checkpoint in output_dir; "
                                       "none: start fresh; or a checkpoint folder")
    # Hardware
    bf16: bool = _key(False, "bf16 mixed precision (GPUs from Ampere on, CPUs with AVX-512 BF16/AMX)")
    fp16: bool = _key(False, "fp16 mixed precision (CUDA GPUs)")
    gradient_checkpointing: bool = _key(False, "recompute activations to save memory (slower)")
    deepspeed: str = _key("", "DeepSpeed: a preset (z0, z2, z3, z3_offload) or a JSON path; empty = none")
    num_gpus: int = _key(1, "GPUs (or CPU processes) per node; 0 = this process only", min=0)
    hostfile: str = _key("", "DeepSpeed hostfile for several nodes")

    def resolved_packing(self) -> bool:
        return self.stage == "pt" if self.packing is None else self.packing

    def rules(self) -> list[ConfigProblem]:
        """Problems that involve more than one key (each key alone is checked on conversion)."""
        problems = []
        if self.bf16 and self.fp16:
            problems.append(ConfigProblem(("bf16", "fp16"), "bf16 and fp16 are both true; choose one"))
        if self.deepspeed and self.deepspeed not in DEEPSPEED_PRESETS and not self.deepspeed.endswith(".json"):
            close = difflib.get_close_matches(self.deepspeed, DEEPSPEED_PRESETS, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            problems.append(ConfigProblem(("deepspeed",), f"deepspeed: '{self.deepspeed}' is neither a preset "
                                          f"({', '.join(DEEPSPEED_PRESETS)}) nor a .json file{hint}"))
        if self.finetuning_type == "qlora" and self.deepspeed in ("z3", "z3_offload"):
            problems.append(ConfigProblem(("finetuning_type", "deepspeed"),
                                          "QLoRA with DeepSpeed ZeRO-3 is not supported; use z2 or no DeepSpeed"))
        if not [d for d in self.dataset.split(",") if d.strip()]:
            problems.append(ConfigProblem(("dataset",), "dataset: give at least one dataset name from "
                                          "dataset_info.json"))
        return problems


@dataclass(frozen=True)
class ConfigProblem:
    """One mistake in a config: the keys it is about (none for a key the schema does not know)
    and one sentence that names them, e.g. "lora_rank: 0 is out of range (an integer >= 1)".
    The CLI prints the sentence; the workbench shows it under each of the keys' fields."""

    keys: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return self.message


class ConfigError(UserError):
    """Every problem of a config at once (as torchtune's ConfigError collects a list)."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = list(problems)
        super().__init__("config problem(s):\n" + "\n".join(f"  - {p}" for p in self.problems))


Schema = TypeVar("Schema")


def schema_keys(schema: type) -> dict[str, dataclasses.Field]:
    """A config dataclass's keys by name, in their order."""
    return {f.name: f for f in dataclasses.fields(schema)}


KEYS: dict[str, dataclasses.Field] = schema_keys(TrainConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """Read a YAML config (or start from defaults), apply overrides, check everything."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(Path(path))
    if isinstance(overrides, dict):
        raw.update(overrides)
    elif overrides:
        raw.update(parse_overrides(overrides))
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any], schema: type[Schema] = TrainConfig) -> Schema:  # type: ignore[assignment]
    """The config `raw` describes, or a ConfigError listing every problem."""
    cfg, problems = validate(raw, schema)
    if cfg is None:
        raise ConfigError(problems)
    return cfg


def validate(raw: dict[str, Any], schema: type[Schema] = TrainConfig) -> tuple[Schema | None, list[ConfigProblem]]:  # type: ignore[assignment]
    """(the config, []) or (None, every problem): each key converted and range-checked on its
    own, then the schema's rules over several keys (on the keys that converted)."""
    keys = schema_keys(schema)
    problems: list[ConfigProblem] = []
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in keys:
            problems.append(ConfigProblem((), _unknown_key_message(name, keys)))
            continue
        try:
            values[name] = _convert(keys[name], value)
        except ValueError as exc:
            problems.append(ConfigProblem((name,), str(exc)))
    cfg = schema(**values)
    problems += cfg.rules() if hasattr(cfg, "rules") else []
    return (None if problems else cfg), problems


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` and `--key value` (also `--key=value`) into a dict of strings/YAML scalars."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith("--"):
            item = item[2:]
            if "=" not in item:
                if i + 1 >= len(items):
                    raise UserError(f"--{item} needs a value")
                item = f"{item}={items[i + 1]}"
                i += 1
        if "=" not in item:
            raise UserError(f"cannot read override '{item}': write key=value or --key value")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = value
        i += 1
    return out


def save_config(cfg: Any, path: str | Path) -> None:
    """Write every key of a config (TrainConfig, or a job's: trainer_core/jobconfig.py), in schema
    order, so the file reloads to exactly this run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(config_to_yaml(cfg), encoding="utf-8")
    tmp.replace(path)  # atomic: a crash never leaves half a run.yaml


def config_to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True)


def default_output_dir(cfg: TrainConfig, root: str | Path = "outputs") -> str:
    return str(Path(root) / f"{cfg.stage}-{cfg.finetuning_type}-{time.strftime('%Y%m%d-%H%M%S')}")


KNOWN_MODELS_FILE = "models.yaml"  # in the presets folder beside the run presets: a list, not a config


def preset_paths(folder: str | Path) -> list[Path]:
    """The run presets of a presets folder: every *.yaml file except the known-models list."""
    return sorted(p for p in Path(folder).glob("*.yaml") if p.name != KNOWN_MODELS_FILE)


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"config file '{path}' is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must be a mapping of key: value, got {type(data).__name__}")
    return data


def _unknown_key_message(name: str, keys: dict[str, dataclasses.Field]) -> str:
    close = difflib.get_close_matches(name, keys, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; see README.md for the list of keys"
    return f"unknown key '{name}'{hint}"


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _convert(f: dataclasses.Field, value: Any) -> Any:
    """Convert a YAML or command-line value to the key's type and check its range."""
    name, meta = f.name, f.metadata
    kind = _base_type(f)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~")
                         and meta["optional"]):
        if meta["optional"]:
            return None
        if kind is str:
            return ""
        raise ValueError(f"{name}: a value is required ({allowed_values(f)})")
    converted: bool | int | float | str
    try:
        if kind is bool:
            converted = _to_bool(value)
        elif kind is int:
            converted = _to_int(value)
        elif kind is float:
            converted = _to_float(value)
        else:
            converted = _to_str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {_quote(value)} is not a valid {kind.__name__} ({allowed_values(f)})") from None
    if meta["choices"] is not None and converted not in meta["choices"]:
        raise ValueError(f"{name}: '{value}' is not allowed; choose one of "
                         f"{', '.join(str(c) for c in meta['choices'])}")
    low, high = meta["min"], meta["max"]
    if low is not None and (converted < low or (meta["min_exclusive"] and converted == low)):
        raise ValueError(f"{name}: {value} is out of range ({allowed_values(f)})")
    if high is not None and converted > high:
        raise ValueError(f"{name}: {value} is out of range ({allowed_values(f)})")
    return converted


def allowed_values(key: str | dataclasses.Field) -> str:
    """The values a key allows, in words ("an integer >= 1, or null"); a name is a TrainConfig key."""
    f = KEYS[key] if isinstance(key, str) else key
    meta = f.metadata
    if meta["choices"]:
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    text = {bool: "true or false", int: "an integer", float: "a number", str: "text"}[_base_type(f)]
    if meta["min"] is not None:
        text += (" > " if meta["min_exclusive"] else " >= ") + f"{meta['min']:g}"
    if meta["max"] is not None:
        text += f" and <= {meta['max']:g}"
    if meta["optional"]:
        text += ", or null"
    return text


def _base_type(f: dataclasses.Field) -> type:
    text = str(f.type)
    for kind in (bool, int, float, str):
        if text.startswith(kind.__name__):
            return kind
    raise TypeError(f"unsupported config type {text}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return int(str(value).strip())


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    converted = float(value)
    if not math.isfinite(converted):  # nan passes every range check; inf is no setting either
        raise ValueError(value)
    return converted


def _to_str(value: Any) -> str:
    """Text, or a YAML list of names joined by commas; a mapping or a yes/no is a mistake."""
    scalars = (str, int, float)
    if isinstance(value, list) and all(isinstance(v, scalars) and not isinstance(v, bool) for v in value):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, scalars):
        raise TypeError(value)
    return str(value)


def _quote(value: Any, limit: int = 60) -> str:
    """A value quoted for a message, cut so that a huge value never floods it."""
    text = f"'{value}'"
    return text if len(text) <= limit else text[: limit - 5] + " ...'"
