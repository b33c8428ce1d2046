"""Where dataset_tools write: a ``--dest`` that holds nothing of the user's, filled beside it and moved into place.

``--dest`` must be absent, an empty folder, or a dataset dataset_tools wrote (it holds ``.ms_vit_dataset``, written
with every dataset): anything else (a file, a link, a folder of other files) is refused in one line before anything
is written, so nothing of the user's is ever overwritten or deleted. A dataset is built in a new hidden folder beside
``--dest`` (``.<name>.<random>.partial``, removed if the build fails) and renamed into place when complete; a dataset
dataset_tools wrote earlier at ``--dest`` is replaced whole.
"""
import os
import shutil
import tempfile

from ms_vit.data import DatasetError

MARKER = ".ms_vit_dataset"
WHAT = ("a new or empty folder, or a dataset dataset_tools wrote earlier (it holds .ms_vit_dataset), which is "
        "replaced; anything else is refused")


def claim(dest: str) -> None:
    """Raise ``DatasetError`` unless ``dest`` may be written: absent, an empty folder, or marked as ours."""
    if os.path.islink(dest) or (os.path.lexists(dest) and not os.path.isdir(dest)):
        raise DatasetError(f"--dest {dest} is a {'link' if os.path.islink(dest) else 'file'}, not a folder: give a "
                           "new or empty folder (nothing was written)")
    if os.path.isdir(dest):
        entries = sorted(os.listdir(dest))
        if entries and MARKER not in entries:
            listed = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise DatasetError(f"--dest {dest} already holds files dataset_tools did not write ({listed}): give a "
                               "new or empty folder (nothing was changed)")


def mark(folder: str, command: str) -> None:
    """Mark ``folder`` as a dataset dataset_tools wrote (``claim`` lets it be written again)."""
    with open(os.path.join(folder, MARKER), "w") as f:
        f.write(f"written by python -m dataset_tools {command}; it may be replaced by the same tool\n")


def staging(dest: str) -> str:
    """A new, empty hidden folder beside ``dest`` (same file system: the finished dataset is renamed into place)."""
    parent, name = os.path.split(os.path.abspath(dest).rstrip(os.sep))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=parent)


def publish(folder: str, dest: str) -> None:
    """Move the finished ``folder`` to ``dest`` (checked again with ``claim``); a dataset of ours there is replaced:
    set aside first, removed once the new one is in place."""
    claim(dest)
    old = None
    if os.path.isdir(dest):
        if os.listdir(dest):
            old = staging(dest)
            os.replace(dest, os.path.join(old, "previous"))
        else:
            os.rmdir(dest)
    os.replace(folder, dest)
    if old:
        shutil.rmtree(old, ignore_errors=True)
