"""参数 Parameters: the form that becomes a TrainConfig.

The widgets of the run form (app/form.py holds the form's values, their conversion to a config
and their checks); each field shows its help, or the problem with it, on the line under it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from app import jobview
from app.choices import dataset_names, page_dataset_choices
from app.context import AppContext
from app.form import (
    ADVANCED_KEYS,
    BATCH_CHOICES,
    FORM_KEYS,
    HARDWARE_KEYS,
    LORA_KEYS,
    MAIN_KEYS,
    MODEL_FIELDS,
    MODEL_SOURCES,
    ORDER,
    OUTPUT_KEYS,
    PREF_KEYS,
    TEXT_PICKERS,
    as_values,
    check,
    composition,
    composition_line,
    field_info,
    load,
    pref_shown,
    preset_names,
    preview,
    read_preset,
    resolve_config_path,
    save,
    summary,
    values_from_config,
)
from app.i18n import t, translate
from app.jobview import error_text
from app.page import Page
from app.plan_panel import FIX_KEYS, THIS_MACHINE, HardwareChoice, first_fix, fix_values, plan_form, plan_html
from app.ui_kit import Labels
from trainer_core.catalog import KNOWN_MODELS, known_model
from trainer_core.config import DEEPSPEED_PRESETS, KEYS
from trainer_core.errors import UserError
from trainer_core.planner import GPU_KINDS

# ---- components ----------------------------------------------------------------------------

def _component(L: Labels, key: str, value: Any, visible: bool = True) -> Any:
    """The widget for one config key, chosen from its type and allowed values."""
    meta = KEYS[key].metadata
    common: dict[str, Any] = {"label": "cfg." + key, "elem_id": "cfg-" + key, "visible": visible}
    info: dict[str, Any] = {"info_text": field_info(key, L.lang)}
    if key == "deepspeed":
        return L.make(gr.Dropdown, choice_keys=[("ds.none", "none")] + [("ds." + p, p) for p in DEEPSPEED_PRESETS],
                      value=value, **common, **info)
    if key == "packing":
        return L.make(gr.Dropdown, choice_keys=[("packing.auto", "auto"), ("packing.true", "true"),
                                            ("packing.false", "false")], value=value, **common, **info)
    if key in TEXT_PICKERS:  # auto or a batch size, picked or typed
        return L.make(gr.Dropdown, choices=list(BATCH_CHOICES), value=value, allow_custom_value=True, **common,
                      **info)
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


def build(ctx: AppContext, L: Labels, page: Page) -> dict[str, Any]:
    """The tab's components by name; the run form's widgets go to `page.form_fields` too."""
    c: dict[str, Any] = {}
    values = page.initial_values
    fields: dict[str, Any] = {}

    def field(key: str, visible: bool = True) -> Any:
        fields[key] = _component(L, key, values[key], visible)
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
        shown = pref_shown(values["stage"])
        with gr.Row(visible=any(shown.values())) as c["pref_row"]:  # stage dpo and kto only
            for key in PREF_KEYS:
                field(key, shown[key])
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
    c.update(_build_plan_panel(L, values))
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
    c.update(build_lr_find(L))
    c["fields"] = page.form_fields = fields
    page.status_lines.append(c["params_msg"])
    return c


# ---- the plan panel (app/plan_panel.py) -----------------------------------------------------

def _build_plan_panel(L: Labels, values: dict[str, Any]) -> dict[str, Any]:
    """Memory per GPU and time of the form on the hardware picked here, open by default."""
    c: dict[str, Any] = {}
    with L.accordion("plan.title", open=True, elem_id="plan-acc"):
        L.markdown("plan.intro")
        with gr.Row():
            c["plan_kind"] = L.make(gr.Dropdown, label="plan.kind", info="help.plan_kind",
                                    choice_keys=[("plan.this_machine", THIS_MACHINE)]
                                    + [("gpu." + kind, kind) for kind in GPU_KINDS],
                                    value=THIS_MACHINE, elem_id="plan-kind", scale=2)
            c["plan_gpus"] = L.make(gr.Number, label="plan.gpus", info="help.plan_gpus", precision=0,
                                    value=values.get("num_gpus") or 1, elem_id="plan-gpus", scale=1)
            c["plan_nodes"] = L.make(gr.Number, label="plan.nodes", precision=0, value=1, elem_id="plan-nodes",
                                     scale=1)
            c["plan_price"] = L.make(gr.Number, label="plan.price", info="help.plan_price", value=None,
                                     elem_id="plan-price", scale=1)
        c["plan_view"] = gr.HTML(elem_id="plan-view")
        c["plan_apply"] = L.make(gr.Button, text="plan.apply", interactive=False, size="sm", elem_id="plan-apply")
        c["plan_fix"] = gr.State(None)  # the first fix's config changes, for the apply button
    return c


PlanUpdate = Callable[..., dict[Any, Any]]


def _wire_plan_panel(ctx: AppContext, page: Page, c: dict[str, Any]) -> tuple[PlanUpdate, list[Any], list[Any]]:
    """The plan follows the panel's own inputs here, and every field of the form, the Data tab's choice
    and the language through the form's one change event (`wire`'s `flags`, which calls the returned
    update with the returned inputs, so that a change of a field costs one round trip, not two); the
    apply button sets the fields of the first fix (whose change plans again)."""
    fields = c["fields"]
    panel = [c["plan_kind"], c["plan_gpus"], c["plan_nodes"], c["plan_price"]]

    shown = gr.State(None)  # (the panel's HTML, its fix) as this page shows them: only a change is sent

    def plan_update(values: dict[str, Any], kind: str, gpus: Any, nodes: Any, price: Any, language: str,
                    before: Any) -> dict[Any, Any]:
        result = plan_form(values, ctx, HardwareChoice(kind or THIS_MACHINE, gpus, nodes, price))
        fix = first_fix(result)
        now = [plan_html(result, language), fix]
        if before == now:  # most changes of the form leave the plan as it was: the page redraws nothing
            return {c["plan_view"]: gr.update()}
        return {c["plan_view"]: now[0], c["plan_fix"]: fix, c["plan_apply"]: gr.update(interactive=fix is not None),
                shown: now}

    def on_panel(*args: Any) -> dict[Any, Any]:
        *rest, kind, gpus, nodes, price, language, before = args
        return plan_update(as_values(rest), kind, gpus, nodes, price, language, before)

    extra_inputs = [*panel, shown]
    outputs = [c["plan_view"], c["plan_fix"], c["plan_apply"], shown]
    gr.on([component.change for component in panel], on_panel, inputs=[*page.form_inputs(), *panel, page.lang, shown],
          outputs=outputs, trigger_mode="always_last", show_progress="hidden")

    fixed = [fields[k] for k in FIX_KEYS]

    def on_apply(changes: dict[str, Any] | None) -> dict[Any, Any]:
        values = fix_values(changes or {})
        updates = {fields[key]: value for key, value in values.items() if key in FIX_KEYS}
        return updates or {c["plan_view"]: gr.update()}  # nothing changes (an empty dict reads as a value)

    c["plan_apply"].click(on_apply, c["plan_fix"], [*fixed, c["plan_view"]], show_progress="hidden")
    return plan_update, extra_inputs, outputs


def wire(ctx: AppContext, page: Page, c: dict[str, Any]) -> None:
    fields = c["fields"]
    lang = page.lang
    form = page.form_inputs()
    checked = [fields[k] for k in (*FORM_KEYS, "model_path")]

    infos = gr.State(None)  # the lines under the fields as this page shows them: only changes are sent
    plan_update, plan_inputs, plan_outputs = _wire_plan_panel(ctx, page, c)

    def flags(*args: Any) -> dict[Any, Any]:
        """The problems under the fields and in the summary, and the plan panel: one event per change."""
        *rest, language, shown, kind, gpus, nodes, price, plan_shown = args
        values = as_values(rest)
        _, problems, general = check(values, ctx)
        now = [field_info(k, language, problems.get(k)) for k in (*FORM_KEYS, "model_path")]
        before = shown if isinstance(shown, list) and len(shown) == len(now) else [None] * len(now)
        changed = {field: gr.update(info=text) for field, text, old in zip(checked, now, before) if text != old}
        return {**changed, c["params_summary"]: summary(problems, general, language), infos: now,
                **plan_update(values, kind, gpus, nodes, price, language, plan_shown)}

    flag_inputs = [*form, lang, infos, *plan_inputs]
    flag_outputs = [*checked, c["params_summary"], infos, *plan_outputs]
    gr.on([fields[k].change for k in (*FORM_KEYS, *MODEL_FIELDS)]
          + [page.datasets.change, page.dataset_dir.change, page.weights.change, page.mix_strategy.change,
             lang.change],
          flags, inputs=flag_inputs, outputs=flag_outputs, trigger_mode="always_last", show_progress="hidden")
    page.load_events.append((flags, flag_inputs, flag_outputs))

    def on_source(source: str) -> dict[Any, Any]:
        return {fields["model_path"]: gr.update(visible=source != "builtin"),
                fields["known_model"]: gr.update(visible=source == "known")}

    fields["model_source"].change(on_source, fields["model_source"], [fields["model_path"], fields["known_model"]],
                                  show_progress="hidden")

    def on_known(name: str, path: str) -> dict[Any, Any]:
        model = known_model(name) or KNOWN_MODELS[0]
        return {fields["template"]: model["template"],
                fields["model_path"]: gr.update(placeholder=f"/models/{model['name']}")}

    fields["known_model"].change(on_known, [fields["known_model"], fields["model_path"]],
                                 [fields["template"], fields["model_path"]], show_progress="hidden")

    def on_method(method: str) -> dict[Any, Any]:
        return {c["lora_row"]: gr.update(visible=method != "full"),
                c["qlora_row"]: gr.update(visible=method == "qlora")}

    fields["finetuning_type"].change(on_method, fields["finetuning_type"], [c["lora_row"], c["qlora_row"]],
                                     show_progress="hidden")

    def on_stage(stage: str) -> dict[Any, Any]:
        shown = pref_shown(stage)
        return {c["pref_row"]: gr.update(visible=any(shown.values())),
                **{fields[key]: gr.update(visible=shown[key]) for key in PREF_KEYS}}

    fields["stage"].change(on_stage, fields["stage"], [c["pref_row"], *(fields[key] for key in PREF_KEYS)],
                           show_progress="hidden")

    def apply(values: dict[str, Any]) -> dict[Any, Any]:
        """The form's widgets set to `values` (a dict by app.form name, as values_from_config gives)."""
        return {component: values[name] for component, name in zip(form, ORDER)}

    def on_preset(name: str, *args: Any) -> dict[Any, Any]:
        current = as_values(args)
        if not name:
            return {form[0]: gr.update()}  # nothing changes (an empty dict reads as a value)
        available = [name for _, name in page_dataset_choices(ctx, current["dataset_dir"])]
        return apply(values_from_config(read_preset(ctx, name), ctx, current, available))

    c["preset"].change(on_preset, [c["preset"], *form], form)

    def on_preview(*args: Any) -> dict[Any, Any]:
        *rest, language = args
        values = as_values(rest)
        try:
            command, text = preview(values, ctx)
        except UserError as exc:
            message = f"⚠ {t('params.fix_first', language)}\n\n```\n{translate(str(exc), language)}\n```"
            return {c["command"]: "", c["config_yaml"]: "", c["params_msg"]: message}
        try:  # what one epoch holds of each dataset, as the run will mix them
            mix = composition_line(composition(values, ctx), language)
        except Exception as exc:  # noqa: BLE001 - the run would stop there: said here, never a traceback
            mix = error_text(exc, language)
        return {c["command"]: command, c["config_yaml"]: text,
                c["params_msg"]: f"{t('params.previewed', language)}\n\n{mix}"}

    c["preview_btn"].click(on_preview, [*form, lang], [c["command"], c["config_yaml"], c["params_msg"]])

    def on_save(path: str, *args: Any) -> str:
        *rest, language = args
        try:
            target = save(as_values(rest), path, ctx)
        except UserError as exc:
            return f"⚠ {translate(str(exc), language)}"
        return t("params.saved", language, path=target)

    c["save_btn"].click(on_save, [c["config_path"], *form, lang], c["params_msg"])

    def load_into_form(target: Path | None, path: str, *args: Any) -> dict[Any, Any]:
        *rest, language = args
        try:
            current = as_values(rest)
            data_dir = ctx.page_path(current["dataset_dir"], "dataset_dir")
            values = load(target or resolve_config_path(path, ctx), ctx, current, dataset_names(data_dir))
        except UserError as exc:
            return {c["params_msg"]: f"⚠ {translate(str(exc), language)}"}
        return {**apply(values), c["params_msg"]: t("params.loaded", language, path=path)}

    def on_load(path: str, *args: Any) -> dict[Any, Any]:
        return load_into_form(None, path, *args)

    c["load_btn"].click(on_load, [c["config_path"], *form, lang], [*form, c["params_msg"]])

    def on_upload(file: str | None, *args: Any) -> dict[Any, Any]:
        if not file:
            return {c["params_msg"]: gr.update()}  # nothing changes (an empty dict reads as a value)
        # gradio's own copy of the upload is read once; saving goes to configs/ under the work folder
        return {**load_into_form(Path(file), Path(file).name, *args), c["config_path"]: f"configs/{Path(file).name}"}

    c["upload_cfg"].upload(on_upload, [c["upload_cfg"], *form, lang], [*form, c["params_msg"], c["config_path"]])
    wire_lr_find(ctx, page, c)


