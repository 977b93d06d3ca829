"""Where this checkout lives: the one place the repository root is worked out.

Everything that reads the shipped presets (run presets, DeepSpeed configs, the models catalogue)
or resolves a path relative to the checkout imports it from here. Scripts run by path
(launch.py, bench/, scripts/) find the repository on their own first, to put it on sys.path.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = REPO_ROOT / "presets"
