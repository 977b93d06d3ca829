"""评估 Evaluate: score a finished run (or its base model) as an eval job, and compare results.

The job is `python -m trainer_core eval --run RUN_DIR ...` started by the core's launcher into
RUN_DIR/eval/<time>/; its progress and console are shown like training's, and the result files
it writes there are rendered by the core's `compare` as Markdown tables.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr

from app import jobview
from app.context import AppContext
from app.i18n import t
from app.tabs.data import dataset_choices, page_dataset_choices
from app.ui_kit import Labels
from trainer_core import jobs
from trainer_core.errors import UserError

TASKS = ("ppl", "generate", "mcq")
SPLITS = ("auto", "validation", "all")


def finished_runs(ctx: AppContext) -> list[str]:
    """Runs with a result to use: a LoRA adapter/ or a full model/, newest first."""
    from app.tabs.train import list_runs

    return [r["run_dir"] for r in list_runs(ctx)
            if (Path(r["run_dir"]) / "adapter" / "adapter_config.json").is_file()
            or (Path(r["run_dir"]) / "model" / "config.json").is_file()]


def run_choices(ctx: AppContext) -> list[tuple[str, str]]:
    return [(Path(d).name, d) for d in finished_runs(ctx)]


def refreshed_run_picker(ctx: AppContext, run_dir: str | None) -> Any:
    """The finished runs as choices, keeping the picked one if it still exists (else the newest)."""
    choices = run_choices(ctx)
    value = run_dir if run_dir in [d for _, d in choices] else (choices[0][1] if choices else None)
    return gr.update(choices=choices, value=value)


def eval_args(run_dir: str, *, base_only: bool = False, tasks: list[str] | None = None,
              datasets: list[str] | None = None, dataset_dir: str = "", split: str = "auto",
              max_samples: int | None = None, n_shot: int = 0, max_new_tokens: int = 128,
              batch_size: int = 4) -> list[str]:
    """The eval command's arguments (after `python -m trainer_core eval`)."""
    args = ["--run", str(run_dir)]
    if base_only:
        args.append("--base_only")
    if tasks:
        args += ["--task", ",".join(tasks)]
    if datasets:
        args += ["--dataset", ",".join(datasets), "--dataset_dir", str(dataset_dir)]
    if split and split != "auto":
        args += ["--split", split]
    if max_samples:
        args += ["--max_samples", str(int(max_samples))]
    args += ["--n_shot", str(int(n_shot or 0)), "--max_new_tokens", str(int(max_new_tokens or 128)),
             "--batch_size", str(int(batch_size or 4))]
    return args


def start_eval(run_dir: str, args: list[str]) -> Path:
    """Start the eval job in RUN_DIR/eval/<time>/ (the core picks the folder and the launcher)."""
    if not run_dir:
        raise UserError("pick a finished run first")
    job_dir = jobs.task_job_dir("eval", SimpleNamespace(run=run_dir, output_dir=None))
    return jobs.start_task("eval", args, job_dir)


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


def build(ctx: AppContext, L: Labels, c: dict[str, Any]) -> None:
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
                                    choices=dataset_choices(ctx.data_dir), value=[], scale=3,
                                    elem_id="eval-datasets")
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


def _job_choices(run_dir: str | None) -> list[tuple[str, str]]:
    return [(Path(d).name, d) for d in eval_jobs(run_dir)]


def wire(ctx: AppContext, c: dict[str, Any]) -> None:
    lang = c["lang"]

    def on_tab(run_dir: str | None, dataset_dir: str) -> list[Any]:
        return [refreshed_run_picker(ctx, run_dir), gr.update(choices=page_dataset_choices(ctx, dataset_dir))]

    c["tab_evaluate"].select(on_tab, [c["eval_run"], c["dataset_dir"]], [c["eval_run"], c["eval_datasets"]])

    def on_run(run_dir: str | None) -> list[Any]:
        choices = _job_choices(run_dir)
        return [gr.update(choices=choices, value=choices[0][1] if choices else None),
                gr.update(choices=choices, value=[])]

    c["eval_run"].change(on_run, c["eval_run"], [c["eval_job"], c["eval_compare_jobs"]])

    def on_start(run_dir: str | None, base_only: bool, tasks: list[str], datasets: list[str], dataset_dir: str,
                 split: str, max_samples: Any, n_shot: Any, max_new_tokens: Any, batch_size: Any,
                 language: str) -> list[Any]:
        try:
            run_dir = str(ctx.page_path(run_dir, "run", write=True)) if run_dir else ""
            dataset_dir = str(ctx.page_path(dataset_dir, "dataset_dir")) if (dataset_dir or "").strip() else ""
            args = eval_args(run_dir or "", base_only=base_only, tasks=tasks, datasets=datasets,
                             dataset_dir=dataset_dir, split=split, max_samples=max_samples, n_shot=n_shot,
                             max_new_tokens=max_new_tokens, batch_size=batch_size)
            job_dir = start_eval(run_dir or "", args)
        except UserError as exc:
            return [jobview.error_text(exc, language), gr.update(), gr.update()]
        choices = _job_choices(run_dir)
        return [t("eval.started", language, job=job_dir), gr.update(choices=choices, value=str(job_dir)),
                gr.update(choices=choices)]

    c["eval_start"].click(on_start, [c["eval_run"], c["eval_base_only"], c["eval_tasks"], c["eval_datasets"],
                                     c["dataset_dir"], c["eval_split"], c["eval_max_samples"], c["eval_n_shot"],
                                     c["eval_max_new_tokens"], c["eval_batch_size"], lang],
                          [c["eval_msg"], c["eval_job"], c["eval_compare_jobs"]])

    def tick(job_dir: str | None, language: str, console: dict, last: list | None) -> list[Any]:
        p = jobview.job_progress(job_dir)
        text, console = jobview.console_tail(console, job_dir)
        shown = [jobview.progress_html(p, language), text, results_markdown([job_dir] if job_dir else [])]
        html, console_text, results = jobview.only_changed(shown, last)
        return [html, console_text, console, results, shown]

    outputs = [c["eval_progress"], c["eval_console"], c["eval_console_state"], c["eval_results"],
               c["eval_tick_state"]]
    inputs = [c["eval_job"], lang, c["eval_console_state"], c["eval_tick_state"]]
    c["eval_timer"].tick(tick, inputs, outputs, show_progress="hidden")
    jobview.scroll_to_end(c["eval_console"], "eval-console")
    c["eval_job"].change(tick, inputs, outputs, show_progress="hidden")
    lang.change(tick, inputs, outputs, show_progress="hidden")  # the progress line in the new language
    c["eval_compare_jobs"].change(lambda chosen: results_markdown(chosen or []), c["eval_compare_jobs"],
                                  c["eval_compare_out"])
