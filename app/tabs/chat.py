"""对话 Chat: talk to a finished run (or a base model), streaming, with the base and the tuned
answer side by side; and the arena: two to four models answer the same question in shuffled,
unnamed columns, the reviewer votes, the names are shown and the vote saved (trainer_core.arena).

Chat is interactive, so it runs in the UI process through the core's `ChatSession`; torch is
imported only when a model is loaded here. One model is held for the whole workbench, and one
set of arena contestants; loading either unloads the other, so their weights are never held twice.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from app.choices import dataset_choices, dataset_names, refreshed_run_picker, run_choices
from app.context import AppContext
from app.i18n import t
from app.jobview import error_text
from app.page import Page
from app.ui_kit import Labels
from trainer_core import arena
from trainer_core.chat import ChatSession, GenerationSettings
from trainer_core.errors import UserError

SOURCES = ("run", "base")
BASE_PICK = "base"  # the arena picker's value for the Parameters tab's base model
_SESSION = ChatSession()  # holds no model until one is loaded (no torch import before that)
_ARENA = arena.ArenaModels()  # the arena's contestants, none until loaded


def session() -> ChatSession:
    return _SESSION


def arena_models() -> arena.ArenaModels:
    return _ARENA


def load_model(source: str, run_dir: str | None, base_model: str) -> str:
    """Load a run's adapter (or full model) or a base model; returns what was loaded."""
    if source == "run":
        if not run_dir:
            raise UserError("pick a finished run first")
        arena_models().unload()  # one set of weights in memory at a time
        return session().load_run(run_dir, log=lambda _: None)
    arena_models().unload()
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


# ---- the arena -----------------------------------------------------------------------------

def arena_choices(ctx: AppContext, lang: str) -> list[tuple[str, str]]:
    """What may compete: the Parameters tab's base model and every finished run."""
    return [(t("arena.base_choice", lang), BASE_PICK), *run_choices(ctx)]


def contestants(ctx: AppContext, picks: list[str], base_model: str) -> list[arena.Contestant]:
    """The picked contestants (the base, runs), each path checked as the page checks paths."""
    if not arena.MIN_CONTESTANTS <= len(picks) <= arena.MAX_CONTESTANTS:
        raise UserError(f"pick {arena.MIN_CONTESTANTS} to {arena.MAX_CONTESTANTS} models for the arena "
                        f"({len(picks)} picked)")
    chosen = []
    for pick in picks:
        if pick == BASE_PICK:
            base = base_model if base_model == "default" else str(ctx.page_path(base_model, "model_name_or_path"))
            chosen.append(arena.base_contestant(base))
        else:
            chosen.append(arena.run_contestant(ctx.page_path(pick, "run")))
    return chosen


def ask_arena(question: str, system: str, settings: GenerationSettings,
              rng: random.Random) -> Iterator[tuple[list[str], list[str]]]:
    """(models in the shown order, their answers so far): the loaded contestants in a shuffled
    order, each answering in turn, streamed."""
    models = arena_models()
    if not models.names:
        raise UserError("load the arena's models first")
    order = list(models.names)
    rng.shuffle(order)
    answers = [""] * len(order)
    yield order, list(answers)
    for n, name in enumerate(order):
        for text in models.stream(name, question, system, settings):
            answers[n] = text
            yield order, list(answers)


def vote_dir(ctx: AppContext, dataset_dir: str) -> Path:
    """The data folder the votes go to: the Data tab's, where the page may write."""
    return ctx.page_path(dataset_dir or str(ctx.data_dir), "dataset_dir", write=True)


def reveal_text(round_: dict, vote: str, saved_to: Path, pairs: int, lang: str) -> str:
    names = " · ".join(t("arena.revealed_one", lang, label=label, model=model)
                       for label, model in zip(arena.LETTERS, round_["models"]))
    return "\n\n".join([t("arena.revealed", lang, names=names), t(f"arena.vote_{vote.lower()}", lang),
                         t("arena.saved", lang, path=str(saved_to), pairs=pairs, dataset=arena.DATASET_NAME)])


def tally_markdown(data_dir: Path | None, lang: str) -> str:
    """The tally as a Markdown table (win rate of the first model, ties and both-bad left out)."""
    if data_dir is None:
        return ""
    votes, problems = arena.read_votes(data_dir)
    rows = arena.tally(votes)
    if not rows:
        return t("arena.no_votes", lang, path=str(data_dir / arena.VOTES_FILE))
    head = [t(f"arena.col_{k}", lang) for k in ("first", "second", "first_wins", "second_wins", "ties", "both_bad",
                                                 "rate", "interval")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rate = "—" if r.win_rate is None else f"{r.win_rate:.0%}"
        interval = "—" if r.interval is None else f"{r.interval[0]:.0%} – {r.interval[1]:.0%}"
        lines.append(f"| {r.first} | {r.second} | {r.first_wins} | {r.second_wins} | {r.ties} | {r.both_bad} | "
                     f"{rate} | {interval} |")
    notes = [t("arena.tally_note", lang, votes=len(votes))]
    if problems:
        notes.append(t("arena.log_problems", lang, n=len(problems), first=problems[0]))
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes)


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
    build_arena(ctx, L, page, c)
    return c


