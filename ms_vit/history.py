"""What a training run records beside its checkpoints, and continues when it is resumed.

* ``train_history.json``: ``{"step", "epoch", "loss", "lr"}`` at every progress line (the loss averaged since the
  previous line, over every rank);
* ``val_history.json``: ``{"epoch", "step", "top1", "top5", "loss", "num_images"}`` after every epoch;
* ``curves.png``: both drawn (``ms_vit.plots.plot_curves``), redrawn after every epoch.

Files are replaced atomically: an interrupted run leaves the previous complete version.
"""
import json
import os
from typing import List, Optional

from .files import write_atomically

TRAIN_FILE, VAL_FILE, CURVES_FILE = "train_history.json", "val_history.json", "curves.png"


def _read(path: str) -> List[dict]:
    try:
        with open(path) as f:
            entries = json.load(f)
        return entries if isinstance(entries, list) else []
    except (OSError, ValueError):
        return []


def write_json(value, path: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(value, f, indent=1)
    write_atomically(path, write)


class RunHistory:
    """The run's records in ``folder``; a resumed run keeps the entries up to where it resumes.

    Args:
        folder: ``--ckpt_save_dir``.
        resumed_epoch: the epochs complete where a resumed run continues (0: a new run, nothing kept).
        resumed_step: the global steps done there (more than ``resumed_epoch``'s when resumed mid-epoch).
    """

    def __init__(self, folder: str, resumed_epoch: int = 0, resumed_step: int = 0):
        self.folder = folder
        self.train: List[dict] = []
        self.val: List[dict] = []
        if resumed_step:
            self.train = [h for h in _read(os.path.join(folder, TRAIN_FILE)) if h.get("step", 0) <= resumed_step]
            self.val = [h for h in _read(os.path.join(folder, VAL_FILE)) if h.get("epoch", 0) <= resumed_epoch]

    def best(self) -> Optional[dict]:
        """The epoch with the best top-1 so far (the first of equals), or None."""
        return max(self.val, key=lambda h: h["top1"], default=None)

    def save(self) -> None:
        from .plots import plot_curves
        write_json(self.train, os.path.join(self.folder, TRAIN_FILE))
        write_json(self.val, os.path.join(self.folder, VAL_FILE))
        plot_curves(self.train, self.val, os.path.join(self.folder, CURVES_FILE))
