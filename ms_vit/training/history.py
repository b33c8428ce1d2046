"""What a training run records beside its checkpoints, and continues when it is resumed.

* ``train_history.json``: ``{"step", "epoch", "loss", "lr"}`` at every progress line (the loss averaged since the
  previous line, over every rank);
* ``val_history.json``: ``{"epoch", "step", "top1", "top5", "loss", "num_images"}`` after every epoch;
* ``curves.png``: both drawn (``ms_vit.pictures.plots.plot_curves``), redrawn after every epoch.

The records are written first (``save_records``), then the picture (``draw``): drawing (matplotlib's import alone
takes seconds on a cold start) never delays a record. Files are replaced atomically: an interrupted run leaves the
previous complete version.
"""
import json
import os
from typing import List, Optional

from ..files import write_atomically

TRAIN_FILE, VAL_FILE, CURVES_FILE = "train_history.json", "val_history.json", "curves.png"


def _read(path: str) -> List[dict]:
    try:
        with open(path) as f:
            entries = json.load(f)
        return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    except (OSError, ValueError, RecursionError):
        return []


def _well_formed(entry, key: str) -> bool:
    """A record this module wrote: an integer ``key`` (``step``/``epoch``) and numbers for its figures."""
    figures = ("top1", "top5", "loss") if key == "epoch" else ("loss", "lr")
    return isinstance(entry, dict) and isinstance(entry.get(key), int) and \
        all(isinstance(entry.get(name), (int, float)) and not isinstance(entry.get(name), bool) for name in figures)


def _merge(recorded: List[dict], written: List[dict], key: str, last: int) -> List[dict]:
    """The entries of both lists up to ``key`` = ``last``, one per ``key`` (``recorded``'s first), in order."""
    entries = {}
    for entry in (recorded if isinstance(recorded, list) else []) + written:
        if _well_formed(entry, key) and entry[key] <= last:
            entries.setdefault(entry[key], entry)
    return [entries[k] for k in sorted(entries)]


def write_json(value, path: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(value, f, indent=1)
    write_atomically(path, write)


class RunHistory:
    """The run's records in ``folder``. A resumed run starts from the records its checkpoint carries (``recorded``:
    ``records()`` as saved in it), completed by the files' records up to where it resumes (the evaluation of the
    checkpoint's epoch, written after it); the later entries, of steps it runs again, are recorded again as it runs
    them.

    Args:
        folder: ``--ckpt_save_dir``.
        resumed_epoch: the epochs complete where a resumed run continues (0: a new run, nothing kept).
        resumed_step: the global steps done there (more than ``resumed_epoch``'s when resumed mid-epoch).
        recorded: the records the resumed checkpoint carries, if any.
    """

    def __init__(self, folder: str, resumed_epoch: int = 0, resumed_step: int = 0, recorded: Optional[dict] = None):
        self.folder = folder
        self.train: List[dict] = []
        self.val: List[dict] = []
        if resumed_step:
            recorded = recorded or {}
            self.train = _merge(recorded.get("train", []), _read(os.path.join(folder, TRAIN_FILE)), "step",
                                resumed_step)
            self.val = _merge(recorded.get("val", []), _read(os.path.join(folder, VAL_FILE)), "epoch", resumed_epoch)

    def records(self) -> dict:
        """What a checkpoint carries: ``{"train": [...], "val": [...]}``."""
        return {"train": self.train, "val": self.val}

    def best(self) -> Optional[dict]:
        """The epoch with the best top-1 so far (the first of equals), or None."""
        return max(self.val, key=lambda h: h["top1"], default=None)

    def has_epoch(self, epoch: int) -> bool:
        return any(h.get("epoch") == epoch for h in self.val)

    def save_records(self) -> None:
        """``train_history.json`` and ``val_history.json``."""
        write_json(self.train, os.path.join(self.folder, TRAIN_FILE))
        write_json(self.val, os.path.join(self.folder, VAL_FILE))

    def draw(self) -> None:
        """``curves.png``."""
        from ..pictures.plots import plot_curves
        plot_curves(self.train, self.val, os.path.join(self.folder, CURVES_FILE))

    def save(self) -> None:
        self.save_records()
        self.draw()