def build_arena(ctx: AppContext, L: Labels, page: Page, c: dict[str, Any]) -> None:
    with L.accordion("arena.title", open=False, elem_id="arena-acc"):
        L.markdown("arena.intro")
        with gr.Row():
            c["arena_picks"] = L.make(gr.Dropdown, label="arena.contestants", info="arena.contestants_info",
                                      choices=arena_choices(ctx, L.lang), value=[], multiselect=True,
                                      max_choices=arena.MAX_CONTESTANTS, scale=4, elem_id="arena-contestants")
            c["arena_load"] = L.make(gr.Button, text="arena.load", variant="primary", scale=1, elem_id="arena-load")
        c["arena_status"] = gr.Markdown(elem_id="arena-status")
        with gr.Row():
            c["arena_question"] = L.make(gr.Textbox, label="arena.question", placeholder="arena.question_ph",
                                         lines=2, scale=5, elem_id="arena-question")
            c["arena_send"] = L.make(gr.Button, text="arena.send", variant="primary", scale=1, elem_id="arena-send")
        with gr.Row(elem_id="arena-answers"):
            c["arena_answers"] = [
                L.make(gr.Textbox, label=f"arena.model_{x.lower()}", interactive=False, lines=8,
                       visible=n < arena.MIN_CONTESTANTS, elem_id=f"arena-answer-{x.lower()}")
                for n, x in enumerate(arena.LETTERS)]
        with gr.Row():
            c["arena_votes"] = {
                x: L.make(gr.Button, text=f"arena.better_{x.lower()}", visible=n < arena.MIN_CONTESTANTS,
                          elem_id=f"arena-vote-{x.lower()}") for n, x in enumerate(arena.LETTERS)}
            c["arena_votes"]["tie"] = L.make(gr.Button, text="arena.tie", elem_id="arena-vote-tie")
            c["arena_votes"]["bad"] = L.make(gr.Button, text="arena.bad", elem_id="arena-vote-bad")
        with gr.Row():
            c["arena_correction"] = L.make(gr.Textbox, label="arena.correction", info="arena.correction_info",
                                           lines=2, scale=4, elem_id="arena-correction")
            c["arena_reviewer"] = L.make(gr.Textbox, label="arena.reviewer", scale=1, elem_id="arena-reviewer")
        c["arena_reveal"] = gr.Markdown(elem_id="arena-reveal")
        c["arena_tally"] = gr.Markdown(elem_id="arena-tally")
        c["arena_train_dpo"] = L.make(gr.Button, text="arena.train_dpo", elem_id="arena-train-dpo")
    c["arena_round"] = gr.State(None)  # the question, the models in the shown order, their answers, voted?
    page.status_lines += [c["arena_status"], c["arena_reveal"]]


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

    wire_arena(ctx, page, c)


