"""Base models the workbench knows by name, read from presets/models.yaml.

An offline machine has no model hub, so each needs its weights in a local folder; the entry
gives the chat template to use with it. The Parameters tab offers them, and
`python -m trainer_core models` lists them.
"""

from __future__ import annotations

import yaml

from trainer_core.config import KNOWN_MODELS_FILE
from trainer_core.paths import PRESETS_DIR

MODELS_FILE = PRESETS_DIR / KNOWN_MODELS_FILE
KNOWN_MODELS: list[dict] = yaml.safe_load(MODELS_FILE.read_text(encoding="utf-8")) or []


def known_model(name: str) -> dict | None:
    return next((m for m in KNOWN_MODELS if m["name"] == name), None)
