"""导出 Export: merge a finished run into a standalone model (with model card and GGUF) as a job.

The form becomes an `ExportConfig` (trainer_core/jobconfig.py); the core's launcher
(`jobs.start_task`) writes it to RUN_DIR/jobs/export-<time>/export.yaml and starts
`python -m trainer_core export .../export.yaml` there. The result is RUN_DIR/export/, whose files
and README.md (the model card) are shown here once it is complete.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import gradio as gr

from app import jobview
from app.choices import refreshed_run_picker, run_choices
from app.context import AppContext
from app.i18n import t
from app.page import Page
from app.ui_kit import Labels
from trainer_core import jobs
from trainer_core.config import config_from_dict
from trainer_core.data import human_size
from trainer_core.errors import UserError
from trainer_core.jobconfig import DTYPES, GGUF_TYPES, ExportConfig

EXPORT_DIR = "export"


def export_config(run_dir: str, dtype: str = "float32", max_shard_size: str = "2GB", gguf: list[str] | None = None,
                  overwrite: bool = False) -> ExportConfig:
    """The export job's config from the form; every problem is raised at once as a ConfigError."""
    if not run_dir:
        raise UserError("pick a finished run first")
    raw = {"run": str(run_dir), "dtype": dtype, "max_shard_size": (max_shard_size or "2GB").strip(),
           "gguf": ",".join(gguf) if gguf else "none", "overwrite": bool(overwrite)}
    return config_from_dict(raw, ExportConfig)


def start_export(cfg: ExportConfig) -> Path:
    """Start the export job in RUN_DIR/jobs/export-<time>/ (the core picks the folder)."""
    return jobs.start_task("export", cfg)


def export_jobs(run_dir: str | None) -> list[str]:
    if not run_dir:
        return []
    folder = Path(run_dir) / "jobs"
    found = folder.glob("export-*") if folder.is_dir() else []
    return sorted((str(p) for p in found if p.is_dir()), reverse=True)


def export_files(run_dir: str | None) -> list[list[Any]]:
    """(file, size) rows of the finished export; an unfinished one (.partial) shows nothing."""
    if not run_dir:
        return []
    folder = Path(run_dir) / EXPORT_DIR
    if not folder.is_dir():
        return []
    return [[str(p.relative_to(folder)), human_size(p.stat().st_size)] for p in sorted(folder.rglob("*"))
            if p.is_file()]


def model_card(run_dir: str | None) -> str:
    """The export's README.md; its pictures (loss.png) are inlined, the page cannot serve them."""
    card = Path(run_dir) / EXPORT_DIR / "README.md" if run_dir else None
    if not card or not card.is_file():
        return ""
    text = card.read_text(encoding="utf-8")

    def inline(match: re.Match) -> str:
        picture = card.parent / match.group(2)
        if not picture.is_file() or picture.parent.resolve() != card.parent.resolve():
            return match.group(0)
        data = base64.b64encode(picture.read_bytes()).decode("ascii")
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    return re.sub(r"!\[([^\]]*)\]\(([\w.-]+\.png)\)", inline, text)


