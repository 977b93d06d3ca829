"""The Parameters tab's plan panel: will the run form fit, how long will it take (trainer_core/planner.py).

`plan_form(values, ctx, choice)` plans the run form for the hardware the panel picks, with the
datasets' token statistics (`planner.data_statistics`, as `python -m trainer_core plan` counts
them), and returns a `PanelPlan`: the plan, or what keeps the form from being planned.
`plan_html(result, lang)` draws it: memory per GPU as a stacked bar against the card, the verdict,
time and cost, the fixes and the assumptions. `fix_values(changes)` turns a fix's config changes
into form values. Plain functions, no gradio: the tab calls them live as fields change, so the
model's shape and the data statistics are kept (by model, and by data and tokenizer) and typing
a number re-reads neither.
"""

from __future__ import annotations

import dataclasses
import html
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.context import AppContext
from app.form import WIDGET_SPELLING, check
from app.form import _stamps as file_stamps  # the composition's stamps: a changed data file is read again
from app.i18n import t, translate
from trainer_core.catalog import known_model
from trainer_core.config import TrainConfig
from trainer_core.errors import UserError
from trainer_core.planner import (
    GIB,
    GPU_KINDS,
    PARTS,
    DataStats,
    Hardware,
    ModelShape,
    Plan,
    data_statistics,
    detect_hardware,
    find_model_config,
    gpu_hardware,
    load_model_shape,
    plan,
)
from trainer_core.runs import format_duration

THIS_MACHINE = "this"  # the kind picker's first choice: detect_hardware(), this machine's GPUs or its CPU
KINDS = (THIS_MACHINE, *GPU_KINDS)
# One colour per part of the bar (PARTS order), the legend's too.
COLOURS = {"weights": "#4e79a7", "adapters": "#59a14f", "optimizer": "#f28e2b", "gradients": "#e15759",
           "activations": "#76b7b2", "buffers": "#b07aa1", "overhead": "#9c9c9c"}
FIXES_SHOWN = 4
# The form fields a fix may change (planner._fix_steps): what the apply button sets.
FIX_KEYS = ("gradient_checkpointing", "deepspeed", "per_device_train_batch_size", "gradient_accumulation_steps",
            "finetuning_type", "cutoff_len")


@dataclass(frozen=True)
class HardwareChoice:
    """What the panel's own inputs pick: a kind (THIS_MACHINE or a GPU_KINDS name), GPUs per node,
    nodes, and a price per GPU-hour (None: no cost)."""

    kind: str = THIS_MACHINE
    gpus: Any = 1
    nodes: Any = 1
    price: Any = None


@dataclass
class PanelPlan:
    """A plan of the form (`plan`), or `problems` that keep it from one; `notes` on the data."""

    plan: Plan | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hardware: Hardware | None = None  # what it was planned for
    this_machine: bool = False  # the kind picked was THIS_MACHINE (the hardware is what was detected)


# ---- the form as a plan's config --------------------------------------------------------------

def plan_model(values: dict[str, Any], ctx: AppContext) -> str:
    """What the plan reads config.json from: the built-in model, the model folder typed (inside the
    folders the page may read), or, for a known model without a folder, its hub id, which
    planner.find_model_config maps to a shipped config (presets/models/qwen2.5-14b)."""
    source = values.get("model_source") or "builtin"
    path = str(values.get("model_path") or "").strip()
    if source == "builtin":
        return "default"
    if source == "known" and not path:
        model = known_model(str(values.get("known_model") or ""))
        if model is None:
            raise UserError(f"unknown model '{values.get('known_model')}'")
        return str(model["hub_id"])
    if not path:
        raise UserError("model_name_or_path: give the local model folder (the one holding config.json)")
    ctx.page_path(path, "model_name_or_path")
    return path


def number(value: Any, name: str, minimum: float, whole: bool = True, optional: bool = False) -> Any:
    """A panel number as the plan takes it; a UserError naming the field when it is no such number."""
    if value in (None, "") and optional:
        return None
    try:
        found = float(value)
    except (TypeError, ValueError):
        found = float("nan")
    if not found >= minimum or (whole and not found.is_integer()):
        kind = "a whole number" if whole else "a number"
        raise UserError(f"{name}: {value} is not {kind} of at least {minimum:g}")
    return int(found) if whole else found


