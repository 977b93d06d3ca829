"""The run config: one typed structure for the UI, the CLI and the scripts.

Key names follow LLaMA-Factory's where they exist. `load_config` reads YAML, applies overrides
(`key=value` or `--key value`), converts and checks every value, and reports every mistake at
once; `save_config` writes the resolved config (run.yaml), which loads back to the same run.
A LLaMA-Factory YAML or command line reads too: `from_llamafactory` takes its keys of
LLAMAFACTORY_KEYS (harmless ones with a notice) and maps its template names to ours.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from trainer_core.errors import UserError

AUTO = "auto"  # per_device_train_batch_size: auto, resolved by trainer_core.planner.resolve_auto_batch
DEFAULT_BATCH = 4  # per_device_train_batch_size's default, and auto's batch per device when train_batch_size is 0
DEEPSPEED_PRESETS = ("z0", "z2", "z3", "z3_offload")
MIX_STRATEGIES = ("concat", "interleave_under", "interleave_over")
PREFERENCE_STAGES = ("dpo", "kto")  # stages that train on preference data (trainer_core/preference.py)
PREF_LOSSES = ("sigmoid", "ipo", "orpo", "simpo")  # stage dpo's losses; orpo and simpo need no reference model
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
              "constant_with_warmup", "inverse_sqrt", "cosine_with_min_lr")


def config_key(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None,
         max: float | None = None, min_exclusive: bool = False, optional: bool = False,
         words: tuple[str, ...] = ()) -> Any:
    """A config key: its default, a one-line help, and the values it allows. `words`: text values a
    number key takes besides its numbers (per_device_train_batch_size: auto)."""
    meta = {"help": help, "choices": choices, "min": min, "max": max,
            "min_exclusive": min_exclusive, "optional": optional, "words": words}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    # What to train
    stage: str = config_key("sft", "sft: supervised fine-tuning on conversations; pt: continued pre-training on text; "
                            "dpo: preference training on chosen/rejected pairs (the loss: pref_loss); kto: on answers "
                            "labelled desirable or not", choices=("sft", "pt", *PREFERENCE_STAGES))
    model_name_or_path: str = config_key("default", "a local model folder, a hub id, or 'default' for the built-in "
                                         "SmolLM2-135M-Instruct")
    template: str = config_key("auto", "chat template: auto (the tokenizer's own) or a built-in fallback",
                               choices=("auto", "chatml", "qwen", "llama3"))
    trust_remote_code: bool = config_key(False, "run code shipped with the model (only for models you trust)")
    # Data
    dataset_dir: str = config_key("data", "folder holding dataset_info.json")
    dataset: str = config_key("tcm_qa", "comma-separated dataset names from dataset_info.json, each with an optional "
                              "mixing weight: tcm_qa:0.5,tcm_dialog:0.3,general:0.2")
    eval_dataset: str = config_key("", "datasets used for evaluation instead of a val_size split")
    val_size: float = config_key(0.0, "share (0-1) or number (>=1) of records held out for eval loss", min=0)
    max_samples: int | None = config_key(None, "use at most this many records of each dataset", min=1, optional=True)
    cutoff_len: int = config_key(1024, "maximum tokens per sample (SFT) or block (PT)", min=16)
    packing: bool | None = config_key(None, "concatenate samples into cutoff_len blocks (default: on for pt, off "
                                      "for sft)", optional=True)
    mix_strategy: str = config_key("concat", "several datasets: concat (every record once, shuffled), interleave_under "
                                   "(drawn by weight until the first runs out), interleave_over (until each has run "
                                   "out once, the others repeated); weights alone mean interleave_under",
                                   choices=MIX_STRATEGIES)
    interleave_probs: str = config_key("", "mixing weights in dataset order, e.g. 0.5,0.3,0.2 (LLaMA-Factory's "
                                       "spelling of dataset: a:0.5,b:0.3,c:0.2)")
    data_engine: str = config_key("auto", "how data is prepared: memory (Python lists, fastest for small data), arrow "
                                  "(checked and tokenized by several processes into memory-mapped Arrow files, cached "
                                  "and resumable: data larger than memory), auto (arrow from 32 MiB of files on)",
                                  choices=("auto", "memory", "arrow"))
    preprocessing_num_workers: int | None = config_key(None, "processes that prepare Arrow data (default: one per "
                                                       "core)", min=1, optional=True)
    streaming: bool = config_key(False, "read, check and tokenize the data while training instead of before: the first "
                                 "step comes at once, for data read once (needs max_steps; no val_size split)")
    # Method
    finetuning_type: str = config_key("lora", "lora, qlora (4-bit base + LoRA) or full",
                                      choices=("lora", "qlora", "full"))
    lora_rank: int = config_key(8, "LoRA rank r", min=1)
    lora_alpha: int = config_key(16, "LoRA alpha (scale = alpha / rank)", min=1)
    lora_dropout: float = config_key(0.0, "dropout on the LoRA path", min=0, max=0.9)
    lora_target: str = config_key("all", "'all' linear layers, or a comma list such as q_proj,v_proj")
    quantization_bit: int = config_key(4, "QLoRA base weight bits", choices=(4, 8))
    # Preference training (stage dpo and kto; LLaMA-Factory's names)
    pref_loss: str = config_key("sigmoid", "stage dpo's loss: sigmoid (DPO), ipo, orpo or simpo (orpo and simpo need "
                                "no reference model)", choices=PREF_LOSSES)
    pref_beta: float = config_key(0.1, "the preference loss's beta: how far from the reference (dpo, ipo, kto) or how "
                                  "strong the preference term (orpo, simpo)", min=0, min_exclusive=True)
    simpo_gamma: float = config_key(0.5, "SimPO's target reward margin (pref_loss simpo)", min=0)
    kto_chosen_weight: float = config_key(1.0, "KTO's weight of the desirable answers' loss", min=0,
                                          min_exclusive=True)
    kto_rejected_weight: float = config_key(1.0, "KTO's weight of the undesirable answers' loss", min=0,
                                            min_exclusive=True)
    # Output
    output_dir: str = config_key("", "run folder; default outputs/<stage>-<finetuning_type>-<time>")
    # Optimisation
    per_device_train_batch_size: int | str = config_key(
        DEFAULT_BATCH, "samples per device per step; auto: the largest that fits, with gradient_accumulation_steps "
        "keeping the global batch (train_batch_size)", min=1, words=(AUTO,))
    per_device_eval_batch_size: int = config_key(4, "samples per device per eval step", min=1)
    gradient_accumulation_steps: int = config_key(1, "micro-batches per optimizer step", min=1)
    train_batch_size: int = config_key(0, "the global batch: samples per optimizer step over all devices "
                                       "(per_device_train_batch_size x gradient_accumulation_steps x devices); "
                                       "0 = not set (with auto: 4 x gradient_accumulation_steps x devices)", min=0)
    learning_rate: float = config_key(1e-4, "peak learning rate", min=0, min_exclusive=True)
    num_train_epochs: float = config_key(3.0, "epochs (ignored when max_steps > 0)", min=0, min_exclusive=True)
    max_steps: int = config_key(-1, "stop after this many optimizer steps; -1 = use num_train_epochs", min=-1)
    lr_scheduler_type: str = config_key("cosine", "learning-rate schedule", choices=SCHEDULERS)
    warmup_steps: int = config_key(0, "linear warm-up steps (overrides warmup_ratio when > 0)", min=0)
    warmup_ratio: float = config_key(0.0, "share of steps used for warm-up", min=0, max=1)
    weight_decay: float = config_key(0.0, "AdamW weight decay", min=0)
    max_grad_norm: float = config_key(1.0, "gradient clipping norm (0 = off)", min=0)
    seed: int = config_key(42, "random seed for data order, split and initialisation", min=0)
    # Logging and saving
    logging_steps: int = config_key(5, "log loss every N steps", min=1)
    save_steps: int = config_key(500, "save a checkpoint every N steps (and always at the end)", min=1)
    save_total_limit: int | None = config_key(None, "keep at most N checkpoints", min=1, optional=True)
    eval_steps: int | None = config_key(None, "evaluate every N steps (default: logging_steps x 10)", min=1,
                                        optional=True)
    report_to: str = config_key("none", "where metrics also go", choices=("none", "wandb", "tensorboard"))
    resume_from_checkpoint: str = config_key("auto", "auto: continue from the newest checkpoint in output_dir; "
                                             "none: start fresh; or a checkpoint folder")
    # Hardware
    bf16: bool = config_key(False, "bf16 mixed precision (GPUs from Ampere on, CPUs with AVX-512 BF16/AMX)")
    fp16: bool = config_key(False, "fp16 mixed precision (CUDA GPUs)")
    gradient_checkpointing: bool = config_key(False, "recompute activations to save memory (slower)")
    deepspeed: str = config_key("", "DeepSpeed: a preset (z0, z2, z3, z3_offload) or a JSON path; empty = none")
    num_gpus: int = config_key(1, "GPUs (or CPU processes) per node; 0 = this process only", min=0)
    hostfile: str = config_key("", "DeepSpeed hostfile for several nodes")

    def resolved_packing(self) -> bool:
        return self.stage == "pt" if self.packing is None else self.packing

    def batch_is_auto(self) -> bool:
        return self.per_device_train_batch_size == AUTO

    def micro_batch(self) -> int:
        """per_device_train_batch_size as the number it is; `auto` is resolved before anything counts
        with it (trainer_core.planner.resolve_auto_batch, in the launcher), so meeting it here is a bug."""
        if isinstance(self.per_device_train_batch_size, str):
            raise RuntimeError("per_device_train_batch_size: auto was not resolved (planner.resolve_auto_batch)")
        return self.per_device_train_batch_size

    def devices(self) -> int:
        """The training processes of the job: num_gpus per node (0: this process alone) on NNODES nodes,
        as the launcher starts them (trainer_core/jobs.py build_command)."""
        try:
            nodes = max(1, int(os.environ.get("NNODES", "1")))
        except ValueError:
            nodes = 1
        return max(1, self.num_gpus) * nodes

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
        problems += _mix_problems(self.dataset, self.interleave_probs)
        if self.streaming and self.max_steps <= 0:
            problems.append(ConfigProblem(("streaming", "max_steps"), "streaming reads the data as it trains, so "
                                          "the number of steps is not known before: set max_steps"))
        if self.streaming and self.val_size:
            problems.append(ConfigProblem(("streaming", "val_size"), "streaming keeps no held-out split: set "
                                          "val_size 0 and name an eval_dataset for the eval loss"))
        problems += self._batch_problems()
        problems += self._preference_problems()
        if not [d for d in self.dataset.split(",") if d.strip()]:
            problems.append(ConfigProblem(("dataset",), "dataset: give at least one dataset name from "
                                          "dataset_info.json"))
        return problems

    def _preference_problems(self) -> list[ConfigProblem]:
        """The preference keys belong to their stages (a value set for another stage would be silently
        ignored), and the preference stages train on whole pairs: no packing, no streaming."""
        problems = []
        defaults = {name: KEYS[name].default for name in PREFERENCE_KEYS}
        for name, stages in PREFERENCE_KEY_STAGES.items():
            value = getattr(self, name)
            if value != defaults[name] and self.stage not in stages:
                problems.append(ConfigProblem((name, "stage"), f"{name}: {value} applies to stage "
                                              f"{' and '.join(stages)} only, and stage is {self.stage}; set stage: "
                                              f"{stages[0]}, or leave {name} out"))
        if self.stage == "dpo" and self.simpo_gamma != defaults["simpo_gamma"] and self.pref_loss != "simpo":
            problems.append(ConfigProblem(("simpo_gamma", "pref_loss"), f"simpo_gamma: {self.simpo_gamma} applies to "
                                          f"pref_loss simpo only, and pref_loss is {self.pref_loss}; set pref_loss: "
                                          "simpo, or leave simpo_gamma out"))
        if self.stage not in PREFERENCE_STAGES:
            return problems
        if dataset_mix(self.dataset, self.interleave_probs)[1] is not None or self.mix_strategy != "concat":
            problems.append(ConfigProblem(("dataset", "interleave_probs", "mix_strategy"), f"stage {self.stage} "
                                          "concatenates its preference datasets: leave out the mixing weights and "
                                          "set mix_strategy: concat"))
        if self.packing:
            problems.append(ConfigProblem(("packing", "stage"), f"packing: stage {self.stage} compares whole answers "
                                          "and does not pack samples; set packing: false or leave it out"))
        if self.data_engine == "arrow":
            problems.append(ConfigProblem(("data_engine", "stage"), f"data_engine: stage {self.stage} prepares its "
                                          "preference data in memory; set data_engine: auto or memory"))
        if self.streaming:
            problems.append(ConfigProblem(("streaming", "stage"), f"streaming: stage {self.stage} reads its "
                                          "preference data before training; set streaming: false"))
        if self.stage == "kto" and self.per_device_train_batch_size == 1:
            problems.append(ConfigProblem(("per_device_train_batch_size", "stage"), "per_device_train_batch_size: "
                                          "stage kto needs at least 2 (its KL term pairs each answer with another "
                                          "prompt of the same batch); set 2 or more"))
        return problems

    def _batch_problems(self) -> list[ConfigProblem]:
        """train_batch_size, when set, is the global batch: a number batch must multiply out to it, and
        auto must be able to split it evenly among the devices."""
        if not self.train_batch_size:
            return []
        devices = self.devices()
        if self.batch_is_auto():
            if self.train_batch_size % devices:
                return [ConfigProblem(("train_batch_size", "num_gpus"), f"train_batch_size: {self.train_batch_size} "
                                      f"does not divide evenly among {devices} devices (num_gpus x nodes)")]
            return []
        product = self.micro_batch() * self.gradient_accumulation_steps * devices
        if product != self.train_batch_size:
            return [ConfigProblem(("train_batch_size", "per_device_train_batch_size", "gradient_accumulation_steps"),
                                  f"train_batch_size: {self.train_batch_size} is not per_device_train_batch_size "
                                  f"{self.per_device_train_batch_size} x gradient_accumulation_steps "
                                  f"{self.gradient_accumulation_steps} x {devices} device(s) = {product}; make them "
                                  "agree, set train_batch_size 0, or per_device_train_batch_size auto")]
        return []


def batch_candidates(per_device: int) -> list[int]:
    """The micro-batches that keep a per-device batch exactly (its divisors), largest first: each one
    with gradient_accumulation_steps = per_device // micro makes the same global batch."""
    return [micro for micro in range(per_device, 0, -1) if per_device % micro == 0]


