"""数据 Data: pick datasets, look at them as conversations, see their statistics and problems,
and upload a new file into the data folder.

Reading, validation and statistics are the core's (`read_dataset`, `read_file`, `text_stats`,
the tokenizer's encode functions); this module turns their results into tables, pages of chat
bubbles and a histogram, and keeps uploads inside the data folder.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import threading
import time
import unicodedata
from pathlib import Path, PurePosixPath
from typing import Any

import gradio as gr

from app.choices import dataset_choices
from app.context import AppContext
from app.form import MIX_INPUTS, as_values, composition, composition_table, field_info, mix_problem
from app.i18n import t, translate
from app.jobview import error_text
from app.page import Page
from app.ui_kit import Labels
from trainer_core.config import MIX_STRATEGIES
from trainer_core.data import (
    EXTENSIONS,
    FORMATTINGS,
    dataset_outside,
    load_dataset_info,
    message_text,
    preference_kind,
    preference_stats,
    read_dataset,
    read_file,
    read_preference_dataset,
    text_stats,
)
from trainer_core.errors import Problem, UserError

PAGE_SIZE = 5
MAX_SHOWN_CHARS = 4000  # one message in the preview; the rest is elided, the file is untouched
TOKEN_RECORDS_LIMIT = 5000  # token statistics on at most this many records (a sample of big sets)


# ---- the registry --------------------------------------------------------------------------







def formatting_of(name: str, dataset_dir: str | Path) -> str:
    return load_dataset_info(dataset_dir).get(name, {}).get("formatting", "alpaca")


def reading_stage(formatting: str, stage: str) -> str:
    """Read each format for what it can be used for: text for pt, mcq for evaluation."""
    if formatting == "text":
        return "pt"
    if formatting == "mcq":
        return "mcq"
    return stage if stage in ("sft", "pt") else "sft"


def inspect_dataset(name: str, dataset_dir: str, stage: str, roots: list[Path] | None = None,
                    progress: Any = None) -> tuple[list[dict], list[Problem], dict | None]:
    """Read a dataset for the page; `roots`: the folders its file must lie in (AppContext.data_roots).
    Returns (examples, problems, large): a dataset past the Arrow path's threshold is checked in full
    by worker processes without being held (`progress(done_bytes, total_bytes, shards_done, shards)`
    follows it), its examples are a sample spread over it, and `large` says how many records were
    checked, how many are valid, and every problem's count by kind."""
    from trainer_core.arrow_data import check_large, use_arrow

    outside = dataset_outside([name], dataset_dir, roots) if roots is not None else []
    if outside:
        raise UserError(outside[0])
    if preference_kind(load_dataset_info(dataset_dir).get(name, {})):  # pairs or KTO: read for dpo / kto
        records, problems = read_preference_dataset(name, dataset_dir)
        return records, problems, None
    stage = reading_stage(formatting_of(name, dataset_dir), stage)
    if stage != "mcq" and use_arrow("auto", [name], dataset_dir, stage):
        large = check_large(name, dataset_dir, stage, progress=progress)
        return large.sample, large.problems, {"records": large.records, "valid": large.valid,
                                              "sampled": len(large.sample), "totals": large.totals}
    examples, problems = read_dataset(name, dataset_dir, stage)
    return examples, problems, None


# ---- rendering -----------------------------------------------------------------------------

def _clip(text: str) -> str:
    if len(text) > MAX_SHOWN_CHARS:
        text = text[:MAX_SHOWN_CHARS] + f" … (+{len(text) - MAX_SHOWN_CHARS:,})"
    return html.escape(text)


def _bubbles(messages: list[dict], lang: str) -> str:
    return "".join(
        f"<div class='qh-msg qh-{html.escape(m['role'])}'><div class='qh-role'>{t('role.' + m['role'], lang)}"
        f"</div><div class='qh-text'>{_clip(message_text(m))}</div></div>"
        for m in messages)


