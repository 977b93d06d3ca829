"""The run form: the values of the Parameters tab and the config they stand for.

The form is a dict of values named like the config keys, plus the model picker
(`model_source`, `model_path`, `known_model`) and the Data tab's `datasets` / `dataset_dir` and
mixing (`weights`, one per picked dataset in pick order, and `mix_strategy`).
`values_from_config` and `raw_config` convert it from and to a config dict, one function each
way; `check` validates it with the core (`trainer_core.config.validate`) and puts every problem
under the fields of its keys (`by_field`). The Parameters tab shows it, the Train tab starts
what `check` returns, so what is previewed is what runs. No gradio here: plain functions.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import threading
from pathlib import Path
from typing import Any

from app.context import AppContext
from app.i18n import t, translate
from trainer_core.catalog import KNOWN_MODELS
from trainer_core.config import (
    KEYS,
    PREFERENCE_KEY_STAGES,
    PREFERENCE_KEYS,
    ConfigProblem,
    TrainConfig,
    allowed_values,
    config_from_dict,
    config_to_yaml,
    dataset_mix,
    preset_paths,
    validate,
)
from trainer_core.data import dataset_outside, load_dataset_info
from trainer_core.errors import UserError
from trainer_core.preference import is_preference_stage, split_records

LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target")
QLORA_KEYS = ("quantization_bit",)
# Shown for the stages they apply to (trainer_core.config.PREFERENCE_KEY_STAGES), as the LoRA keys for LoRA
PREF_KEYS = PREFERENCE_KEYS
MAIN_KEYS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
             "gradient_accumulation_steps", "cutoff_len", "val_size", "max_samples")
ADVANCED_KEYS = ("lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay", "max_grad_norm",
                 "logging_steps", "save_steps", "save_total_limit", "eval_steps", "per_device_eval_batch_size",
                 "train_batch_size", "eval_dataset", "packing", "bf16", "fp16", "gradient_checkpointing", "seed",
                 "resume_from_checkpoint", "trust_remote_code", "data_engine", "preprocessing_num_workers",
                 "streaming")
HARDWARE_KEYS = ("deepspeed", "num_gpus", "hostfile")
OUTPUT_KEYS = ("report_to", "output_dir")
FORM_KEYS = ("stage", "finetuning_type", "template", *LORA_KEYS, *QLORA_KEYS, *PREF_KEYS, *MAIN_KEYS,
             *ADVANCED_KEYS,
             *HARDWARE_KEYS, *OUTPUT_KEYS)
MODEL_FIELDS = ("model_source", "model_path", "known_model")
DATA_FIELDS = ("datasets", "dataset_dir", "weights", "mix_strategy")  # owned by the Data tab
ORDER = (*MODEL_FIELDS, *DATA_FIELDS, *FORM_KEYS)  # the order of a handler's form inputs
DATA_KEYS = ("dataset", "dataset_dir", "interleave_probs", "mix_strategy")  # the config keys the Data tab sets
# The form keys besides the Data tab's choice that decide the training split's composition.
MIX_INPUTS = ("stage", "max_samples", "val_size", "seed", "eval_dataset", "data_engine", "streaming")
MODEL_SOURCES = ("builtin", "local", "known")
# How a widget spells the config values it cannot hold (a dropdown's value is never "" or None):
# config value -> widget value. values_from_config and raw_config are the only two users.
WIDGET_SPELLING: dict[str, dict[Any, str]] = {
    "deepspeed": {"": "none"},
    "packing": {None: "auto", True: "true", False: "false"},
}
# Keys whose widget is a picker of text that also takes a number typed in: the batch (auto or a size).
BATCH_CHOICES = ("auto", "1", "2", "4", "8", "16", "32")
TEXT_PICKERS = ("per_device_train_batch_size",)
CONFIG_SPELLING: dict[str, dict[Any, Any]] = {key: {widget: value for value, widget in spelling.items()}
                                              for key, spelling in WIDGET_SPELLING.items()}
DEFAULT_PRESET = "sft_lora"


# ---- presets and initial values ------------------------------------------------------------

def preset_names(ctx: AppContext) -> list[str]:
    return [p.stem for p in preset_paths(ctx.presets_dir)]


def read_preset(ctx: AppContext, name: str) -> dict:
    import yaml

    path = Path(ctx.presets_dir) / f"{Path(name).name}.yaml"
    if not path.is_file():
        raise UserError(f"preset '{name}' not found in {ctx.presets_dir}")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def initial_values(ctx: AppContext, available: list[str]) -> dict[str, Any]:
    """The form a newcomer sees: the LoRA SFT preset on the preselected model and sample data."""
    raw = read_preset(ctx, DEFAULT_PRESET) if DEFAULT_PRESET in preset_names(ctx) else {}
    values = values_from_config(raw, ctx, {"datasets": [], "dataset_dir": str(ctx.data_dir)}, available)
    if not values["datasets"]:  # the preset's datasets are not in this data folder
        values["datasets"] = default_datasets(ctx, available)
    return values


def default_datasets(ctx: AppContext, available: list[str]) -> list[str]:
    """Conversation datasets (what SFT trains on) from the registry; the first two suffice."""
    from trainer_core.data import load_dataset_info

    try:
        info = load_dataset_info(ctx.data_dir)
    except UserError:
        return []
    chat = [name for name in available if info.get(name, {}).get("formatting") not in ("text", "mcq")]
    return chat[:2]


def values_from_config(config: dict, ctx: AppContext, current: dict[str, Any], available: list[str],
                       keep_data_dir: bool = True) -> dict[str, Any]:
    """Form values from a preset or a saved config. Keys the config leaves out take the
    defaults; the data folder stays the Data tab's unless `keep_data_dir` is False."""
    cfg = {**dataclasses.asdict(TrainConfig()), **config}
    values: dict[str, Any] = {}
    for key in FORM_KEYS:
        value = cfg.get(key)
        if key in WIDGET_SPELLING:
            value = WIDGET_SPELLING[key].get(value, value)
        elif key in TEXT_PICKERS:
            value = str(value)  # the picker's choices are text: 4 shows as its "4"; the config reads "4" back as 4
        elif value is None and str(KEYS[key].type).startswith("str"):
            value = ""  # a text box holds no None
        values[key] = value
    model = str(cfg.get("model_name_or_path") or "default")
    if model == "default" and ctx.model != "default":
        model = ctx.model  # the model given at launch stands in for the built-in one
    known = next((m["name"] for m in KNOWN_MODELS if m["hub_id"] == model or model.rstrip("/").endswith(m["name"])),
                 KNOWN_MODELS[0]["name"])
    values.update(model_source="builtin" if model == "default" else "local",
                  model_path="" if model == "default" else model, known_model=known)
    data_dir = current.get("dataset_dir") or str(ctx.data_dir)
    if not keep_data_dir and cfg.get("dataset_dir"):
        data_dir = str(cfg["dataset_dir"])
    values["dataset_dir"] = data_dir
    names, weights = dataset_mix(str(cfg.get("dataset") or ""), str(cfg.get("interleave_probs") or ""))
    pairs = list(zip(names, weights if weights and len(weights) == len(names) else [None] * len(names)))
    chosen = [(name, w) for name, w in pairs if name in available] if keep_data_dir else pairs
    if chosen:  # the config's datasets, their weights and how they mix
        values["datasets"] = [name for name, _ in chosen]
        values["weights"] = ",".join(weight_text(w) for _, w in chosen if w is not None)
        strategy = str(cfg.get("mix_strategy") or "concat")
        # Weights alone mean interleave_under (trainer_core.data.load_datasets): the form shows that.
        values["mix_strategy"] = "interleave_under" if values["weights"] and strategy == "concat" else strategy
    else:  # none of them is in this data folder: the Data tab's choice stays
        values["datasets"] = list(current.get("datasets") or [])
        values["weights"] = current.get("weights") or ""
        values["mix_strategy"] = current.get("mix_strategy") or "concat"
    return values


