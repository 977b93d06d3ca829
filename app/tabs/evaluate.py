"""评估 Evaluate: score a finished run (or its base model) as an eval job, and compare results.

The form becomes an `EvalConfig` (trainer_core/jobconfig.py), checked like a run config; the
core's launcher (`jobs.start_task`) writes it to RUN_DIR/eval/<time>/eval.yaml and starts
`python -m trainer_core eval RUN_DIR/eval/<time>/eval.yaml` there. Its progress and console are
shown like training's, and the result files it writes there are rendered by the core's `compare`
as Markdown tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from app import jobview
from app.choices import dataset_choices, page_dataset_choices, refreshed_run_picker, run_choices
from app.context import AppContext
from app.i18n import t
from app.page import Page
from app.ui_kit import Labels
from trainer_core import jobs
from trainer_core.config import config_from_dict
from trainer_core.errors import UserError
from trainer_core.jobconfig import SPLITS as JOB_SPLITS
from trainer_core.jobconfig import TASKS, EvalConfig

SPLITS = ("auto", *JOB_SPLITS)  # auto: the config's default (validation with a run and no dataset)


def eval_config(run_dir: str, *, base_only: bool = False, tasks: list[str] | None = None,
                datasets: list[str] | None = None, dataset_dir: str = "", split: str = "auto",
                max_samples: int | None = None, n_shot: int | None = 0, max_new_tokens: int | None = 128,
                batch_size: int | None = 4) -> EvalConfig:
    """The eval job's config from the form: a cleared number means the key's default; every
    problem is raised at once as a ConfigError (shown translated under the form)."""
    if not run_dir:
        raise UserError("pick a finished run first")
    raw: dict[str, Any] = {"run": str(run_dir), "base_only": bool(base_only), "task": ",".join(tasks or [])}
    if datasets:
        raw.update(dataset=",".join(datasets), dataset_dir=str(dataset_dir))
    if split and split != "auto":
        raw["split"] = split
    if max_samples:
        raw["max_samples"] = max_samples
    for key, value in (("n_shot", n_shot), ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if value is not None:
            raw[key] = value
    return config_from_dict(raw, EvalConfig)


def start_eval(cfg: EvalConfig) -> Path:
    """Start the eval job in RUN_DIR/eval/<time>/ (the core picks the folder and the launcher)."""
    return jobs.start_task("eval", cfg)


def eval_jobs(run_dir: str | None) -> list[str]:
    """The run's eval job folders, newest first."""
    if not run_dir:
        return []
    folder = Path(run_dir) / "eval"
    return sorted((str(p) for p in folder.iterdir() if p.is_dir()), reverse=True) if folder.is_dir() else []


def results_markdown(job_dirs: list[str]) -> str:
    """The core's side-by-side table of the jobs' results ('' while a job has written none)."""
    from trainer_core.evaluate import compare

    ready = [d for d in job_dirs if any(p.name != "status.json" for p in Path(d).glob("*.json"))]
    if not ready:
        return ""
    try:
        return compare(ready)
    except UserError:
        return ""


def build(ctx: AppContext, L: Labels, page: Page) -> dict[str, Any]:
    c: dict[str, Any] = {}
    L.markdown("eval.intro")
    with gr.Row():
        c["eval_run"] = L.make(gr.Dropdown, label="eval.run", choices=run_choices(ctx), value=None, scale=3,
                               elem_id="eval-run")
        c["eval_base_only"] = L.make(gr.Checkbox, label="eval.base_only", info="eval.base_only_info", value=False,
                                     scale=2, elem_id="eval-base-only")
    with gr.Row():
        c["eval_tasks"] = L.make(gr.CheckboxGroup, label="eval.tasks", info="eval.tasks_info",
                                 choice_keys=[("task." + k, k) for k in TASKS], value=[], scale=2,
                                 elem_id="eval-tasks")
        c["eval_datasets"] = L.make(gr.Dropdown, label="eval.datasets", info="eval.datasets_info", multiselect=True,
                                    choices=dataset_choices(ctx.data_dir), value=[], allow_custom_value=True,
                                    scale=3, elem_id="eval-datasets")  # as data-datasets: the choices follow the folder
        c["eval_split"] = L.make(gr.Dropdown, label="eval.split", choice_keys=[("split." + s, s) for s in SPLITS],
                                 value="auto", scale=1, elem_id="eval-split")
    with gr.Row():
        c["eval_max_samples"] = L.make(gr.Number, label="eval.max_samples", value=20, precision=0, minimum=1,
                                           elem_id="eval-max-samples")
        c["eval_n_shot"] = L.make(gr.Number, label="eval.n_shot", value=0, precision=0, minimum=0,
                                      elem_id="eval-n-shot")
        c["eval_max_new_tokens"] = L.make(gr.Number, label="eval.max_new_tokens", value=64, precision=0,
                                              minimum=1, elem_id="eval-max-new-tokens")
        c["eval_batch_size"] = L.make(gr.Number, label="eval.batch_size", value=4, precision=0, minimum=1,
                                          elem_id="eval-batch-size")
    c["eval_start"] = L.make(gr.Button, text="eval.start", variant="primary", elem_id="eval-start")
    c["eval_msg"] = gr.Markdown(elem_id="eval-msg")
    c["eval_job"] = L.make(gr.Dropdown, label="eval.job", choices=[], value=None, elem_id="eval-job")
    c["eval_progress"] = gr.HTML(jobview.progress_html(None, L.lang), elem_id="eval-progress")
    c["eval_console"] = L.make(gr.Textbox, label="eval.console", lines=8, max_lines=8, interactive=False,
                               elem_id="eval-console", elem_classes=["qh-console"])
    c["eval_results"] = gr.Markdown(elem_id="eval-results")
    with L.accordion("eval.compare", open=False, elem_id="eval-compare-acc"):
        c["eval_compare_jobs"] = L.make(gr.Dropdown, label="eval.compare_jobs", info="eval.compare_info",
                                        multiselect=True, choices=[], value=[],
                                        elem_id="eval-compare-jobs")
        c["eval_compare_out"] = gr.Markdown(elem_id="eval-compare-out")
    c["eval_console_state"] = gr.State({})
    c["eval_tick_state"] = gr.State(None)
    c["eval_timer"] = gr.Timer(2.0)
    page.status_lines.append(c["eval_msg"])
    return c