def render_example(example: dict, lang: str) -> str:
    """One record as chat bubbles (conversations), a preference pair side by side (the prompt
    above, the chosen answer beside the rejected one; a KTO answer with its label), a block of
    text, or a question with options."""
    source = html.escape(str(example.get("source", "")))
    head = f"<div class='qh-rec-head'>#{example.get('index', '?')} · {source}</div>"
    if "messages" in example:
        return f"<div class='qh-rec'>{head}{_bubbles(example['messages'], lang)}</div>"
    if "chosen" in example:
        sides = "".join(f"<div class='qh-side qh-{side}'><div class='qh-side-head'>{t('data.' + side, lang)}</div>"
                        f"{_bubbles(example[side], lang)}</div>" for side in ("chosen", "rejected"))
        return f"<div class='qh-rec'>{head}{_bubbles(example['prompt'], lang)}<div class='qh-pair'>{sides}</div></div>"
    if "completion" in example:
        label = "desirable" if example["label"] else "undesirable"
        return (f"<div class='qh-rec'>{head}{_bubbles(example['prompt'], lang)}<div class='qh-side qh-{label}'>"
                f"<div class='qh-side-head'>{t('data.' + label, lang)}</div>"
                f"{_bubbles(example['completion'], lang)}</div></div>")
    if "question" in example:
        options = "".join(
            f"<li class='{'qh-answer' if letter in example.get('answer', '') else ''}'>{letter}. {_clip(text)}</li>"
            for letter, text in example["options"].items())
        subject = f" · {html.escape(example['subject'])}" if example.get("subject") else ""
        return (f"<div class='qh-rec'>{head}<div class='qh-text'>{_clip(example['question'])}{subject}</div>"
                f"<ol class='qh-options'>{options}</ol><div class='qh-role'>{t('data.answer', lang)}: "
                f"{html.escape(example.get('answer', ''))}</div></div>")
    return f"<div class='qh-rec'>{head}<div class='qh-msg qh-doc'><div class='qh-text'>" \
           f"{_clip(example.get('text', ''))}</div></div></div>"


