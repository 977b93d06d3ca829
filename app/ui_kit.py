"""Building components whose text follows the language radio.

`Labels.make(gr.Button, text="train.start")` creates the component with the text in the start
language and remembers which attribute comes from which i18n key; `Labels.relabel(lang)`
returns one update per remembered component, so the language radio re-labels the whole page in
one event. Text that handlers produce (status lines, tables) takes `lang` as an input instead.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.i18n import t

# Component attributes that hold text: the keyword a caller uses -> the attribute in gr.update.
TEXT_ATTRS = {"label": "label", "info": "info", "placeholder": "placeholder", "text": "value"}


class Labels:
    def __init__(self, lang: str) -> None:
        self.lang = lang
        self.components: list[Any] = []
        self.keys: list[dict[str, Any]] = []

    def make(self, cls: type, *, label: str | None = None, info: str | None = None, placeholder: str | None = None,
             text: str | None = None, choice_keys: list[tuple[str, Any]] | None = None, info_text: str | None = None,
             **kwargs: Any) -> Any:
        """A component whose label/info/placeholder/text (its value) are i18n keys, and whose
        `choice_keys` are (i18n key, value) pairs; the value is what handlers receive. Plain
        `choices` (values shown as they are) pass through untranslated; so does `info_text`, for
        an info line a handler keeps up to date (a field's help or its problem)."""
        keys: dict[str, Any] = {name: key for name, key in (("label", label), ("info", info),
                                                            ("placeholder", placeholder), ("text", text)) if key}
        texts: dict[str, Any] = {TEXT_ATTRS[name]: t(key, self.lang) for name, key in keys.items()}
        if choice_keys is not None:
            keys["choices"] = choice_keys
            texts["choices"] = [(t(key, self.lang), value) for key, value in choice_keys]
        if info_text is not None:
            texts["info"] = info_text
        component = cls(**texts, **kwargs)
        return self.remember(component, keys)

    def remember(self, component: Any, keys: dict[str, Any]) -> Any:
        self.components.append(component)
        self.keys.append(keys)
        return component

    def tab(self, key: str, **kwargs: Any) -> gr.Tab:
        return self.remember(gr.Tab(t(key, self.lang), **kwargs), {"label": key})

    def accordion(self, key: str, **kwargs: Any) -> gr.Accordion:
        return self.remember(gr.Accordion(t(key, self.lang), **kwargs), {"label": key})

    def markdown(self, key: str, **kwargs: Any) -> gr.Markdown:
        return self.make(gr.Markdown, text=key, **kwargs)

    def relabel(self, lang: str) -> list[Any]:
        updates = []
        for keys in self.keys:
            change: dict[str, Any] = {TEXT_ATTRS[name]: t(key, lang) for name, key in keys.items() if name != "choices"}
            if "choices" in keys:
                change["choices"] = [(t(key, lang), value) for key, value in keys["choices"]]
            updates.append(gr.update(**change))
        return updates