# ---- the learning-rate range test (trainer_core/lr_find.py): its own block -------------------

LR_FIND_POLL_SECONDS = 2.0


def start_lr_find(values: dict[str, Any], ctx: AppContext) -> Path:
    """The range test of the config the Train tab would start (app.form.check), as a job in
    outputs/jobs/lr-find-<time>/ under the work folder; a problem of the form is one UserError."""
    from trainer_core.jobconfig import LrFindConfig
    from trainer_core.jobs import start_lr_find as start_job

    cfg, fields, general = check(values, ctx)
    if cfg is None:
        raise UserError("\n".join(f"- {text}" for text in [*fields.values(), *general]))
    return start_job(cfg, LrFindConfig(), ctx.outputs_root)


def newest_lr_find_job(ctx: AppContext) -> str | None:
    """The newest range test under the work folder's outputs/jobs/: what a reloaded page shows again
    (a running one is followed; its folder, not this process, holds its state)."""
    found = sorted((ctx.outputs_root / "jobs").glob("lr-find-*/status.json"))  # the names sort by time
    return str(found[-1].parent) if found else None


def lr_find_result(job_dir: str | None) -> dict[str, Any] | None:
    """The finished test's lr_find.json, or None (no job, still running, or it wrote none)."""
    import json

    from trainer_core.lr_find import RESULT_FILE

    path = Path(job_dir) / RESULT_FILE if job_dir else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def lr_find_text(result: dict[str, Any] | None, lang: str) -> str:
    """The suggestion (or why there is none) and why the test stopped early, in the page's language."""
    if not result:
        return ""
    lines = []
    if result.get("suggestion") is not None:
        lines.append(t("lrfind.suggestion", lang, lr=f"{result['suggestion']:.1e}"))
    else:
        lines.append("⚠ " + translate(result.get("no_suggestion") or "", lang))
    if result.get("stop_reason"):
        lines.append(translate(result["stop_reason"], lang))
    return "\n\n".join(lines)


