"""Writing files so that a reader (or a resumed run) never sees a half-written one; where caches go."""
import os
from typing import Callable


def cache_root() -> str:
    """ms_vit's cache folder: ``$MS_VIT_CACHE``, default ``~/.cache/ms_vit`` (compiled kernels, compiled graphs)."""
    return os.environ.get("MS_VIT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ms_vit"))


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path`` (same extension: writers that pick the format by it
    keep working), then rename it over ``path``: an interrupted or failed write (a full disk) leaves the previous
    version, and a failed one removes its temporary file."""
    base, ext = os.path.basename(path), os.path.splitext(path)[1]
    tmp = os.path.join(os.path.dirname(path) or ".", f".{base}.tmp{ext}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