def build(ctx: AppContext, L: Labels, page: Page) -> dict[str, Any]:
    c: dict[str, Any] = {}
    L.markdown("export.intro")
    with gr.Row():
        c["export_run"] = L.make(gr.Dropdown, label="export.run", choices=run_choices(ctx), value=None, scale=3,
                                 elem_id="export-run")
        c["export_dtype"] = L.make(gr.Dropdown, label="export.dtype", choices=list(DTYPES), value="float16",
                                   elem_id="export-dtype")
        c["export_shard"] = L.make(gr.Textbox, label="export.shard", value="2GB", elem_id="export-shard")
    with gr.Row():
        c["export_gguf"] = L.make(gr.CheckboxGroup, label="export.gguf", info="export.gguf_info",
                                  choices=list(GGUF_TYPES), value=["f16"], elem_id="export-gguf")
        c["export_overwrite"] = L.make(gr.Checkbox, label="export.overwrite", value=True,
                                          elem_id="export-overwrite")
    c["export_start"] = L.make(gr.Button, text="export.start", variant="primary", elem_id="export-start")
    c["export_msg"] = gr.Markdown(elem_id="export-msg")
    c["export_job"] = L.make(gr.Dropdown, label="export.job", choices=[], value=None, elem_id="export-job")
    c["export_progress"] = gr.HTML(jobview.progress_html(None, L.lang), elem_id="export-progress")
    c["export_console"] = L.make(gr.Textbox, label="export.console", lines=8, max_lines=8, interactive=False,
                                 elem_id="export-console", elem_classes=["qh-console"])
    c["export_files"] = L.make(gr.Dataframe, label="export.files", value=[], interactive=False,
                               headers=[t("export.file", L.lang), t("export.size", L.lang)], elem_id="export-files")
    with L.accordion("export.card", open=True, elem_id="export-card-acc"):
        c["export_card"] = gr.Markdown(elem_id="export-card")
    c["export_console_state"] = gr.State({})
    c["export_tick_state"] = gr.State(None)
    c["export_timer"] = gr.Timer(2.0)
    page.status_lines.append(c["export_msg"])
    return c


def wire(ctx: AppContext, page: Page, c: dict[str, Any]) -> None:
    lang = page.lang

    def on_tab(run_dir: str | None) -> Any:
        return gr.update(**refreshed_run_picker(ctx, run_dir))

    page.tabs["export"].select(on_tab, c["export_run"], c["export_run"])

    def on_run(run_dir: str | None) -> Any:
        choices = [(Path(d).name, d) for d in export_jobs(run_dir)]
        return gr.update(choices=choices, value=choices[0][1] if choices else None)

    c["export_run"].change(on_run, c["export_run"], c["export_job"])

    def on_start(run_dir: str | None, dtype: str, shard: str, gguf: list[str], overwrite: bool,
                 language: str) -> dict[Any, Any]:
        try:
            run_dir = str(ctx.page_path(run_dir, "run", write=True)) if run_dir else ""
            job_dir = start_export(export_config(run_dir or "", dtype, shard, gguf, overwrite))
        except UserError as exc:
            return {c["export_msg"]: jobview.error_text(exc, language)}
        choices = [(Path(d).name, d) for d in export_jobs(run_dir)]
        return {c["export_msg"]: t("export.started", language, job=job_dir),
                c["export_job"]: gr.update(choices=choices, value=str(job_dir))}

    c["export_start"].click(on_start, [c["export_run"], c["export_dtype"], c["export_shard"], c["export_gguf"],
                                       c["export_overwrite"], lang], [c["export_msg"], c["export_job"]])

    def tick(run_dir: str | None, job_dir: str | None, language: str, console: dict,
             last: list | None) -> dict[Any, Any]:
        p = jobview.job_progress(job_dir)
        text, console = jobview.console_tail(console, job_dir)
        done = not p or p.get("state") != "running"
        files = export_files(run_dir) if done else []
        headers = [t("export.file", language), t("export.size", language)]
        shown = [jobview.progress_html(p, language), text, (files, headers), model_card(run_dir) if done else ""]
        html, console_text, table, card = jobview.only_changed(shown, last)
        if table is shown[2]:
            table = gr.update(value=files, headers=headers)
        return {c["export_progress"]: html, c["export_console"]: console_text, c["export_console_state"]: console,
                c["export_files"]: table, c["export_card"]: card, c["export_tick_state"]: shown}

    outputs = [c["export_progress"], c["export_console"], c["export_console_state"], c["export_files"],
               c["export_card"], c["export_tick_state"]]
    inputs = [c["export_run"], c["export_job"], lang, c["export_console_state"], c["export_tick_state"]]
    c["export_timer"].tick(tick, inputs, outputs, show_progress="hidden")
    jobview.scroll_to_end(c["export_console"], "export-console")
    c["export_job"].change(tick, inputs, outputs, show_progress="hidden")
    lang.change(tick, inputs, outputs, show_progress="hidden")  # progress and table headers in the new language
