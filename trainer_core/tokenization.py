"""Turn examples into token ids and labels.

SFT: the conversation is rendered with the model's chat template once; every assistant turn
(its content and its end-of-turn token) is trainable, every other token gets label -100.
PT: documents are joined with eos and cut into cutoff_len blocks.
Results are cached by a fingerprint of the data, the tokenizer and the settings, so a second
run on the same data loads them instead of tokenizing again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer_core.errors import Problem, UserError

IGNORE_INDEX = -100
CACHE_VERSION = "2"  # 2: EncodeStats.system_dropped

# Fallback templates for tokenizers that ship none (Jinja, the same dialect as HF chat templates).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}" + CHATML
)
LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
TEMPLATES = {"chatml": CHATML, "qwen": QWEN, "llama3": LLAMA3}


def setup_chat_template(tokenizer: Any, template: str, log=print) -> str:
    """Choose the chat template and set it on the tokenizer, so the saved adapter and the chat
    use the very template the model was trained with. Returns the name used."""
    if template == "auto":
        if getattr(tokenizer, "chat_template", None):
            return "auto"
        log("The tokenizer has no chat template; using the built-in chatml template.")
        template = "chatml"
    if template not in TEMPLATES:
        raise UserError(f"template '{template}' is unknown; choose auto, {', '.join(TEMPLATES)}")
    tokenizer.chat_template = TEMPLATES[template]
    return template


def _compile_template(tokenizer: Any):
    """Render with our own compiled Jinja template: apply_chat_template per call costs far more
    than the rendering itself, and we render every prefix of every conversation."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise UserError(f"the chat template refused a conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
    compiled = env.from_string(tokenizer.chat_template)
    specials = {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or ""}

    def render(messages: list[dict], add_generation_prompt: bool = False, tools: list[dict] | None = None) -> str:
        # tools: function definitions, passed as apply_chat_template(tools=...) passes them
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, tools=tools,
                               **specials)

    return render


# The texts that end a turn in the chat templates we know (ChatML/Qwen, Llama 3, Phi-3, Granite,
# Mistral/Llama 2, GPT-style, Gemma): the one list for labelling (encode_sft), generation stops
# (stop_token_ids: chat and evaluation) and export (end_of_turn_id, and the eos ids export writes
# to generation_config.json). It is the union of the four lists chat, evaluation, export and
# labelling once kept: a token here ends generation only where the tokenizer has it as a token, and
# every one of them ends a turn (or the text) in the templates that use it, so stopping on all of
# them is right for every model; a model whose template uses none of them stops on its eos.
END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|end_of_text|>", "</s>", "<|endoftext|>",
                       "<end_of_turn>")


def assistant_spans(render, messages: list[dict], end_markers: tuple[str, ...] = END_OF_TURN_MARKERS
                    ) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of every assistant reply, each
    from the first character of the reply through its end-of-turn token (one of
    `end_markers`: the tokenizer's special tokens)."""
    full = render(messages)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:i])
        prompt = render(messages[:i], add_generation_prompt=True)
        upto = full if i == len(messages) - 1 else render(messages[: i + 1])
        if full.startswith(upto) and upto.startswith(prompt):
            # Trailing newlines after the end-of-turn token belong to the layout, not to the reply.
            spans.append((len(prompt), len(upto.rstrip("\n"))))
        else:  # a template that rewrites a turn once later turns exist (Qwen3, Phi-3.5, Mistral-Nemo)
            header = _assistant_header(before, prompt, messages[i - 1]["content"] if i else "")
            calls = [c["function"]["name"] for c in message.get("tool_calls") or []]
            spans.append(_rewritten_reply_span(full, header, message["content"], spans[-1][1] if spans else 0,
                                               end_markers, calls))
    return full, spans


def _assistant_header(before: str, prompt: str, previous: str) -> str:
    """What the template writes before an assistant reply: the generation prompt (what the
    prompt adds to the conversation so far), or, for a template without one (Mistral's), the
    text after the previous message (its "[/INST]")."""
    common = len(os.path.commonprefix([before, prompt]))
    if len(prompt) > common:
        return prompt[common:]
    at = before.rfind(previous) if previous else -1
    return before[at + len(previous):] if at >= 0 else ""