def weight_text(weight: float) -> str:
    """0.6 -> "0.6", 2.0 -> "2": a weight as the weights field shows it."""
    return str(int(weight)) if float(weight).is_integer() else repr(float(weight))


def split_weights(text: Any) -> list[str]:
    """The weights field's entries: `0.6,0.3,0.1` (also with spaces, full-width commas or semicolons)."""
    return [part for part in re.split(r"[,，;；\s]+", str(text or "").strip()) if part]


def mix_keys(values: dict[str, Any]) -> dict[str, str]:
    """`dataset`, `interleave_probs` and `mix_strategy` from the Data tab's choice: the weights go
    beside the names (`a:0.6,b:0.4`); a count that does not match goes to interleave_probs, where
    the core names the mismatch. One dataset is not mixed: its weight and strategy are left out."""
    names = [str(name) for name in values.get("datasets") or []]
    weights = split_weights(values.get("weights")) if len(names) > 1 else []
    keys = {"dataset": ",".join(names), "interleave_probs": "",
            "mix_strategy": str(values.get("mix_strategy") or "concat") if len(names) > 1 else "concat"}
    if weights and len(weights) == len(names):
        keys["dataset"] = ",".join(f"{name}:{weight}" for name, weight in zip(names, weights))
    elif weights:
        keys["interleave_probs"] = ",".join(weights)
    return keys


