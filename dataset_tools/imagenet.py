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

The archives are data from elsewhere, read with bounds (``DatasetError`` names what broke them): the devkit's WNIDs
must be WNIDs (``n`` and 8 digits: one is a folder name here, never a path) and its labels and the validation
images' numbers at least 1; the training tar's class tars must be the devkit's classes (``n01440764.tar`` at its
top; anything else is skipped with a line); GNU sparse members (a small archive that expands to a huge file) are
refused; a member larger than its cap is refused (``MAX_IMAGE_BYTES``, ``MAX_DEVKIT_MEMBER_BYTES``), so memory
stays bounded, and with sparse members refused the bytes written never exceed the bytes read.
"""
import io
import os
import re
import shutil
import tarfile
from typing import Callable, Dict, List, Optional

from ms_vit.data import DEVKIT, DatasetError
from ms_vit.files import write_atomically
from ms_vit.timing import Ticker

from .dest import claim, mark

OFFICIAL = {"classes": 1000, "train": 1_281_167, "val": 50_000}
_GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
WNID = re.compile(r"^n\d{8}$")
# An image is read into memory whole: ImageNet's JPEGs average ~110 KB and the largest are a few MB, so 64 MiB is
# far above any real one and bounds the memory a hostile member can take.
MAX_IMAGE_BYTES = 64 << 20
# The devkit's meta.mat (~2 MB) and ground truth (~0.3 MB) are read whole too; 64 MiB bounds them the same way.
MAX_DEVKIT_MEMBER_BYTES = 64 << 20
MAX_DEVKIT_MEMBERS = 10_000      # the real devkit holds a few dozen files


def member_problem(member: tarfile.TarInfo, cap: int) -> str:
    """Why ``member``'s content is not read (a GNU sparse file; larger than ``cap`` bytes), or ""."""
    if member.issparse():
        return "a GNU sparse member (refused: it expands to more than it holds)"
    if member.size > cap:
        return f"{member.size:,} bytes, over the {cap >> 20} MiB a member may have"
    return ""


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, cap: int) -> bytes:
    """The content of the file ``member``, checked with ``member_problem`` first (``tarfile.TarError`` if it fails)."""
    problem = member_problem(member, cap)
    if problem:
        raise tarfile.TarError(f"{member.name}: {problem}")
    return tar.extractfile(member).read()


def read_devkit(path: str):
    """``(ILSVRC2012_ID -> wnid of the 1,000 leaf synsets, the validation images' ILSVRC2012_IDs in order)``."""
    from scipy.io import loadmat
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {}
            for count, member in enumerate(tar, 1):
                if count > MAX_DEVKIT_MEMBERS:
                    raise tarfile.TarError(f"more than {MAX_DEVKIT_MEMBERS:,} members")
                if member.isfile():
                    members[member.name.split("/", 1)[-1]] = member
            meta = members.get("data/meta.mat")
            truth = members.get(_GROUND_TRUTH)
            if meta is None or truth is None:
                raise DatasetError(f"{path} holds no {'data/meta.mat' if meta is None else _GROUND_TRUTH}: is it "
                                   "ILSVRC2012_devkit_t12.tar.gz?")
            synsets = loadmat(io.BytesIO(read_member(tar, meta, MAX_DEVKIT_MEMBER_BYTES)), squeeze_me=True)["synsets"]
            labels = [int(line) for line in read_member(tar, truth, MAX_DEVKIT_MEMBER_BYTES).decode().split()]
            wnids = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    except (OSError, tarfile.TarError, EOFError, KeyError, ValueError, TypeError) as exc:
        raise DatasetError(f"cannot read the devkit {path}: {exc}") from None
    bad = next((w for w in wnids.values() if not WNID.match(w)), None)
    if bad is not None:
        raise DatasetError(f"the devkit {path} names a class {bad!r}, not a WNID (n and 8 digits): refused")
    if len(set(wnids.values())) != len(wnids) or min(wnids, default=1) < 1:
        raise DatasetError(f"the devkit {path} numbers its classes twice or from below 1: refused")
    if labels and min(labels) < 1:
        raise DatasetError(f"the devkit {path}'s ground truth holds a label below 1: refused")
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
    classes = set(wnids)
    try:
        with tarfile.open(archive, "r|") as outer:
            for member in outer:
                name = member.name[2:] if member.name.startswith("./") else member.name
                wnid = name[:-len(".tar")] if name.endswith(".tar") else None
                if not member.isfile() or wnid not in classes:
                    if member.isfile():
                        say(f"train: {member.name} skipped: not a class tar of the devkit (<wnid>.tar at the top)")
                    continue
                if wnid in counts:
                    continue
                if member.issparse():
                    damaged.append(f"{member.name}: {member_problem(member, 0)}")
                    continue
                partial = os.path.join(dest, f".{wnid}.partial")
                shutil.rmtree(partial, ignore_errors=True)
                os.makedirs(partial)
                try:
                    written = 0
                    with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as inner:
                        for image in inner:
                            if image.isfile() and _is_image(image.name):
                                data = read_member(inner, image, MAX_IMAGE_BYTES)
                                _write_atomic(partial, os.path.basename(image.name), data)
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
                    if index < 1:
                        raise IndexError(index)                  # labels[-1] would be the last image's
                    wnid = wnids[labels[index - 1]]
                except (IndexError, ValueError, KeyError):
                    problems.append(f"{name}: no label for it in the devkit's ground truth")
                    continue
                problem = member_problem(member, MAX_IMAGE_BYTES)
                if problem:
                    problems.append(f"{name}: {problem}")
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
    claim(dest)
    wnids, labels = read_devkit(devkit)
    os.makedirs(dest, exist_ok=True)
    mark(dest, "imagenet")
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
