"""Writing files so that a reader (or a resumed run) never sees a half-written one; where caches go; the write
points a crash-consistency test stops a process at.

Every file ms_vit writes for a training run passes through ``write_atomically`` (or ``remove`` / ``open_lock``),
which name each write and call ``fault_point`` just before and just after it. ``fault_point`` is where a test makes
a process die or receive a signal at an exact write, instead of at a guessed time (``MS_VIT_FAULT``), and where the
writes are logged in order (``MS_VIT_WRITE_LOG``); with neither variable set it does nothing.

* ``MS_VIT_WRITE_LOG=FILE``: append one line per point reached, ``<side> <label>`` (side ``before``/``after``;
  run events such as ``evaluate`` have the side ``at``).
* ``MS_VIT_FAULT=kill|term``: once per process, at the point ``MS_VIT_FAULT_AT`` names exactly (``at evaluate@step
  10``), or else at the first write point (``before``/``after``) that is not a line of the file ``MS_VIT_FAULT_SKIP``
  (the points a sweep has covered), note the point in the file ``MS_VIT_FAULT_HIT`` and act: ``kill`` sends the
  process SIGKILL (no clean-up of any kind), ``term`` sends it SIGTERM and goes on (as a pre-emption notice).
  ``MS_VIT_FAULT_RANK`` restricts it to one rank under msrun.

A label is the file's base name (or the event's name) and where the run is, ``val_history.json@step 10``:
``set_run_position`` keeps the latter (train.py sets it as steps are done), so the labels of a run are the same in
a process that resumes it.
"""
import os
import signal
import tempfile
from typing import Callable

_position = "start"


def cache_root() -> str:
    """ms_vit's cache folder: ``$MS_VIT_CACHE``, default ``~/.cache/ms_vit`` (compiled kernels, compiled graphs)."""
    return os.environ.get("MS_VIT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ms_vit"))


def set_run_position(position: str) -> None:
    """Where the run is (``"step 10"``), part of the label of every later write point."""
    global _position
    _position = position


def fault_point(name: str, side: str = "at") -> None:
    """A point where a test may stop this process (see the module docstring); ``name``: the file or event."""
    point = f"{side} {name}@{_position}"
    log = os.environ.get("MS_VIT_WRITE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(point + "\n")
    action = os.environ.get("MS_VIT_FAULT")
    if not action or os.environ.get("MS_VIT_FAULT_RANK", str(_rank())) != str(_rank()):
        return
    target = os.environ.get("MS_VIT_FAULT_AT")
    if target is not None and point != target:
        return
    if target is None:                                    # the first write point not yet covered
        skip = os.environ.get("MS_VIT_FAULT_SKIP", "")
        if side == "at" or (os.path.isfile(skip) and point in _lines(skip)):
            return
    hit = os.environ.get("MS_VIT_FAULT_HIT")
    if hit:
        with open(hit, "a") as f:
            f.write(point + "\n")
    del os.environ["MS_VIT_FAULT"]                        # once per process
    os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGTERM)


def _lines(path: str) -> set:
    with open(path) as f:
        return {line.rstrip("\n") for line in f}


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def _rank() -> int:
    return int(os.environ.get("RANK_ID", os.environ.get("MS_NODE_ID", "0")) or 0)


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` into a new temporary file beside ``path`` (same extension: writers that pick the format by it
    keep working; created exclusively, so no planted name or symlink is written through), then rename it over
    ``path``: an interrupted or failed write (a full disk) leaves the previous version, and a failed one removes its
    temporary file."""
    folder, base = os.path.dirname(path) or ".", os.path.basename(path)
    fault_point(base, "before")
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())                  # as open() would create it (mkstemp: 0600)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise
    fault_point(base, "after")


def remove(path: str) -> None:
    """Remove a file the run wrote (an old checkpoint), as a write point."""
    base = os.path.basename(path)
    fault_point(f"remove {base}", "before")
    os.remove(path)
    fault_point(f"remove {base}", "after")


def open_lock(path: str) -> int:
    """Open (create) the lock file ``path`` for ``fcntl.flock``: not through a symlink, mode 0600."""
    fault_point(os.path.basename(path), "before")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    fault_point(os.path.basename(path), "after")
    return fd


def probe_writable(folder: str) -> None:
    """Create and remove a new file in ``folder``: ``OSError`` if it cannot be written."""
    fault_point("probe", "before")
    fd, probe = tempfile.mkstemp(prefix=".ms_vit-write-test-", dir=folder)
    os.close(fd)
    os.remove(probe)
    fault_point("probe", "after")


def foreign_owner(path: str) -> bool:
    """Whether ``path`` (a symlink not followed) belongs to another user than this process's."""
    return os.lstat(path).st_uid != os.getuid()