def lr_find_plot(result: dict[str, Any] | None, lang: str) -> str:
    from app.plots import lr_find_svg

    labels = {name: t(f"lrfind.plot_{name}", lang) for name in ("loss", "smoothed", "lr", "suggestion")}
    return lr_find_svg(result, labels, t("lrfind.plot_empty", lang))


def build_lr_find(L: Labels) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with L.accordion("lrfind.acc", open=False, elem_id="params-acc-lrfind"):
        L.markdown("lrfind.intro")
        with gr.Row():
            c["lrfind_start"] = L.make(gr.Button, text="lrfind.start", elem_id="lrfind-start")
            c["lrfind_use"] = L.make(gr.Button, text="lrfind.use", interactive=False, elem_id="lrfind-use")
        c["lrfind_msg"] = gr.Markdown(elem_id="lrfind-msg")
        c["lrfind_progress"] = gr.HTML("", elem_id="lrfind-progress")
        c["lrfind_plot"] = L.make(gr.HTML, label="lrfind.plot", show_label=True, container=True,
                                  value=lr_find_plot(None, L.lang), elem_id="lrfind-plot")
        c["lrfind_suggestion"] = gr.Markdown(elem_id="lrfind-suggestion")
    c["lrfind_job"] = gr.State(None)  # the job folder this page follows
    c["lrfind_value"] = gr.State(None)  # the suggested learning rate, for the "use" button
    c["lrfind_timer"] = gr.Timer(LR_FIND_POLL_SECONDS, active=False)
    return c


