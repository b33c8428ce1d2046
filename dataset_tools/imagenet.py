"""ImageNet-1k from its official archives into the folder layout ms_vit reads: ``DEST/{train,val}/<wnid>/<image>``.

    python -m dataset_tools imagenet --train ILSVRC2012_img_train.tar --val ILSVRC2012_img_val.tar \\
        --devkit ILSVRC2012_devkit_t12.tar.gz --dest data/imagenet

* ``ILSVRC2012_img_train.tar``: a tar of 1,000 tars, one per wnid (``n01440764.tar`` holding ``n01440764_*.JPEG``);
* ``ILSVRC2012_img_val.tar``: 50,000 JPEGs in one folder (``ILSVRC2012_val_00000001.JPEG``...);
* ``ILSVRC2012_devkit_t12.tar.gz``: ``data/meta.mat`` (the ``synsets`` table: ``ILSVRC2012_ID`` -> ``WNID``) and
  ``data/ILSVRC2012_validation_ground_truth.txt`` (the ILSVRC2012_ID of each validation image, in file order).

The archives are streamed (read once, front to back; nothing but the images is written). Each class is written into
a hidden folder and renamed into place when complete, so a class folder is whole or absent; a re-run skips the
classes already in place, which makes an interrupted preparation resumable. The validation images go the same way,
all at once. Counts are checked against the devkit (every class present, every validation image labelled) and,
for the complete set, against the official 1,281,167 / 50,000. A damaged inner tar or image is named; the other
classes still go in place, and the run ends with the list (exit status 1).
"""
import io
import os
import shutil
import tarfile
from typing import Callable, Dict, List, Optional

from ms_vit.data import DEVKIT, DatasetError
from ms_vit.files import write_atomically
from ms_vit.progress import Ticker

OFFICIAL = {"classes": 1000, "train": 1_281_167, "val": 50_000}
_GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"


def read_devkit(path: str):
    """``(ILSVRC2012_ID -> wnid of the 1,000 leaf synsets, the validation images' ILSVRC2012_IDs in order)``."""
    from scipy.io import loadmat
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
            meta = members.get("data/meta.mat")
            truth = members.get(_GROUND_TRUTH)
            if meta is None or truth is None:
                raise DatasetError(f"{path} holds no {'data/meta.mat' if meta is None else _GROUND_TRUTH}: is it "
                                   "ILSVRC2012_devkit_t12.tar.gz?")
            synsets = loadmat(io.BytesIO(tar.extractfile(meta).read()), squeeze_me=True)["synsets"]
            labels = [int(line) for line in tar.extractfile(truth).read().decode().split()]
    except (OSError, tarfile.TarError, EOFError, KeyError, ValueError) as exc:
        raise DatasetError(f"cannot read the devkit {path}: {exc}") from None
    wnids = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    return wnids, labels


class Progress:
    """A line every ``every`` seconds, and at the end: what is done, of how much."""

    def __init__(self, say: Callable[[str], None], what: str, total: int, every: float = 5.0):
        self.say, self.what, self.total, self.ticker = say, what, total, Ticker(every)

    def update(self, done: int, extra: str = "") -> None:
        if self.ticker.due() or done == self.total:
            seconds = self.ticker.elapsed()
            rate = done / max(seconds, 1e-9)
            left = f", {(self.total - done) / rate:.0f} s left" if rate and done < self.total else ""
            self.say(f"{self.what}: {done:,} of {self.total:,}{extra} ({seconds:.0f} s{left})")


def _write_atomic(folder: str, name: str, data: bytes) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    write_atomically(os.path.join(folder, name), write)


def _is_image(name: str) -> bool:
    return name.lower().endswith((".jpeg", ".jpg", ".png")) and not name.startswith(".")   # not a write's temporary


def prepare_train(archive: str, dest: str, wnids: List[str], say) -> Dict[str, int]:
    """Stream the tar of per-class tars into ``dest/<wnid>/``; returns the images per class; damaged classes are
    reported by ``DatasetError`` after the others are in place."""
    os.makedirs(dest, exist_ok=True)
    counts, damaged = {}, []
    for wnid in wnids:
        if os.path.isdir(os.path.join(dest, wnid)):
            counts[wnid] = sum(1 for e in os.scandir(os.path.join(dest, wnid)) if _is_image(e.name))
    progress = Progress(say, f"train: classes in place ({len(counts):,} already)", len(wnids))
    try:
        with tarfile.open(archive, "r|") as outer:
            for member in outer:
                wnid = os.path.splitext(os.path.basename(member.name))[0]
                if not member.isfile() or not member.name.endswith(".tar") or wnid in counts:
                    continue
                partial = os.path.join(dest, f".{wnid}.partial")
                shutil.rmtree(partial, ignore_errors=True)
                os.makedirs(partial)
                try:
                    written = 0
                    with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as inner:
                        for image in inner:
                            if image.isfile() and _is_image(image.name):
                                _write_atomic(partial, os.path.basename(image.name), inner.extractfile(image).read())
                                written += 1
                    if written == 0:
                        raise tarfile.TarError("no images in it")
                    os.rename(partial, os.path.join(dest, wnid))
                    counts[wnid] = written
                except (tarfile.TarError, EOFError, OSError) as exc:
                    shutil.rmtree(partial, ignore_errors=True)
                    damaged.append(f"{member.name}: {exc or type(exc).__name__}")
                progress.update(len(counts), f" classes, {sum(counts.values()):,} images")
    except (tarfile.TarError, EOFError) as exc:
        damaged.append(f"{archive} stops early or is damaged ({exc or type(exc).__name__}) after "
                       f"{len(counts):,} classes")
    except OSError as exc:
        raise DatasetError(f"cannot read {archive}: {exc.strerror or exc}") from None
    missing = [w for w in wnids if w not in counts]
    if damaged or missing:
        lines = damaged + ([f"{len(missing)} classes of the devkit are not in {archive}: {', '.join(missing[:5])}"
                            + (" ..." if len(missing) > 5 else "")] if missing else [])
        raise DatasetError("the training images are not all in place:\n  " + "\n  ".join(lines) +
                           "\nthe classes written are complete; run the same command again to go on (with a good "
                           "archive for the damaged ones)")
    return counts


