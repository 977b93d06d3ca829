"""Showing a job (train, eval or export) from its folder: a progress bar and the console tail.

Everything comes from the run folder (status.json, trainer_log.jsonl, console.log) through the
core's `progress` and `Tail`, so a reloaded page or a restarted UI shows the same job.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from app.i18n import t, translate
from trainer_core import jobs, runs

CONSOLE_LINES = 300  # lines kept on the page; the file keeps everything
FIRST_READ_BYTES = 64 * 1024  # a re-attached page starts from the console's last 64 KiB


def percent(p: dict) -> float:
    if p.get("state") == "finished":
        return 100.0
    total, step = p.get("total_steps"), p.get("step") or 0
    return min(100.0, 100.0 * step / total) if total else 0.0


def progress_html(p: dict | None, lang: str) -> str:
    """A progress bar with step/total, ETA, speed and losses; the one-sentence error of a failed job."""
    if not p:
        return f"<div class='qh-job qh-job-none'>{t('job.none', lang)}</div>"
    state = p.get("state", "unknown")
    share = percent(p)
    total = p.get("total_steps")
    steps = f"{p.get('step') or 0} / {total}" if total else "–"
    eta = p.get("eta_seconds")
    preparing = p.get("preparing") if state == "running" else None
    if preparing:  # the Arrow path prepares the data before the first step (data_progress.json)
        share = 100.0 * preparing["done_bytes"] / max(1, preparing["total_bytes"])
        steps = (f"{t('job.preparing', lang)} {preparing.get('dataset', '')} · "
                 f"{preparing['shards_done']} / {preparing['shards']}")
        eta = preparing.get("eta_seconds")
    meta = [f"{t('job.eta', lang)} {runs.format_duration(eta) if state == 'running' else '–'}",
            f"{t('job.elapsed', lang)} {runs.format_duration(p.get('elapsed_seconds'))}"]
    if p.get("tokens_per_second"):
        meta.append(f"{p['tokens_per_second']:,.0f} tok/s")
    if p.get("loss") is not None:
        meta.append(f"loss {p['loss']:.4f}")
    if p.get("eval_loss") is not None:
        meta.append(f"eval_loss {p['eval_loss']:.4f}")
    error = ""
    if state == "aborted":  # a requested stop is no error: a neutral note in the page's language
        step = p.get("step") or 0
        note = t("job.stopped_at", lang).format(step=step) if step else t("job.stopped_before_start", lang)
        error = f"<div class='qh-note'>{html.escape(note)}</div>"
    elif p.get("error"):
        error = f"<div class='qh-error'>⚠ {html.escape(translate(p['error'], lang))}</div>"
    return (f"<div class='qh-job'><div class='qh-job-head'><span class='qh-state qh-state-{html.escape(state)}'>"
            f"{t('state.' + state if state in runs.STATES else 'state.unknown', lang)}</span> "
            f"<code>{html.escape(Path(p.get('run_dir', '')).name)}</code></div>"
            f"<div class='qh-bar'><div class='qh-bar-fill' style='width:{share:.1f}%'></div>"
            f"<span class='qh-bar-text'>{steps} · {share:.0f}%</span></div>"
            f"<div class='qh-job-meta'>{' · '.join(meta)}</div>{error}</div>")


def job_progress(job_dir: str | None) -> dict | None:
    if not job_dir or not (Path(job_dir) / runs.STATUS_FILE).is_file():
        return None
    return jobs.progress(job_dir)


def console_tail(state: dict | None, job_dir: str | None) -> tuple[str, dict]:
    """The console's last lines; only what was appended since the last call is read.
    `state` is this page's {"dir", "tail", "lines"}; a new job starts it over."""
    if not job_dir:
        return "", {}
    path = Path(job_dir) / runs.CONSOLE_FILE
    if not state or state.get("dir") != str(job_dir):
        tail = jobs.Tail(path, from_start=False)
        first = jobs.tail_text(path, FIRST_READ_BYTES).splitlines()
        state = {"dir": str(job_dir), "tail": tail, "lines": first[-CONSOLE_LINES:]}
    else:
        state["lines"] = (state["lines"] + state["tail"].new_lines())[-CONSOLE_LINES:]
    return "\n".join(state["lines"]), state


def run_label(p: dict, lang: str) -> str:
    state = p.get("state", "unknown")
    return f"{Path(p['run_dir']).name} · {t('state.' + state if state in runs.STATES else 'state.unknown', lang)}"


def error_text(exc: Exception, lang: str | None = None) -> str:
    """'⚠ message' (a UserError's own words, else with the exception's type), in `lang` where
    the message is one the page knows (app.i18n.translate)."""
    from trainer_core.errors import UserError

    text = f"⚠ {exc}" if isinstance(exc, UserError) else f"⚠ {type(exc).__name__}: {exc}"
    return translate(text, lang) if lang else text


def only_changed(values: list[Any], last: list[Any] | None) -> list[Any]:
    """Values that differ from last time, gr.update() (no change) for the rest: a timer that
    resends the same plot or table makes it flicker and loses the reader's scroll and hover."""
    import gradio as gr

    if not last or len(last) != len(values):
        return list(values)
    return [gr.update() if value == before else value for value, before in zip(values, last)]


def scroll_to_end(textbox: Any, elem_id: str) -> None:
    """Keep a console showing its newest lines (a textarea keeps its scroll position otherwise)."""
    textbox.change(None, None, None, js=f"() => {{ const t = document.querySelector('#{elem_id} textarea'); "
                                        "if (t) t.scrollTop = t.scrollHeight; }")
