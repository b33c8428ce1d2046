"""Writing files so that a reader (or a resumed run) never sees a half-written one, each write a write point
(``ms_vit.fault_points``); where caches go, and that they are the user's own.

What ms_vit finds in its cache it runs (the compiled kernel library) or trusts (weights verified earlier, compiled
graphs, the image check's records), so a cache folder or file counts only when it is the user's: owned by the user
running ms_vit, writable by no one else, and not a symbolic link (``os.lstat``: a link is refused, not followed).
The cache folders ms_vit creates are created ``0700``. Anything else is refused with ``CacheError``, one line naming
the path and the fix."""
import os
import stat
import tempfile
from typing import Callable

from .fault_points import fault_point


class CacheError(RuntimeError):
    """A cache folder or file that is not the user's own (see the module docstring); the message says which."""


def cache_root() -> str:
    """ms_vit's cache folder: ``$MS_VIT_CACHE``, default ``~/.cache/ms_vit`` (compiled kernels, compiled graphs)."""
    return os.environ.get("MS_VIT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ms_vit"))


def _owner(uid: int) -> str:
    try:
        import pwd
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def check_private(path: str, folder: bool = False) -> None:
    """Raise ``CacheError`` unless ``path`` is a folder (``folder``) or regular file that the current user owns and
    that neither its group nor others can write; a symbolic link is refused (``os.lstat``: not followed)."""
    info = os.lstat(path)
    problem = None
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symbolic link (ms_vit follows none in its cache)"
    elif folder and not stat.S_ISDIR(info.st_mode):
        problem = "is not a folder"
    elif not folder and not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif info.st_uid != os.geteuid():
        problem = f"belongs to {_owner(info.st_uid)}, not to you"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"can be written by {'its group' if info.st_mode & stat.S_IWGRP else 'others'} " \
                  f"(mode {stat.S_IMODE(info.st_mode):o})"
    if problem:
        raise CacheError(f"the cache {'folder' if folder else 'file'} {path} {problem}: ms_vit trusts only a cache "
                         "of your own; remove it, or set MS_VIT_CACHE to a folder of yours that only you can write")


def private_cache(*parts: str) -> str:
    """``$MS_VIT_CACHE/<parts>``: created where missing (each new folder ``0700``), and the root and each folder
    below it checked with ``check_private``. Raises ``CacheError``, or ``OSError`` when it cannot be created."""
    root = cache_root()
    folders = [root] + [os.path.join(root, *parts[:i + 1]) for i in range(len(parts))]
    for folder in folders:
        if not os.path.lexists(folder):
            os.makedirs(os.path.dirname(folder) or ".", mode=0o700, exist_ok=True)
            try:
                os.mkdir(folder, 0o700)
            except FileExistsError:                     # another process made it meanwhile: checked below
                pass
        check_private(folder, folder=True)
    return folders[-1]


def check_private_tree(folder: str) -> None:
    """``check_private`` on ``folder`` and everything below it (a cache entry written by another program, such as
    MindSpore's compiled graphs)."""
    check_private(folder, folder=True)
    for parent, folders, files in os.walk(folder):
        for name in folders:
            check_private(os.path.join(parent, name), folder=True)
        for name in files:
            check_private(os.path.join(parent, name))


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


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