def hardware_for(choice: HardwareChoice) -> Hardware:
    """The Hardware the panel picks: this machine (detect_hardware with that many GPUs), or a kind
    of the table with GPUs per node and nodes."""
    gpus = number(choice.gpus, t("plan.gpus", "en"), 1)  # named as the panel names it: translated on the page
    nodes = number(choice.nodes, t("plan.nodes", "en"), 1)
    if choice.kind == THIS_MACHINE:
        return detect_hardware(gpus)
    return gpu_hardware(choice.kind, gpus, nodes)


def plan_config(values: dict[str, Any], ctx: AppContext, hardware: Hardware) -> TrainConfig:
    """The form's config for the plan: the form's own checks (app.form.check), but with the model the
    plan reads (plan_model, whose folder need not hold weights here) and the panel's GPU count, since
    the plan is for the hardware picked, not for this machine. A UserError with the form's problems."""
    model = plan_model(values, ctx)
    cfg, fields, general = check({**values, "model_source": "builtin"}, ctx)
    if cfg is None:
        raise UserError("\n".join([*(fields.values()), *general]))
    gpus = hardware.gpus if hardware.gpu else cfg.num_gpus
    return dataclasses.replace(cfg, model_name_or_path=model, num_gpus=gpus)


# ---- kept between calls ----------------------------------------------------------------------------

_LOCK = threading.Lock()  # handlers run in threads
_SHAPES: dict[str, tuple[str, ModelShape]] = {}  # model -> (its config folder, its shape)
_DATA: dict[tuple, tuple[DataStats | None, list[str]]] = {}
DATA_KEPT = 8


def model_shape(model: str) -> tuple[str, ModelShape]:
    """(the folder of its config.json, its shape), read once per model. The built-in model is never
    converted for a plan (that is the run's first step): until it is, the panel says so."""
    with _LOCK:
        known = _SHAPES.get(model)
    if known is not None:
        return known
    folder = find_model_config(model, convert=False)
    found = (str(folder), load_model_shape(str(folder)))
    with _LOCK:
        _SHAPES[model] = found
    return found


def data_stats(cfg: TrainConfig) -> tuple[DataStats | None, list[str]]:
    """planner.data_statistics of the config, kept by what they depend on: the datasets and their
    files (sizes and times), stage, cutoff_len, template and tokenizer (the model)."""
    from trainer_core.config import dataset_mix

    names = dataset_mix(cfg.dataset)[0]
    key = (tuple(names), cfg.dataset_dir, cfg.stage, cfg.cutoff_len, cfg.template, cfg.model_name_or_path,
           cfg.data_engine, file_stamps(Path(cfg.dataset_dir), names))
    with _LOCK:
        known = _DATA.get(key)
    if known is not None:
        return known
    found = data_statistics(cfg, convert=False)  # never the built-in model's conversion: a run does that
    with _LOCK:
        while len(_DATA) >= DATA_KEPT:
            del _DATA[next(iter(_DATA))]
        _DATA[key] = found
    return found


def plan_form(values: dict[str, Any], ctx: AppContext, choice: HardwareChoice) -> PanelPlan:
    """The plan of the run form on the picked hardware, or the problems that keep it from one (an
    invalid form, a number of the panel, a model the planner cannot read): never an exception."""
    try:
        hardware = hardware_for(choice)
        price = number(choice.price, t("plan.price", "en"), 0, whole=False, optional=True)
        cfg = plan_config(values, ctx, hardware)
        folder, shape = model_shape(cfg.model_name_or_path)
        # Tokens with the model's own tokenizer when its folder has one (planner.data_statistics).
        data, notes = data_stats(dataclasses.replace(cfg, model_name_or_path=folder))
        result = plan(cfg, hardware, data=data, price_per_gpu_hour=price, shape=shape)
    except UserError as exc:
        return PanelPlan(problems=[line for line in str(exc).splitlines() if line.strip()])
    return PanelPlan(plan=result, notes=notes, hardware=hardware, this_machine=choice.kind == THIS_MACHINE)


# ---- a fix as form values and words -----------------------------------------------------------------

