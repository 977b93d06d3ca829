"""训练 Train: start the Parameters tab's config as a job, follow it, abort or resume it, and
compare runs.

Nothing about a job lives in this process: a timer reads the run folders (status, trainer_log,
console) through the core, so a reloaded page or a restarted UI re-attaches to a running job.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import gradio as gr

from app import form, jobview
from app.choices import list_runs
from app.context import AppContext
from app.i18n import t, translate
from app.page import Page
from app.plots import curves, loss_svg
from app.ui_kit import Labels
from trainer_core import jobs, runs
from trainer_core.errors import UserError

POLL_SECONDS = 2.0
TABLE_COLUMNS = ("train.col_run", "train.col_state", "train.col_progress", "train.col_loss", "train.col_eval",
                 "train.col_started")


# ---- plain functions -----------------------------------------------------------------------



def default_run(rows: list[dict]) -> str | None:
    """The run a fresh page shows: a running one, else the newest."""
    running = [r for r in rows if r["state"] == "running"]
    chosen = running[0] if running else (rows[0] if rows else None)
    return chosen["run_dir"] if chosen else None


def table_rows(rows: list[dict], lang: str) -> list[list[Any]]:
    def number(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, (int, float)) else ""

    out = []
    for r in rows:
        progress = f"{r['step']}/{r['total_steps']}" if r.get("total_steps") else ""
        state = r.get("state", "unknown")
        out.append([Path(r["run_dir"]).name, t("state." + state if state in runs.STATES else "state.unknown", lang),
                    progress, number(r.get("loss")), number(r.get("eval_loss")),
                    (r.get("started_at") or "").replace("T", " ")[:19]])
    return out


def start(values: dict[str, Any], ctx: AppContext) -> Path:
    """Check the form and start the job; a problem is raised as one UserError listing all."""
    cfg, fields, general = form.check(values, ctx)
    if cfg is None:
        raise UserError("\n".join(f"- {text}" for text in [*fields.values(), *general]))
    return jobs.start_job(cfg, ctx.outputs_root)


def resume(run_folder: str | Path) -> Path:
    """Start the run's own run.yaml again; the trainer continues from its newest checkpoint."""
    from trainer_core.config import load_config

    run_dir = Path(run_folder)
    if not (run_dir / runs.CONFIG_FILE).is_file():
        raise UserError(f"{run_dir} has no run.yaml to resume from")
    state = jobs.refresh_status(run_dir).get("state")
    if state == "running":
        raise UserError(f"{run_dir.name} is running already")
    cfg = load_config(run_dir / runs.CONFIG_FILE, {"resume_from_checkpoint": "auto", "output_dir": str(run_dir)})
    return jobs.start_job(cfg)


def abort_in_background(run_dir: str) -> None:
    """An abort waits up to two minutes for the checkpoint; the page must not wait with it."""
    threading.Thread(target=_abort, args=(run_dir,), daemon=True, name=f"abort-{Path(run_dir).name}").start()


def _abort(run_dir: str) -> None:
    try:
        jobs.abort_job(run_dir, log=lambda _: None)
    except UserError:
        pass  # it ended on its own meanwhile


def _selected(run_dir: str | None, overlay: list[str] | None) -> list[str]:
    return list(dict.fromkeys(d for d in [run_dir, *(overlay or [])] if d))  # the current run once, first


# A preference run's (dpo, kto) trainer_log.jsonl keys: rewards of the chosen and the rejected
# answers, their margin, and the share of pairs where the chosen one wins, on train and eval.
REWARD_KEYS = ("rewards_chosen", "rewards_rejected", "rewards_margin")
ACCURACY_KEY = "rewards_accuracy"


def _train_and_eval(keys: tuple[str, ...], lang: str) -> dict[str, str]:
    series = {key: t(f"plot.{key}", lang) for key in keys}
    return series | {f"eval_{key}": f"{label} · {t('plot.eval', lang)}" for key, label in series.items()}


def curve_rows(run_dir: str | None, overlay: list[str] | None, lang: str
               ) -> tuple[list[dict], tuple[list[dict], list[dict]]]:
    """The loss rows and the (reward, reward-accuracy) rows of the runs shown, each log read once
    (the timer asks every POLL_SECONDS); the reward rows are empty for runs that log no rewards."""
    losses, rewards, accuracy = curves(_selected(run_dir, overlay),
                                       {"loss": t("plot.train", lang), "eval_loss": t("plot.eval", lang)},
                                       _train_and_eval(REWARD_KEYS, lang), _train_and_eval((ACCURACY_KEY,), lang))
    return losses, (rewards, accuracy)


