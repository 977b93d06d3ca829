"""What the tabs of one page share: one small typed object, made by app/ui.py.

Each tab module builds its own components into a dict of its own (`build` returns it) and wires
its handlers from that dict and this object (`wire(ctx, page, own)`); no tab reads another
tab's components or imports another tab. What is shared is only what a user carries from one
tab to the next: the language, the datasets picked on the Data tab and how they mix, the run
form of the Parameters tab, the tabs themselves (to act when one is opened).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.form import ORDER


@dataclass
class Page:
    lang: Any  # the language switch (gr.Radio, "zh" or "en")
    initial_values: dict[str, Any]  # the run form a newcomer sees (app.form.initial_values)
    tabs: dict[str, Any] = field(default_factory=dict)  # tab name -> its gr.Tab
    tab_set: Any = None  # the gr.Tabs holding them: a handler that returns gr.Tabs(selected=name) opens one
    datasets: Any = None  # the Data tab's training selection (multiselect gr.Dropdown)
    dataset_dir: Any = None  # the Data tab's data folder (gr.Textbox)
    weights: Any = None  # the Data tab's mixing weights, one per picked dataset (gr.Textbox)
    mix_strategy: Any = None  # the Data tab's mix strategy (gr.Dropdown)
    form_fields: dict[str, Any] = field(default_factory=dict)  # the Parameters tab's widgets, by form name
    status_lines: list[Any] = field(default_factory=list)  # one-off messages re-written in a new language
    load_events: list[tuple[Callable, list[Any], list[Any]]] = field(default_factory=list)  # run on page open

    def form_inputs(self) -> list[Any]:
        """The run form's components in app.form.ORDER: what a handler reads the form from."""
        data_tab = {"datasets": self.datasets, "dataset_dir": self.dataset_dir, "weights": self.weights,
                    "mix_strategy": self.mix_strategy}
        return [self.form_fields[name] if name in self.form_fields else data_tab[name] for name in ORDER]