def fix_values(changes: dict[str, Any]) -> dict[str, Any]:
    """A fix's config changes as the form's widgets hold them (deepspeed '' is the widget's 'none')."""
    return {key: WIDGET_SPELLING[key].get(value, value) if key in WIDGET_SPELLING else value
            for key, value in changes.items()}


def change_words(changes: dict[str, Any], lang: str) -> str:
    """A fix's changes in words: "gradient checkpointing on", "ZeRO-3", "batch 2 × accumulation 8"."""
    words: list[str] = []
    rest = dict(changes)
    if "per_device_train_batch_size" in rest or "gradient_accumulation_steps" in rest:
        words.append(t("plan.change_batch", lang, batch=rest.pop("per_device_train_batch_size", "–"),
                       accumulation=rest.pop("gradient_accumulation_steps", "–")))
    for key, value in rest.items():
        if key == "gradient_checkpointing":
            words.append(t("plan.change_checkpointing_on" if value else "plan.change_checkpointing_off", lang))
        elif key == "deepspeed":
            words.append(t("ds." + (value or "none"), lang))
        elif key == "finetuning_type":
            words.append(t("finetuning_type." + str(value), lang))
        else:
            words.append(f"{key} {value}")
    return " + ".join(words)


# ---- the panel as HTML ------------------------------------------------------------------------------

def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def plan_html(result: PanelPlan, lang: str) -> str:
    """The panel: the problem (briefly), or the bar, the verdict, time and cost, fixes and notes."""
    if result.plan is None:
        lines = "".join(f"<li>{html.escape(translate(p, lang))}</li>" for p in result.problems[:3])
        return (f'<div class="qh-plan" data-state="problem"><p class="qh-plan-problem">⚠ '
                f'{html.escape(t("plan.cannot", lang))}</p><ul>{lines}</ul></div>')
    p = result.plan
    verdict_key = "plan.fits" if p.fits else "plan.does_not_fit"
    on_gpu = result.hardware is not None and result.hardware.gpu is not None
    device = t("plan.per_gpu" if on_gpu else "plan.per_cpu", lang)
    parts = []
    for name in PARTS:
        size = p.parts.get(name, 0) - (p.overlap if name == "activations" else 0)
        if size > 0:
            parts.append((name, size))
    scale = max(p.total, p.capacity, 1)
    segments = "".join(
        f'<div class="qh-plan-seg" data-part="{name}" title="{html.escape(t(f"plan.part_{name}", lang))} '
        f'{gib(size)}" style="width:{100 * size / scale:.3f}%;background:{COLOURS[name]}"></div>'
        for name, size in parts)
    marker = (f'<div class="qh-plan-cap" style="left:{100 * p.capacity / scale:.3f}%" '
              f'title="{html.escape(t("plan.capacity", lang))}"></div>') if p.capacity else ""
    legend = "".join(
        f'<span class="qh-plan-key"><i style="background:{COLOURS[name]}"></i>'
        f'{html.escape(t(f"plan.part_{name}", lang))} {gib(p.parts[name])}</span>'
        for name in PARTS if p.parts.get(name))
    if p.overlap:
        legend += f'<span class="qh-plan-key">{html.escape(t("plan.overlap", lang, size=gib(p.overlap)))}</span>'
    shown = hardware_text(result.hardware, lang) if result.hardware is not None else p.hardware
    hardware = html.escape(t("plan.this_machine_is", lang, hardware=shown) if result.this_machine else shown)
    head = t("plan.head", lang, model=p.model_type, billions=f"{p.parameters / 1e9:.2f}",
             trainable=f"{p.trainable_parameters / 1e6:,.1f}")
    verdict = t(verdict_key, lang, total=gib(p.total), capacity=gib(p.capacity), device=device)
    out = [f'<div class="qh-plan" data-state="{"fits" if p.fits else "does-not-fit"}">',
           f'<p class="qh-plan-head">{html.escape(head)} · {hardware}</p>',
           f'<div class="qh-plan-bar">{segments}{marker}</div>',
           f'<div class="qh-plan-legend">{legend}</div>',
           f'<p class="qh-plan-verdict {"ok" if p.fits else "bad"}">{"✓" if p.fits else "✗"} '
           f'{html.escape(verdict)}</p>',
           f'<p class="qh-plan-time">{html.escape(time_line(p, lang))}</p>']
    if p.gpu_hours is not None:
        cost = ""
        if p.cost is not None:
            cost = t("plan.cost", lang, cost=f"{p.cost:,.2f}", price=f"{p.price_per_gpu_hour:g}")
        out.append(f'<p class="qh-plan-hours">{html.escape(t("plan.gpu_hours", lang, hours=f"{p.gpu_hours:,.1f}"))}'
                   f'{html.escape(cost)}</p>')
    if not p.fits:
        out.append(fixes_html(p, lang, device))
    notes = [*result.notes, *p.notes, *p.assumptions]
    if notes:
        items = "".join(f"<li>{html.escape(translate(note, lang))}</li>" for note in notes)
        out.append(f'<details class="qh-plan-notes"><summary>{html.escape(t("plan.notes", lang))}</summary>'
                   f"<ul>{items}</ul></details>")
    out.append("</div>")
    return "".join(out)


