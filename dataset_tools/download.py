"""Fetch and unpack the ImageNet-subset zip that the MindSpore ViT tutorial uses, and check its layout.

The zip comes from elsewhere: it is fetched by ``ms_vit.downloads`` (https only, 60 s without data ends it;
``file://`` reads a local zip), and checked before anything is unpacked: the sum of its members' uncompressed sizes
must stay within ``MAX_EXPANSION`` times the zip's own size (a zip bomb is refused) and fit on the disk. Python's
``zipfile`` keeps member names inside the folder (no ``..``, no absolute paths) and stops each member at its
declared size (a member that lies about it fails its CRC).
"""
import os
import shutil
import zipfile

from ms_vit.data import DEVKIT, IMAGE_EXTENSIONS, DatasetError
from ms_vit.downloads import DownloadError, download, mirrored

from . import dest as destination

TUTORIAL_URL = "https://mindspore-website.obs.cn-north-4.myhuaweicloud.com/notebook/datasets/vit_imagenet_dataset.zip"
REQUIRED_SPLITS = ("train", "val")
OPTIONAL_SPLITS = ("infer",)
# An image dataset's zip is mostly JPEG/PNG, which deflate barely shrinks (~1x); 20x leaves room for text and
# uncompressed formats and refuses zip bombs (ratios of 1,000x and more).
MAX_EXPANSION = 20


def download_dataset(url: str, dest: str, timeout: float = 60.0) -> dict:
    """Download the zip at ``url``, unpack it and move its dataset root to ``dest`` (``dest.claim``: a new or empty
    folder, or a dataset dataset_tools wrote).

    The zip may hold the splits at its top or inside one folder (the tutorial's holds ``dataset/``). Nothing is
    left at ``dest`` unless the download, the unpacking and the layout check all succeed. Returns
    ``{split: (images, classes)}``."""
    destination.claim(dest)
    staging = destination.staging(dest)
    try:
        archive = os.path.join(staging, "download.zip")
        try:
            download(mirrored(url), archive, timeout=timeout, label="dataset")
        except DownloadError as exc:
            raise DatasetError(f"cannot download {url}: {exc}") from None
        unpacked = os.path.join(staging, "unpacked")
        unpack(archive, unpacked)
        os.remove(archive)
        root = find_dataset_root(unpacked)
        counts = check_layout(root)
        destination.mark(root, "download")
        destination.publish(root, dest)
        return counts
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def unpack(archive: str, folder: str) -> None:
    """Unpack the zip ``archive`` into ``folder`` after checking its total size (``MAX_EXPANSION``, free disk)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            total = sum(info.file_size for info in zf.infolist())
            size = os.path.getsize(archive)
            if total > MAX_EXPANSION * size + (1 << 20):
                raise DatasetError(f"the zip ({size:,} bytes) would unpack to {total:,} bytes, more than "
                                   f"{MAX_EXPANSION}x its size: refused (a zip bomb?)")
            free = shutil.disk_usage(os.path.dirname(archive)).free
            if total > free:
                raise DatasetError(f"the zip unpacks to {total / 1e9:.1f} GB; {free / 1e9:.1f} GB are free")
            zf.extractall(folder)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise DatasetError(f"the download is not a readable zip file ({exc})") from None


def find_dataset_root(folder: str) -> str:
    """``folder`` or the single folder inside it that holds ``train/`` and ``val/``."""
    for candidate in [folder] + [os.path.join(folder, e) for e in sorted(os.listdir(folder))]:
        if all(os.path.isdir(os.path.join(candidate, s)) for s in REQUIRED_SPLITS):
            return candidate
    found = ", ".join(sorted(os.listdir(folder))[:5]) or "nothing"
    raise DatasetError(f"the zip does not hold an ImageNet-style dataset (train/ and val/ class folders); "
                       f"it holds: {found}")


def check_layout(root: str) -> dict:
    """Per split ``(images, classes)``; train/ and val/ must have class folders with images."""
    counts = {}
    for split in REQUIRED_SPLITS + OPTIONAL_SPLITS:
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            continue
        classes = [e for e in os.scandir(split_dir) if e.is_dir()]
        images = sum(1 for c in classes for f in os.scandir(c.path) if f.name.lower().endswith(IMAGE_EXTENSIONS))
        if split in REQUIRED_SPLITS and (not classes or not images):
            raise DatasetError(f"the zip's {split}/ has {len(classes)} class folders and {images} images")
        counts[split] = (images, len(classes))
    return counts


def describe(dest: str, counts: dict) -> str:
    lines = [f"dataset ready in {dest}"]
    lines += [f"  {split}: {images} images in {classes} classes" for split, (images, classes) in counts.items()]
    if os.path.isfile(os.path.join(dest, DEVKIT)):
        lines.append(f"  class names: {DEVKIT}")
    return "\n".join(lines)
