"""What the start-up image check (``data.scan_split``) found, remembered, so that the next run re-reads only the class
folders that changed.

One small JSON file per split folder in ``$MS_VIT_CACHE/scans/`` (default ``~/.cache/ms_vit``): for every class
folder whose images all passed, a digest of its image files' names, sizes and modification times, and their count.
A folder whose digest still matches is not read again; any change (a file added, removed, replaced or touched)
makes it checked afresh. Memory grows with the number of folders, not of files. An unwritable cache means
checking everything every time (said once). The records decide which images are not read again, so they count only
when the folder and file are the user's own (``files.check_private``); otherwise they are neither read nor written
(one warning) and every image is checked.
"""
import hashlib
import json
import logging
import os
from typing import Dict, List, Optional

from ..files import CacheError, cache_root, check_private, private_cache, write_atomically

logger = logging.getLogger("ms_vit")


def folder_digest(records: List[str]) -> str:
    """The digest of a folder's ``"name\\0size\\0mtime_ns"`` records (in any order)."""
    return hashlib.sha1("\n".join(sorted(records)).encode()).hexdigest()


class ScanManifest:
    """Args:
        split_dir: the split folder the records are about.
    """

    def __init__(self, split_dir: str):
        real = os.path.realpath(split_dir)
        self.path = os.path.join(cache_root(), "scans", hashlib.sha1(real.encode()).hexdigest()[:20] + ".json")
        self.split_dir = real
        self.folders: Dict[str, List] = {}
        self.changed = False
        self.usable = True
        try:
            private_cache("scans")
            if os.path.lexists(self.path):
                check_private(self.path)
        except CacheError as exc:
            logger.warning(f"{exc}; the image check's records are not used (every image is checked)")
            self.usable = False
            return
        except OSError:
            pass                                     # cannot be created: save() says so
        try:
            with open(self.path) as f:
                saved = json.load(f)
            if saved.get("split") == real:
                self.folders = saved.get("folders", {})
        except (OSError, ValueError):
            pass

    def passed(self, folder: str, digest: str) -> Optional[int]:
        """The image count of ``folder`` if it passed with this digest before, else None."""
        record = self.folders.get(folder)
        return record[1] if record and record[0] == digest else None

    def record(self, folder: str, digest: str, count: int) -> None:
        self.folders[folder] = [digest, count]
        self.changed = True

    def forget(self, folder: str) -> None:
        self.changed = self.folders.pop(folder, None) is not None or self.changed

    def save(self) -> None:
        if not self.changed or not self.usable:
            return
        try:
            private_cache("scans")

            def write(tmp):
                with open(tmp, "w") as f:
                    os.chmod(tmp, 0o644)
                    json.dump({"split": self.split_dir, "folders": self.folders}, f)
            write_atomically(self.path, write)
        except CacheError as exc:
            logger.warning(f"{exc}; the image check is not remembered")
        except OSError as exc:
            logger.warning(f"cannot remember the image check in {self.path} ({exc.strerror}): the next run checks "
                           "every image again; set MS_VIT_CACHE to a writable folder")