def hardware_text(hardware: Hardware, lang: str) -> str:
    """"4 × A100-40GB", "2 × 8 × H100-80GB", or the CPU with its cores and RAM."""
    if hardware.gpu is None:
        return t("plan.cpu", lang, cores=os.cpu_count() or 1, ram=gib(hardware.memory_bytes))
    return (f"{hardware.nodes} × " if hardware.nodes > 1 else "") + f"{hardware.gpus} × {hardware.kind}"


def time_line(p: Plan, lang: str) -> str:
    """Time per step, per epoch and for the run (what the data statistics allow)."""
    parts = [t("plan.step", lang, seconds=f"{p.step_seconds:.2f}", tokens=f"{p.tokens_per_step:,}")]
    if p.epoch_seconds:
        parts.append(t("plan.epoch", lang, duration=format_duration(p.epoch_seconds), steps=p.steps_per_epoch))
    if p.run_seconds:
        parts.append(t("plan.run", lang, duration=format_duration(p.run_seconds), steps=p.total_steps))
    return " · ".join(parts)


def fixes_html(p: Plan, lang: str, device: str) -> str:
    """The planner's fixes, cheapest first: the first is the one the apply button sets."""
    if not p.fixes:
        return f'<p class="qh-plan-nofix">{html.escape(t("plan.no_fix", lang))}</p>'
    items = []
    for i, fix in enumerate(p.fixes[:FIXES_SHOWN]):
        outcome = t("plan.fix_result", lang, device=device, total=gib(fix["total"]),
                    seconds=f"{fix['step_seconds']:.2f}")
        items.append(f'<li{" class=first" if i == 0 else ""}>{html.escape(change_words(fix["changes"], lang))} → '
                     f"{html.escape(outcome)}</li>")
    return (f'<div class="qh-plan-fixes"><p>{html.escape(t("plan.fixes", lang))}</p><ol>{"".join(items)}</ol></div>')


def first_fix(result: PanelPlan) -> dict[str, Any] | None:
    """The config changes of the plan's first fix, when it does not fit and has one."""
    if result.plan is None or result.plan.fits or not result.plan.fixes:
        return None
    return dict(result.plan.fixes[0]["changes"])


# The panel's look: the bar, its capacity marker, the legend (the page's CSS: app/ui.py adds it).
CSS = """
.qh-plan-bar { position: relative; display: flex; height: 22px; border-radius: 4px; overflow: visible;
  background: var(--block-background-fill); border: 1px solid var(--border-color-primary); margin: 6px 0; }
.qh-plan-seg { height: 100%; }
.qh-plan-cap { position: absolute; top: -4px; bottom: -4px; width: 0; border-left: 3px solid #222; }
.qh-plan-legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 0.85em; }
.qh-plan-key i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; border-radius: 2px; }
.qh-plan-verdict { font-weight: 600; margin: 6px 0 2px; }
.qh-plan-verdict.ok { color: #2e7d32; } .qh-plan-verdict.bad { color: #c62828; }
.qh-plan-head, .qh-plan-time, .qh-plan-hours { margin: 2px 0; }
.qh-plan-fixes ol { margin: 2px 0 2px 1.4em; } .qh-plan-fixes li.first { font-weight: 600; }
.qh-plan-notes { font-size: 0.8em; opacity: 0.8; }
.qh-plan-problem { color: #c62828; }
"""
