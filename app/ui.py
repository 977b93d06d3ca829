"""The page: a language radio above six tabs, each built by its module under app/tabs/.

Tabs create their components into one dict `c` first and wire their events afterwards, because
events cross tabs (Train starts the Parameters form on the Data tab's datasets).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app import choices, form, plan_panel
from app.context import AppContext
from app.i18n import t, translate
from app.page import Page
from app.tabs import chat, data, evaluate, export, params, train
from app.ui_kit import Labels

TABS = (("data", data), ("params", params), ("train", train), ("evaluate", evaluate), ("chat", chat),
        ("export", export))


CSS = """
.qh-preview { display: flex; flex-direction: column; gap: 10px; }
.qh-rec { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 10px; }
.qh-rec-head { font-size: 12px; color: var(--body-text-color-subdued); margin-bottom: 4px; }
.qh-msg { border-radius: 10px; padding: 6px 10px; margin: 4px 0; max-width: 92%; }
.qh-user { background: #e8f0fe; margin-right: auto; }
.qh-assistant { background: #eaf6ec; margin-left: auto; }
.qh-system { background: #f3f3f3; font-style: italic; }
.qh-tool { background: #fff6e5; }
.qh-doc { background: #f7f7f7; max-width: 100%; }
.dark .qh-user { background: #233553; } .dark .qh-assistant { background: #1f3b2a; }
.dark .qh-system, .dark .qh-doc { background: #2a2a2a; } .dark .qh-tool { background: #3b3220; }
.qh-role { font-size: 11px; font-weight: 600; color: var(--body-text-color-subdued); }
.qh-text { white-space: pre-wrap; word-break: break-word; }
.qh-pair { display: flex; gap: 8px; } .qh-pair > .qh-side { flex: 1; min-width: 0; }
.qh-side { border-left: 3px solid; padding-left: 6px; margin-top: 4px; }
.qh-chosen, .qh-desirable { border-color: #1a7f37; } .qh-rejected, .qh-undesirable { border-color: #cf222e; }
.qh-side-head { font-size: 12px; font-weight: 600; }
.qh-options { margin: 4px 0 4px 20px; } .qh-answer { font-weight: 600; color: #1a7f37; }
.qh-job { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 10px; }
.qh-job-head { margin-bottom: 6px; }
.qh-state { border-radius: 10px; padding: 1px 8px; font-size: 12px; color: white; background: #888; }
.qh-state-running { background: #2f6fde; } .qh-state-finished { background: #1a7f37; }
.qh-state-failed { background: #c62828; } .qh-state-aborted { background: #b26a00; }
.qh-bar { position: relative; height: 22px; border-radius: 6px; background: var(--background-fill-secondary);
          overflow: hidden; }
.qh-bar-fill { height: 100%; background: linear-gradient(90deg, #5b8def, #3dbb84); }
.qh-bar-text { position: absolute; inset: 0; text-align: center; line-height: 22px; font-size: 13px; }
.qh-job-meta { font-size: 13px; margin-top: 6px; color: var(--body-text-color-subdued); }
.qh-error { margin-top: 6px; color: #c62828; font-weight: 600; }
.qh-note { margin-top: 6px; color: var(--body-text-color-subdued); }
.qh-console textarea { font-family: ui-monospace, monospace; font-size: 12px; }
#qh-header h1 { margin: 0; }
.qh-plot { padding-top: 26px; } .qh-plot svg { width: 100%; height: auto; }
.qh-plot-pair { display: flex; gap: 8px; } .qh-plot-pair > .qh-plot { flex: 1; min-width: 0; }
.qh-plot-empty { padding: 40px; text-align: center; color: var(--body-text-color-subdued); }
"""


def theme() -> gr.themes.Base:
    """Local fonts only: the page must not wait for a font server it cannot reach."""
    fonts = ["Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", "system-ui", "sans-serif"]
    return gr.themes.Soft(font=fonts, font_mono=["ui-monospace", "Consolas", "monospace"])


def build_app(ctx: AppContext) -> gr.Blocks:
    L = Labels(ctx.lang)
    names = choices.dataset_names(ctx.data_dir)
    with gr.Blocks(title=t("app.title", ctx.lang), analytics_enabled=False) as demo:
        with gr.Row(equal_height=True):
            L.markdown("app.header", elem_id="qh-header")
            lang = gr.Radio([("中文", "zh"), ("English", "en")], value=ctx.lang, show_label=False,
                            container=False, scale=0, min_width=180, elem_id="qh-lang")
        page = Page(lang=lang, initial_values=form.initial_values(ctx, names))
        own: dict[str, dict[str, Any]] = {}  # each tab's components, by tab
        with gr.Tabs() as page.tab_set:
            for name, module in TABS:
                with L.tab("tab." + name, id=name, elem_id="tab-" + name) as page.tabs[name]:
                    own[name] = module.build(ctx, L, page)
        for name, module in TABS:  # after every build: a tab may read what a later one shares
            module.wire(ctx, page, own[name])
        lang.change(L.relabel, lang, L.components, show_progress="hidden")
        # Status lines already shown follow the language too (each known line is re-written).
        status = page.status_lines
        lang.change(lambda language, *texts: [translate(text, language) for text in texts], [lang, *status], status,
                    show_progress="hidden")
        for fn, inputs, outputs in page.load_events:
            demo.load(fn, inputs, outputs, show_progress="hidden")
    return demo


def launch_kwargs(ctx: AppContext) -> dict[str, Any]:
    """demo.launch's settings. run_history off: Gradio would otherwise keep every event's inputs and
    outputs (records of the user's data, chat messages, whole plots) in the browser's localStorage,
    rewriting up to 100 of them after each event, which also kept the browser busy."""
    return {"theme": theme(), "css": CSS + plan_panel.CSS, "max_file_size": ctx.max_upload_bytes, "ssr_mode": False,
            "footer_links": [], "allowed_paths": [], "show_error": True, "run_history": False}



# Gradio versions whose gradio/routes.py `sse_stream` was read for the race below; another version
# is left as it is (and tests/test_ui.py's check of this list fails, so that someone reads it again).
SESSION_RACE_VERSIONS = ("6.31.0",)


class _SessionQueues(gr.utils.LRUCache):
    """The queue's per-session message queues, which a cancelled stream cannot delete."""

    def __delitem__(self, key: Any) -> None:
        pass


def keep_session_queues(demo: gr.Blocks) -> bool:
    """Work around a race in Gradio's event stream (gradio/routes.py, `sse_stream`): when a client
    closes one stream of its session (asyncio.CancelledError) it deletes the session's message
    queue, even while the client's next stream of the same session is already open for a newer
    event; that stream then ends in a 404, and the page shows "Unexpected error 404" and mounts
    itself again, losing what the user typed. The more the server lags (a busy CPU), the wider the
    window. The queues are an LRU cache of 2,000 sessions, so keeping them grows nothing. Applied
    after `demo.queue()`, to the versions in SESSION_RACE_VERSIONS only; True when applied."""
    queue = getattr(demo, "_queue", None)
    if gr.__version__ not in SESSION_RACE_VERSIONS or queue is None:
        return False
    kept = _SessionQueues(queue.pending_messages_per_session.max_size)
    kept.update(queue.pending_messages_per_session)
    queue.pending_messages_per_session = kept
    return True
