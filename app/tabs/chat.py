"""对话 Chat: talk to a finished run (or a base model), streaming, with the base and the tuned
answer side by side.

Chat is interactive, so it runs in the UI process through the core's `ChatSession`; torch is
imported only when a model is loaded here. One model is held for the whole workbench.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from app.choices import refreshed_run_picker, run_choices
from app.context import AppContext
from app.i18n import t
from app.jobview import error_text
from app.page import Page
from app.ui_kit import Labels
from trainer_core.chat import ChatSession, GenerationSettings
from trainer_core.errors import UserError

SOURCES = ("run", "base")
_SESSION = ChatSession()  # holds no model until one is loaded (no torch import before that)


def session() -> ChatSession:
    return _SESSION


def load_model(source: str, run_dir: str | None, base_model: str) -> str:
    """Load a run's adapter (or full model) or a base model; returns what was loaded."""
    if source == "run":
        if not run_dir:
            raise UserError("pick a finished run first")
        return session().load_run(run_dir, log=lambda _: None)
    return session().load(base_model or "default", log=lambda _: None)


def generation_settings(max_new_tokens: Any, temperature: Any, top_p: Any, top_k: Any, repetition_penalty: Any,
                        greedy: bool) -> GenerationSettings:
    settings = GenerationSettings(int(max_new_tokens or 256), float(temperature or 0.0), float(top_p or 1.0),
                                  int(top_k or 0), float(repetition_penalty or 1.0), do_sample=not greedy)
    settings.check()
    return settings