def plot_rows(run_dir: str | None, overlay: list[str] | None, lang: str) -> list[dict]:
    return curve_rows(run_dir, overlay, lang)[0]


def reward_rows(run_dir: str | None, overlay: list[str] | None, lang: str) -> tuple[list[dict], list[dict]]:
    return curve_rows(run_dir, overlay, lang)[1]


def plot_html(rows: list[dict], lang: str) -> str:
    return loss_svg(rows, t("plot.step", lang), t("plot.empty", lang))


def reward_html(rows: tuple[list[dict], list[dict]], lang: str) -> Any:
    """Both plots side by side, shown only when a run shown logged rewards."""
    rewards, accuracy = rows
    if not rewards and not accuracy:
        return gr.update(value="", visible=False)
    step = t("plot.step", lang)
    return gr.update(visible=True, value="<div class='qh-plot-pair'>"
                     + loss_svg(rewards, step, "", t("plot.reward", lang), gid="reward")
                     + loss_svg(accuracy, step, "", t("plot.rewards_accuracy", lang), gid="accuracy") + "</div>")


# ---- components ----------------------------------------------------------------------------

def build(ctx: AppContext, L: Labels, page: Page) -> dict[str, Any]:
    c: dict[str, Any] = {}
    L.markdown("train.intro")
    with gr.Row():
        c["start_btn"] = L.make(gr.Button, text="train.start", variant="primary", elem_id="train-start")
        c["abort_btn"] = L.make(gr.Button, text="train.abort", variant="stop", elem_id="train-abort")
        c["resume_btn"] = L.make(gr.Button, text="train.resume", elem_id="train-resume")
    c["train_msg"] = gr.Markdown(elem_id="train-msg")
    c["run_select"] = L.make(gr.Dropdown, label="train.run", choices=[], value=None, elem_id="train-run")
    c["train_progress"] = gr.HTML(jobview.progress_html(None, L.lang), elem_id="train-progress")
    with gr.Row():
        with gr.Column(scale=3):
            c["loss_plot"] = L.make(gr.HTML, label="train.loss", show_label=True, container=True,
                                    value=plot_html([], L.lang),
                                    elem_id="train-loss")
            c["reward_plot"] = L.make(gr.HTML, label="train.rewards", show_label=True, container=True, value="",
                                      visible=False, elem_id="train-rewards")
        with gr.Column(scale=2):
            c["console"] = L.make(gr.Textbox, label="train.console", lines=14, max_lines=14, autoscroll=True,
                                  interactive=False, elem_id="train-console", elem_classes=["qh-console"])
    c["overlay"] = L.make(gr.Dropdown, label="train.overlay", info="train.overlay_info", choices=[], value=[],
                          multiselect=True, elem_id="train-overlay")
    c["runs_table"] = L.make(gr.Dataframe, label="train.runs", headers=[t(k, L.lang) for k in TABLE_COLUMNS],
                             value=[], interactive=False, elem_id="train-runs")
    c["console_state"] = gr.State({})
    c["tick_state"] = gr.State(None)  # what the page shows now: only changes are sent
    c["table_state"] = gr.State(None)
    c["train_timer"] = gr.Timer(POLL_SECONDS)
    page.status_lines.append(c["train_msg"])
    return c


