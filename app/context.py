"""What the workbench was started with: folders, the preselected model and the language.

Every tab reads these instead of module globals, so tests can build the app on a temporary
folder with a tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer_core.errors import UserError
from trainer_core.models import qihuang_home
from trainer_core.paths import PRESETS_DIR, REPO_ROOT

UPLOAD_LIMIT_BYTES = 50 * 1024 * 1024  # an upload is copied into the data folder whole


@dataclass
class AppContext:
    workdir: Path  # root of outputs/ and (by default) data/
    data_dir: Path  # the folder holding dataset_info.json
    model: str = "default"  # the preselected base model: 'default' or a local folder
    lang: str = "zh"
    presets_dir: Path = PRESETS_DIR
    max_upload_bytes: int = UPLOAD_LIMIT_BYTES
    allowed_dirs: tuple[Path, ...] = ()  # --allow_path folders, beyond the work folder

    @property
    def outputs_root(self) -> Path:
        return self.workdir / "outputs"

    @property
    def configs_dir(self) -> Path:
        return self.workdir / "configs"

    def writable_roots(self) -> list[Path]:
        """Where the page may write: the work and data folders only (--allow_path adds reading)."""
        return [self.workdir, self.data_dir]

    def data_roots(self) -> list[Path]:
        """Where a dataset_info.json entry's file may lie: the data folder and --allow_path folders."""
        return [self.data_dir, *self.allowed_dirs]

    def readable_roots(self) -> list[Path]:
        """Where a path typed on the page may point: the work and data folders, the model cache,
        the model named at launch, and folders added with --allow_path."""
        roots = [*self.writable_roots(), *self.allowed_dirs, qihuang_home() / "models"]
        if self.model != "default":
            roots.append(Path(self.model))
        return roots

    def page_path(self, text: str | Path, field: str, write: bool = False) -> Path:
        """A path from the page, resolved (relative to the work folder, symlinks followed) and
        refused when it leads outside the folders this workbench may use: anyone who can open
        the page can type a path, so '../' or '/etc' must not reach the file system."""
        raw = str(text or "").strip()
        if not raw:
            raise UserError(f"{field}: empty path")
        path = Path(raw).expanduser()
        path = (path if path.is_absolute() else self.workdir / path).resolve()
        roots = self.writable_roots() if write else self.readable_roots()
        if any(path.is_relative_to(root.resolve()) for root in roots):
            return path
        listed = ", ".join(str(root) for root in roots)
        raise UserError(f"{field}: '{raw}' is outside the folders this workbench may "
                        f"{'write' if write else 'read'} ({listed}); start it with --allow_path DIR to add one")


def make_context(workdir: str | Path | None = None, data_dir: str | Path | None = None, model: str | None = None,
                 lang: str = "zh", allowed_dirs: list[str | Path] | None = None) -> AppContext:
    """Absolute folders, so a job started from any working directory finds them."""
    root = Path(workdir or REPO_ROOT).expanduser().resolve()
    data = Path(data_dir).expanduser().resolve() if data_dir else root / "data"
    chosen = model or "default"
    if chosen != "default":
        chosen = str(Path(chosen).expanduser().resolve())
    allowed = tuple(Path(d).expanduser().resolve() for d in allowed_dirs or ())
    return AppContext(workdir=root, data_dir=data, model=chosen, lang=lang, allowed_dirs=allowed)
