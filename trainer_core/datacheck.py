"""`data check`: every problem in a dataset, and the statistics that tell whether it is right.

Character statistics come from the data module; token statistics tokenize the records exactly
as training will (same template, same cutoff), so "share over cutoff_len" is the real share.
Preference datasets (pairs, KTO) are checked by their registry entry alone, whatever the stage.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from trainer_core.config import PREFERENCE_STAGES, TrainConfig, dataset_mix
from trainer_core.data import (
    load_dataset_info,
    preference_kind,
    preference_stats,
    read_dataset,
    read_preference_dataset,
    text_stats,
)
from trainer_core.errors import Problem
from trainer_core.preference import stage_data_problem


def check_datasets(cfg: TrainConfig, with_tokens: bool = True, log=print) -> list[dict]:
    """One report per dataset in cfg.dataset: problems, text stats and (optionally) token stats."""
    tokenizer = None
    info = load_dataset_info(cfg.dataset_dir)
    names = dataset_mix(cfg.dataset)[0]
    if with_tokens:
        from trainer_core.models import load_tokenizer, resolve_model_path
        from trainer_core.tokenization import setup_chat_template

        tokenizer = load_tokenizer(resolve_model_path(cfg.model_name_or_path, log), cfg.trust_remote_code)
        if cfg.stage in ("sft", *PREFERENCE_STAGES) or any(preference_kind(info.get(name, {})) for name in names):
            setup_chat_template(tokenizer, cfg.template, log)
    from trainer_core.arrow_data import check_large, print_progress, use_arrow

    reports = []
    for name in names:
        kind = preference_kind(info.get(name, {}))
        # A dpo or kto run's dataset that its stage cannot train on is a problem of the check too.
        wrong = stage_data_problem(cfg.stage, "dataset", name, kind) if cfg.stage in PREFERENCE_STAGES else None
        mismatch = [Problem(name, None, None, wrong)] if wrong else []
        if kind:
            # Preference data (pairs or KTO) is checked by its registry entry alone, whatever the stage.
            checked = check_preference(name, cfg, tokenizer)
            checked["problems"] = mismatch + checked["problems"]
            reports.append(checked)
            continue
        # Multiple-choice sets are for evaluation only, but checking them is what this command is for.
        mcq = info.get(name, {}).get("formatting") == "mcq"
        stage = "mcq" if mcq else "sft" if cfg.stage in PREFERENCE_STAGES else cfg.stage
        report: dict[str, Any] = {"name": name}
        if not mcq and use_arrow(cfg.data_engine, [name], cfg.dataset_dir, stage):
            # Too large to hold: every record checked by worker processes, statistics from a sample.
            large = check_large(name, cfg.dataset_dir, stage, workers=cfg.preprocessing_num_workers,
                                progress=print_progress(log))
            examples, problems = large.sample, large.problems
            report.update(records=large.records, valid=large.valid, totals=large.totals, sampled=len(examples))
        else:
            examples, problems = read_dataset(name, cfg.dataset_dir, stage)
        report.update(problems=mismatch + problems, text=text_stats(examples))
        if tokenizer is not None and examples and not mcq:
            from trainer_core.tokenization import special_token_problems

            report["tokens"] = token_stats(examples, tokenizer, dataclasses.replace(cfg, stage=stage))
            report["problems"] = mismatch + problems + special_token_problems(examples, tokenizer)
        reports.append(report)
    return reports


def check_preference(name: str, cfg: TrainConfig, tokenizer: Any = None) -> dict:
    """The report of one preference dataset: its problems and statistics; with a tokenizer also
    the prompts too long for cutoff_len and the token counts of both sides as training encodes them."""
    records, problems = read_preference_dataset(name, cfg.dataset_dir)
    report: dict[str, Any] = {"name": name, "problems": problems, "text": preference_stats(records)}
    if tokenizer is not None and records:
        from trainer_core.tokenization import encode_preference, prompts_over_cutoff

        _, stats = encode_preference(records, tokenizer, cfg.cutoff_len)
        summary = stats.summary()
        over = sum(1 for n in stats.lengths if n > cfg.cutoff_len)
        summary.update(cutoff_len=cfg.cutoff_len, share_over_cutoff=round(over / len(stats.lengths), 4))
        report["tokens"] = summary
        report["problems"] = problems + prompts_over_cutoff(records, tokenizer, cfg.cutoff_len)
    return report


def token_stats(examples: list[dict], tokenizer: Any, cfg: TrainConfig) -> dict:
    from trainer_core.tokenization import encode_pt, encode_sft

    encode = encode_sft if cfg.stage == "sft" else encode_pt
    _, stats = encode(examples, tokenizer, cfg.cutoff_len)
    summary = stats.summary()
    over = sum(1 for n in stats.lengths if n > cfg.cutoff_len)
    summary["cutoff_len"] = cfg.cutoff_len
    summary["share_over_cutoff"] = round(over / len(stats.lengths), 4) if stats.lengths else 0.0
    summary["tokens_per_char"] = round(sum(stats.lengths) / max(1, _total_chars(examples)), 3)
    return summary


def _total_chars(examples: list[dict]) -> int:
    return sum(len(ex["text"]) if "text" in ex else sum(len(m["content"]) for m in ex["messages"])
               for ex in examples)


def format_report(reports: list[dict]) -> str:
    lines = []
    for report in reports:
        text, problems = report["text"], report["problems"]
        lines.append(f"== {report['name']} ==")
        if "sampled" in report:
            lines.append(f"  {report['records']:,} records checked, {report['valid']:,} without a problem; the "
                         f"statistics below are of a sample of {report['sampled']:,} spread over the file(s)")
        lines.append("  " + ", ".join(f"{k}: {_fmt(v)}" for k, v in text.items()))
        tokens = report.get("tokens")
        if tokens:
            lines.append(f"  tokens per record: p50 {tokens.get('tokens_p50')}, p95 {tokens.get('tokens_p95')}, "
                         f"max {tokens.get('tokens_max')}; over cutoff_len {tokens['cutoff_len']}: "
                         f"{tokens['share_over_cutoff']:.1%}; dropped with no answer left: "
                         f"{tokens['dropped_no_trainable']}; samples: {tokens['samples']}; "
                         f"trainable tokens: {tokens['trainable_tokens']:,}")
        if problems:
            totals = report.get("totals")
            count = sum(totals.values()) if totals else len(problems)
            lines.append(f"  {count:,} problem(s)" + (", the first of each kind:" if totals else ":"))
            lines += [f"    - {p}" for p in problems[:50]]
            if len(problems) > 50:
                lines.append(f"    ... and {len(problems) - 50} more")
            if totals:
                lines.append("  by kind:")
                lines += [f"    {n:,} in all: {kind}" for kind, n in totals.items()]
        else:
            lines.append("  no problems")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)
