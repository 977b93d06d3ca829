"""Evaluation: perplexity, generation with BLEU/ROUGE, and multiple-choice accuracy.

Four tasks, each a plain function over a loaded model and its tokenizer:

- `perplexity`       mean token loss (and its exp) on held-out data: assistant tokens only for
                     conversations (the very tokens SFT trains on), every token for plain text.
- `generate_answers` greedy (or sampled) answers to each conversation's last user turn, scored
                     against the reference answer by `bleu_rouge` (jieba words, 0-100).
- `mcq_accuracy`     C-Eval/CMMLU-style single-choice accuracy from the next-token logits of the
                     option letters, 0- or n-shot.
- `preference_accuracy` on preference pairs, the share whose chosen answer the model gives a
                     higher summed log-prob than the rejected one (DPO's implicit reward order).

`run_eval` is the body of an eval job (`python -m trainer_core eval JOB_DIR/eval.yaml`, an
`EvalConfig` from trainer_core/jobconfig.py): it resolves the model
(a training run's adapter or full model, its base, or any model), the datasets (by default the
run's own validation split), runs the tasks, writes `<task>-<dataset>.json` (and the predictions)
into the job folder and logs progress to its trainer_log.jsonl. `compare` puts several results
side by side as a Markdown table; `format_result` prints one.

Heavy libraries (torch, transformers, jieba) are imported inside the functions, so the CLI and
the UI can import this module cheaply.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from trainer_core import runs
from trainer_core.data import preference_kind
from trainer_core.errors import UserError
from trainer_core.jobconfig import SPLITS, TASKS, EvalConfig, checked, parse_tasks  # noqa: F401 - the job's config
from trainer_core.tokenization import IGNORE_INDEX, stop_token_ids

# The tasks a dataset's formatting allows, all of which run when no --task is given;
# conversations (alpaca, sharegpt, openai) allow CHAT_TASKS.
TASKS_FOR_FORMATTING = {"mcq": ("mcq",), "text": ("ppl",), "preference": ("preference",)}
PREFERENCE = "preference"  # the formatting load_eval_data gives preference pairs (any registered shape)
CHAT_TASKS = ("ppl", "generate")
NO_SUBJECT = "(no subject)"

Progress = Callable[[int], None] | None


# ---------------------------------------------------------------------------------------------
# Small tensor helpers
# ---------------------------------------------------------------------------------------------

def _device(model: Any) -> Any:
    return next(model.parameters()).device


def _pad(rows: list[list[int]], pad_id: int, side: str = "right") -> tuple[Any, Any]:
    """Pad token id lists to one (input_ids, attention_mask) pair of tensors; side: right | left."""
    import torch

    longest = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        if not row:
            continue
        span = slice(0, len(row)) if side == "right" else slice(longest - len(row), longest)
        input_ids[i, span] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, span] = 1
    return input_ids, attention_mask


def _batches(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), max(1, size)):
        yield items[start: start + max(1, size)]


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


# ---------------------------------------------------------------------------------------------
# 1. Perplexity
# ---------------------------------------------------------------------------------------------

def perplexity(model: Any, tokenizer: Any, examples: list[dict], cutoff_len: int = 1024, batch_size: int = 4,
               progress: Progress = None) -> dict:
    """Mean token loss and perplexity = exp(loss) over the scored tokens of `examples`.

    Conversations ({"messages"}) are encoded exactly as SFT trains on them (`encode_sft`): only
    assistant tokens, each reply with its end-of-turn token, are scored. Plain text ({"text"}) is
    encoded as PT trains on it (document + eos) and cut into `cutoff_len` blocks, every token scored.
    The loss is the sum of token losses divided by the number of scored tokens, so long and short
    samples weigh by their tokens, not per batch. Returns {"loss", "perplexity", "tokens",
    "samples", "dropped"}; dropped = conversations left with no answer token after truncation.
    """
    import torch
    import torch.nn.functional as F

    from trainer_core.tokenization import encode_sft

    chats = [ex for ex in examples if "messages" in ex]
    texts = [ex for ex in examples if "text" in ex and "messages" not in ex]
    samples: list[dict] = []
    dropped = 0
    if chats:
        encoded, stats = encode_sft(chats, tokenizer, cutoff_len)
        samples += encoded
        dropped = stats.dropped_no_trainable
    samples += _text_blocks(texts, tokenizer, cutoff_len)
    if not samples:
        raise UserError("nothing to score for perplexity: no sample has a token to predict "
                        f"(are the answers beyond cutoff_len {cutoff_len}?)")

    device = _device(model)
    pad_id = _pad_id(tokenizer)
    loss_sum, tokens = 0.0, 0
    for batch in _batches(samples, batch_size):
        input_ids, attention_mask = _pad([s["input_ids"] for s in batch], pad_id)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, s in enumerate(batch):
            labels[i, : len(s["labels"])] = torch.tensor(s["labels"], dtype=torch.long)
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        labels = labels.to(device)
        for row in range(len(batch)):  # one row at a time: the float32 copy of the logits stays small
            row_labels = labels[row, 1:]
            loss_sum += F.cross_entropy(logits[row, :-1].float(), row_labels, ignore_index=IGNORE_INDEX,
                                        reduction="sum").item()
            tokens += int((row_labels != IGNORE_INDEX).sum())
        if progress:
            progress(len(batch))
    loss = loss_sum / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": tokens, "samples": len(samples),
            "dropped": dropped}


def _text_blocks(examples: list[dict], tokenizer: Any, cutoff_len: int) -> list[dict]:
    """Each document + eos, cut into blocks of at most cutoff_len tokens (a block needs 2 tokens)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    blocks = []
    for ex in examples:
        ids = tokenizer(ex["text"], add_special_tokens=False)["input_ids"] + eos
        for start in range(0, len(ids), cutoff_len):
            block = ids[start: start + cutoff_len]
            if len(block) >= 2:
                blocks.append({"input_ids": block, "labels": list(block)})
    return blocks