def _rewritten_reply_span(full: str, header: str, content: str, search_from: int,
                          end_markers: tuple[str, ...], calls: list[str] | None = None) -> tuple[int, int]:
    """The span of a reply in a rendering that rewrote it: from the end of its own assistant
    header (the first one after the previous reply) through the end-of-turn token after the
    reply's text. The text is the reply as written, or, where the template dropped a reasoning
    part, what follows "</think>"; it must lie inside this turn, never in an earlier or later one.
    A function call (`calls`: the names it calls) runs through the first end-of-turn marker after
    the last name, since the template writes the call in its own syntax."""
    # The generation prompt may hold more than the header (a think block, blank lines) that an
    # earlier turn does not show: its first line is the header proper.
    # The nearest one wins: the whole prompt may occur only at a later (the final) turn.
    found_at = [(full.find(h, search_from), -len(h), h) for h in (header.strip(), header.strip().split("\n")[0]) if h]
    found_at = sorted(f for f in found_at if f[0] >= 0)
    turn, header = (found_at[0][0], found_at[0][2]) if found_at else (-1, "")
    if turn < 0:
        raise UserError("the chat template does not mark assistant turns with the header of its generation "
                        "prompt; set template: chatml (or qwen / llama3)")
    start = turn + len(header)
    while start < len(full) and full[start] == "\n":
        start += 1  # the header's own line break, stripped above
    next_turn = full.find(header, start)
    limit = len(full) if next_turn < 0 else next_turn
    for text in dict.fromkeys([content, content.split("</think>")[-1].lstrip("\n"), content.strip()]):
        found = full.find(text, start, limit)
        if text and found >= 0 and not calls:
            return start, _end_of_turn(full, found + len(text), end_markers)
    name_at = full.find(calls[-1], start, limit) if calls else -1
    if name_at >= 0:
        ends = sorted((full.find(marker, name_at, limit), -len(marker)) for marker in end_markers)
        ends = [(at, size) for at, size in ends if at >= 0]
        if ends:
            return start, ends[0][0] - ends[0][1]
    raise UserError("the chat template does not reproduce an assistant reply verbatim in its turn; "
                    "set template: chatml (or qwen / llama3)")


def _end_of_turn(full: str, end: int, markers: tuple[str, ...]) -> int:
    """Extend a reply's span over the special end-of-turn marker that follows it, if any."""
    for marker in markers:
        if full.startswith(marker, end):
            return end + len(marker)
    return end