def mix_problem(values: dict[str, Any]) -> str | None:
    """What is wrong with the weights (the core's message), if anything."""
    keys = mix_keys(values)
    if not keys["dataset"]:
        return None
    _, problems = validate(keys, TrainConfig)
    return next((p.message for p in problems if {"dataset", "interleave_probs"} & set(p.keys)), None)


# ---- form -> config ------------------------------------------------------------------------

def raw_config(values: dict[str, Any]) -> dict[str, Any]:
    """The form as a config dict (unchecked): what `config_from_dict` will judge."""
    raw: dict[str, Any] = {}
    for key in FORM_KEYS:
        value = values.get(key)
        if isinstance(value, str):
            value = value.strip()
        if key in WIDGET_SPELLING:
            value = CONFIG_SPELLING[key].get(value, value)
        elif KEYS[key].metadata["optional"] and (value == "" or (value == 0 and KEYS[key].metadata["min"] == 1)):
            value = None  # an emptied number box (or 0, below these keys' minimum of 1) means "not set"
        raw[key] = value
    for key, stages in PREFERENCE_KEY_STAGES.items():
        if raw.get("stage") not in stages:
            del raw[key]  # hidden for this stage (pref_shown): what it holds does not apply
    source = values.get("model_source") or "builtin"
    raw["model_name_or_path"] = "default" if source == "builtin" else (values.get("model_path") or "").strip()
    raw.update(mix_keys(values))
    raw["dataset_dir"] = (values.get("dataset_dir") or "").strip()
    return raw


def pref_shown(stage: str) -> dict[str, bool]:
    """Which preference keys the form shows for `stage`: those that apply to it."""
    return {key: stage in stages for key, stages in PREFERENCE_KEY_STAGES.items()}


