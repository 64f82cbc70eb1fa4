"""What one benchmark run or search is asked to do, and where it reads and writes, as one object each."""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """One run of ``model`` on ``dataset`` under the protocol in ``properties_dir``.

    Folders default to ``properties/``, ``results/`` and (for Optuna's SQLite studies) ``saved/`` under ``root``,
    the working directory unless given: an installed package never writes beside itself. The protocol's relative
    ``data_path`` and ``checkpoint_dir`` are read from ``root`` too."""

    model: str
    dataset: str
    config_files: tuple = ()  # the user's yaml files, after the protocol's
    config_dict: dict = field(default_factory=dict)  # settings above the files
    recbole_arguments: tuple = ()  # --key=value for RecBole's Config, above everything
    label: str | None = None  # the record's name (default: the model's)
    overwrite: bool = True  # False: a label that already has a record is refused before any work
    download: bool = False  # let RecBole download a dataset it knows
    root: Path = field(default_factory=Path.cwd)
    properties_dir: Path | None = None
    results_dir: Path | None = None
    saved_dir: Path | None = None

    def __post_init__(self):
        set_field = object.__setattr__.__get__(self)
        set_field("root", Path(self.root).resolve())
        for name, folder in (("properties_dir", "properties"), ("results_dir", "results"), ("saved_dir", "saved")):
            value = getattr(self, name)
            set_field(name, Path(value) if value is not None else self.root / folder)
        set_field("config_files", tuple(map(str, self.config_files)))
        set_field("config_dict", dict(self.config_dict or {}))
        set_field("recbole_arguments", tuple(self.recbole_arguments))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def display_path(self, path):
        return display_path(path, self.root)


def display_path(path, root=None):
    """``path`` relative to ``root`` (the working directory) where it lies inside it, so records read the same on
    every checkout."""
    path, root = Path(path).resolve(), Path(root or Path.cwd()).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


@dataclass(frozen=True)
class Search:
    """An Optuna search: how many trials, where the study lives, and what becomes the ``<Model>-tuned`` row."""

    n_trials: int = 20  # trials with a verdict, earlier workers' included
    timeout: float | None = None  # seconds for this worker
    storage: str | None = None  # an SQLAlchemy URL; default SQLite under saved/optuna/
    study_name: str | None = None  # default <dataset>-<Model>
    search_space: str | None = None  # default properties/hyper/<Model>.yaml
    final_run: str | None = "reuse"  # reuse, retrain, or None for no tuned row
    grace_period: int = 90  # seconds without a heartbeat before another worker's trial counts as dead
