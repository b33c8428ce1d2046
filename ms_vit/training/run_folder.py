"""A training run's folder (``--ckpt_save_dir``): one run at a time, resumable checkpoints, nothing half-written.

* ``.lock``: held (``fcntl.flock``) by the writing process for the whole run. A second run in the same folder is
  refused; the operating system drops the lock when the process ends, however it ends (SIGKILL included), so the
  next run, or ``--resume auto``, takes it.
* ``vit-<epoch>_<step>.ckpt``: the network, optimizer state, EMA and position in the run, written by MindSpore
  (``<name>.tmp``, then renamed): complete or absent. ``<step>`` counts the steps done in ``<epoch>``: all of them
  after an epoch, fewer when the run was interrupted. The ``keep`` newest are kept.
* ``latest()``: the newest checkpoint that reads, for ``--resume auto``; never a silent new run over damaged ones.
"""
import fcntl
import glob
import logging
import os
import re
from typing import List, Optional, Tuple

from .. import files
from ..weights import checkpoint
from .guard import RunStopped

logger = logging.getLogger("ms_vit")
_CHECKPOINT = re.compile(r"^vit-(\d+)_(\d+)\.ckpt$")


class RunFolderError(ValueError):
    """The folder cannot hold this run: unwritable, in use, or a checkpoint cannot be written."""


class RunFolder:
    """Args:
        folder: ``--ckpt_save_dir``.
        keep: epoch checkpoints kept (``--keep_checkpoint_max``).
    """

    def __init__(self, folder: str, keep: int = 2):
        self.folder, self.keep = folder, max(1, keep)
        self._lock_fd: Optional[int] = None

    def check_writable(self) -> None:
        """Prove, without leaving a trace, that the folder can be created and written: a new file is created and
        removed in it, or in its nearest existing parent. A folder that belongs to another user is refused: its
        checkpoints could be anyone's. Raises ``RunFolderError``."""
        parent = os.path.abspath(self.folder)
        while not os.path.lexists(parent):
            parent = os.path.dirname(parent)
        if os.path.isdir(self.folder) and files.foreign_owner(self.folder):
            raise RunFolderError(f"--ckpt_save_dir {self.folder} belongs to another user: its checkpoints are not "
                                 "yours to resume or replace; choose a folder of your own")
        try:
            if not os.path.isdir(parent):
                raise NotADirectoryError(20, "Not a directory")
            files.probe_writable(parent)
        except OSError as exc:
            raise RunFolderError(f"cannot write to --ckpt_save_dir {self.folder}: {exc.strerror}") from None

    def check_free(self) -> None:
        """Raise ``RunFolderError`` if another process holds the folder's lock (a run in progress); takes nothing."""
        path = os.path.join(self.folder, ".lock")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return                                 # no lock file (a new folder), or one open() will refuse
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            raise self._in_use(fd) from None
        finally:
            os.close(fd)

    def _in_use(self, fd: int) -> RunFolderError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        return RunFolderError(f"{self.folder} is in use by another training run (process {owner}): wait for it to "
                              "stop, then continue it with --resume auto, or choose another --ckpt_save_dir")

    def open(self) -> "RunFolder":
        """Create the folder (``check_writable`` first), take the lock, and remove what a killed run left
        half-written. Raises ``RunFolderError``."""
        try:
            os.makedirs(self.folder, exist_ok=True)
            fd = files.open_lock(os.path.join(self.folder, ".lock"))
        except OSError as exc:
            raise RunFolderError(f"cannot write to --ckpt_save_dir {self.folder}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            error = self._in_use(fd)
            os.close(fd)
            raise error from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd
        for leftover in glob.glob(os.path.join(self.folder, "*.tmp")) + \
                glob.glob(os.path.join(self.folder, ".*.tmp*")):
            os.remove(leftover)
        return self

    def checkpoints(self) -> List[Tuple[int, int, str]]:
        """``(epoch, step in epoch, path)`` of the run's checkpoints, oldest first."""
        found = []
        for name in os.listdir(self.folder) if os.path.isdir(self.folder) else []:
            match = _CHECKPOINT.match(name)
            if match:
                found.append((int(match[1]), int(match[2]), os.path.join(self.folder, name)))
        return sorted(found)

    def held(self) -> List[str]:
        """The names of what a run left in the folder: its epoch checkpoints and best.ckpt."""
        names = [os.path.basename(path) for *_, path in self.checkpoints()]
        return names + (["best.ckpt"] if os.path.isfile(os.path.join(self.folder, "best.ckpt")) else [])

    def newest(self) -> str:
        """The newest epoch checkpoint's path, or "none yet" (for messages)."""
        found = self.checkpoints()
        return found[-1][2] if found else "none yet"

    def latest(self):
        """The newest checkpoint that reads back whole, as ``(path, params, meta)`` (``checkpoint.read``), or None when
        the folder holds none. Newer ones that do not read (empty, truncated, corrupted; without the CRC that
        ``checkpoint.save`` writes: cut between two entries) are passed over in one warning that names them and the
        one resumed from instead. When checkpoints exist and none reads, raises ``CheckpointError`` naming them: a
        new run would overwrite ``best.ckpt`` and the history, so the user decides."""
        unreadable = []
        for _, _, path in reversed(self.checkpoints()):
            try:
                params, meta = checkpoint.read(path, require_crc=True)
            except checkpoint.CheckpointError as exc:
                unreadable.append(str(exc))
                continue
            if unreadable:
                logger.warning(f"{'; '.join(unreadable)}: passing over {'it' if len(unreadable) == 1 else 'them'}, "
                               f"resuming from {path} instead")
            return path, params, meta
        if unreadable:
            raise checkpoint.CheckpointError(
                f"no checkpoint in {self.folder} can be read ({'; '.join(unreadable)}): --resume auto does not start "
                "a new run over them; move them away to start one, or continue from another with --resume FILE")
        return None

    def save(self, name: str, save) -> str:
        """``save(path)`` for ``<folder>/<name>``; the older epoch checkpoints beyond ``keep`` are then removed. A
        failed write (a full disk) leaves the earlier files intact and raises ``RunStopped`` saying so."""
        path = os.path.join(self.folder, name)
        self.write(path, lambda: save(path))
        if _CHECKPOINT.match(name):
            self.prune()
        return path

    def prune(self) -> None:
        """Remove the epoch checkpoints beyond the ``keep`` newest."""
        for *_, old in self.checkpoints()[:-self.keep]:
            files.remove(old)

    def write(self, what: str, write) -> None:
        """``write()``; an ``OSError`` (a full disk) becomes ``RunStopped`` naming ``what`` and the intact files."""
        try:
            write()
        except OSError as exc:
            kept = [os.path.basename(p) for *_, p in self.checkpoints()]
            kept += ["best.ckpt"] if os.path.exists(os.path.join(self.folder, "best.ckpt")) else []
            raise RunStopped(f"cannot write {what}: {exc.strerror or exc}; the files written before are intact "
                             f"(checkpoints: {', '.join(kept) or 'none yet'}): free space, then continue with "
                             "--resume auto") from None