def next_smaller_batch(micro: int, per_device: int) -> int:
    """The candidate after `micro` when it did not fit: the largest at most half of it (halving, as
    the probe backs off), 0 when `micro` was 1."""
    return next((c for c in batch_candidates(per_device) if c <= micro // 2), 0)


def auto_target(cfg: TrainConfig) -> int:
    """The global batch that auto keeps: train_batch_size, or (not set) the default batch per device
    x gradient_accumulation_steps x devices, the global batch of the same config with a number."""
    return cfg.train_batch_size or DEFAULT_BATCH * cfg.gradient_accumulation_steps * cfg.devices()


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


def dataset_mix(dataset: str, interleave_probs: str = "") -> tuple[list[str], list[float] | None]:
    """The dataset names and their mixing weights (None: no weights, plain concatenation) from
    `dataset: a:0.5,b:0.3` or `dataset: a,b` + `interleave_probs: 0.5,0.3`. Unchecked: see rules()."""
    names, weights = [], []
    for item in (part.strip() for part in dataset.split(",")):
        if item:
            name, _, weight = item.partition(":")
            names.append(name.strip())
            weights.append(weight.strip())
    if interleave_probs.strip():
        weights = [w.strip() for w in interleave_probs.split(",")]
    if not any(weights):
        return names, None
    try:
        return names, [float(w) for w in weights]
    except ValueError:
        return names, None


def _mix_problems(dataset: str, interleave_probs: str) -> list[ConfigProblem]:
    items = [part.strip() for part in dataset.split(",") if part.strip()]
    weighted = [item for item in items if ":" in item]
    if interleave_probs.strip() and weighted:
        return [ConfigProblem(("dataset", "interleave_probs"), "give the mixing weights once: in dataset "
                              "(a:0.5,b:0.5) or in interleave_probs, not both")]
    if weighted and len(weighted) != len(items):
        return [ConfigProblem(("dataset",), f"dataset: give every dataset a weight or none ({dataset})")]
    texts = ([w.strip() for w in interleave_probs.split(",")] if interleave_probs.strip()
             else [item.partition(":")[2].strip() for item in weighted])
    if not texts:
        return []
    key = "interleave_probs" if interleave_probs.strip() else "dataset"
    if len(texts) != len(items):
        return [ConfigProblem((key,), f"interleave_probs: {len(texts)} weights for {len(items)} datasets")]
    bad = [text for text in texts if not _positive_number(text)]
    if bad:
        return [ConfigProblem((key,), f"{key}: mixing weight '{bad[0]}' is not a number > 0")]
    return []


def _positive_number(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and value > 0


Schema = TypeVar("Schema")


def schema_keys(schema: type) -> dict[str, dataclasses.Field]:
    """A config dataclass's keys by name, in their order."""
    return {f.name: f for f in dataclasses.fields(schema)}


KEYS: dict[str, dataclasses.Field] = schema_keys(TrainConfig)
# The preference keys and the stages each applies to (a value for another stage is a problem: rules()).
PREFERENCE_KEY_STAGES = {"pref_loss": ("dpo",), "pref_beta": PREFERENCE_STAGES, "simpo_gamma": ("dpo",),
                         "kto_chosen_weight": ("kto",), "kto_rejected_weight": ("kto",)}
PREFERENCE_KEYS = tuple(PREFERENCE_KEY_STAGES)


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """Read a YAML config (or start from defaults), apply overrides, check everything."""
    return read_config(path, overrides)[0]


def read_config(path: str | Path | None = None, overrides: list[str] | dict | None = None
                ) -> tuple[TrainConfig, list[ConfigNotice]]:
    """load_config, and the notices about LLaMA-Factory keys it took (the CLI prints them)."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(Path(path))
    if isinstance(overrides, dict):
        raw.update(overrides)
    elif overrides:
        raw.update(parse_overrides(overrides))
    cfg, problems, notices = check_config(raw)
    if cfg is None:
        raise ConfigError(problems)
    return cfg, notices


def config_from_dict(raw: dict[str, Any], schema: type[Schema] = TrainConfig) -> Schema:  # type: ignore[assignment]
    """The config `raw` describes, or a ConfigError listing every problem."""
    cfg, problems = validate(raw, schema)
    if cfg is None:
        raise ConfigError(problems)
    return cfg


def validate(raw: dict[str, Any], schema: type[Schema] = TrainConfig) -> tuple[Schema | None, list[ConfigProblem]]:  # type: ignore[assignment]
    """(the config, []) or (None, every problem): each key converted and range-checked on its
    own, then the schema's rules over several keys (on the keys that converted)."""
    cfg, problems, _ = check_config(raw, schema)
    return cfg, problems


def check_config(raw: dict[str, Any], schema: type[Schema] = TrainConfig  # type: ignore[assignment]
                 ) -> tuple[Schema | None, list[ConfigProblem], list[ConfigNotice]]:
    """validate, with the notices: for a TrainConfig, LLaMA-Factory's keys and template names are
    read first (`from_llamafactory`); those taken as harmless or translated give one notice each."""
    problems: list[ConfigProblem] = []
    notices: list[ConfigNotice] = []
    if schema is TrainConfig:
        raw, problems, notices = from_llamafactory(raw)
    keys = schema_keys(schema)
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
    return (None if problems else cfg), problems, notices


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` and `--key value` (also `--key=value`) into a dict of strings/YAML scalars. A
    bare `--flag` (last, or followed by another `--flag`) is true, as on LLaMA-Factory's command
    lines (`--do_train --plot_loss --fp16`); only a key of ours that takes a value refuses it.
    Hyphens in a key read as underscores (`--model-name-or-path`)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith("--"):
            item = item[2:]
            if "=" not in item:
                alone = i + 1 >= len(items) or items[i + 1].startswith("--")
                key = item.strip().replace("-", "_")
                if alone and key in KEYS and _base_type(KEYS[key]) is not bool:
                    raise UserError(f"--{item} needs a value")
                item = f"{item}=true" if alone else f"{item}={items[i + 1]}"
                i += 0 if alone else 1
        if "=" not in item:
            raise UserError(f"cannot read override '{item}': write key=value or --key value")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = value
        i += 1
    return out


# ---- LLaMA-Factory configs and command lines ---------------------------------------------------
# A LLaMA-Factory training YAML (or a train_bash.py / llamafactory-cli command line) runs here when
# its keys are ours (most are: the names follow LLaMA-Factory's) or in the table below. Names and
# values are LLaMA-Factory's own (src/llamafactory/hparams/*.py, data/template.py) and Hugging Face
# TrainingArguments'. A key in neither is an unknown key, as in any config.

@dataclass(frozen=True)
class ConfigNotice:
    """A LLaMA-Factory key taken as harmless, or a LLaMA-Factory setting read as ours: the keys it
    is about and one sentence. The CLI prints it as a "note:" line; nothing is wrong."""

    keys: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ForeignKey:
    """A key of LLaMA-Factory's that is not ours. Its values in `harmless` (every value when
    empty) change nothing here, for `reason`; any other value is a problem that says what happens
    here instead (`otherwise`). `means` lists values that stand for settings of ours (value,
    {our key: value}, why), applied unless the config sets those keys itself."""

    reason: str
    harmless: tuple = ()
    otherwise: str = ""
    means: tuple = ()


_EVAL_INSTEAD = ("LLaMA-Factory's evaluation run is `python -m trainer_core eval --run RUN_DIR` here; during "
                 "training the eval loss comes from val_size or eval_dataset")
_PREDICT_INSTEAD = "predictions come from `python -m trainer_core eval --run RUN_DIR --task generate` here"
_EVERY = "evaluation runs every eval_steps whenever there is eval data: val_size or eval_dataset"

LLAMAFACTORY_KEYS: dict[str, ForeignKey] = {
    # what to run
    "do_train": ForeignKey("we always train", (True,), "train always trains; evaluate a finished run with "
                           "`python -m trainer_core eval --run RUN_DIR`"),
    "do_eval": ForeignKey("the eval loss during training comes from val_size or eval_dataset", (False,),
                          _EVAL_INSTEAD),
    "do_predict": ForeignKey("predictions are made by `python -m trainer_core eval`", (False,), _PREDICT_INSTEAD),
    "predict_with_generate": ForeignKey("predictions are made by `python -m trainer_core eval`", (False,),
                                        _PREDICT_INSTEAD),
    "train_on_prompt": ForeignKey("prompts are never trained on: the labels cover the assistant turns", (False,),
                                  "only the assistant turns are trained on here"),
    "mask_history": ForeignKey("every assistant turn is trained on", (False,),
                               "every assistant turn is trained on here, not the last one alone"),
    # data
    "overwrite_cache": ForeignKey("tokenized data is cached under a fingerprint of the data, the tokenizer and the "
                                  "settings, so a stale cache is never used"),
    "preprocessing_batch_size": ForeignKey("speed only"),
    "dataloader_num_workers": ForeignKey("batches are built in the training process; speed only"),
    "disable_shuffling": ForeignKey("the training data is shuffled by seed", (False,),
                                    "the training data is always shuffled here (by seed)"),
    "ignore_pad_token_for_loss": ForeignKey("padding never counts in the loss", (True,),
                                            "padding never counts in the loss here"),
    # model
    "flash_attn": ForeignKey("transformers picks the attention kernel (SDPA where available), as LLaMA-Factory's "
                             "auto does", ("auto",), "the attention kernel is not chosen here (transformers "
                             "picks SDPA where available); write flash_attn: auto or leave it out"),
    "use_fast_tokenizer": ForeignKey("the fast tokenizer is always used", (True,),
                                     "the fast tokenizer is always used here"),
    "quantization_method": ForeignKey("QLoRA quantizes with bitsandbytes", ("bnb", "bitsandbytes"),
                                      "QLoRA quantizes with bitsandbytes only here (quantization_method: bnb)"),
    "quantization_type": ForeignKey("4-bit QLoRA uses NF4", ("nf4",), "4-bit QLoRA uses NF4 here"),
    "double_quantization": ForeignKey("4-bit QLoRA uses double quantization", (True,),
                                      "4-bit QLoRA always uses double quantization here"),
    # output and logging
    "plot_loss": ForeignKey("the run folder always has the loss curve data, trainer_log.jsonl; the workbench "
                            "draws it"),
    "overwrite_output_dir": ForeignKey(
        "without it LLaMA-Factory resumes from the newest checkpoint in output_dir, as resume_from_checkpoint: "
        "auto does", means=((True, {"resume_from_checkpoint": "none"},
                             "LLaMA-Factory then does not resume; an output_dir that already holds checkpoints "
                             "is refused here rather than overwritten"),)),
    "save_only_model": ForeignKey("checkpoints hold the optimizer state too", (False,),
                                  "checkpoints always hold the optimizer and scheduler state here, so that a run "
                                  "can resume"),
    "logging_first_step": ForeignKey("the first step is always logged"),
    "include_num_input_tokens_seen": ForeignKey("the run always counts its input tokens (padding excluded)"),
    "ddp_timeout": ForeignKey("every process tokenizes its own data, so none waits long on another; the default "
                              "30-minute timeout applies"),
    "eval_strategy": ForeignKey(_EVERY, ("steps",), _EVERY + "; for none, leave both out"),
    "evaluation_strategy": ForeignKey(_EVERY, ("steps",), _EVERY + "; for none, leave both out"),
    "save_strategy": ForeignKey("a checkpoint is saved every save_steps", ("steps",),
                                "a checkpoint is saved every save_steps here"),
    "logging_strategy": ForeignKey("the loss is logged every logging_steps", ("steps",),
                                   "the loss is logged every logging_steps here"),
}

# LLaMA-Factory's template names (src/llamafactory/data/template.py) whose text, for system, user
# and assistant turns, is that of one of our built-in templates (trainer_core/tokenization.py):
# chatml, yi, smollm and qwen3_nothink are ChatML with no default system prompt; qwen adds "You are
# Qwen, created by Alibaba Cloud. You are a helpful assistant." when a conversation has no system
# turn; llama3 is the Llama 3 header format after the bos token (ours also trims the spaces around
# each message). Which tokens are trained is ours either way (every assistant reply through its
# end-of-turn token).
LLAMAFACTORY_TEMPLATES = {"chatml": "chatml", "qwen": "qwen", "llama3": "llama3", "yi": "chatml",
                          "smollm": "chatml", "qwen3_nothink": "chatml"}
# Every other template name of LLaMA-Factory's: not built in here.
LLAMAFACTORY_OTHER_TEMPLATES = (
    "alpaca", "aquila", "atom", "baichuan", "baichuan2", "bailing", "bailing_v2", "belle", "bluelm", "breeze",
    "chatglm2", "chatglm3", "chatml_de", "codegeex2", "codegeex4", "cohere", "cpm", "cpm3", "cpm4", "dbrx",
    "deepseek", "deepseek3", "deepseekr1", "deepseekcoder", "default", "dots_ocr", "empty", "ernie",
    "ernie_nothink", "ernie_vl", "exaone", "falcon", "falcon_h1", "fewshot", "gemma", "gemma2", "gemma3",
    "gemma3n", "glm4", "glm4_moe", "glm4v", "glm4_5v", "glmz1", "gpt_oss", "granite3", "granite3_vision",
    "granite4", "index", "hunyuan", "intern", "intern2", "intern_vl", "intern_s1", "keye_vl", "kimi_vl", "llama2",
    "llama2_zh", "llama4", "mllama", "moonlight", "llava", "llava_next", "llava_next_llama3", "llava_next_mistral",
    "llava_next_qwen", "llava_next_yi", "llava_next_video", "llava_next_video_mistral", "llava_next_video_yi",
    "marco", "mimo", "mimo_v2", "mimo_vl", "minicpm_v", "minicpm_o", "minimax1", "minimax2", "ministral",
    "mistral", "mistral_small", "ministral3", "olmo", "openchat", "openchat-3.6", "opencoder", "orion",
    "paligemma", "paligemma_chat", "phi", "phi_small", "phi4", "pixtral", "qwen3", "qwen2_audio", "qwen2_omni",
    "qwen3_omni", "qwen3_omni_nothink", "qwen2_vl", "qwen3_vl", "qwen3_vl_nothink", "sailor", "seed_coder",
    "seed_oss", "skywork_o1", "smollm2", "solar", "starchat", "telechat", "telechat2", "vicuna", "video_llava",
    "xuanyuan", "xverse", "yayi", "yi_vl", "yuan", "zephyr", "ziya")


def from_llamafactory(raw: dict[str, Any]) -> tuple[dict[str, Any], list[ConfigProblem], list[ConfigNotice]]:
    """A config dict read the way LLaMA-Factory reads it: (the dict in our keys, problems, notices).
    Keys of LLAMAFACTORY_KEYS leave the dict: a harmless value gives a notice, a value standing for
    settings of ours sets them (with a notice), any other value is a problem. LLaMA-Factory
    template names become ours, or a problem. In a config that uses LLaMA-Factory's keys, three of
    its readings of our keys apply too: resume_from_checkpoint: null finds the newest checkpoint
    (auto), quantization_bit with finetuning_type lora is QLoRA, and lora_alpha left out is
    2 x lora_rank. Everything else is untouched, for `check_config` to judge."""
    out = dict(raw)
    problems: list[ConfigProblem] = []
    notices: list[ConfigNotice] = []
    foreign = [name for name in raw if name in LLAMAFACTORY_KEYS]
    if foreign and "resume_from_checkpoint" in out and out["resume_from_checkpoint"] is None:
        del out["resume_from_checkpoint"]  # null: auto, or what overwrite_output_dir says (below)
        if not _means_set(raw, "overwrite_output_dir", "resume_from_checkpoint"):
            notices.append(ConfigNotice(("resume_from_checkpoint",), "resume_from_checkpoint: null is LLaMA-Factory's "
                                        "'resume from the newest checkpoint in output_dir, if any'; taken as auto"))
    for name in foreign:
        spec, value = LLAMAFACTORY_KEYS[name], out.pop(name)
        given = _foreign_value(value, spec)
        for stands_for, settings, why in spec.means:
            if given != stands_for:
                continue
            own = [k for k in settings if out.get(k) is not None]
            if own:  # the config's own keys win, as in LLaMA-Factory
                notices.append(ConfigNotice((name, *own), f"{name}: {_scalar(given)} is LLaMA-Factory's; "
                                            f"{', '.join(own)} as given decides here"))
            else:
                out.update(settings)
                ours = ", ".join(f"{k}: {_scalar(v)}" for k, v in settings.items())
                notices.append(ConfigNotice((name, *settings), f"{name}: {_scalar(given)} is taken as {ours} ({why})"))
            break
        else:
            if not spec.harmless or given in spec.harmless:
                notices.append(ConfigNotice((name,), f"{name} is LLaMA-Factory's; taken as harmless ({spec.reason})"))
            else:
                problems.append(ConfigProblem((), f"{name}: {_quote(_scalar(given))} is not supported; "
                                              f"{spec.otherwise}"))
    template = out.get("template")
    if isinstance(template, str) and LLAMAFACTORY_TEMPLATES.get(template, template) != template:
        out["template"] = LLAMAFACTORY_TEMPLATES[template]
        notices.append(ConfigNotice(("template",), f"template: LLaMA-Factory's '{template}' is the same text as our "
                                    f"'{out['template']}'; taken as template: {out['template']}"))
    elif isinstance(template, str) and template in LLAMAFACTORY_OTHER_TEMPLATES:
        del out["template"]
        ours = ", ".join(c for c in KEYS["template"].metadata["choices"] if c != "auto")
        problems.append(ConfigProblem(("template",), f"template: '{template}' is a LLaMA-Factory template that is "
                                      f"not built in here; write template: auto to use the model's own chat "
                                      f"template (its tokenizer's), or choose one of {ours}"))
    if foreign:
        notices += _llamafactory_readings(out)
    return out, problems, notices


def _llamafactory_readings(out: dict[str, Any]) -> list[ConfigNotice]:
    """LLaMA-Factory's QLoRA spelling and its lora_alpha default, applied to `out` in place."""
    notices = []
    method = str(out.get("finetuning_type", "lora")).strip().lower()
    if method == "lora" and out.get("quantization_bit") is not None:
        out["finetuning_type"] = "qlora"
        notices.append(ConfigNotice(("finetuning_type", "quantization_bit"), "finetuning_type: lora with "
                                    f"quantization_bit: {out['quantization_bit']} is LLaMA-Factory's QLoRA; taken as "
                                    "finetuning_type: qlora"))
    if out.get("lora_alpha") is None and "lora_rank" in out:
        try:
            alpha = 2 * _to_int(out["lora_rank"])
        except (TypeError, ValueError):
            return notices  # the rank's own problem is reported
        out["lora_alpha"] = alpha
        if alpha != KEYS["lora_alpha"].default:
            notices.append(ConfigNotice(("lora_alpha", "lora_rank"), "lora_alpha is not set; LLaMA-Factory's "
                                        f"default is 2 x lora_rank, taken as lora_alpha: {alpha}"))
    return notices


def _means_set(raw: dict[str, Any], name: str, key: str) -> bool:
    """Whether LLaMA-Factory key `name`, as given in `raw`, stands for a setting of our `key`."""
    spec = LLAMAFACTORY_KEYS[name]
    given = _foreign_value(raw.get(name), spec) if name in raw else None
    return any(given == value and key in settings for value, settings, _ in spec.means)


def _foreign_value(value: Any, spec: ForeignKey) -> Any:
    """A foreign key's value as its table entry spells its values: true/false, or lower-case text."""
    samples = [*spec.harmless, *(stands_for for stands_for, _, _ in spec.means)]
    if samples and all(isinstance(s, bool) for s in samples):
        try:
            return _to_bool(value)
        except ValueError:
            return value
    return value.strip().lower() if isinstance(value, str) else value


def _scalar(value: Any) -> str:
    """A value as YAML writes it: true, false, null, 4, text."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def save_config(cfg: Any, path: str | Path, note: str = "") -> None:
    """Write every key of a config (TrainConfig, or a job's: trainer_core/jobconfig.py), in schema
    order, so the file reloads to exactly this run. `note`: comment lines above the keys (how a
    value was chosen: per_device_train_batch_size auto)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    comments = "".join(f"# {line}\n" for line in note.splitlines())
    tmp.write_text(comments + config_to_yaml(cfg), encoding="utf-8")
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
    if meta.get("words") and isinstance(value, str) and value.strip().lower() in meta["words"]:
        return value.strip().lower()  # a word the number key also takes (auto)
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
    if meta.get("words"):
        text += ", or " + " or ".join(meta["words"])
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
