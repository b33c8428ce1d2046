"""Fetch and unpack the ImageNet-subset zip that the MindSpore ViT tutorial uses, and check its layout."""
import os
import shutil
import zipfile

from ms_vit.data import DEVKIT, IMAGE_EXTENSIONS, DatasetError

TUTORIAL_URL = "https://mindspore-website.obs.cn-north-4.myhuaweicloud.com/notebook/datasets/vit_imagenet_dataset.zip"
REQUIRED_SPLITS = ("train", "val")
OPTIONAL_SPLITS = ("infer",)


def download_dataset(url: str, dest: str, timeout: float = 60.0) -> dict:
    """Download the zip at ``url``, unpack it and move its dataset root to ``dest``.

    The zip may hold the splits at its top or inside one folder (the tutorial's holds ``dataset/``). Nothing is
    left at ``dest`` unless the download, the unpacking and the layout check all succeed. Returns
    ``{split: (images, classes)}``."""
    from download import download
    if os.path.exists(dest) and os.listdir(dest):
        raise DatasetError(f"{dest} exists and is not empty; remove it or choose another --dest")
    staging = os.path.abspath(dest).rstrip(os.sep) + ".download"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        try:
            download(url, staging, kind="zip", replace=True, progressbar=True, timeout=timeout, verbose=False)
        except zipfile.BadZipFile:
            raise DatasetError(f"{url} is not a zip file") from None
        except (OSError, ValueError, RuntimeError) as exc:   # URLError/HTTPError; `download` wraps them
            reason = [line for line in str(exc).splitlines() if line.strip()][-1:] or [type(exc).__name__]
            raise DatasetError(f"cannot download {url}: {reason[0].removeprefix('Error: ')}") from None
        root = find_dataset_root(staging)
        counts = check_layout(root)
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        if os.path.isdir(dest):
            os.rmdir(dest)
        shutil.move(root, dest)
        return counts
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