def wire_lr_find(ctx: AppContext, page: Page, c: dict[str, Any]) -> None:
    lang, form = page.lang, page.form_inputs()

    def on_start(*args: Any) -> dict[Any, Any]:
        *rest, language = args
        try:
            job_dir = start_lr_find(as_values(rest), ctx)
        except UserError as exc:
            return {c["lrfind_msg"]: f"⚠ {t('params.fix_first', language)}\n\n{translate(str(exc), language)}"}
        return {c["lrfind_msg"]: t("lrfind.started", language, job=job_dir), c["lrfind_job"]: str(job_dir),
                c["lrfind_value"]: None, c["lrfind_use"]: gr.update(interactive=False),
                c["lrfind_suggestion"]: "", c["lrfind_plot"]: lr_find_plot(None, language),
                c["lrfind_timer"]: gr.Timer(active=True)}

    c["lrfind_start"].click(on_start, [*form, lang],
                            [c["lrfind_msg"], c["lrfind_job"], c["lrfind_value"], c["lrfind_use"],
                             c["lrfind_suggestion"], c["lrfind_plot"], c["lrfind_timer"]])

    def tick(job_dir: str | None, language: str) -> dict[Any, Any]:
        p = jobview.job_progress(job_dir)
        running = p is not None and p.get("state") == "running"
        result = None if running else lr_find_result(job_dir)
        value = result.get("suggestion") if result else None
        return {c["lrfind_progress"]: jobview.progress_html(p, language) if p else "",
                c["lrfind_plot"]: lr_find_plot(result, language),
                c["lrfind_suggestion"]: lr_find_text(result, language),
                c["lrfind_value"]: value, c["lrfind_use"]: gr.update(interactive=value is not None),
                c["lrfind_timer"]: gr.Timer(active=running)}

    outputs = [c["lrfind_progress"], c["lrfind_plot"], c["lrfind_suggestion"], c["lrfind_value"], c["lrfind_use"],
               c["lrfind_timer"]]
    c["lrfind_timer"].tick(tick, [c["lrfind_job"], lang], outputs, show_progress="hidden")
    lang.change(tick, [c["lrfind_job"], lang], outputs, show_progress="hidden")  # the text in the new language

    def on_open() -> dict[Any, Any]:
        job_dir = newest_lr_find_job(ctx)
        return {c["lrfind_job"]: job_dir, c["lrfind_timer"]: gr.Timer(active=job_dir is not None)}

    page.load_events.append((on_open, [], [c["lrfind_job"], c["lrfind_timer"]]))

    def on_use(value: float | None, language: str) -> dict[Any, Any]:
        if value is None:
            return {c["lrfind_msg"]: gr.update()}
        return {page.form_fields["learning_rate"]: float(f"{value:.1e}"),
                c["lrfind_msg"]: t("lrfind.used", language, lr=f"{value:.1e}")}

    c["lrfind_use"].click(on_use, [c["lrfind_value"], lang], [page.form_fields["learning_rate"], c["lrfind_msg"]])