def wire_arena(ctx: AppContext, page: Page, c: dict[str, Any]) -> None:
    lang, f = page.lang, page.form_fields
    answers, votes = c["arena_answers"], c["arena_votes"]

    def tally_for(dataset_dir: str, language: str) -> str:
        try:
            return tally_markdown(vote_dir(ctx, dataset_dir), language)
        except UserError as exc:
            return error_text(exc, language)

    def on_tab(picks: list[str] | None, dataset_dir: str, language: str) -> tuple[Any, str]:
        choices = arena_choices(ctx, language)
        kept = [p for p in picks or [] if p in [v for _, v in choices]]
        return gr.update(choices=choices, value=kept), tally_for(dataset_dir, language)

    arena_refresh = ([c["arena_picks"], page.dataset_dir, lang], [c["arena_picks"], c["arena_tally"]])
    page.tabs["chat"].select(on_tab, *arena_refresh, show_progress="hidden")
    lang.change(on_tab, *arena_refresh, show_progress="hidden")  # the base's label and the table in the language

    def on_load(picks: list[str] | None, model_source: str, model_path: str, language: str):
        yield t("arena.loading", language)
        base = "default" if model_source == "builtin" else (model_path or "").strip() or "default"
        had_chat = session().model is not None
        try:
            chosen = contestants(ctx, list(picks or []), base)
            session().unload()  # one set of weights in memory at a time
            names = arena_models().load(chosen, log=lambda _: None)
        except Exception as exc:  # noqa: BLE001 - a model that will not load is reported on the page
            yield error_text(exc, language)
            return
        copies = len(arena_models().sessions)
        text = t("arena.loaded", language, n=len(names), copies=copies)
        yield text + (t("arena.chat_unloaded", language) if had_chat else "")

    c["arena_load"].click(on_load, [c["arena_picks"], f["model_source"], f["model_path"], lang], c["arena_status"])

    def columns(texts: list[str]) -> dict[Any, Any]:
        """The answer columns (one per contestant, the texts so far) and their vote buttons."""
        n = max(len(texts), arena.MIN_CONTESTANTS)
        padded = texts + [""] * (len(answers) - len(texts))
        return {**{box: gr.update(value=text, visible=i < n) for i, (box, text) in enumerate(zip(answers, padded))},
                **{votes[x]: gr.update(visible=i < n) for i, x in enumerate(arena.LETTERS)}}

    def on_send(question: str, system: str, max_new_tokens: Any, temperature: Any, top_p: Any, top_k: Any,
                repetition_penalty: Any, greedy: bool, language: str):
        if not (question or "").strip():
            yield {c["arena_status"]: t("arena.empty", language)}
            return
        if not arena_models().names:
            yield {c["arena_status"]: t("arena.load_first", language)}
            return
        order: list[str] = []
        texts: list[str] = []
        try:
            settings = generation_settings(max_new_tokens, temperature, top_p, top_k, repetition_penalty, greedy)
            for shown_order, texts in ask_arena(question, system or "", settings, random.Random()):
                order = shown_order  # the same every time: kept for the round below
                yield {**columns(texts), c["arena_round"]: None, c["arena_reveal"]: "",
                       c["arena_status"]: t("arena.answering", language)}
        except Exception as exc:  # noqa: BLE001 - shown beside the arena, never a traceback
            yield {c["arena_status"]: error_text(exc, language)}
            return
        round_ = {"question": question.strip(), "system": (system or "").strip(), "models": order,
                  "answers": texts, "voted": False}
        # The answers once more, whole: a page can miss the last streamed pieces of a generator that
        # ends right after them (seen on this Gradio: 1 in 8 answers short of its end), and the
        # reviewer must vote on exactly what is recorded.
        yield {**columns(texts), c["arena_round"]: round_, c["arena_status"]: t("arena.vote_now", language)}

    send_outputs = [*answers, *votes.values(), c["arena_round"], c["arena_reveal"], c["arena_status"]]
    c["arena_send"].click(on_send, [c["arena_question"], c["chat_system"], c["gen_max_new_tokens"],
                                    c["gen_temperature"], c["gen_top_p"], c["gen_top_k"],
                                    c["gen_repetition_penalty"], c["gen_greedy"], lang], send_outputs)

    def voter(vote: str):
        def on_vote(round_: dict | None, correction: str, reviewer: str, dataset_dir: str,
                    language: str) -> dict[Any, Any]:
            if not round_:
                return {c["arena_status"]: t("arena.ask_first", language)}
            if round_.get("voted"):
                return {c["arena_status"]: t("arena.voted_already", language)}
            try:
                folder = vote_dir(ctx, dataset_dir)
                arena.record_vote(folder, round_["question"], round_["models"], round_["answers"], vote,
                                  system=round_["system"], correction=correction, reviewer=reviewer)
                pairs = len((folder / arena.PAIRS_FILE).read_text(encoding="utf-8").splitlines())
            except UserError as exc:
                return {c["arena_status"]: error_text(exc, language)}
            return {c["arena_round"]: {**round_, "voted": True}, c["arena_correction"]: "",
                    c["arena_reveal"]: reveal_text(round_, vote, folder / arena.VOTES_FILE, pairs, language),
                    c["arena_status"]: t("arena.thanks", language),
                    c["arena_tally"]: tally_markdown(folder, language)}
        return on_vote

    vote_outputs = [c["arena_round"], c["arena_correction"], c["arena_reveal"], c["arena_status"], c["arena_tally"]]
    for vote, button in votes.items():
        button.click(voter(vote), [c["arena_round"], c["arena_correction"], c["arena_reviewer"], page.dataset_dir,
                                   lang], vote_outputs)

    def on_train_dpo(dataset_dir: str, language: str) -> dict[Any, Any]:
        """The Parameters tab with stage dpo and the vote pairs as the training data."""
        try:
            folder = vote_dir(ctx, dataset_dir)
        except UserError as exc:
            return {c["arena_status"]: error_text(exc, language)}
        if arena.DATASET_NAME not in dataset_names(folder):
            return {c["arena_status"]: t("arena.no_pairs_yet", language, dataset=arena.DATASET_NAME)}
        return {page.datasets: gr.update(choices=dataset_choices(folder), value=[arena.DATASET_NAME]),
                page.weights: "", f["stage"]: "dpo", page.tab_set: gr.Tabs(selected="params"),
                c["arena_status"]: t("arena.dpo_ready", language, dataset=arena.DATASET_NAME)}

    c["arena_train_dpo"].click(on_train_dpo, [page.dataset_dir, lang],
                               [page.datasets, page.weights, f["stage"], page.tab_set, c["arena_status"]])
