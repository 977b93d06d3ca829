"""What the workbench was started with: folders, the preselected model and the language.

Every tab reads these instead of module globals, so tests can build the app on a temporary
folder with a tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
UPLOAD_LIMIT_BYTES = 50 * 1024 * 1024  # an upload is copied into the data folder whole


@dataclass
class AppContext:
    workdir: Path  # root of outputs/ and (by default) data/
    data_dir: Path  # the folder holding dataset_info.json
    model: str = "default"  # the preselected base model: 'default' or a local folder
    lang: str = "zh"
    presets_dir: Path = REPO / "presets"
    max_upload_bytes: int = UPLOAD_LIMIT_BYTES

    @property
    def outputs_root(self) -> Path:
        return self.workdir / "outputs"

    @property
    def configs_dir(self) -> Path:
        return self.workdir / "configs"


def make_context(workdir: str | Path | None = None, data_dir: str | Path | None = None, model: str | None = None,
                 lang: str = "zh") -> AppContext:
    """Absolute folders, so a job started from any working directory finds them."""
    root = Path(workdir or REPO).expanduser().resolve()
    data = Path(data_dir).expanduser().resolve() if data_dir else root / "data"
    chosen = model or "default"
    if chosen != "default":
        chosen = str(Path(chosen).expanduser().resolve())
    return AppContext(workdir=root, data_dir=data, model=chosen, lang=lang)