def check(values: dict[str, Any], ctx: AppContext) -> tuple[TrainConfig | None, dict[str, str], list[str]]:
    """(config or None, problems by form field, problems that belong to no field). Paths must
    stay inside the folders the workbench may use (AppContext.page_path)."""
    raw = raw_config(values)
    problems: list[ConfigProblem] = []
    model_problem = check_model(values, ctx)
    if model_problem:
        problems.append(ConfigProblem(("model_path",), model_problem))
    for key, write in (("dataset_dir", False), ("output_dir", True), ("resume_from_checkpoint", False),
                       ("hostfile", False)):
        if raw.get(key) and not (key == "resume_from_checkpoint" and raw[key] in ("auto", "none")):
            try:
                raw[key] = str(ctx.page_path(raw[key], key, write=write))
            except UserError as exc:
                problems.append(ConfigProblem((key,), str(exc)))
    if raw.get("dataset") and raw.get("dataset_dir") and not any("dataset_dir" in p.keys for p in problems):
        try:
            problems += [ConfigProblem((), text) for text in
                         dataset_outside(dataset_mix(raw["dataset"])[0], raw["dataset_dir"], ctx.data_roots())]
        except UserError as exc:
            problems.append(ConfigProblem((), str(exc)))
    cfg, config_problems = validate(raw, TrainConfig)
    fields, general = by_field([*problems, *config_problems])
    return (cfg if not fields and not general else None), fields, general


def by_field(problems: list[ConfigProblem]) -> tuple[dict[str, str], list[str]]:
    """Each problem under every form field it names (the first problem of a field wins); the
    rest, and what the Data tab chose (datasets, their folder, weights and mixing), as general problems."""
    fields: dict[str, str] = {}
    general: list[str] = []
    for problem in problems:
        on_this_tab = [key for key in problem.keys if key not in DATA_KEYS]
        for key in on_this_tab:
            fields.setdefault(key, problem.message)
        if not on_this_tab:
            general.append(problem.message)
    return fields, general


def check_model(values: dict[str, Any], ctx: AppContext) -> str | None:
    """The local folder must exist: without a hub a name would fail only once the job starts."""
    from trainer_core.models import resolve_model_path

    if (values.get("model_source") or "builtin") == "builtin":
        return None
    path = (values.get("model_path") or "").strip()
    if not path:
        return "model_name_or_path: give the local model folder (the one holding config.json)"
    try:
        ctx.page_path(path, "model_name_or_path")
    except UserError as exc:
        return str(exc)
    try:
        resolve_model_path(path)
    except UserError as exc:
        return str(exc)
    if not Path(path).expanduser().is_dir():
        return f"model folder '{path}' does not exist here (there is no model hub on this machine)"
    return None


def field_info(key: str, lang: str, problem: str | None = None) -> str:
    """The line under a field: its help, or the problem with it."""
    if problem:
        return "⚠ " + translate(problem, lang)
    if key in KEYS:
        allowed = translate(allowed_values(key), lang)
        return f"{t('help.' + key, lang)}（{allowed}）" if lang == "zh" else f"{t('help.' + key, lang)} ({allowed})"
    return t("help." + key, lang)


def summary(fields: dict[str, str], general: list[str], lang: str) -> str:
    if not fields and not general:
        return t("params.ok", lang)
    lines = [f"**{t('params.problems', lang)}**"]
    for key, text in fields.items():  # the key once, not "`key`: key: ..."
        shown = translate(text, lang)
        for separator in (": ", "："):
            shown = shown.removeprefix(key + separator)
        lines.append(f"- `{key}`: {shown}")
    lines += [f"- {translate(text, lang)}" for text in general]
    return "\n".join(lines)


# ---- the training split's composition -------------------------------------------------------

_COMPOSITIONS: dict[tuple, dict[str, Any]] = {}  # the latest few, by their inputs and the files' stamps
_COMPOSITIONS_LOCK = threading.Lock()  # handlers run in threads
COMPOSITIONS_KEPT = 8