def _token_id(tokenizer: Any, token: str) -> int | None:
    """The id of `token` when the tokenizer has it as one token (not its unknown token), else None."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    return token_id if isinstance(token_id, int) and token_id != tokenizer.unk_token_id else None


def stop_token_ids(tokenizer: Any) -> list[int]:
    """eos and every end-of-turn token the tokenizer knows (END_OF_TURN_MARKERS), sorted:
    generation stops on whichever the model emits. Chat (ChatSession), evaluation
    (generate_answers) and export (the eos ids of generation_config.json) all use these, so an
    exported model stops where the workbench stopped it."""
    ids = {tokenizer.eos_token_id, *(_token_id(tokenizer, token) for token in END_OF_TURN_MARKERS)}
    return sorted(i for i in ids if i is not None)


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The one token that ends an assistant turn in the tokenizer's chat template (the first of
    END_OF_TURN_MARKERS the template writes and the tokenizer has), else eos: the single eos a
    GGUF file records, and the first of the eos ids export writes."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    for token in END_OF_TURN_MARKERS:
        if token in template and (token_id := _token_id(tokenizer, token)) is not None:
            return token_id
    return tokenizer.eos_token_id


def end_of_turn_markers(tokenizer: Any) -> tuple[str, ...]:
    """The texts that may end a turn: our known markers and the tokenizer's special tokens,
    longest first (so "<|end_of_text|>" wins over a shorter token it starts with)."""
    specials = {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
    specials |= {str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
                 if getattr(t, "special", False)}
    return tuple(sorted(set(END_OF_TURN_MARKERS) | {t for t in specials if len(t) > 1}, key=len, reverse=True))


@dataclass
class EncodeStats:
    """What happened to the records on their way to token ids (shown by `data check` and logs)."""

    records: int = 0
    samples: int = 0
    truncated: int = 0
    dropped_no_trainable: int = 0
    system_dropped: int = 0  # conversations whose system prompt the chat template does not show
    tokens: int = 0
    trainable_tokens: int = 0
    lengths: list[int] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False

    def summary(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "lengths"}
        if self.lengths:
            arr = np.asarray(self.lengths)
            out.update(tokens_p50=int(np.percentile(arr, 50)), tokens_p95=int(np.percentile(arr, 95)),
                       tokens_max=int(arr.max()))
        return out


def encode_sft(examples: list[dict], tokenizer: Any, cutoff_len: int, batch_size: int = 1000
               ) -> tuple[list[dict], EncodeStats]:
    """Token ids and labels for conversations; samples left with no trainable token after
    truncation are dropped and counted, never kept silently."""
    check_tool_support(examples, tokenizer)
    render = _compile_template(tokenizer)
    markers = end_of_turn_markers(tokenizer)
    stats = EncodeStats(records=len(examples))
    samples: list[dict] = []
    for begin in range(0, len(examples), batch_size):
        batch = examples[begin: begin + batch_size]
        rendered = [assistant_spans(_with_tools(render, ex.get("tools")), ex["messages"], markers) for ex in batch]
        stats.system_dropped += sum(_system_dropped(ex["messages"], full) for ex, (full, _) in zip(batch, rendered))
        for ids, labels in encode_with_labels(tokenizer, rendered):
            stats.lengths.append(len(ids))
            if len(ids) > cutoff_len:
                stats.truncated += 1
                ids, labels = ids[:cutoff_len], labels[:cutoff_len]
            trainable = len(labels) - labels.count(IGNORE_INDEX)
            if trainable == 0:
                stats.dropped_no_trainable += 1
                continue
            stats.tokens += len(ids)
            stats.trainable_tokens += trainable
            samples.append({"input_ids": ids, "labels": labels})
    stats.samples = len(samples)
    return samples, stats


def encode_preference(records: list[dict], tokenizer: Any, cutoff_len: int, batch_size: int = 1000
                      ) -> tuple[list[dict], EncodeStats]:
    """Token ids and labels of preference records (trainer_core.data.read_preference_dataset).

    Pairs give {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}, KTO
    records {"input_ids", "labels", "kto_label"}. Each side is the prompt and its answer rendered
    with the chat template as one conversation and labelled as encode_sft labels an assistant turn
    (its content and end-of-turn token), but only the answer is trainable: assistant turns inside
    the prompt get -100 too. A side longer than cutoff_len is cut at its end; a record with a side
    left without a trainable token is dropped and counted (stats.records and stats.lengths count
    sides)."""
    kto = bool(records) and "completion" in records[0]
    sides = ("completion",) if kto else ("chosen", "rejected")
    conversations = [{"messages": r["prompt"] + r[side], "tools": r.get("tools"), "source": r.get("source")}
                     for r in records for side in sides]
    check_tool_support(conversations, tokenizer)
    render = _compile_template(tokenizer)
    markers = end_of_turn_markers(tokenizer)
    stats = EncodeStats(records=len(records))
    samples: list[dict] = []
    for begin in range(0, len(records), batch_size):
        batch = records[begin: begin + batch_size]
        rendered = []
        for record in batch:
            for side in sides:
                full, spans = assistant_spans(_with_tools(render, record.get("tools")),
                                              record["prompt"] + record[side], markers)
                rendered.append((full, spans[len(spans) - len(record[side]):]))  # the answer's spans only
        encoded = encode_with_labels(tokenizer, rendered)
        for n, record in enumerate(batch):
            sample: dict[str, Any] = {}
            for k, side in enumerate(sides):
                ids, labels = encoded[n * len(sides) + k]
                stats.lengths.append(len(ids))
                if len(ids) > cutoff_len:
                    stats.truncated += 1
                    ids, labels = ids[:cutoff_len], labels[:cutoff_len]
                prefix = "" if kto else f"{side}_"
                sample[f"{prefix}input_ids"], sample[f"{prefix}labels"] = ids, labels
            trainable = [len(v) - v.count(IGNORE_INDEX) for key, v in sample.items() if key.endswith("labels")]
            if min(trainable) == 0:
                stats.dropped_no_trainable += 1
                continue
            if kto:
                sample["kto_label"] = bool(record["label"])
            stats.tokens += sum(len(v) for key, v in sample.items() if key.endswith("input_ids"))
            stats.trainable_tokens += sum(trainable)
            samples.append(sample)
    stats.samples = len(samples)
    return samples, stats


def prompts_over_cutoff(records: list[dict], tokenizer: Any, cutoff_len: int) -> list[Problem]:
    """Preference records whose prompt alone (with the template's assistant header) takes
    cutoff_len tokens or more, leaving no answer token to compare: one Problem each, naming the
    file, the record and the field that holds the prompt."""
    render = _compile_template(tokenizer)
    problems = []
    for record in records:
        text = _with_tools(render, record.get("tools"))(record["prompt"], add_generation_prompt=True)
        count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if count >= cutoff_len:
            problems.append(Problem(str(record.get("file") or record.get("source", "?")), record.get("index"),
                                    record.get("prompt_field"),
                                    f"the prompt is {count:,} tokens, and cutoff_len is {cutoff_len:,}: no token of "
                                    "the answers would be left to compare; shorten the prompt or raise cutoff_len"))
    return problems


def _with_tools(render, tools: list[dict] | None):
    """`render` with a record's function definitions bound (the template shows them in its prompt)."""
    if not tools:
        return render
    return lambda messages, add_generation_prompt=False: render(messages, add_generation_prompt, tools=tools)


def check_tool_support(examples: list[dict], tokenizer: Any) -> None:
    """Tool-calling records (function definitions, function calls) train only through a chat
    template that renders them; one that never mentions them would silently drop the definitions
    and the calls, teaching empty answers. Refuse, naming each dataset and how many records."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    needs = {"tools": lambda ex: bool(ex.get("tools")),
             "tool_calls": lambda ex: any(m.get("tool_calls") for m in ex["messages"])}
    for word, uses in needs.items():
        if word in template:
            continue
        counts: dict[str, int] = {}
        for ex in examples:
            if uses(ex):
                counts[str(ex.get("source", "?"))] = counts.get(str(ex.get("source", "?")), 0) + 1
        if counts:
            what = "function definitions (tools)" if word == "tools" else "function calls"
            named = ", ".join(f"'{name}' ({n} record{'s' if n > 1 else ''})" for name, n in counts.items())
            raise UserError(f"dataset {named} holds tool-calling records with {what}, but this model's chat "
                            f"template does not render them (it never mentions '{word}'), so training would drop "
                            "them silently: use a model whose chat template supports tools (Qwen2.5, Qwen3, "
                            "Llama 3.1 and later, Mistral), or leave those records out")


def _system_dropped(messages: list[dict], full: str) -> bool:
    """A template may show the system prompt only in some conversations (Mistral-Nemo's only when
    the last message is the user's, so never in training data): the model would not learn it."""
    system = [m["content"] for m in messages if m["role"] == "system" and m["content"].strip()]
    return any(text.strip() not in full for text in system)


def encode_with_labels(tokenizer: Any, rendered: list[tuple[str, list[tuple[int, int]]]]
                       ) -> list[tuple[list[int], list[int]]]:
    """Token ids of each rendered text and its labels: a token keeps its id as label when it
    overlaps an assistant span (a token straddling the span start, e.g. "\n" + the first
    character merged, still carries reply text, so it is trained on), else -100.

    A fast tokenizer's Rust backend is called directly: it encodes the batch on every core and
    maps a span's first and last character to tokens, so no per-token offsets are converted
    to Python (that conversion cost more than the tokenizing). tests/test_tokenization.py checks
    both paths give the same result."""
    texts = [text for text, _ in rendered]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True,
                            return_attention_mask=False)
        return [(list(ids), _mask_outside(ids, offsets, spans)) for ids, offsets, (_, spans)
                in zip(encoded["input_ids"], encoded["offset_mapping"], rendered)]
    result = []
    for encoding, (_, spans) in zip(backend.encode_batch(texts, add_special_tokens=False), rendered):
        ids = encoding.ids
        labels = _mask_by_characters(ids, encoding, spans)
        result.append((ids, labels if labels is not None else _mask_outside(ids, encoding.offsets, spans)))
    return result


def _mask_by_characters(ids: list[int], encoding: Any, spans: list[tuple[int, int]]) -> list[int] | None:
    """Labels from the tokens holding each span's first and last character; None when a
    character belongs to no token (a normaliser dropped it), where only offsets can tell."""
    labels = [IGNORE_INDEX] * len(ids)
    for span_start, span_end in spans:
        if span_end <= span_start:
            continue
        first, last = encoding.char_to_token(span_start), encoding.char_to_token(span_end - 1)
        if first is None or last is None:
            return None
        # A character split over several byte-level tokens: char_to_token names the first of them.
        while last + 1 < len(ids) and encoding.token_to_chars(last + 1)[0] < span_end:
            last += 1
        labels[first: last + 1] = ids[first: last + 1]
    return labels


def _mask_outside(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Labels from per-token character offsets: a token is trained on when it overlaps a span."""
    labels = [IGNORE_INDEX] * len(ids)
    if not ids or not spans:
        return labels
    bounds = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    inside = np.zeros(len(ids), dtype=bool)
    for span_start, span_end in spans:
        if span_end <= span_start:  # no characters, no tokens
            continue
        inside |= (bounds[:, 1] > span_start) & (bounds[:, 0] < span_end)
    for i in np.flatnonzero(inside):
        labels[i] = ids[i]
    return labels


def encode_pt(examples: list[dict], tokenizer: Any, cutoff_len: int, batch_size: int = 1000,
              packing: bool = True) -> tuple[list[dict], EncodeStats]:
    """Join documents (each ended by eos) and cut the stream into cutoff_len blocks; with
    `packing=False` each document is cut on its own, so no block holds two documents (a
    document's last block is shorter and padded in the batch)."""
    stats = EncodeStats(records=len(examples))
    documents = pt_documents(examples, tokenizer, stats, batch_size)
    streams = [list(itertools.chain.from_iterable(documents))] if packing else documents
    samples = [block for stream in streams for block in cut_blocks(stream, cutoff_len)]
    stats.samples = len(samples)
    stats.tokens = stats.trainable_tokens = sum(len(s["input_ids"]) for s in samples)
    return samples, stats


def pt_documents(examples: list[dict], tokenizer: Any, stats: EncodeStats, batch_size: int = 1000
                 ) -> list[list[int]]:
    """Each document's token ids, ended by eos; their lengths go to `stats`."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    documents: list[list[int]] = []
    for begin in range(0, len(examples), batch_size):
        texts = [_as_text(ex) for ex in examples[begin: begin + batch_size]]
        for ids in tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]:
            stats.lengths.append(len(ids) + len(eos))
            documents.append(list(ids) + eos)
    return documents


def cut_blocks(stream: list[int], cutoff_len: int) -> list[dict]:
    """A token stream cut into blocks of cutoff_len (the last one shorter); a block of fewer than
    two tokens has nothing to predict and is left out."""
    blocks = []
    for start in range(0, len(stream), cutoff_len):
        block = stream[start: start + cutoff_len]
        if len(block) >= 2:
            blocks.append({"input_ids": block, "labels": list(block)})
    return blocks


def _as_text(example: dict) -> str:
    if "text" in example:
        return example["text"]
    from trainer_core.data import message_text

    return "\n".join(message_text(m) for m in example["messages"])


def special_token_problems(examples: list[dict], tokenizer: Any, limit: int = 1000) -> list[Problem]:
    """Records whose text holds one of the tokenizer's special tokens, e.g. a literal "<|im_end|>"
    left in an answer by an export of chat logs. The tokenizer reads such text as the control
    token, not as characters, so training would teach the model to end its turn (or start one)
    there. One Problem per field, naming the dataset, the record and the message; at most `limit`."""
    import re

    specials = sorted({str(t) for t in tokenizer.all_special_tokens}
                      | {str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
                         if getattr(t, "special", False)}, key=len, reverse=True)
    specials = [t for t in specials if len(t) > 1]  # a one-character "special" token is ordinary text
    if not specials:
        return []
    pattern = re.compile("|".join(map(re.escape, specials)))
    problems = []
    for example in examples:
        if "text" in example:
            fields = [("text", example["text"])]
        else:
            fields = [(f"messages[{i}].content ({m['role']})", m["content"])
                      for i, m in enumerate(example.get("messages", []))]
        for where, text in fields:
            found = pattern.search(text)
            if found:
                problems.append(Problem(
                    str(example.get("file") or example.get("source", "?")), example.get("index"), where,
                    f"contains '{found.group()}', which this model's tokenizer reads as its special token, "
                    "not as text; training would teach the model that control token there. Remove it."))
                if len(problems) >= limit:
                    return problems
    return problems


def pack_samples(samples: list[dict], cutoff_len: int) -> list[dict]:
    """Greedy first-fit packing of whole SFT samples into blocks of at most cutoff_len tokens.

    Each block carries position_ids that restart at 0 for every sample; with no attention mask,
    transformers turns them into a block-diagonal mask, so samples never attend to each other and
    the loss equals the unpacked one."""
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i]["input_ids"]))
    blocks: list[dict] = []
    room: list[int] = []
    for i in order:
        sample = samples[i]
        n = len(sample["input_ids"])
        target = next((b for b, free in enumerate(room) if free >= n), None)
        if target is None:
            blocks.append({"input_ids": [], "labels": [], "position_ids": []})
            room.append(cutoff_len)
            target = len(blocks) - 1
        block = blocks[target]
        block["input_ids"] += sample["input_ids"]
        block["labels"] += sample["labels"]
        block["position_ids"] += list(range(n))
        room[target] -= n
    return blocks


def fingerprint(examples: list[dict], tokenizer: Any, settings: dict) -> str:
    """A content hash of everything that decides the token ids."""
    digest = hashlib.sha256()
    digest.update(CACHE_VERSION.encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(type(tokenizer).__name__.encode())
    digest.update(str(getattr(tokenizer, "chat_template", "")).encode())
    digest.update(str(len(tokenizer)).encode())
    digest.update(str((tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id)).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    for ex in examples:
        digest.update(json.dumps(ex.get("messages") or ex.get("text"), ensure_ascii=False).encode())
        if ex.get("tools"):  # only then: the fingerprints of records without tools stay as they were
            digest.update(json.dumps(ex["tools"], ensure_ascii=False).encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:24]


def tokenize_dataset(examples: list[dict], tokenizer: Any, stage: str, cutoff_len: int,
                     cache_dir: str | Path | None, log=print, packing: bool = True) -> tuple[list[dict], EncodeStats]:
    """Tokenize examples for `stage`, from the cache when the same data was seen before.
    `packing` decides whether pt documents share blocks (SFT packing happens after the cache)."""
    start = time.perf_counter()
    settings: dict[str, Any] = {"stage": stage, "cutoff_len": cutoff_len}
    if stage == "pt" and not packing:
        settings["packing"] = False  # absent when True: earlier caches stay valid
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{stage}-{fingerprint(examples, tokenizer, settings)}.npz"
        if path.is_file():
            try:
                samples, stats = _load_cache(path)
                stats.seconds = time.perf_counter() - start
                stats.cached = True
                return samples, stats
            except Exception as exc:  # noqa: BLE001 - a damaged cache is only a slower start
                log(f"Ignoring unreadable tokenization cache {path.name}: {exc}")
    if stage == "sft":
        samples, stats = encode_sft(examples, tokenizer, cutoff_len)
    else:
        samples, stats = encode_pt(examples, tokenizer, cutoff_len, packing=packing)
    if path is not None:
        _save_cache(path, samples, stats)
    stats.seconds = time.perf_counter() - start
    return samples, stats


def _save_cache(path: Path, samples: list[dict], stats: EncodeStats) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.fromiter((len(s["input_ids"]) for s in samples), dtype=np.int64, count=len(samples))
    total = int(lengths.sum())
    ids = np.fromiter(itertools.chain.from_iterable(s["input_ids"] for s in samples), dtype=np.int32, count=total)
    labels = np.fromiter(itertools.chain.from_iterable(s["labels"] for s in samples), dtype=np.int32, count=total)
    meta = {k: v for k, v in stats.__dict__.items() if k not in ("seconds", "cached")}
    tmp = path.with_name(path.stem + ".partial.npz")
    np.savez(tmp, lengths=lengths, ids=ids, labels=labels, meta=np.array(json.dumps(meta)))
    tmp.replace(path)  # atomic: a half-written cache is never read


def _load_cache(path: Path) -> tuple[list[dict], EncodeStats]:
    with np.load(path) as data:
        bounds = np.concatenate([[0], np.cumsum(data["lengths"])])
        ids, labels = data["ids"].tolist(), data["labels"].tolist()
        meta = json.loads(str(data["meta"]))
    samples = [{"input_ids": ids[a:b], "labels": labels[a:b]} for a, b in zip(bounds[:-1], bounds[1:])]
    return samples, EncodeStats(**meta)


class SupervisedCollator:
    """Pads a batch to its longest sample; padding never counts in the loss or in attention.
    Packed blocks (with position_ids) are padded the same way and keep no attention mask, so
    the model builds the per-sample block-diagonal mask from the position ids."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        batch = {
            "input_ids": torch.full((len(features), longest), self.pad_token_id, dtype=torch.long),
            "labels": torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long),
        }
        packed = "position_ids" in features[0]
        if packed:
            batch["position_ids"] = torch.zeros((len(features), longest), dtype=torch.long)
        else:
            batch["attention_mask"] = torch.zeros((len(features), longest), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            batch["input_ids"][row, :n] = torch.tensor(f["input_ids"])
            batch["labels"][row, :n] = torch.tensor(f["labels"])
            if packed:
                batch["position_ids"][row, :n] = torch.tensor(f["position_ids"])
                # Padding continues the positions of a separate "sample" that is never trained on.
                batch["position_ids"][row, n:] = torch.arange(longest - n)
            else:
                batch["attention_mask"][row, :n] = 1
        return batch