# ---------------------------------------------------------------------------------------------
# 2. Generation
# ---------------------------------------------------------------------------------------------

def split_conversation(tokenizer: Any, messages: list[dict]) -> tuple[str, str] | None:
    """(prompt, reference): every message before the last assistant turn, rendered with the chat
    template and its generation prompt, and that last assistant reply. None without a reply."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or last == 0:
        return None
    prompt = tokenizer.apply_chat_template(messages[:last], add_generation_prompt=True, tokenize=False)
    return prompt, messages[last]["content"]


def generate_answers(model: Any, tokenizer: Any, examples: list[dict], max_new_tokens: int = 128,
                     batch_size: int = 4, do_sample: bool = False, temperature: float = 0.7, top_p: float = 0.9,
                     progress: Progress = None) -> list[dict]:
    """Answer each conversation's last user turn; returns [{"prompt", "prediction", "reference"}].

    Prompts are left-padded so a batch generates together; generation stops at eos or the chat
    template's end-of-turn token (and anything after a row's stop token is cut). Greedy unless
    `do_sample` (with temperature > 0). The generation settings are given in full, so the model's
    own generation_config (sampling defaults, a repetition penalty) does not change the scores:
    no repetition penalty, and when sampling only temperature and top_p filter (top_k off); the
    neutral values set for greedy decoding keep transformers from warning about unused flags.
    Conversations without an assistant turn are skipped.
    """
    import torch
    from transformers import GenerationConfig

    items = [pair for pair in (split_conversation(tokenizer, ex["messages"]) for ex in examples) if pair]
    stop_ids = stop_token_ids(tokenizer)
    pad_id = _pad_id(tokenizer)
    sampling = bool(do_sample) and temperature > 0
    # transformers fills every field left unset from the model's generation_config: set them all.
    decoding = ({"temperature": temperature, "top_p": top_p, "top_k": 0} if sampling
                else {"temperature": 1.0, "top_p": 1.0, "top_k": 50})
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sampling, repetition_penalty=1.0,
                              eos_token_id=stop_ids, pad_token_id=pad_id, **decoding)
    device = _device(model)
    results = []
    for batch in _batches(items, batch_size):
        prompts = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt, _ in batch]
        input_ids, attention_mask = _pad(prompts, pad_id, side="left")
        with torch.inference_mode():
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                    generation_config=config)
        for (prompt, reference), new_tokens in zip(batch, output[:, input_ids.shape[1]:].tolist()):
            stop = next((i for i, t in enumerate(new_tokens) if t in stop_ids), len(new_tokens))
            prediction = tokenizer.decode(new_tokens[:stop], skip_special_tokens=True).strip()
            results.append({"prompt": prompt, "prediction": prediction, "reference": reference})
        if progress:
            progress(len(batch))
    return results


# ---------------------------------------------------------------------------------------------
# 3. BLEU and ROUGE on Chinese words
# ---------------------------------------------------------------------------------------------

def words(text: str) -> list[str]:
    """jieba word segmentation, whitespace dropped (punctuation stays a word, as in rouge-chinese)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [w for w in jieba.lcut(text) if w.strip()]


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(hypothesis: list[str], reference: list[str], max_n: int = 4) -> float:
    """BLEU-4 of one tokenized hypothesis against one reference, 0-100.

    Clipped n-gram precisions p1..p4, geometric mean, brevity penalty exp(1 - r/c) when the
    hypothesis is not longer than the reference. Smoothing: an order with no match gets
    1 / (2^k * its n-gram count), k = 1, 2, ... for each such order (NIST geometric smoothing:
    nltk's method3, sacrebleu's "exp"). A hypothesis shorter than 4 words uses only the orders it
    has (sacrebleu's effective order), so identical strings score 100. No word in common: 0.
    """
    if not hypothesis or not reference:
        return 100.0 if hypothesis == reference else 0.0
    orders = min(max_n, len(hypothesis))
    log_sum = 0.0
    k = 1
    for n in range(1, orders + 1):
        hyp_counts, ref_counts = _ngrams(hypothesis, n), _ngrams(reference, n)
        matches = sum(min(count, ref_counts[gram]) for gram, count in hyp_counts.items())
        total = sum(hyp_counts.values())
        if matches == 0:
            if n == 1:
                return 0.0
            precision = 1 / (2 ** k * total)
            k += 1
        else:
            precision = matches / total
        log_sum += math.log(precision) / orders
    c, r = len(hypothesis), len(reference)
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return 100 * brevity * math.exp(log_sum)