def _job_choices(run_dir: str | None) -> list[tuple[str, str]]:
    return [(Path(d).name, d) for d in eval_jobs(run_dir)]


def wire(ctx: AppContext, page: Page, c: dict[str, Any]) -> None:
    lang = page.lang

    def on_tab(run_dir: str | None, dataset_dir: str) -> dict[Any, Any]:
        """Runs finished and datasets registered since (in the Data tab's folder) show up."""
        return {c["eval_run"]: gr.update(**refreshed_run_picker(ctx, run_dir)),
                c["eval_datasets"]: gr.update(choices=page_dataset_choices(ctx, dataset_dir))}

    page.tabs["evaluate"].select(on_tab, [c["eval_run"], page.dataset_dir], [c["eval_run"], c["eval_datasets"]])

    def on_run(run_dir: str | None) -> dict[Any, Any]:
        choices = _job_choices(run_dir)
        return {c["eval_job"]: gr.update(choices=choices, value=choices[0][1] if choices else None),
                c["eval_compare_jobs"]: gr.update(choices=choices, value=[])}

    c["eval_run"].change(on_run, c["eval_run"], [c["eval_job"], c["eval_compare_jobs"]])

    def on_start(run_dir: str | None, base_only: bool, tasks: list[str], datasets: list[str], dataset_dir: str,
                 split: str, max_samples: Any, n_shot: Any, max_new_tokens: Any, batch_size: Any,
                 language: str) -> dict[Any, Any]:
        try:
            run_dir = str(ctx.page_path(run_dir, "run", write=True)) if run_dir else ""
            dataset_dir = str(ctx.page_path(dataset_dir, "dataset_dir")) if (dataset_dir or "").strip() else ""
            cfg = eval_config(run_dir or "", base_only=base_only, tasks=tasks, datasets=datasets,
                              dataset_dir=dataset_dir, split=split, max_samples=max_samples, n_shot=n_shot,
                              max_new_tokens=max_new_tokens, batch_size=batch_size)
            job_dir = start_eval(cfg)
        except UserError as exc:
            return {c["eval_msg"]: jobview.error_text(exc, language)}
        choices = _job_choices(run_dir)
        return {c["eval_msg"]: t("eval.started", language, job=job_dir),
                c["eval_job"]: gr.update(choices=choices, value=str(job_dir)),
                c["eval_compare_jobs"]: gr.update(choices=choices)}

    c["eval_start"].click(on_start, [c["eval_run"], c["eval_base_only"], c["eval_tasks"], c["eval_datasets"],
                                     page.dataset_dir, c["eval_split"], c["eval_max_samples"], c["eval_n_shot"],
                                     c["eval_max_new_tokens"], c["eval_batch_size"], lang],
                          [c["eval_msg"], c["eval_job"], c["eval_compare_jobs"]])

    def tick(job_dir: str | None, language: str, console: dict, last: list | None) -> dict[Any, Any]:
        p = jobview.job_progress(job_dir)
        text, console = jobview.console_tail(console, job_dir)
        shown = [jobview.progress_html(p, language), text, results_markdown([job_dir] if job_dir else [])]
        html, console_text, results = jobview.only_changed(shown, last)
        return {c["eval_progress"]: html, c["eval_console"]: console_text, c["eval_console_state"]: console,
                c["eval_results"]: results, c["eval_tick_state"]: shown}

    outputs = [c["eval_progress"], c["eval_console"], c["eval_console_state"], c["eval_results"],
               c["eval_tick_state"]]
    inputs = [c["eval_job"], lang, c["eval_console_state"], c["eval_tick_state"]]
    c["eval_timer"].tick(tick, inputs, outputs, show_progress="hidden")
    jobview.scroll_to_end(c["eval_console"], "eval-console")
    c["eval_job"].change(tick, inputs, outputs, show_progress="hidden")
    lang.change(tick, inputs, outputs, show_progress="hidden")  # the progress line in the new language
    c["eval_compare_jobs"].change(lambda chosen: results_markdown(chosen or []), c["eval_compare_jobs"],
                                  c["eval_compare_out"])