def wire(ctx: AppContext, page: Page, c: dict[str, Any]) -> None:
    lang = page.lang

    def tick(run_dir: str | None, overlay: list[str] | None, language: str, console: dict,
             last: list | None) -> dict[Any, Any]:
        p = jobview.job_progress(run_dir)
        text, console = jobview.console_tail(console, run_dir)
        state = (p or {}).get("state")
        rows, rewards = curve_rows(run_dir, overlay, language)
        shown = [jobview.progress_html(p, language), rows, text, state, rewards]
        html, plot, console_text, buttons, reward_plot = jobview.only_changed(shown, last)
        if plot is rows:  # changed: draw it only then
            plot = plot_html(rows, language)
        if reward_plot is rewards:
            reward_plot = reward_html(rewards, language)
        changes = {c["train_progress"]: html, c["loss_plot"]: plot, c["console"]: console_text,
                   c["console_state"]: console, c["tick_state"]: shown, c["reward_plot"]: reward_plot}
        if buttons == state:  # changed
            changes[c["abort_btn"]] = gr.update(interactive=state == "running")
            changes[c["resume_btn"]] = gr.update(interactive=state in ("aborted", "failed"))
        return changes

    tick_outputs = [c["train_progress"], c["loss_plot"], c["console"], c["console_state"], c["abort_btn"],
                    c["resume_btn"], c["tick_state"], c["reward_plot"]]
    tick_inputs = [c["run_select"], c["overlay"], lang, c["console_state"], c["tick_state"]]
    c["train_timer"].tick(tick, tick_inputs, tick_outputs, show_progress="hidden")
    jobview.scroll_to_end(c["console"], "train-console")
    c["run_select"].change(tick, tick_inputs, tick_outputs, show_progress="hidden")
    c["overlay"].change(tick, tick_inputs, tick_outputs, show_progress="hidden")
    lang.change(tick, tick_inputs, tick_outputs, show_progress="hidden")  # the progress line in the new language

    def refresh(run_dir: str | None, language: str, last: Any, select: str | None = None) -> dict[Any, Any]:
        """Run list and table; sent only when they changed, so a user's selection is not reset."""
        rows = list_runs(ctx)
        choices = [(jobview.run_label(r, language), r["run_dir"]) for r in rows]
        table = table_rows(rows, language)
        current = select or run_dir
        if current not in [d for _, d in choices]:
            current = default_run(rows)
        snapshot = (choices, table, current, language)
        if snapshot == last:
            return {c["table_state"]: gr.update()}  # nothing changes (an empty dict reads as a value)
        headers = [t(k, language) for k in TABLE_COLUMNS]
        return {c["run_select"]: gr.update(choices=choices, value=current), c["overlay"]: gr.update(choices=choices),
                c["runs_table"]: gr.update(value=table, headers=headers), c["table_state"]: snapshot}

    refresh_outputs = [c["run_select"], c["overlay"], c["runs_table"], c["table_state"]]
    c["train_timer"].tick(refresh, [c["run_select"], lang, c["table_state"]], refresh_outputs, show_progress="hidden")
    lang.change(refresh, [c["run_select"], lang, c["table_state"]], refresh_outputs, show_progress="hidden")
    page.load_events.append((refresh, [c["run_select"], lang, c["table_state"]], refresh_outputs))

    def on_start(*args: Any) -> dict[Any, Any]:
        *rest, language, last = args
        try:
            run_dir = start(form.as_values(rest), ctx)
        except UserError as exc:
            return {c["train_msg"]: f"⚠ {t('train.not_started', language)}\n\n{translate(str(exc), language)}"}
        return {c["train_msg"]: t("train.started", language, run=run_dir),
                **refresh(None, language, None, select=str(run_dir))}

    c["start_btn"].click(on_start, [*page.form_inputs(), lang, c["table_state"]], [c["train_msg"], *refresh_outputs])

    def on_abort(run_dir: str | None, language: str) -> str:
        if not run_dir:
            return t("train.pick_run", language)
        try:
            run_dir = str(ctx.page_path(run_dir, "run", write=True))
        except UserError as exc:
            return jobview.error_text(exc, language)
        if jobs.refresh_status(run_dir).get("state") != "running":
            return t("train.not_running", language)
        abort_in_background(run_dir)
        return t("train.aborting", language)

    c["abort_btn"].click(on_abort, [c["run_select"], lang], c["train_msg"])

    def on_resume(run_dir: str | None, language: str, last: Any) -> dict[Any, Any]:
        if not run_dir:
            return {c["train_msg"]: t("train.pick_run", language)}
        try:
            run_dir = str(ctx.page_path(run_dir, "run", write=True))
            resume(run_dir)
        except UserError as exc:
            return {c["train_msg"]: jobview.error_text(exc, language)}
        return {c["train_msg"]: t("train.resumed", language, run=run_dir),
                **refresh(None, language, None, select=run_dir)}

    c["resume_btn"].click(on_resume, [c["run_select"], lang, c["table_state"]], [c["train_msg"], *refresh_outputs])

    def on_pick(evt: gr.SelectData, language: str, last: Any) -> dict[Any, Any]:
        rows = list_runs(ctx)
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not isinstance(row, int) or row >= len(rows):
            return {c["table_state"]: gr.update()}  # nothing changes (an empty dict reads as a value)
        return refresh(None, language, None, select=rows[row]["run_dir"])

    c["runs_table"].select(on_pick, [lang, c["table_state"]], refresh_outputs)
