"""Writing files so that a reader (or a resumed run) never sees a half-written one."""
import os
from typing import Callable


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