def composition(values: dict[str, Any], ctx: AppContext) -> dict[str, Any]:
    """What one epoch of the run trains on, computed as the run computes it (the core's
    `load_datasets` and `mix_composition`, from the form's datasets, weights, mix strategy, stage,
    max_samples, val_size, seed and eval_dataset): {"strategy": the one that applies, "weights":
    {name: weight} or None, "records": {name: records per epoch} in pick order, "total", "eval":
    records held out}. Raises UserError with the core's message when the run could not mix them.
    Kept by the files' sizes and times, so asking again reads nothing. Data that takes the
    Arrow path (trainer_core.arrow_data.use_arrow: too large to read here) is counted only by the
    run, after tokenization, and streamed data (`streaming`) has no per-epoch count: then
    "records" is None (and "streaming" says which)."""
    from trainer_core.arrow_data import use_arrow
    from trainer_core.data import load_datasets, mix_composition

    raw = raw_config(values)
    if not raw["dataset"]:
        raise UserError("dataset: give at least one dataset name from dataset_info.json")
    data_dir = ctx.page_path(raw["dataset_dir"], "dataset_dir")
    wanted = {key: raw[key] for key in (*DATA_KEYS, *MIX_INPUTS) if key != "streaming"}
    cfg, problems = validate({**wanted, "dataset_dir": str(data_dir)}, TrainConfig)
    if cfg is None:
        raise UserError("\n".join(problem.message for problem in problems))
    names, weights = dataset_mix(cfg.dataset, cfg.interleave_probs)
    read = [*names, *dataset_mix(cfg.eval_dataset)[0]]
    outside = dataset_outside(read, data_dir, ctx.data_roots())
    if outside:
        raise UserError(outside[0])
    # As load_datasets mixes (and data_mix.json records): weights alone mean interleave_under.
    strategy = cfg.mix_strategy if weights is None or cfg.mix_strategy != "concat" else "interleave_under"
    mix = {"strategy": strategy, "weights": dict(zip(names, weights)) if weights else None}
    preference = is_preference_stage(cfg.stage)  # read in memory, concatenated (trainer_core/preference.py)
    if not preference and (raw.get("streaming") or use_arrow(cfg.data_engine, names, cfg.dataset_dir, cfg.stage)):
        return {**mix, "records": None, "total": None, "eval": None, "streaming": bool(raw.get("streaming"))}
    key = (tuple(sorted(wanted.items(), key=lambda item: item[0])), str(data_dir), _stamps(data_dir, read))
    with _COMPOSITIONS_LOCK:
        known = _COMPOSITIONS.get(key)
    if known is not None:
        return known
    if preference:
        train, evals = split_records(cfg)
    else:
        train, evals = load_datasets(cfg.dataset, cfg.dataset_dir, cfg.stage, max_samples=cfg.max_samples,
                                     val_size=cfg.val_size, seed=cfg.seed, eval_names=cfg.eval_dataset or None,
                                     mix_strategy=cfg.mix_strategy, interleave_probs=cfg.interleave_probs)
    counts = mix_composition(train)
    found = {**mix, "records": {name: counts.get(name, 0) for name in names}, "total": len(train),
             "eval": len(evals)}
    with _COMPOSITIONS_LOCK:
        while len(_COMPOSITIONS) >= COMPOSITIONS_KEPT:
            del _COMPOSITIONS[next(iter(_COMPOSITIONS))]
        _COMPOSITIONS[key] = found
    return found


def _stamps(data_dir: Path, names: list[str]) -> tuple:
    """Size and time of the registry and of each dataset's file(s): a change reads them again."""
    def stamp(path: Path) -> tuple:
        try:
            found = path.stat()
        except OSError:
            return (str(path), None)
        inside = tuple(stamp(child) for child in sorted(path.iterdir())) if path.is_dir() else ()
        return (str(path), found.st_size, found.st_mtime_ns, inside)

    try:
        info = load_dataset_info(data_dir)
    except UserError:
        info = {}
    files = [data_dir / str(info[name]["file_name"]) for name in names
             if isinstance(info.get(name), dict) and info[name].get("file_name")]
    return (stamp(data_dir / "dataset_info.json"), *(stamp(path) for path in files))