def rouge_n(hypothesis: list[str], reference: list[str], n: int) -> float:
    """ROUGE-N F1 (0-100): clipped n-gram overlap over the hypothesis' and the reference's n-grams."""
    hyp_counts, ref_counts = _ngrams(hypothesis, n), _ngrams(reference, n)
    overlap = sum(min(count, ref_counts[gram]) for gram, count in hyp_counts.items())
    if overlap == 0:
        return 0.0
    precision = overlap / sum(hyp_counts.values())
    recall = overlap / sum(ref_counts.values())
    return 100 * 2 * precision * recall / (precision + recall)


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(hypothesis: list[str], reference: list[str]) -> float:
    """ROUGE-L F1 (0-100) from the longest common subsequence of words."""
    lcs = _lcs_length(hypothesis, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hypothesis), lcs / len(reference)
    return 100 * 2 * precision * recall / (precision + recall)


def bleu_rouge(predictions: list[str], references: list[str]) -> dict:
    """{"bleu-4", "rouge-1", "rouge-2", "rouge-l"}, each the MEAN over the pairs of the
    sentence-level score (0-100) on jieba words: sentence BLEU-4 with NIST geometric smoothing
    (see `sentence_bleu`), ROUGE-N F1 and ROUGE-L F1 (LCS). The same recipe as LLaMA-Factory's
    SFT predictions (nltk sentence_bleu method3 + rouge-chinese), with words for BLEU too."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return {"bleu-4": 0.0, "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    sums: defaultdict[str, float] = defaultdict(float)
    for prediction, reference in zip(predictions, references):
        hyp, ref = words(prediction), words(reference)
        sums["bleu-4"] += sentence_bleu(hyp, ref)
        sums["rouge-1"] += rouge_n(hyp, ref, 1)
        sums["rouge-2"] += rouge_n(hyp, ref, 2)
        sums["rouge-l"] += rouge_l(hyp, ref)
    return {key: round(sums[key] / len(predictions), 4) for key in ("bleu-4", "rouge-1", "rouge-2", "rouge-l")}


# ---------------------------------------------------------------------------------------------
# 4. Multiple choice
# ---------------------------------------------------------------------------------------------

def _format_question(question: dict) -> str:
    options = "".join(f"{letter}. {text}\n" for letter, text in question["options"].items())
    return f"{question['question'].strip()}\n{options}答案："


def mcq_prompt(question: dict, shots: list[dict] | None = None) -> str:
    """The C-Eval prompt: a one-line instruction naming the subject, the n-shot examples each
    followed by its answer letter, then the question, its options and "答案：". A raw completion
    prompt, not a chat: it is what C-Eval's and CMMLU's harnesses score base and chat models with,
    and the answer letter must be the very next token."""
    subject = question.get("subject")
    head = (f"以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n" if subject
            else "以下是单项选择题，请选出其中的正确答案。\n\n")
    body = "".join(f"{_format_question(shot)}{shot['answer']}\n\n" for shot in shots or [])
    return head + body + _format_question(question)


def select_shots(question: dict, dev_questions: list[dict], n_shot: int) -> list[dict]:
    """The first n_shot single-answer dev questions of the same subject, filled up from other
    subjects when the subject has fewer (or none); never the question itself."""
    if n_shot <= 0:
        return []
    usable = [d for d in dev_questions if not d.get("multi") and d["question"] != question["question"]]
    same = [d for d in usable if d.get("subject") == question.get("subject")]
    others = [d for d in usable if d.get("subject") != question.get("subject")]
    return (same + others)[:n_shot]


def letter_token_ids(tokenizer: Any, letter: str) -> list[int]:
    """The token ids that can mean `letter` as the next token: "A" and " A", each only where it is a
    single token (for byte-level BPE " A" is often "Ġ" + "A", whose first token is the bare space,
    the same for every letter; it would tie all options). Falls back to the first token of "A"."""
    ids = []
    for text in (letter, " " + letter):
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(encoded[0])
    return ids or tokenizer.encode(letter, add_special_tokens=False)[:1]


def mcq_accuracy(model: Any, tokenizer: Any, questions: list[dict], dev_questions: list[dict] | None = None,
                 n_shot: int = 0, subject_filter: str | list[str] | None = None, batch_size: int = 4,
                 max_length: int | None = None, progress: Progress = None) -> dict:
    """Single-choice accuracy from the next-token logits after the `mcq_prompt`.

    Each option letter's score is the largest logit among its `letter_token_ids` ("A" / " A");
    the prediction is the best-scoring letter among the question's own options (ties: the first).
    Questions with several correct letters (`multi`) are not scored: they are counted as
    "unsupported". `subject_filter` keeps only those subjects; `max_length` keeps the last tokens
    of a longer prompt. Accuracy is a percentage (0-100), overall and per subject.
    Returns {"accuracy", "correct", "total", "unsupported", "per_subject": {subject: {"accuracy",
    "correct", "total"}}, "predictions": [{"question", "answer", "predicted", "subject"}]}.
    """
    import torch

    given = len(questions)
    if subject_filter:
        wanted = {subject_filter} if isinstance(subject_filter, str) else set(subject_filter)
        questions = [q for q in questions if q.get("subject") in wanted]
    scored = [q for q in questions if not q.get("multi")]
    unsupported = len(questions) - len(scored)
    letter_ids = {}
    device = _device(model)
    pad_id = _pad_id(tokenizer)
    predictions = []
    for batch in _batches(scored, batch_size):
        rows = []
        for q in batch:
            ids = tokenizer(mcq_prompt(q, select_shots(q, dev_questions or [], n_shot)))["input_ids"]
            rows.append(ids[-max_length:] if max_length else ids)
        input_ids, attention_mask = _pad(rows, pad_id)  # right padding: positions stay 0..n-1
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        for i, q in enumerate(batch):
            last = logits[i, len(rows[i]) - 1].float()
            scores: dict[str, float] = {}
            for letter in q["options"]:
                if letter not in letter_ids:
                    letter_ids[letter] = letter_token_ids(tokenizer, letter)
                scores[letter] = max(last[t].item() for t in letter_ids[letter])
            predicted = max(scores, key=scores.__getitem__)  # max keeps the first of equal scores
            predictions.append({"question": q["question"], "answer": q["answer"], "predicted": predicted,
                                "subject": q.get("subject") or NO_SUBJECT})
        if progress:
            progress(len(batch))
    if progress and given > len(scored):
        progress(given - len(scored))  # the questions filtered out or not scored count as done

    per_subject: dict[str, dict] = {}
    for p in predictions:
        entry = per_subject.setdefault(p["subject"], {"accuracy": 0.0, "correct": 0, "total": 0})
        entry["total"] += 1
        entry["correct"] += p["predicted"] == p["answer"]
    for entry in per_subject.values():
        entry["accuracy"] = round(100 * entry["correct"] / entry["total"], 4)
    correct = sum(p["predicted"] == p["answer"] for p in predictions)
    return {"accuracy": round(100 * correct / len(predictions), 4) if predictions else 0.0, "correct": correct,
            "total": len(predictions), "unsupported": unsupported, "per_subject": dict(sorted(per_subject.items())),
            "predictions": predictions}


# ---------------------------------------------------------------------------------------------
# 5. Preference accuracy
# ---------------------------------------------------------------------------------------------

def preference_accuracy(model: Any, tokenizer: Any, records: list[dict], cutoff_len: int = 1024,
                        batch_size: int = 4, progress: Progress = None) -> dict:
    """The share of preference pairs (read_preference_dataset's records) whose chosen answer has the
    higher summed log-prob of its answer tokens: each side encoded exactly as stage dpo trains on it
    (`encode_preference`), the very tokens its loss compares. A tie counts as not won. A summed
    log-prob favours the shorter answer, so the same share with the mean log-prob per answer token
    (SimPO's and ORPO's measure) is given beside it. Returns {"accuracy" (0-100), "correct", "total",
    "margin": the mean chosen - rejected summed log-prob, "per_token_accuracy" (0-100), "dropped"}."""
    import torch

    from trainer_core.tokenization import encode_preference

    samples, stats = encode_preference(records, tokenizer, cutoff_len)
    if not samples:
        raise UserError("nothing to score for preference accuracy: no pair has an answer token left within "
                        f"cutoff_len {cutoff_len}")
    device = _device(model)
    pad_id = _pad_id(tokenizer)
    margins: list[float] = []
    per_token_wins = 0
    for batch in _batches(samples, batch_size):
        sides = [(s[f"{side}_input_ids"], s[f"{side}_labels"]) for side in ("chosen", "rejected") for s in batch]
        input_ids, attention_mask = _pad([ids for ids, _ in sides], pad_id)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, (_, row_labels) in enumerate(sides):
            labels[i, :len(row_labels)] = torch.tensor(row_labels, dtype=torch.long)
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        labels = labels[:, 1:].to(device)
        sums, means = [], []
        for row in range(len(sides)):  # one row at a time: the float32 copy of the logits stays small
            logps = torch.log_softmax(logits[row, :-1].float(), dim=-1)
            mask = labels[row] != IGNORE_INDEX
            sums.append(logps[mask].gather(-1, labels[row][mask][:, None]).sum().item())
            means.append(sums[-1] / int(mask.sum()))
        margins += [c - r for c, r in zip(sums[:len(batch)], sums[len(batch):])]
        per_token_wins += sum(c > r for c, r in zip(means[:len(batch)], means[len(batch):]))
        if progress:
            progress(len(batch))
    correct = sum(m > 0 for m in margins)
    return {"accuracy": round(100 * correct / len(margins), 4), "correct": correct, "total": len(margins),
            "margin": sum(margins) / len(margins), "per_token_accuracy": round(100 * per_token_wins / len(margins), 4),
            "dropped": stats.dropped_no_trainable}


# ---------------------------------------------------------------------------------------------
# 6. The eval job
# ---------------------------------------------------------------------------------------------

class _Progress(TypedDict):
    done: int  # records scored so far, over all tasks
    logged: float  # time.time() of the last progress line


@dataclass
class Target:
    """The model an eval job scores: base model, optional adapter, and a label for comparisons."""

    model: str
    adapter: str | None
    label: str
    run_dir: Path | None = None
    run_config: dict | None = None


def resolve_target(cfg: EvalConfig) -> Target:
    """--run (adapter/ or model/, or its base with --base-only) or --model [--adapter]. Which of
    them go together is the config's rule (EvalConfig.rules); this checks the folders."""
    import yaml

    from trainer_core.models import run_base_model

    run, model, adapter, label = cfg.run, cfg.model, cfg.adapter, cfg.label
    if not run:
        if adapter and not (Path(adapter) / "adapter_config.json").is_file():
            raise UserError(f"--adapter '{adapter}' is not a LoRA adapter folder (no adapter_config.json)")
        return Target(model, adapter or None, label or ("tuned (adapter)" if adapter else "base"))

    run_dir = Path(run)
    base = run_base_model(run_dir)  # raises if there is no run.yaml
    config = yaml.safe_load((run_dir / runs.CONFIG_FILE).read_text(encoding="utf-8")) or {}
    if cfg.base_only:
        return Target(base, None, label or "base", run_dir, config)
    if (run_dir / "adapter" / "adapter_config.json").is_file():
        return Target(base, str(run_dir / "adapter"), label or "tuned (adapter)", run_dir, config)
    if (run_dir / "model" / "config.json").is_file():
        return Target(str(run_dir / "model"), None, label or "tuned (full)", run_dir, config)
    raise UserError(f"run '{run_dir}' holds no adapter/ or model/ yet (has it finished?); "
                    "use --base-only to evaluate its base model")


def _stage_for(formatting: str) -> str:
    return {"mcq": "mcq", "text": "pt"}.get(formatting, "sft")


def _check_task(task: str, name: str, formatting: str) -> None:
    allowed = TASKS_FOR_FORMATTING.get(formatting, CHAT_TASKS)
    if task not in allowed:
        kind = {"mcq": "multiple-choice", "text": "plain text", PREFERENCE: "preference pairs"}.get(formatting,
                                                                                                  "conversation")
        raise UserError(f"task '{task}' does not apply to dataset '{name}' ({kind} data, formatting: "
                        f"{formatting}); its tasks are {', '.join(allowed)}")


def load_eval_data(opts: EvalConfig, target: Target) -> tuple[str, str, dict[str, list[dict]], dict]:
    """(split, dataset_dir, {dataset name: examples}, {dataset name: formatting}) for the job."""
    from trainer_core.data import load_dataset_info, read_dataset
    from trainer_core.errors import DataError

    run_config = target.run_config or {}
    dataset_dir = opts.dataset_dir or (run_config.get("dataset_dir") if target.run_dir else None) or "data"
    names = list(dict.fromkeys(n.strip() for n in (opts.dataset or "").split(",") if n.strip()))
    split = opts.split or ("validation" if target.run_dir and not names else "all")
    max_samples = opts.max_samples
    info = load_dataset_info(dataset_dir)

    if split == "validation":  # with --run (EvalConfig.rules)
        held_out = _run_validation_split(run_config, dataset_dir)
        if not held_out:
            raise UserError(f"run '{target.run_dir}' held out no validation records (val_size 0 and no "
                            "eval_dataset); name a dataset with --dataset NAME (all its records are used)")
        by_name: dict[str, list[dict]] = {}
        for ex in held_out:
            by_name.setdefault(ex.get("source", "validation"), []).append(ex)
        if names:
            missing = [n for n in names if n not in by_name]
            if missing:
                raise UserError(f"dataset '{missing[0]}' is not in run's validation split (it holds "
                                f"{', '.join(by_name)}); use --split all to evaluate all its records")
            by_name = {n: by_name[n] for n in names}
        data = {name: examples[:max_samples] if max_samples else examples for name, examples in by_name.items()}
    else:  # with --dataset (EvalConfig.rules)
        data, problems = {}, []
        for name in names:
            if name not in info:
                read_dataset(name, dataset_dir, "sft")  # raises the unknown-name message with suggestions
            if preference_kind(info[name]):
                examples, trouble = _preference_pairs(name, dataset_dir, info[name])
            else:
                examples, trouble = read_dataset(name, dataset_dir, _stage_for(info[name]["formatting"]))
            problems += trouble
            data[name] = examples[:max_samples] if max_samples else examples
        if problems:
            raise DataError(problems)
    for name, examples in data.items():
        if not examples:
            raise UserError(f"dataset '{name}' holds no records to evaluate")
    formattings = {name: PREFERENCE if preference_kind(info.get(name, {})) else
                   info.get(name, {}).get("formatting", "alpaca") for name in data}
    return split, str(dataset_dir), data, formattings


def _preference_pairs(name: str, dataset_dir: str, entry: dict) -> tuple[list[dict], list]:
    """The pairs of preference dataset `name` (KTO data has no pair to compare: refused)."""
    from trainer_core.data import read_preference_dataset

    if preference_kind(entry) == "kto":
        raise UserError(f"dataset '{name}' is KTO data (one answer each, marked good or bad): the preference task "
                        "compares a chosen with a rejected answer; name a dataset of pairs")
    return read_preference_dataset(name, dataset_dir)


def _run_validation_split(config: dict, dataset_dir: str) -> list[dict]:
    """The eval records of a run: the same datasets, max_samples, val_size and seed as run.yaml."""
    from trainer_core.data import load_datasets
    from trainer_core.preference import is_preference_stage, split_records

    if is_preference_stage(config.get("stage", "sft")):  # the pairs (or KTO answers) the run held out
        from trainer_core.config import KEYS, config_from_dict

        known = {key: value for key, value in config.items() if key in KEYS}
        return split_records(config_from_dict({**known, "dataset_dir": dataset_dir}))[1]
    _, evals = load_datasets(config.get("dataset", ""), dataset_dir, config.get("stage", "sft"),
                             max_samples=config.get("max_samples"), val_size=config.get("val_size") or 0,
                             seed=config.get("seed", 42), eval_names=config.get("eval_dataset") or None,
                             mix_strategy=config.get("mix_strategy") or "concat",
                             interleave_probs=config.get("interleave_probs") or "")
    return evals


def _dev_questions(opts: EvalConfig, name: str, dataset_dir: str, info: dict) -> tuple[str | None, list]:
    """The n-shot examples for mcq dataset `name`: --dev_dataset or `<name>_dev` when registered."""
    from trainer_core.data import read_dataset
    from trainer_core.errors import DataError

    if opts.n_shot <= 0:
        return None, []
    dev_name = opts.dev_dataset or (f"{name}_dev" if f"{name}_dev" in info else None)
    if not dev_name:
        raise UserError(f"--n_shot {opts.n_shot} needs dev examples: register '{name}_dev' in dataset_info.json "
                        "or name one with --dev_dataset")
    dev, problems = read_dataset(dev_name, dataset_dir, "mcq")
    if problems:
        raise DataError(problems)
    return dev_name, dev


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def run_eval(cfg: EvalConfig, log: Callable[[str], None] = print) -> dict:
    """Evaluate one model on one or more datasets and tasks; the body of an eval job.

    Writes, into opts.output_dir: `<task>-<dataset>.json` ({"task", "model", "adapter", "label",
    "dataset", "split", "n_shot", "settings", "time", "seconds", "metrics"}; mcq adds the
    per-question "predictions"), `predictions-<dataset>.jsonl` for generate, and progress lines in
    trainer_log.jsonl. Returns {"output_dir", "label", "model", "adapter", "results": [{"task",
    "dataset", "file", "metrics"}]}.
    """
    from trainer_core.data import load_dataset_info
    from trainer_core.models import load_for_inference
    from trainer_core.tokenization import setup_chat_template

    opts = checked(cfg)  # every key and rule, also for a config built in code
    if not opts.output_dir:
        raise UserError("run_eval needs output_dir: the folder the results go to")
    job_dir = Path(opts.output_dir)
    requested = parse_tasks(opts.task)
    target = resolve_target(opts)
    run_config = target.run_config or {}
    split, dataset_dir, data, formattings = load_eval_data(opts, target)
    info = load_dataset_info(dataset_dir)

    plan: list[tuple[str, str]] = []  # (task, dataset)
    for name, formatting in formattings.items():
        tasks = requested or list(TASKS_FOR_FORMATTING.get(formatting, CHAT_TASKS))
        for task in tasks:
            _check_task(task, name, formatting)
            plan.append((task, name))
    devs = {name: _dev_questions(opts, name, dataset_dir, info) for task, name in plan if task == "mcq"}
    subjects = [s.strip() for s in (opts.subject or "").split(",") if s.strip()]
    for name in devs:
        if not any(not q.get("multi") and (not subjects or q.get("subject") in subjects) for q in data[name]):
            raise UserError(f"dataset '{name}' has no question to score: "
                            + (f"none of subject {', '.join(subjects)} with " if subjects else "none with ")
                            + "a single correct answer (several-letter answers are not supported)")

    cutoff_len = opts.cutoff_len or run_config.get("cutoff_len") or 1024
    template = opts.template or run_config.get("template") or "auto"
    settings = {"cutoff_len": cutoff_len, "batch_size": opts.batch_size, "max_samples": opts.max_samples,
                "dataset_dir": dataset_dir, "template": template, "dtype": opts.dtype, "seed": opts.seed}
    generation = {"max_new_tokens": opts.max_new_tokens, "do_sample": opts.do_sample,
                  "temperature": opts.temperature, "top_p": opts.top_p}

    described = target.model + (f" + adapter {target.adapter}" if target.adapter else "")
    log(f"Evaluating {target.label}: {described}")
    log("Plan: " + "; ".join(f"{task} on {name} ({split}, {len(data[name])} records)" for task, name in plan))
    job_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_for_inference(target.model, target.adapter, opts.dtype, log=log)
    if any(task != "mcq" and formattings[name] != "text" for task, name in plan):
        setup_chat_template(tokenizer, template, log)

    import torch

    torch.manual_seed(opts.seed)
    # Progress counts records; a task's own count (text blocks, dropped samples) is kept within
    # its records' share, and each task ends exactly at its share.
    total = sum(len(data[name]) for _, name in plan)
    start = time.time()
    state: _Progress = {"done": 0, "logged": 0.0}

    def progress_for(task: str, name: str, end: int) -> Callable[[int], None]:
        def progress(count: int) -> None:
            state["done"] = min(state["done"] + count, end)
            if state["done"] >= end or time.time() - state["logged"] >= 1.0:
                runs.log_progress(job_dir, state["done"], total, start, task=task, dataset=name)
                state["logged"] = time.time()
        return progress

    summary: dict[str, Any] = {"output_dir": str(job_dir), "label": target.label, "model": target.model,
                               "adapter": target.adapter, "results": []}
    for task, name in plan:
        examples = data[name]
        task_start = time.time()
        log(f"{task} on {name}: {len(examples)} records ...")
        task_end = state["done"] + len(examples)
        progress = progress_for(task, name, task_end)
        extra: dict[str, Any] = {}
        task_settings = dict(settings)
        if task == "ppl":
            metrics = perplexity(model, tokenizer, examples, cutoff_len, opts.batch_size, progress)
        elif task == "generate":
            task_settings.update(generation)
            answers = generate_answers(model, tokenizer, examples, opts.max_new_tokens, opts.batch_size,
                                       opts.do_sample, opts.temperature, opts.top_p, progress)
            metrics = {**bleu_rouge([a["prediction"] for a in answers], [a["reference"] for a in answers]),
                       "samples": len(answers)}
            _write_jsonl(job_dir / f"predictions-{_safe(name)}.jsonl", answers)
        elif task == "preference":
            metrics = preference_accuracy(model, tokenizer, examples, cutoff_len, opts.batch_size, progress)
        else:
            dev_name, dev = devs[name]
            task_settings["dev_dataset"] = dev_name
            task_settings.update(subjects=subjects or None, cutoff_len=opts.cutoff_len)
            # Prompts are cut (from the left) only when --cutoff_len is given: 5-shot C-Eval prompts
            # run past 1024 tokens, and a cut-off instruction would change the task.
            result = mcq_accuracy(model, tokenizer, examples, dev, opts.n_shot, subjects or None,
                                  batch_size=opts.batch_size, max_length=opts.cutoff_len, progress=progress)
            extra["predictions"] = result.pop("predictions")
            metrics = result
        record = {"task": task, "model": target.model, "adapter": target.adapter, "label": target.label,
                  "run": str(target.run_dir) if target.run_dir else None, "dataset": name, "split": split,
                  "n_shot": opts.n_shot if task == "mcq" else 0, "settings": task_settings,
                  "time": runs.now_iso(), "seconds": round(time.time() - task_start, 2), "metrics": metrics, **extra}
        path = job_dir / f"{task}-{_safe(name)}.json"
        runs.write_json_atomic(path, record)
        if state["done"] < task_end:
            progress(task_end - state["done"])
        log(format_result(record))
        summary["results"].append({"task": task, "dataset": name, "file": str(path), "metrics": metrics})
    return summary


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# 6. Showing results
# ---------------------------------------------------------------------------------------------

METRIC_ROWS = {"ppl": ("loss", "perplexity", "tokens"), "generate": ("bleu-4", "rouge-1", "rouge-2", "rouge-l"),
               "mcq": ("accuracy", "correct", "total", "unsupported"),
               "preference": ("accuracy", "correct", "total", "margin", "per_token_accuracy")}


def _number(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def format_result(result: dict) -> str:
    """One result as a few readable lines."""
    task, metrics = result["task"], result["metrics"]
    shots = f", {result['n_shot']}-shot" if task == "mcq" else ""
    model = result.get("model", "?") + (f" + {result['adapter']}" if result.get("adapter") else "")
    lines = [f"{task} on {result['dataset']} ({result.get('split', '?')}{shots}) — {result.get('label', '')}: {model}"]
    if task == "ppl":
        lines.append(f"  loss {metrics['loss']:.4f}, perplexity {metrics['perplexity']:.3f} "
                     f"over {metrics['tokens']} tokens")
    elif task == "generate":
        lines.append("  " + ", ".join(f"{k} {metrics[k]:.2f}" for k in METRIC_ROWS["generate"])
                     + f" ({metrics.get('samples', '?')} answers)")
    elif task == "preference":
        lines.append(f"  accuracy {metrics['accuracy']:.2f}% ({metrics['correct']}/{metrics['total']} pairs with "
                     f"the chosen answer more likely), mean log-prob margin {metrics['margin']:.3f}; per answer "
                     f"token {metrics['per_token_accuracy']:.2f}%")
    else:
        unsupported = f"; {metrics['unsupported']} multi-answer not scored" if metrics.get("unsupported") else ""
        lines.append(f"  accuracy {metrics['accuracy']:.2f}% ({metrics['correct']}/{metrics['total']}){unsupported}")
        for subject, entry in metrics.get("per_subject", {}).items():
            lines.append(f"    {subject}: {entry['accuracy']:.2f}% ({entry['correct']}/{entry['total']})")
    return "\n".join(lines)


def load_results(path: str | Path) -> list[dict]:
    """The results in a job folder (every `<task>-<dataset>.json`) or one result file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"'{path}' does not exist")
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    results = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read result '{file}': {exc}") from exc
        if isinstance(data, dict) and "task" in data and "metrics" in data:
            results.append(data)
    if not results:
        raise UserError(f"no eval results in '{path}'")
    return results


def compare(result_dirs_or_files: Sequence[str | Path]) -> str:
    """A Markdown table with one column per job folder (or result file) and one row per metric,
    grouped by task and dataset, per-subject accuracy included; with two columns, a Δ column
    (second minus first). A missing value shows as —."""
    columns = [load_results(p) for p in result_dirs_or_files]
    # A result file's job is the folder it lies in.
    jobs = [Path(p).name if Path(p).is_dir() else Path(p).parent.name for p in result_dirs_or_files]
    labels = [results[0].get("label") or job for results, job in zip(columns, jobs)]
    labels = [f"{label} ({job})" if labels.count(label) > 1 else label for label, job in zip(labels, jobs)]
    tables = [{(r["task"], r["dataset"]): r for r in results} for results in columns]
    groups = list(dict.fromkeys(key for table in tables for key in table))
    groups.sort(key=lambda key: TASKS.index(key[0]))  # ppl, generate, mcq; datasets in order of appearance

    rows: list[tuple[str, list[Any]]] = []
    for task, dataset in groups:
        found = [table.get((task, dataset)) for table in tables]
        shots = [(f"{r['split']}, {r['n_shot']}-shot" if task == "mcq" else r["split"]) if r else None
                 for r in found]
        rows.append((f"**{task} · {dataset}** (split)", shots))
        subjects = list(dict.fromkeys(s for r in found if r for s in r["metrics"].get("per_subject", {})))
        for metric in METRIC_ROWS[task]:
            rows.append((metric, [r["metrics"].get(metric) if r else None for r in found]))
        for subject in subjects:
            rows.append((f"accuracy · {subject}",
                         [r["metrics"].get("per_subject", {}).get(subject, {}).get("accuracy") if r else None
                          for r in found]))

    delta = len(labels) == 2
    header = ["metric", *labels] + (["Δ"] if delta else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, values in rows:
        cells = [name, *(_number(v) for v in values)]
        if delta:
            a, b = values
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
            cells.append(f"{b - a:+.4g}" if numeric else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