def prepare_val(archive: str, dest: str, wnids: Dict[int, str], labels: List[int], say) -> Dict[str, int]:
    """Stream the flat validation tar into ``dest/<wnid>/`` by the devkit's ground truth; all or nothing."""
    if os.path.isdir(dest):
        return {w: sum(1 for _ in os.scandir(os.path.join(dest, w))) for w in sorted(os.listdir(dest))}
    partial = dest.rstrip(os.sep) + ".partial"
    os.makedirs(partial, exist_ok=True)                # a partial folder of an earlier run: its files are kept
    counts, problems = {}, []
    progress = Progress(say, "val: images in place", len(labels))
    try:
        with tarfile.open(archive, "r|") as tar:
            for member in tar:
                name = os.path.basename(member.name)
                if not member.isfile() or not _is_image(name):
                    continue
                try:
                    index = int(os.path.splitext(name)[0].rsplit("_", 1)[1])     # ILSVRC2012_val_00000001.JPEG
                    wnid = wnids[labels[index - 1]]
                except (IndexError, ValueError, KeyError):
                    problems.append(f"{name}: no label for it in the devkit's ground truth")
                    continue
                folder = os.path.join(partial, wnid)
                os.makedirs(folder, exist_ok=True)
                if not os.path.exists(os.path.join(folder, name)):
                    _write_atomic(folder, name, tar.extractfile(member).read())
                counts[wnid] = counts.get(wnid, 0) + 1
                progress.update(sum(counts.values()))
    except (tarfile.TarError, EOFError) as exc:
        problems.append(f"{archive} stops early or is damaged ({exc or type(exc).__name__}) after "
                        f"{sum(counts.values()):,} images")
    except OSError as exc:
        raise DatasetError(f"cannot read {archive}: {exc.strerror or exc}") from None
    if sum(counts.values()) != len(labels):
        problems.append(f"{archive} holds {sum(counts.values()):,} labelled images, the devkit's ground truth "
                        f"{len(labels):,}")
    if problems:
        raise DatasetError("the validation images are not all in place:\n  " + "\n  ".join(problems[:10]) +
                           f"\nthe images written so far stay in {partial}; run the same command again to go on")
    for folder in os.scandir(partial):               # what an interrupted earlier run left half-written
        for leftover in (e.path for e in os.scandir(folder.path) if e.name.startswith(".")):
            os.remove(leftover)
    os.rename(partial, dest)
    return counts


def prepare(train: Optional[str], val: Optional[str], devkit: str, dest: str,
            say: Callable[[str], None] = print) -> dict:
    """Prepare ``dest`` from the archives given (the devkit always); returns ``{split: (images, classes)}``."""
    for path in (train, val, devkit):
        if path and not os.path.isfile(path):
            raise DatasetError(f"archive not found: {path}")
    wnids, labels = read_devkit(devkit)
    os.makedirs(dest, exist_ok=True)
    shutil.copyfile(devkit, os.path.join(dest, DEVKIT))          # class names for train/eval/infer
    summary = {}
    if train:
        counts = prepare_train(train, os.path.join(dest, "train"), sorted(wnids.values()), say)
        summary["train"] = (sum(counts.values()), len(counts))
    if val:
        counts = prepare_val(val, os.path.join(dest, "val"), wnids, labels, say)
        summary["val"] = (sum(counts.values()), len(counts))
    return summary


def describe(dest: str, summary: dict) -> str:
    lines = [f"ImageNet ready in {dest}"]
    for split, (images, classes) in summary.items():
        official = ""
        if classes == OFFICIAL["classes"]:
            official = " (the official count)" if images == OFFICIAL[split] else \
                f" (the official set has {OFFICIAL[split]:,}: these archives are not the complete ILSVRC2012)"
        lines.append(f"  {split}: {images:,} images in {classes:,} classes{official}")
    return "\n".join(lines)