def composition_table(comp: dict[str, Any], lang: str) -> str:
    """The composition for the Data tab: a line with the total and the strategy, then a table."""
    if comp["records"] is None:
        return t("mix.streaming" if comp.get("streaming") else "mix.arrow", lang,
                 strategy=t("mix." + comp["strategy"], lang))
    held_out = t("mix.held_out", lang, n=f"{comp['eval']:,}") if comp["eval"] else ""
    lines = [t("mix.head", lang, total=f"{comp['total']:,}", strategy=t("mix." + comp["strategy"], lang),
               held_out=held_out), "",
             f"| {t('mix.dataset', lang)} | {t('mix.weight', lang)} | {t('mix.records', lang)} | "
             f"{t('mix.share', lang)} |", "| --- | ---: | ---: | ---: |"]
    weights = comp["weights"] or {}
    for name, n in comp["records"].items():
        weight = weight_text(weights[name]) if name in weights else "–"
        lines.append(f"| {name} | {weight} | {n:,} | {_share(n, comp['total'])} |")
    return "\n".join(lines)


def composition_line(comp: dict[str, Any], lang: str) -> str:
    """The composition in one line (the Parameters tab's preview)."""
    if comp["records"] is None:
        return t("mix.streaming" if comp.get("streaming") else "mix.arrow", lang,
                 strategy=t("mix." + comp["strategy"], lang))
    parts = " · ".join(f"{name} {n:,} ({_share(n, comp['total'])})" for name, n in comp["records"].items())
    return t("mix.line", lang, total=f"{comp['total']:,}", parts=parts)


def _share(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else "–"


def preview(values: dict[str, Any], ctx: AppContext) -> tuple[str, str]:
    """The exact argv the Train tab would start and the run.yaml it would write."""
    from trainer_core.config import default_output_dir
    from trainer_core.jobs import build_command, resolve_batch
    from trainer_core.runs import auto_batch_note

    cfg, fields, general = check(values, ctx)
    if cfg is None:
        raise UserError("\n".join([*fields.values(), *general]))
    cfg, auto_line = resolve_batch(cfg)  # per_device_train_batch_size auto: the numbers the start will write
    output_dir = cfg.output_dir or default_output_dir(cfg, ctx.outputs_root)
    cfg.output_dir = output_dir
    argv = build_command(cfg, Path(output_dir) / "run.yaml")
    note = "".join(f"# {line}\n" for line in auto_batch_note(auto_line).splitlines()) if auto_line else ""
    return shlex.join(argv), note + config_to_yaml(cfg)


def save(values: dict[str, Any], path: str, ctx: AppContext) -> Path:
    from trainer_core.config import save_config

    cfg, fields, general = check(values, ctx)
    if cfg is None:
        raise UserError("\n".join([*fields.values(), *general]))
    target = resolve_config_path(path, ctx, write=True)
    save_config(cfg, target)
    return target


def resolve_config_path(path: str, ctx: AppContext, write: bool = False) -> Path:
    path = (path or "").strip()
    if not path:
        raise UserError("give a file name for the config, e.g. configs/my_run.yaml")
    target = ctx.page_path(path, "config file", write=write)
    if target.suffix not in (".yaml", ".yml"):
        raise UserError(f"'{path}': a config file ends in .yaml")
    return target


def load(target: Path, ctx: AppContext, current: dict[str, Any], available: list[str]) -> dict[str, Any]:
    """Values from a saved config (or a run's run.yaml); checked as the CLI would."""
    from trainer_core.config import read_yaml

    raw = read_yaml(target)
    cfg: TrainConfig = config_from_dict(raw)  # report what is wrong with it now, not at start
    # The resolved keys, so that a LLaMA-Factory YAML (its template names, QLoRA spelling) fills
    # the form as it would run; for a config of ours they are the same values.
    return values_from_config(dataclasses.asdict(cfg), ctx, current, available, keep_data_dir=False)


def form_inputs(c: dict[str, Any]) -> list[Any]:
    """The components a handler reads the form from, in ORDER."""
    return [c["fields"][name] if name in c["fields"] else c[name] for name in ORDER]


def as_values(args: tuple | list) -> dict[str, Any]:
    return dict(zip(ORDER, args))
