"""Base models the workbench knows by name, read from presets/models.yaml.

An offline machine has no model hub, so each needs its weights in a local folder; the entry
gives the chat template to use with it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

MODELS_FILE = Path(__file__).resolve().parent.parent / "presets" / "models.yaml"
KNOWN_MODELS: list[dict] = yaml.safe_load(MODELS_FILE.read_text(encoding="utf-8")) or []


def known_model(name: str) -> dict | None:
    return next((m for m in KNOWN_MODELS if m["name"] == name), None)