def page_count(total: int, page_size: int = PAGE_SIZE) -> int:
    return max(1, -(-total // page_size))


def render_page(examples: list[dict], page: int, lang: str, page_size: int = PAGE_SIZE) -> tuple[str, int, str]:
    """(HTML of the page, the page number actually shown, "page x / y" text)."""
    pages = page_count(len(examples), page_size)
    page = min(max(1, int(page or 1)), pages)
    if not examples:
        return f"<div class='qh-empty'>{t('data.no_records', lang)}</div>", 1, ""
    shown = examples[(page - 1) * page_size: page * page_size]
    body = "".join(render_example(e, lang) for e in shown)
    return f"<div class='qh-preview'>{body}</div>", page, t("data.page_of", lang, page=page, pages=pages,
                                                             records=len(examples))


def problem_rows(problems: list[Problem]) -> list[list[Any]]:
    """(record, field, problem) rows; a whole-file problem has no record."""
    return [["" if p.record is None else p.record, p.field or "", p.message] for p in problems]


def stats_rows(text: dict, tokens: dict | None, lang: str) -> list[list[Any]]:
    """Metric/value rows from the core's text (and token) statistics, in the reader's language."""
    rows = []
    for key in ("records", "assistant_turns", "mean_assistant_turns", "multi_turn_share", "chars_p50", "chars_p95",
                "chars_max", "duplicates", "empty_answers", "system_share", "total_chars", "multi_answer",
                "subjects", *PREFERENCE_STATS):
        if key in text:
            rows.append([t("stat." + key, lang), _number(text[key], key)])
    if tokens:
        for key in ("tokens_p50", "tokens_p95", "tokens_max", "cutoff_len", "share_over_cutoff", "truncated",
                    "dropped_no_trainable", "samples", "trainable_tokens"):
            if key in tokens:
                rows.append([t("stat." + key, lang), _number(tokens[key], key)])
    return rows


# trainer_core.data.preference_stats's keys, in the order shown (multi_turn_share and records above)
PREFERENCE_STATS = ("chosen_chars_p50", "chosen_chars_p95", "chosen_chars_max", "rejected_chars_p50",
                    "rejected_chars_p95", "rejected_chars_max", "chosen_longer_share", "desirable", "undesirable",
                    "answer_chars_p50", "answer_chars_p95", "answer_chars_max", "duplicate_prompts")


def _number(value: Any, key: str) -> str:
    if isinstance(value, float) and key.endswith("share") or key == "share_over_cutoff":
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# ---- token statistics ----------------------------------------------------------------------

_TOKENIZERS: dict[tuple, Any] = {}  # (model path, template, stage) -> tokenizer; loading costs seconds
# Two inspections at once (the picker and the Inspect button are separate events) load the
# tokenizer once, not twice (the first import of transformers itself: models.import_transformers).
_TOKENIZER_LOCK = threading.Lock()


def tokenizer_for(model: str, template: str, stage: str, trust_remote_code: bool = False) -> Any:
    key = (model, template, stage, trust_remote_code)
    with _TOKENIZER_LOCK:
        return _load_tokenizer(key)


def _load_tokenizer(key: tuple) -> Any:
    from trainer_core.models import load_tokenizer, resolve_model_path
    from trainer_core.tokenization import setup_chat_template

    model, template, stage, trust_remote_code = key
    if key not in _TOKENIZERS:
        tokenizer = load_tokenizer(resolve_model_path(model, log=lambda _: None), trust_remote_code)
        if stage == "sft":
            setup_chat_template(tokenizer, template, log=lambda _: None)
        _TOKENIZERS.clear()  # keep one: a big vocabulary is not free
        _TOKENIZERS[key] = tokenizer
    return _TOKENIZERS[key]


def token_report(examples: list[dict], model: str, template: str, cutoff_len: int,
                 trust_remote_code: bool = False) -> tuple[dict, list[int], list[Problem]]:
    """Token statistics exactly as training tokenizes (same template and cutoff), every record's
    length for the histogram, and the records holding this model's special-token text."""
    from trainer_core.tokenization import encode_pt, encode_sft, special_token_problems

    chat = [e for e in examples if "messages" in e]
    stage = "sft" if chat and len(chat) == len(examples) else "pt"
    sample = examples[:TOKEN_RECORDS_LIMIT]
    tokenizer = tokenizer_for(model, template, stage, trust_remote_code)
    encode = encode_sft if stage == "sft" else encode_pt
    _, stats = encode(sample, tokenizer, int(cutoff_len))
    summary = stats.summary()
    over = sum(1 for n in stats.lengths if n > cutoff_len)
    summary["cutoff_len"] = int(cutoff_len)
    summary["share_over_cutoff"] = over / len(stats.lengths) if stats.lengths else 0.0
    return summary, list(stats.lengths), special_token_problems(examples, tokenizer)


def histogram(lengths: list[int], cutoff_len: int, lang: str) -> Any:
    """Token lengths with the cutoff drawn in; matplotlib is imported only when one is drawn."""
    from matplotlib.figure import Figure

    from app.plots import use_cjk_font

    use_cjk_font()
    figure = Figure(figsize=(6.4, 2.8), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    if lengths:  # bins over the whole axis, so a narrow spread still shows as a visible bar
        ax.hist(lengths, bins=40, range=(0, max(max(lengths), cutoff_len) * 1.05), color="#5b8def")
    ax.axvline(cutoff_len, color="#d9534f", linestyle="--", linewidth=1.5)
    ax.annotate(f"cutoff_len = {cutoff_len}", xy=(cutoff_len, 1), xycoords=("data", "axes fraction"),
                xytext=(4, -12), textcoords="offset points", color="#d9534f", fontsize=9)
    ax.set_title(t("data.hist", lang), fontsize=10)
    ax.set_xlabel(t("data.hist_x", lang))
    ax.set_ylabel(t("data.hist_y", lang))
    return figure


# ---- uploads -------------------------------------------------------------------------------

def safe_upload_name(original: str, data_dir: str | Path) -> Path:
    """Where an uploaded file may go: its bare name (no folders, no '..', no absolute path),
    reduced to letters, digits, CJK, '-', '_' and '.', inside data_dir, never over an existing file."""
    data_dir = Path(data_dir).resolve()
    name = PurePosixPath(str(original).replace("\\", "/")).name
    name = unicodedata.normalize("NFKC", name)
    name = re.sub(r"[^\w.\-]", "_", name).lstrip("._-")
    stem, suffix = os.path.splitext(name)
    suffix = suffix.lower()
    if suffix not in EXTENSIONS:
        raise UserError(f"'{original}': unsupported file type (expected one of {', '.join(EXTENSIONS)})")
    stem = stem[:80] or "upload"
    target = data_dir / f"{stem}{suffix}"
    n = 1
    while target.exists():
        target = data_dir / f"{stem}-{n}{suffix}"
        n += 1
    if target.resolve().parent != data_dir:  # belt and braces: the name above cannot leave the folder
        raise UserError(f"'{original}' would be saved outside the data folder")
    return target


def safe_dataset_name(name: str) -> str:
    name = re.sub(r"[^\w\-]", "_", unicodedata.normalize("NFKC", name or "").strip()).strip("_-")
    if not name:
        raise UserError("give the dataset a name (letters, digits, '_' or '-')")
    return name[:60]


def parse_columns(text: str) -> dict[str, str]:
    """`instruction=问题, output=回答` or a JSON object -> {"instruction": "问题", ...}."""
    text = (text or "").strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            columns = json.loads(text)
        except ValueError as exc:
            raise UserError(f"columns: not valid JSON ({exc})") from None
        if not isinstance(columns, dict):
            raise UserError('columns: write {"instruction": "问题", "output": "回答"}')
        return {str(k): str(v) for k, v in columns.items()}
    columns = {}
    for part in re.split(r"[,，\n]", text):
        if not part.strip():
            continue
        if "=" not in part:
            raise UserError(f"columns: '{part.strip()}' should look like field=column, e.g. instruction=问题")
        key, column = part.split("=", 1)
        columns[key.strip()] = column.strip()
    return columns


def check_upload(path: str, formatting: str, columns_text: str, stage: str,
                 max_bytes: int) -> tuple[list[dict], list[Problem]]:
    """Read an uploaded file as it would be registered: every problem, never a traceback."""
    size = Path(path).stat().st_size
    if size > max_bytes:
        raise UserError(f"the file is {size / 1e6:.1f} MB; the upload limit is {max_bytes / 1e6:.0f} MB")
    return read_file(path, formatting, parse_columns(columns_text), reading_stage(formatting, stage))


def register_upload(path: str, original_name: str, dataset_name: str, formatting: str, columns_text: str,
                    ctx: AppContext, dataset_dir: str | Path) -> tuple[str, Path]:
    """Copy the file into the data folder under a safe name and add it to dataset_info.json."""
    dataset_dir = Path(dataset_dir)
    name = safe_dataset_name(dataset_name)
    columns = parse_columns(columns_text)
    examples, problems = check_upload(path, formatting, columns_text, "sft", ctx.max_upload_bytes)
    if problems:
        raise UserError(f"the file has {len(problems)} problem(s); fix them first (see the table)")
    info_path = dataset_dir / "dataset_info.json"
    registry = json.loads(info_path.read_text(encoding="utf-8-sig")) if info_path.is_file() else {}
    if name in registry:
        raise UserError(f"a dataset named '{name}' exists already; choose another name")
    target = safe_upload_name(original_name, dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    entry: dict[str, Any] = {"file_name": target.name, "formatting": formatting}
    if columns:
        entry["columns"] = columns
    entry["description"] = f"uploaded {time.strftime('%Y-%m-%d %H:%M')} ({len(examples)} records)"
    registry[name] = entry
    tmp = info_path.with_name(f".{info_path.name}.tmp")
    tmp.write_text(json.dumps(registry, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    tmp.replace(info_path)  # atomic: a training job reading the registry never sees half a file
    return name, target


# ---- components ----------------------------------------------------------------------------

def build(ctx: AppContext, L: Labels, page: Page) -> dict[str, Any]:
    """The tab's components by name; the data folder and the training selection go to `page` too."""
    c: dict[str, Any] = {}
    chosen = page.initial_values["datasets"]
    L.markdown("data.intro")
    with gr.Row():
        c["dataset_dir"] = L.make(gr.Textbox, label="data.dir", value=str(ctx.data_dir), scale=4,
                                  elem_id="data-dir")
        c["data_refresh"] = L.make(gr.Button, text="data.refresh", scale=1, elem_id="data-refresh")
    # The training selection; the Parameters and Train tabs read it. The dataset pickers take any
    # value (allow_custom_value): their choices follow the data folder, and an event sent while a
    # new folder's choices are on their way carries the old names, which Gradio would refuse with
    # an error toast; the core names an unknown dataset itself (dataset_info.json, the name).
    c["datasets"] = L.make(gr.Dropdown, label="data.train_sets", info="data.train_sets_info", multiselect=True,
                           choices=dataset_choices(ctx.data_dir), value=chosen, allow_custom_value=True,
                           elem_id="data-datasets")
    # Several datasets: their weights and how they mix, beside what one epoch of the run holds of each.
    with gr.Row(visible=len(chosen) > 1) as c["mix_row"]:
        with gr.Column(scale=2):
            c["weights"] = L.make(gr.Textbox, label="data.weights", placeholder="data.weights_ph",
                                  info_text=field_info("weights", L.lang), value=page.initial_values["weights"],
                                  elem_id="data-weights")
            c["mix_strategy"] = L.make(gr.Dropdown, label="data.mix_strategy", info="data.mix_strategy_info",
                                       choice_keys=[("mix." + s, s) for s in MIX_STRATEGIES],
                                       value=page.initial_values["mix_strategy"], elem_id="data-mix-strategy")
        with gr.Column(scale=3):
            c["mix"] = gr.Markdown(elem_id="data-mix")
    with gr.Row():
        c["inspect_name"] = L.make(gr.Dropdown, label="data.inspect", choices=dataset_choices(ctx.data_dir),
                                   value=chosen[0] if chosen else None, allow_custom_value=True, scale=3,
                                   elem_id="data-inspect")
        c["inspect_btn"] = L.make(gr.Button, text="data.inspect_btn", variant="primary", scale=1,
                                  elem_id="data-inspect-btn")
    with L.accordion("data.upload", open=False, elem_id="data-upload-acc"):
        L.markdown("data.upload_help")
        with gr.Row():
            c["upload_file"] = L.make(gr.File, label="data.upload_file", file_types=list(EXTENSIONS),
                                      elem_id="data-upload-file", scale=2)
            with gr.Column(scale=2):
                c["upload_name"] = L.make(gr.Textbox, label="data.upload_name", elem_id="data-upload-name")
                c["upload_format"] = L.make(gr.Dropdown, label="data.upload_format", choices=list(FORMATTINGS),
                                            value="alpaca", elem_id="data-upload-format")
                c["upload_columns"] = L.make(gr.Textbox, label="data.upload_columns",
                                             placeholder="data.upload_columns_ph", elem_id="data-upload-columns")
        with gr.Row():
            c["upload_check"] = L.make(gr.Button, text="data.upload_check", elem_id="data-upload-check")
            c["upload_register"] = L.make(gr.Button, text="data.upload_register", variant="primary",
                                          elem_id="data-upload-register")
    c["data_msg"] = gr.Markdown(elem_id="data-msg")
    with gr.Row():
        with gr.Column(scale=3):
            c["preview"] = gr.HTML(elem_id="data-preview")
            with gr.Row():
                c["prev_page"] = L.make(gr.Button, text="data.prev", size="sm", elem_id="data-prev")
                c["page"] = L.make(gr.Number, label="data.page", value=1, precision=0, minimum=1, scale=1,
                                   elem_id="data-page")
                c["next_page"] = L.make(gr.Button, text="data.next", size="sm", elem_id="data-next")
                c["page_info"] = gr.Markdown(elem_id="data-page-info")
        with gr.Column(scale=2):
            c["stats"] = L.make(gr.Dataframe, label="data.stats", headers=[t("data.metric", L.lang),
                                                                          t("data.value", L.lang)],
                                value=[], interactive=False, max_height=620, elem_id="data-stats")
            c["hist"] = gr.Plot(show_label=False, elem_id="data-hist")  # titled inside the figure
    c["problems"] = L.make(gr.Dataframe, label="data.problems", headers=[t("data.record", L.lang),
                                                                          t("data.field", L.lang),
                                                                          t("data.problem", L.lang)],
                           value=[], interactive=False, wrap=True, elem_id="data-problems")
    c["examples"] = gr.State([])
    c["data_view"] = gr.State(None)  # what the inspection found, to show it again in another language
    page.datasets, page.dataset_dir = c["datasets"], c["dataset_dir"]
    page.weights, page.mix_strategy = c["weights"], c["mix_strategy"]
    return c


def wire(ctx: AppContext, page: Page, c: dict[str, Any]) -> None:
    lang = page.lang
    f = page.form_fields
    table_outputs = [c["data_msg"], c["examples"], c["preview"], c["page"], c["page_info"], c["stats"], c["hist"],
                     c["problems"], c["data_view"]]

    def present(view: dict, examples: list[dict], page_number: int, language: str) -> dict[Any, Any]:
        """Everything the inspection shows, in `language`, from what was found (the view)."""
        page_html, page_number, page_text = render_page(examples, page_number, language)
        head = view.get("error") or t("data.inspected", language, what=view["what"], records=len(examples),
                                       problems=len(view["problems"]))
        large = view.get("large")
        if large and not view.get("error"):  # checked in full by the Arrow path, shown from a sample
            head = t("data.inspected_large", language, what=view["what"], records=f"{large['records']:,}",
                     valid=f"{large['valid']:,}", problems=f"{sum(large['totals'].values()):,}",
                     sampled=f"{large['sampled']:,}")
            head += "".join(f"\n- {n:,} × {translate(kind, language)}" for kind, n in large["totals"].items())
        if view.get("token_error"):
            head += "\n\n" + t("data.no_tokens", language) + " " + view["token_error"]
        rows = stats_rows(view["text"], view.get("tokens"), language)
        figure = histogram(view["lengths"], view["cutoff"], language) if view.get("lengths") else None
        return {c["data_msg"]: head, c["examples"]: examples, c["preview"]: page_html, c["page"]: page_number,
                c["page_info"]: page_text,
                c["stats"]: gr.update(value=rows, headers=[t("data.metric", language), t("data.value", language)]),
                c["hist"]: figure,
                c["problems"]: gr.update(value=problem_rows(view["problems"]),
                                         headers=[t("data.record", language), t("data.field", language),
                                                  t("data.problem", language)]),
                c["data_view"]: view}

    def failed(exc: Exception, language: str) -> dict[Any, Any]:
        return present({"what": "", "problems": [], "text": {}, "error": error_text(exc, language)}, [], 1, language)

    def show(examples: list[dict], problems: list[Problem], what: str, language: str, model: str, template: str,
             cutoff_len: Any, trust: bool, with_tokens: bool = True, large: dict | None = None):
        """Yield twice: character statistics at once, token statistics when the tokenizer is done."""
        preference = bool(examples) and "prompt" in examples[0]
        stats = (preference_stats if preference else text_stats)(examples) if examples else {"records": 0}
        view: dict[str, Any] = {"what": what, "problems": problems, "large": large, "text": stats}
        first = present(view, examples, 1, language)
        yield first
        # Token statistics are those of SFT samples (trainer_core.planner): none for questions or pairs.
        if not with_tokens or not examples or preference or any("question" in e for e in examples):
            return
        try:
            cutoff = int(cutoff_len or 1024)
            tokens, lengths, special = token_report(examples, model, template, cutoff, bool(trust))
            view = {**view, "tokens": tokens, "lengths": lengths, "cutoff": cutoff,
                    "problems": [*problems, *special]}
        except Exception as exc:  # noqa: BLE001 - a tokenizer that will not load is reported, not raised
            view = {**view, "token_error": error_text(exc, language)}
        shown = present(view, examples, 1, language)
        if shown[c["data_msg"]] == first[c["data_msg"]]:  # the same line: leave what a later click wrote there
            del shown[c["data_msg"]]
        yield shown

    def on_language(view: dict | None, examples: list[dict], page_number: Any, language: str) -> dict[Any, Any]:
        if not view:
            return {c["data_view"]: gr.update()}  # nothing changes (an empty dict reads as a value)
        return present(view, examples, int(page_number or 1), language)

    lang.change(on_language, [c["data_view"], c["examples"], c["page"], lang], table_outputs,
                show_progress="hidden")

    def model_of(source: str, path: str) -> str:
        if source == "builtin" or not (path or "").strip():
            return "default"
        return str(ctx.page_path(path, "model_name_or_path"))

    model_inputs = [f["model_source"], f["model_path"], f["template"], f["cutoff_len"], f["trust_remote_code"]]

    # with_tokens is keyword-only: the event's inputs fill the positional parameters, on_open sets it.
    def on_inspect(name: str, dataset_dir: str, stage: str, language: str, source: str, path: str, template: str,
                   cutoff_len: Any, trust: bool, *, with_tokens: bool = True, progress: Any = gr.Progress()):
        if not name:
            yield {c["data_msg"]: t("data.pick_one", language)}
            return

        def checking(done: int, total: int, shards_done: int, shards: int) -> None:
            """A large dataset's check, shown as the page's progress bar."""
            progress(done / max(1, total), desc=t("data.checking_large", language, what=name, done=shards_done,
                                                  shards=shards))

        try:
            examples, problems, large = inspect_dataset(name, str(ctx.page_path(dataset_dir, "dataset_dir")), stage,
                                                        ctx.data_roots(), progress=checking)
            model = model_of(source, path)
        except Exception as exc:  # noqa: BLE001 - shown on the page, never a traceback
            yield failed(exc, language)
            return
        yield from show(examples, problems, name, language, model, template, cutoff_len, trust, with_tokens, large)

    inspect_inputs = [c["inspect_name"], c["dataset_dir"], f["stage"], lang, *model_inputs]
    c["inspect_btn"].click(on_inspect, inspect_inputs, table_outputs)
    # One inspection per pick (`input` fires twice per pick), and the latest pick wins: one made while
    # token statistics are computed runs after them (the default would drop it, leaving the picker
    # and the preview showing different datasets).
    c["inspect_name"].select(on_inspect, inspect_inputs, table_outputs, trigger_mode="always_last")

    def on_open(*args: Any):
        """A fresh page shows the first dataset at once; token statistics wait for a click, since
        they load the tokenizer (and transformers) into this process."""
        yield from on_inspect(*args, with_tokens=False)

    page.load_events.append((on_open, inspect_inputs, table_outputs))

    def on_page(examples: list[dict], page_number: Any, step: int, language: str) -> dict[Any, Any]:
        page_html, shown, text = render_page(examples, int(page_number or 1) + step, language)
        return {c["preview"]: page_html, c["page"]: shown, c["page_info"]: text}

    page_outputs = [c["preview"], c["page"], c["page_info"]]
    c["prev_page"].click(lambda e, p, lg: on_page(e, p, -1, lg), [c["examples"], c["page"], lang], page_outputs)
    c["next_page"].click(lambda e, p, lg: on_page(e, p, 1, lg), [c["examples"], c["page"], lang], page_outputs)
    c["page"].submit(lambda e, p, lg: on_page(e, p, 0, lg), [c["examples"], c["page"], lang], page_outputs)

    def on_refresh(dataset_dir: str, chosen: list[str], inspected: str | None, language: str) -> dict[Any, Any]:
        try:
            folder = ctx.page_path(dataset_dir, "dataset_dir")
        except UserError as exc:
            return {c["datasets"]: gr.update(choices=[], value=[]),
                    c["inspect_name"]: gr.update(choices=[], value=None), c["data_msg"]: error_text(exc, language)}
        choices = dataset_choices(folder)
        names = [name for _, name in choices]
        message = "" if choices else t("data.no_registry", language, path=folder / "dataset_info.json")
        return {c["datasets"]: gr.update(choices=choices, value=[n for n in chosen or [] if n in names]),
                c["inspect_name"]: gr.update(choices=choices, value=inspected if inspected in names else None),
                c["data_msg"]: message}

    refresh_outputs = [c["datasets"], c["inspect_name"], c["data_msg"]]
    c["data_refresh"].click(on_refresh, [c["dataset_dir"], c["datasets"], c["inspect_name"], lang], refresh_outputs,
                            api_name="data_refresh")
    c["dataset_dir"].submit(on_refresh, [c["dataset_dir"], c["datasets"], c["inspect_name"], lang], refresh_outputs)

    def on_mix(*args: Any) -> dict[Any, Any]:
        """The weights' problem under their field, and the training split's composition (the core's
        own count, as the run will mix) beside them; shown while several datasets are picked."""
        *rest, language = args
        values = as_values(rest)
        several = len(values["datasets"] or []) > 1
        problem = mix_problem(values) if several else None
        shown = ""
        if several and not problem:
            try:
                shown = composition_table(composition(values, ctx), language)
            except Exception as exc:  # noqa: BLE001 - what keeps the run from mixing them, never a traceback
                shown = error_text(exc, language)
        return {c["mix_row"]: gr.update(visible=several),
                c["weights"]: gr.update(info=field_info("weights", language, problem)), c["mix"]: shown}

    mix_inputs = [*page.form_inputs(), lang]
    mix_outputs = [c["mix_row"], c["weights"], c["mix"]]
    mix_triggers = [c["datasets"].change, c["weights"].change, c["mix_strategy"].change, c["dataset_dir"].submit,
                    c["data_refresh"].click, lang.change, *(f[key].change for key in MIX_INPUTS)]
    gr.on(mix_triggers, on_mix, mix_inputs, mix_outputs, trigger_mode="always_last", show_progress="hidden")
    page.load_events.append((on_mix, mix_inputs, mix_outputs))

    def on_file(file: str | None) -> dict[Any, Any]:
        if not file:
            return {c["upload_name"]: gr.update()}  # nothing changes (an empty dict reads as a value)
        stem = Path(file).stem
        changes = {c["upload_name"]: safe_dataset_name(stem) if re.search(r"\w", stem) else "upload"}
        if Path(file).suffix.lower() == ".txt":
            changes[c["upload_format"]] = "text"
        return changes

    c["upload_file"].upload(on_file, c["upload_file"], [c["upload_name"], c["upload_format"]])

    def on_check(file: str | None, formatting: str, columns: str, stage: str, language: str, source: str, path: str,
                 template: str, cutoff_len: Any, trust: bool):
        if not file:
            yield {c["data_msg"]: t("data.no_file", language)}
            return
        try:
            examples, problems = check_upload(file, formatting, columns, stage, ctx.max_upload_bytes)
            model = model_of(source, path)
        except Exception as exc:  # noqa: BLE001
            yield failed(exc, language)
            return
        yield from show(examples, problems, Path(file).name, language, model, template, cutoff_len, trust)

    upload_inputs = [c["upload_file"], c["upload_format"], c["upload_columns"], f["stage"], lang, *model_inputs]
    checking = c["upload_check"].click(on_check, upload_inputs, table_outputs)

    def on_register(file: str | None, name: str, formatting: str, columns: str, dataset_dir: str,
                    chosen: list[str], language: str) -> dict[Any, Any]:
        if not file:
            return {c["data_msg"]: t("data.no_file", language)}
        try:
            folder = ctx.page_path(dataset_dir, "dataset_dir", write=True)
            registered, target = register_upload(file, Path(file).name, name, formatting, columns, ctx, folder)
        except Exception as exc:  # noqa: BLE001
            return {c["data_msg"]: error_text(exc, language)}
        choices = dataset_choices(folder)
        return {c["data_msg"]: t("data.registered", language, name=registered, path=target),
                c["datasets"]: gr.update(choices=choices, value=chosen),
                c["inspect_name"]: gr.update(choices=choices, value=registered)}

    c["upload_register"].click(on_register, [c["upload_file"], c["upload_name"], c["upload_format"],
                                             c["upload_columns"], c["dataset_dir"], c["datasets"], lang],
                               [c["data_msg"], c["datasets"], c["inspect_name"]],
                               cancels=[checking])  # a check's late token statistics would hide the outcome
