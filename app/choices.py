"""What several tabs offer to pick from: the datasets of a data folder and the training runs.

Tabs never import each other; what two of them show lives here (no gradio).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.context import AppContext
from trainer_core import jobs, runs
from trainer_core.data import load_dataset_info
from trainer_core.errors import UserError


def dataset_names(dataset_dir: str | Path) -> list[str]:
    """Names in dataset_info.json, or none when the folder has no (readable) registry."""
    try:
        return list(load_dataset_info(dataset_dir))
    except UserError:
        return []


def dataset_choices(dataset_dir: str | Path) -> list[tuple[str, str]]:
    """(label, name) pairs: the label shows the format so SFT and PT data are told apart."""
    try:
        info = load_dataset_info(dataset_dir)
    except UserError:
        return []
    return [(f"{name} · {entry.get('formatting', 'alpaca')}", name) for name, entry in info.items()]


def page_dataset_choices(ctx: AppContext, dataset_dir: str) -> list[tuple[str, str]]:
    """dataset_choices for a folder typed on the page: none when it is outside the allowed folders."""
    try:
        return dataset_choices(ctx.page_path(dataset_dir, "dataset_dir"))
    except UserError:
        return []


def list_runs(ctx: AppContext) -> list[dict]:
    """Training runs under outputs/, newest first (eval and export jobs live inside them)."""
    if not ctx.outputs_root.is_dir():
        return []
    return [r for r in jobs.list_runs(ctx.outputs_root) if (Path(r["run_dir"]) / runs.CONFIG_FILE).is_file()]


def finished_runs(ctx: AppContext) -> list[str]:
    """Runs with a result to use: a LoRA adapter/ or a full model/, newest first."""
    return [r["run_dir"] for r in list_runs(ctx)
            if (Path(r["run_dir"]) / "adapter" / "adapter_config.json").is_file()
            or (Path(r["run_dir"]) / "model" / "config.json").is_file()]


def run_choices(ctx: AppContext) -> list[tuple[str, str]]:
    return [(Path(d).name, d) for d in finished_runs(ctx)]


def refreshed_run_picker(ctx: AppContext, run_dir: str | None) -> dict[str, Any]:
    """A run picker's new choices and value (for gr.update): the finished runs, keeping the
    picked one if it still exists, else the newest."""
    choices = run_choices(ctx)
    value = run_dir if run_dir in [d for _, d in choices] else (choices[0][1] if choices else None)
    return {"choices": choices, "value": value}
