"""Base models the workbench knows by name (data only; belongs in presets/models.yaml).

This machine has no model hub, so each needs its weights in a local folder; the entry gives the
chat template to use and the settings its seed scripts used.
"""

from __future__ import annotations

KNOWN_MODELS: list[dict] = [
    {"name": "Qwen2.5-7B-Instruct", "hub_id": "Qwen/Qwen2.5-7B-Instruct", "template": "qwen"},
    {"name": "Qwen2.5-14B-Instruct", "hub_id": "Qwen/Qwen2.5-14B-Instruct", "template": "qwen"},
    {"name": "Qwen2.5-1.5B-Instruct", "hub_id": "Qwen/Qwen2.5-1.5B-Instruct", "template": "qwen"},
    {"name": "Llama-3.1-8B-Instruct", "hub_id": "meta-llama/Llama-3.1-8B-Instruct", "template": "llama3"},
]


def known_model(name: str) -> dict | None:
    return next((m for m in KNOWN_MODELS if m["name"] == name), None)
