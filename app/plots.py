"""Loss curves and a CJK-capable font for matplotlib figures.

The curves are rows (step, value, series) of trainer_log.jsonl keys; `series` names the run and
the quantity (training or evaluation loss; a preference run's rewards and reward accuracy), so
picked runs overlay in one plot. They are drawn by matplotlib
as SVG inside the page: gr.LinePlot (gradio 6.31) neither draws a plot that started empty nor
adds a series (the eval loss, an overlaid run) that appears after its first drawing.
"""

from __future__ import annotations

import html
import io
import threading
from pathlib import Path

from trainer_core.runs import read_log

CJK_FONTS = ["Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "Microsoft YaHei", "SimHei",
             "DejaVu Sans"]


def use_cjk_font() -> None:
    """Chinese axis labels need a CJK font; the first one installed wins (tofu boxes otherwise)."""
    import matplotlib

    matplotlib.rcParams["font.sans-serif"] = CJK_FONTS
    matplotlib.rcParams["font.family"] = "sans-serif"
    matplotlib.rcParams["axes.unicode_minus"] = False


def metric_rows(entries: list[dict], series: dict[str, str], prefix: str = "") -> list[dict]:
    """One row (step, value, series) per logged value of each trainer_log.jsonl key in `series`
    (key -> the series' name), from a run's log entries."""
    rows = []
    for entry in entries:
        step = entry.get("step")
        if step is None:
            continue
        for key, label in series.items():
            if entry.get(key) is not None:
                rows.append({"step": step, "value": float(entry[key]), "series": prefix + label})
    return rows


def curves(run_dirs: list[str], *groups: dict[str, str]) -> list[list[dict]]:
    """The rows of several runs, one list per group of series (metric_rows), each run's log read
    once; with more than one run, each series is prefixed by its run's name."""
    rows: list[list[dict]] = [[] for _ in groups]
    many = len(run_dirs) > 1
    for run_dir in run_dirs:
        prefix = f"{Path(run_dir).name} · " if many else ""
        entries = read_log(run_dir)
        for found, series in zip(rows, groups):
            found += metric_rows(entries, series, prefix)
    return rows


def axis_ranges(rows: list[dict]) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """Axis ranges where matplotlib's own would mislead: one logged step (or a flat curve) would
    get an axis of a few percent around the value (0.96 to 1.04 for a loss of 1.0), which makes
    nothing look like a large change. Such a curve is drawn from 0; None keeps matplotlib's."""
    steps = [r["step"] for r in rows]
    losses = [r["value"] for r in rows]
    x_range = (0.0, max(steps) + 1.0) if max(steps) == min(steps) else None
    low, high = min(losses), max(losses)
    y_range = (0.0, high * 1.15) if low >= 0 and high > 0 and high - low < 0.05 * high else None
    return x_range, y_range


_DRAWING = threading.Lock()  # matplotlib's font and text caches are not thread-safe


def loss_svg(rows: list[dict], step_label: str = "step", empty_text: str = "", value_label: str = "loss",
             gid: str = "loss") -> str:
    """The curves as an inline SVG (each series a line with a marker per logged point, in a
    group with id <gid>-<n>); `empty_text` when there is nothing to draw yet."""
    if not rows:
        return f"<div class='qh-plot qh-plot-empty'>{html.escape(empty_text)}</div>"
    import matplotlib
    import matplotlib.ticker
    from matplotlib.figure import Figure

    with _DRAWING:
        use_cjk_font()
        matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: the browser's CJK font draws it
        figure = Figure(figsize=(7.2, 3.4), dpi=100, layout="constrained")
        ax = figure.add_subplot()
        for n, series in enumerate(dict.fromkeys(r["series"] for r in rows)):
            points = sorted((r["step"], r["value"]) for r in rows if r["series"] == series)
            line, = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3,
                            linewidth=1.6, label=series)
            line.set_gid(f"{gid}-{n}")
        x_range, y_range = axis_ranges(rows)
        if x_range:
            ax.set_xlim(*x_range)
        if y_range:
            ax.set_ylim(*y_range)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # steps are whole numbers
        ax.set_xlabel(step_label)
        ax.set_ylabel(value_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    return f"<div class='qh-plot'>{svg[svg.index('<svg'):]}</div>"


def lr_find_svg(result: dict | None, labels: dict[str, str], empty_text: str = "") -> str:
    """An LR range test's loss against the learning rate (log x axis) as an inline SVG, drawn by
    the core's `trainer_core.lr_find.draw` (the same picture as the job's lr_find.png); `empty_text`
    while there is no result."""
    if not result or not result.get("lrs"):
        return f"<div class='qh-plot qh-plot-empty'>{html.escape(empty_text)}</div>"
    import matplotlib
    from matplotlib.figure import Figure

    from trainer_core.lr_find import draw

    with _DRAWING:
        use_cjk_font()
        matplotlib.rcParams["svg.fonttype"] = "none"
        figure = Figure(figsize=(7.2, 3.4), dpi=100, layout="constrained")
        draw(figure.add_subplot(), result, labels)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    return f"<div class='qh-plot' id='lrfind-svg'>{svg[svg.index('<svg'):]}</div>"
