"""参数 Parameters: the form that becomes a TrainConfig.

The form is a dict of values named like the config keys, plus the model picker
(`model_source`, `model_path`, `known_model`) and the Data tab's `datasets` / `dataset_dir`.
`raw_config` turns it into the dict `config_from_dict` checks; every problem the core reports
("  - key: ...") is shown beside its field. Start (Train tab), preview and save all go through
`check`, so what is previewed is what runs.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path
from typing import Any

import gradio as gr

from app.context import AppContext
from app.i18n import t, translate
from app.models_catalog import KNOWN_MODELS, known_model
from app.tabs.data import dataset_names, page_dataset_choices
from app.ui_kit import Labels
from trainer_core.config import (
    DEEPSPEED_PRESETS,
    KEYS,
    TrainConfig,
    allowed_values,
    config_from_dict,
    config_to_yaml,
    preset_paths,
)
from trainer_core.data import dataset_outside
from trainer_core.errors import UserError

LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target")
QLORA_KEYS = ("quantization_bit",)
MAIN_KEYS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
             "gradient_accumulation_steps", "cutoff_len", "val_size", "max_samples")
ADVANCED_KEYS = ("lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay", "max_grad_norm",
                 "logging_steps", "save_steps", "save_total_limit", "eval_steps", "per_device_eval_batch_size",
                 "eval_dataset", "packing", "bf16", "fp16", "gradient_checkpointing", "seed",
                 "resume_from_checkpoint", "trust_remote_code")
HARDWARE_KEYS = ("deepspeed", "num_gpus", "hostfile")
OUTPUT_KEYS = ("report_to", "output_dir")
FORM_KEYS = ("stage", "finetuning_type", "template", *LORA_KEYS, *QLORA_KEYS, *MAIN_KEYS, *ADVANCED_KEYS,
             *HARDWARE_KEYS, *OUTPUT_KEYS)
MODEL_FIELDS = ("model_source", "model_path", "known_model")
DATA_FIELDS = ("datasets", "dataset_dir")  # owned by the Data tab
ORDER = (*MODEL_FIELDS, *DATA_FIELDS, *FORM_KEYS)  # the order of a handler's form inputs
MODEL_SOURCES = ("builtin", "local", "known")
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
    values: dict[str, Any] = {key: cfg.get(key) for key in FORM_KEYS}
    values["deepspeed"] = values["deepspeed"] or "none"
    values["packing"] = {None: "auto", True: "true", False: "false"}.get(values["packing"], "auto")
    for key in FORM_KEYS:
        if str(KEYS[key].type).startswith("str") and values[key] is None:
            values[key] = ""
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
    wanted = [d.strip() for d in str(cfg.get("dataset") or "").split(",") if d.strip()]
    chosen = [d for d in wanted if d in available] if keep_data_dir else wanted
    values["datasets"] = chosen or list(current.get("datasets") or [])
    return values


# ---- form -> config ------------------------------------------------------------------------

def raw_config(values: dict[str, Any]) -> dict[str, Any]:
    """The form as a config dict (unchecked): what `config_from_dict` will judge."""
    raw: dict[str, Any] = {}
    for key in FORM_KEYS:
        value = values.get(key)
        if isinstance(value, str):
            value = value.strip()
        raw[key] = value
    raw["deepspeed"] = "" if raw["deepspeed"] in ("none", None) else raw["deepspeed"]
    raw["packing"] = {"auto": None, "true": True, "false": False}.get(raw["packing"], raw["packing"])
    for key in FORM_KEYS:  # an emptied number box (or 0, below their minimum of 1) means "not set"
        if KEYS[key].metadata["optional"] and (raw[key] == "" or (raw[key] == 0 and KEYS[key].metadata["min"] == 1)):
            raw[key] = None
    source = values.get("model_source") or "builtin"
    raw["model_name_or_path"] = "default" if source == "builtin" else (values.get("model_path") or "").strip()
    raw["dataset"] = ",".join(values.get("datasets") or [])
    raw["dataset_dir"] = (values.get("dataset_dir") or "").strip()
    return raw


def check(values: dict[str, Any], ctx: AppContext) -> tuple[TrainConfig | None, dict[str, str], list[str]]:
    """(config or None, problems by form field, problems that belong to no field). Paths must
    stay inside the folders the workbench may use (AppContext.page_path)."""
    raw = raw_config(values)
    fields: dict[str, str] = {}
    general: list[str] = []
    model_problem = check_model(values, ctx)
    if model_problem:
        fields["model_path"] = model_problem
    for key, write in (("dataset_dir", False), ("output_dir", True), ("resume_from_checkpoint", False),
                       ("hostfile", False)):
        if raw.get(key) and not (key == "resume_from_checkpoint" and raw[key] in ("auto", "none")):
            try:
                raw[key] = str(ctx.page_path(raw[key], key, write=write))
            except UserError as exc:
                fields[key] = str(exc)
    if raw.get("dataset") and raw.get("dataset_dir") and "dataset_dir" not in fields:
        try:
            general += dataset_outside(raw["dataset"].split(","), raw["dataset_dir"], ctx.data_roots())
        except UserError as exc:
            general.append(str(exc))
    try:
        cfg = config_from_dict(raw)
    except UserError as exc:
        more_fields, more_general = split_problems(str(exc))
        fields.update(more_fields)
        general += more_general
        cfg = None
    if "dataset" in fields:  # chosen on the Data tab; say so here
        general.append(fields.pop("dataset"))
    if "dataset_dir" in fields:
        general.append(fields.pop("dataset_dir"))
    return (cfg if not fields and not general else None), fields, general


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


def split_problems(message: str) -> tuple[dict[str, str], list[str]]:
    """Map the core's "  - key: problem" lines to keys; a line naming two keys (bf16 and fp16)
    flags both; one that names none is general."""
    fields: dict[str, str] = {}
    general: list[str] = []
    for line in message.splitlines():
        line = line.strip()
        if not line.startswith("- "):
            continue
        text = line[2:]
        head = text.split(":", 1)[0].strip()
        if head in KEYS:
            fields[head] = text
            continue
        named = [k for k in KEYS if re.search(rf"(?<![\w]){re.escape(k)}(?![\w])", text, re.IGNORECASE)]
        for key in named:
            fields[key] = text
        if not named:
            general.append(text)
    return fields, general


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
        text = re.sub(rf"^{re.escape(key)}\s*[:：]\s*", "", translate(text, lang))
        lines.append(f"- `{key}`: {text}")
    lines += [f"- {translate(text, lang)}" for text in general]
    return "\n".join(lines)


def preview(values: dict[str, Any], ctx: AppContext) -> tuple[str, str]:
    """The exact argv the Train tab would start and the run.yaml it would write."""
    from trainer_core.config import default_output_dir
    from trainer_core.jobs import build_command

    cfg, fields, general = check(values, ctx)
    if cfg is None:
        raise UserError("\n".join([*fields.values(), *general]))
    output_dir = cfg.output_dir or default_output_dir(cfg, ctx.outputs_root)
    cfg.output_dir = output_dir
    argv = build_command(cfg, Path(output_dir) / "run.yaml")
    return shlex.join(argv), config_to_yaml(cfg)


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
    config_from_dict(raw)  # report what is wrong with it now, not at start
    return values_from_config(raw, ctx, current, available, keep_data_dir=False)


# ---- components ----------------------------------------------------------------------------

def _component(L: Labels, key: str, value: Any) -> Any:
    """The widget for one config key, chosen from its type and allowed values."""
    meta = KEYS[key].metadata
    common = {"label": "cfg." + key, "elem_id": "cfg-" + key}
    info = {"info_text": field_info(key, L.lang)}
    if key == "deepspeed":
        return L.make(gr.Dropdown, choice_keys=[("ds.none", "none")] + [("ds." + p, p) for p in DEEPSPEED_PRESETS],
                      value=value, **common, **info)
    if key == "packing":
        return L.make(gr.Dropdown, choice_keys=[("packing.auto", "auto"), ("packing.true", "true"),
                                            ("packing.false", "false")], value=value, **common, **info)
    if key in ("stage", "finetuning_type"):
        return L.make(gr.Radio, choice_keys=[(f"{key}.{c}", c) for c in meta["choices"]], value=value, **common,
                      **info)
    if meta["choices"]:  # plain values (schedulers, templates) are their own labels
        return L.make(gr.Dropdown, choices=list(meta["choices"]), value=value, **common, **info)
    kind = str(KEYS[key].type)
    if kind.startswith("bool"):
        return L.make(gr.Checkbox, value=bool(value), **common, **info)
    if kind.startswith("int"):
        return L.make(gr.Number, value=value, precision=0, **common, **info)
    if kind.startswith("float"):
        return L.make(gr.Number, value=value, **common, **info)
    return L.make(gr.Textbox, value=value, **common, **info)


def build(ctx: AppContext, L: Labels, c: dict[str, Any]) -> None:
    """Create the tab's components into `c` (the Data tab's must exist already)."""
    values = c["initial_values"]
    fields: dict[str, Any] = {}

    def field(key: str) -> Any:
        fields[key] = _component(L, key, values[key])
        return fields[key]

    L.markdown("params.intro")
    with gr.Row():
        c["preset"] = L.make(gr.Dropdown, label="params.preset", info="params.preset_info",
                             choices=preset_names(ctx), value=None, elem_id="params-preset", scale=1)
    with L.accordion("params.model", open=True, elem_id="params-acc-model"):
        with gr.Row():
            fields["model_source"] = L.make(gr.Radio, label="params.model_source", elem_id="params-model-source",
                                            choice_keys=[("source." + s, s) for s in MODEL_SOURCES],
                                            value=values["model_source"], scale=2)
            fields["known_model"] = L.make(gr.Dropdown, label="params.known_model", info="params.known_note",
                                           choices=[m["name"] for m in KNOWN_MODELS],
                                           value=values["known_model"], visible=values["model_source"] == "known",
                                           scale=2, elem_id="params-known-model")
        fields["model_path"] = L.make(gr.Textbox, label="params.model_path", placeholder="params.model_path_ph",
                                      info_text=field_info("model_path", L.lang),
                                      value=values["model_path"], visible=values["model_source"] != "builtin",
                                      elem_id="params-model-path")
        with gr.Row():
            field("stage")
            field("finetuning_type")
            field("template")
    with L.accordion("params.method", open=True, elem_id="params-acc-method"):
        with gr.Row(visible=values["finetuning_type"] != "full") as c["lora_row"]:
            for key in LORA_KEYS:
                field(key)
        with gr.Row(visible=values["finetuning_type"] == "qlora") as c["qlora_row"]:
            field("quantization_bit")
            L.markdown("params.qlora_note")
    with L.accordion("params.main", open=True, elem_id="params-acc-main"):
        with gr.Row():
            for key in MAIN_KEYS[:4]:
                field(key)
        with gr.Row():
            for key in MAIN_KEYS[4:]:
                field(key)
    with L.accordion("params.advanced", open=False, elem_id="params-acc-advanced"):
        for start in range(0, len(ADVANCED_KEYS), 4):
            with gr.Row():
                for key in ADVANCED_KEYS[start:start + 4]:
                    field(key)
    with L.accordion("params.hardware", open=False, elem_id="params-acc-hardware"):
        with gr.Row():
            for key in HARDWARE_KEYS:
                field(key)
    with gr.Row():
        for key in OUTPUT_KEYS:
            field(key)
    c["params_summary"] = gr.Markdown(elem_id="params-summary")
    with gr.Row():
        c["preview_btn"] = L.make(gr.Button, text="params.preview", elem_id="params-preview")
        c["config_path"] = L.make(gr.Textbox, label="params.config_path", value="configs/my_run.yaml", scale=2,
                                  elem_id="params-config-path")
        c["save_btn"] = L.make(gr.Button, text="params.save", elem_id="params-save")
        c["load_btn"] = L.make(gr.Button, text="params.load", elem_id="params-load")
        c["upload_cfg"] = L.make(gr.UploadButton, label="params.upload", file_types=[".yaml", ".yml"],
                                   elem_id="params-upload")
    c["params_msg"] = gr.Markdown(elem_id="params-msg")
    with gr.Row():
        c["command"] = L.make(gr.Code, label="params.command", language="shell", interactive=False, lines=3,
                              max_lines=12, wrap_lines=True, elem_id="params-command")
        c["config_yaml"] = L.make(gr.Code, label="params.yaml", language="yaml", interactive=False, lines=3,
                                  max_lines=24, elem_id="params-yaml")
    c["fields"] = fields


def form_inputs(c: dict[str, Any]) -> list[Any]:
    """The components a handler reads the form from, in ORDER."""
    return [c["fields"][name] if name in c["fields"] else c[name] for name in ORDER]


def as_values(args: tuple | list) -> dict[str, Any]:
    return dict(zip(ORDER, args))


def wire(ctx: AppContext, c: dict[str, Any]) -> None:
    fields = c["fields"]
    lang = c["lang"]
    form = form_inputs(c)
    checked = [fields[k] for k in (*FORM_KEYS, "model_path")]

    infos = gr.State(None)  # the lines under the fields as this page shows them: only changes are sent

    def flags(*args: Any) -> list[Any]:
        *rest, language, shown = args
        _, problems, general = check(as_values(rest), ctx)
        now = [field_info(k, language, problems.get(k)) for k in (*FORM_KEYS, "model_path")]
        before = shown if isinstance(shown, list) and len(shown) == len(now) else [None] * len(now)
        updates = [gr.update() if text == old else gr.update(info=text) for text, old in zip(now, before)]
        return [*updates, summary(problems, general, language), now]

    flag_inputs = [*form, lang, infos]
    flag_outputs = [*checked, c["params_summary"], infos]
    gr.on([fields[k].change for k in (*FORM_KEYS, "model_path", "model_source")] + [lang.change],
          flags, inputs=flag_inputs, outputs=flag_outputs, trigger_mode="always_last", show_progress="hidden")
    c["load_events"].append((flags, flag_inputs, flag_outputs))

    def on_source(source: str) -> list[Any]:
        return [gr.update(visible=source != "builtin"), gr.update(visible=source == "known")]

    fields["model_source"].change(on_source, fields["model_source"], [fields["model_path"], fields["known_model"]],
                                  show_progress="hidden")

    def on_known(name: str, path: str) -> list[Any]:
        model = known_model(name) or KNOWN_MODELS[0]
        return [gr.update(value=model["template"]), gr.update(placeholder=f"/models/{model['name']}")]

    fields["known_model"].change(on_known, [fields["known_model"], fields["model_path"]],
                                 [fields["template"], fields["model_path"]], show_progress="hidden")

    def on_method(method: str) -> list[Any]:
        return [gr.update(visible=method != "full"), gr.update(visible=method == "qlora")]

    fields["finetuning_type"].change(on_method, fields["finetuning_type"], [c["lora_row"], c["qlora_row"]],
                                     show_progress="hidden")

    def apply(values: dict[str, Any]) -> list[Any]:
        return [gr.update(value=values[name]) for name in ORDER]

    def on_preset(name: str, *args: Any) -> list[Any]:
        current = as_values(args)
        if not name:
            return [gr.update() for _ in ORDER]
        available = [name for _, name in page_dataset_choices(ctx, current["dataset_dir"])]
        return apply(values_from_config(read_preset(ctx, name), ctx, current, available))

    c["preset"].change(on_preset, [c["preset"], *form], form)

    def on_preview(*args: Any) -> list[Any]:
        *rest, language = args
        try:
            command, text = preview(as_values(rest), ctx)
        except UserError as exc:
            return ["", "", f"⚠ {t('params.fix_first', language)}\n\n```\n{translate(str(exc), language)}\n```"]
        return [command, text, t("params.previewed", language)]

    c["preview_btn"].click(on_preview, [*form, lang], [c["command"], c["config_yaml"], c["params_msg"]])

    def on_save(path: str, *args: Any) -> str:
        *rest, language = args
        try:
            target = save(as_values(rest), path, ctx)
        except UserError as exc:
            return f"⚠ {translate(str(exc), language)}"
        return t("params.saved", language, path=target)

    c["save_btn"].click(on_save, [c["config_path"], *form, lang], c["params_msg"])

    def load_into_form(target: Path | None, path: str, *args: Any) -> list[Any]:
        *rest, language = args
        try:
            current = as_values(rest)
            data_dir = ctx.page_path(current["dataset_dir"], "dataset_dir")
            values = load(target or resolve_config_path(path, ctx), ctx, current, dataset_names(data_dir))
        except UserError as exc:
            return [gr.update() for _ in ORDER] + [f"⚠ {translate(str(exc), language)}"]
        return apply(values) + [t("params.loaded", language, path=path)]

    def on_load(path: str, *args: Any) -> list[Any]:
        return load_into_form(None, path, *args)

    c["load_btn"].click(on_load, [c["config_path"], *form, lang], [*form, c["params_msg"]])

    def on_upload(file: str | None, *args: Any) -> list[Any]:
        if not file:
            return [gr.update() for _ in ORDER] + [gr.update(), gr.update()]
        # gradio's own copy of the upload is read once; saving goes to configs/ under the work folder
        result = load_into_form(Path(file), Path(file).name, *args)
        return result + [gr.update(value=f"configs/{Path(file).name}")]

    c["upload_cfg"].upload(on_upload, [c["upload_cfg"], *form, lang], [*form, c["params_msg"], c["config_path"]])