def respond(message: str, history: list[dict], base_history: list[dict], system: str,
            settings: GenerationSettings, compare: bool) -> Iterator[tuple[list[dict], list[dict]]]:
    """Yield (tuned history, base history) as the replies grow. With `compare` the same message
    goes to the base (adapter off) first, then to the tuned model; each keeps its own history."""
    chat = session()
    tuned = [*history, {"role": "user", "content": message}, {"role": "assistant", "content": ""}]
    base = list(base_history)
    if compare:
        if not chat.has_adapter:
            raise UserError("base vs tuned needs a run with a LoRA adapter")
        base = [*base_history, {"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        for text in chat.stream(base_history, message, system, settings, use_adapter=False):
            base[-1] = {"role": "assistant", "content": text}
            yield list(tuned), list(base)
    for text in chat.stream(history, message, system, settings, use_adapter=True):
        tuned[-1] = {"role": "assistant", "content": text}
        yield list(tuned), list(base)
    yield list(tuned), list(base)


def build(ctx: AppContext, L: Labels, page: Page) -> dict[str, Any]:
    c: dict[str, Any] = {}
    L.markdown("chat.intro")
    with gr.Row():
        c["chat_source"] = L.make(gr.Radio, label="chat.source", choice_keys=[("chat.src_" + s, s) for s in SOURCES],
                                  value="run", scale=2, elem_id="chat-source")
        c["chat_run"] = L.make(gr.Dropdown, label="chat.run", choices=run_choices(ctx), value=None, scale=3,
                               elem_id="chat-run")
        c["chat_load"] = L.make(gr.Button, text="chat.load", variant="primary", scale=1, elem_id="chat-load")
        c["chat_unload"] = L.make(gr.Button, text="chat.unload", scale=1, elem_id="chat-unload")
    c["chat_status"] = gr.Markdown(elem_id="chat-status")
    with gr.Row():
        c["chat_system"] = L.make(gr.Textbox, label="chat.system", placeholder="chat.system_ph", scale=4, lines=1,
                                    elem_id="chat-system")
        c["chat_compare"] = L.make(gr.Checkbox, label="chat.compare", info="chat.compare_info", value=False, scale=1,
                                   elem_id="chat-compare")
    with L.accordion("chat.settings", open=False, elem_id="chat-settings-acc"):
        with gr.Row():
            c["gen_max_new_tokens"] = L.make(gr.Slider, label="chat.max_new_tokens", minimum=1, maximum=2048,
                                             value=256, step=1, elem_id="chat-max-new-tokens")
            c["gen_temperature"] = L.make(gr.Slider, label="chat.temperature", minimum=0, maximum=2, value=0.7,
                                          step=0.05, elem_id="chat-temperature")
            c["gen_top_p"] = L.make(gr.Slider, label="chat.top_p", minimum=0.05, maximum=1, value=0.9, step=0.05,
                                    elem_id="chat-top-p")
        with gr.Row():
            c["gen_top_k"] = L.make(gr.Slider, label="chat.top_k", minimum=0, maximum=200, value=50, step=1,
                                    elem_id="chat-top-k")
            c["gen_repetition_penalty"] = L.make(gr.Slider, label="chat.repetition_penalty", minimum=0.5, maximum=2,
                                                 value=1.1, step=0.05, elem_id="chat-repetition-penalty")
            c["gen_greedy"] = L.make(gr.Checkbox, label="chat.greedy", value=False, elem_id="chat-greedy")
    with gr.Row():
        c["chat_base_box"] = L.make(gr.Chatbot, label="chat.base", visible=False, height=420, elem_id="chat-base")
        c["chat_box"] = L.make(gr.Chatbot, label="chat.tuned", height=420, elem_id="chat-tuned")
    with gr.Row():
        c["chat_input"] = L.make(gr.Textbox, label="chat.message", placeholder="chat.message_ph", scale=5, lines=2,
                                 elem_id="chat-input")
        with gr.Column(scale=1, min_width=120):
            c["chat_send"] = L.make(gr.Button, text="chat.send", variant="primary", elem_id="chat-send")
            c["chat_clear"] = L.make(gr.Button, text="chat.clear", elem_id="chat-clear")
    c["chat_history"] = gr.State([])
    c["chat_base_history"] = gr.State([])
    page.status_lines.append(c["chat_status"])
    return c


def wire(ctx: AppContext, page: Page, c: dict[str, Any]) -> None:
    lang = page.lang
    f = page.form_fields  # the base model is the one picked on the Parameters tab

    def on_tab(run_dir: str | None) -> Any:
        return gr.update(**refreshed_run_picker(ctx, run_dir))

    page.tabs["chat"].select(on_tab, c["chat_run"], c["chat_run"])

    def on_load(source: str, run_dir: str | None, model_source: str, model_path: str, language: str):
        yield t("chat.loading", language)
        base = "default" if model_source == "builtin" else (model_path or "").strip() or "default"
        try:
            base = base if base == "default" else str(ctx.page_path(base, "model_name_or_path"))
            run_dir = str(ctx.page_path(run_dir, "run", write=True)) if run_dir and source == "run" else run_dir
            loaded = load_model(source, run_dir, base)
        except Exception as exc:  # noqa: BLE001 - a model that will not load is reported on the page
            yield error_text(exc, language)
            return
        adapter = t("chat.with_adapter", language) if session().has_adapter else ""
        yield t("chat.loaded", language, model=loaded) + adapter

    # Named endpoints: bench/load_chat.py drives the page through them with gradio_client.
    c["chat_load"].click(on_load, [c["chat_source"], c["chat_run"], f["model_source"], f["model_path"], lang],
                         c["chat_status"], api_name="chat_load")

    def on_unload(language: str) -> str:
        session().unload()
        return t("chat.unloaded", language)

    c["chat_unload"].click(on_unload, lang, c["chat_status"])
    c["chat_compare"].change(lambda on: gr.update(visible=bool(on)), c["chat_compare"], c["chat_base_box"])

    def on_send(message: str, history: list[dict], base_history: list[dict], system: str, compare: bool,
                max_new_tokens: Any, temperature: Any, top_p: Any, top_k: Any, repetition_penalty: Any,
                greedy: bool, language: str):
        if not (message or "").strip():
            yield {c["chat_status"]: t("chat.empty", language)}
            return
        if session().model is None:
            yield {c["chat_status"]: t("chat.load_first", language)}
            return
        try:
            settings = generation_settings(max_new_tokens, temperature, top_p, top_k, repetition_penalty, greedy)
            for tuned, base in respond(message, history or [], base_history or [], system or "", settings,
                                       bool(compare)):
                yield {c["chat_box"]: tuned, c["chat_base_box"]: base, c["chat_history"]: tuned,
                       c["chat_base_history"]: base, c["chat_input"]: ""}
        except Exception as exc:  # noqa: BLE001 - shown beside the chat, never a traceback
            yield {c["chat_status"]: error_text(exc, language)}

    send_inputs = [c["chat_input"], c["chat_history"], c["chat_base_history"], c["chat_system"], c["chat_compare"],
                   c["gen_max_new_tokens"], c["gen_temperature"], c["gen_top_p"], c["gen_top_k"],
                   c["gen_repetition_penalty"], c["gen_greedy"], lang]
    send_outputs = [c["chat_box"], c["chat_base_box"], c["chat_history"], c["chat_base_history"], c["chat_input"],
                    c["chat_status"]]
    c["chat_send"].click(on_send, send_inputs, send_outputs, api_name="chat_send")
    c["chat_input"].submit(on_send, send_inputs, send_outputs)
    conversation = [c["chat_box"], c["chat_base_box"], c["chat_history"], c["chat_base_history"]]

    def on_clear() -> dict[Any, Any]:
        return {component: [] for component in conversation}

    c["chat_clear"].click(on_clear, None, conversation)
