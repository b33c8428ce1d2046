"""ImageNet-style folder datasets: ``ROOT/{train,val,infer}/<class>/<image>``.

Class index = sorted folder order (for ImageNet wnid folders: the standard order). Class names come from the
devkit's ``data/meta.mat`` (``ROOT/ILSVRC2012_devkit_t12.tar.gz``) when present, else from the built-in
ImageNet-1k table for wnid folders, else from the folder names.
"""
import io
import os
import tarfile
from typing import Callable, Dict, List, Optional

import mindspore as ms
import mindspore.dataset as ds
import numpy as np
from mindspore.dataset import vision

from ..models.vit import ViTConfig
from ..timing import Ticker
from . import augment as augment_module
from .image_files import check_image
from .manifest import ScanManifest, folder_digest

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
_BUILTIN_NAMES = os.path.join(os.path.dirname(__file__), "imagenet_classes.tsv")
_INTERPOLATION = {"bicubic": vision.Inter.BICUBIC, "bilinear": vision.Inter.BILINEAR,
                  "nearest": vision.Inter.NEAREST, "area": vision.Inter.AREA}


class DatasetError(ValueError):
    """A dataset folder that cannot be used; the message says which file or folder and why."""


def list_classes(split_dir: str) -> List[str]:
    """Sorted class folder names of a split; a missing or empty split is an error."""
    if not os.path.isdir(split_dir):
        raise DatasetError(f"split folder not found: {split_dir}")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DatasetError(f"no class folders in {split_dir} (expected {split_dir}/<class>/<image>)")
    return classes


def scan_split(split_dir: str, classes: Optional[List[str]] = None, say: Optional[Callable[[str], None]] = None,
               every: float = 5.0) -> int:
    """Check a split before any work depends on it: class folders known, images present, each image's header
    readable, not truncated and not a decompression bomb (``image_files.check_image``). Returns the image count.

    Bad images stop the run here, all of them named, rather than one of them an epoch later inside the pipeline:
    nothing has been trained yet, and the user decides (remove, re-download) instead of a silently smaller
    dataset. The check is remembered (``ms_vit.data.manifest``): a class folder whose files have not changed since they
    passed is not read again, so a second run lists and stats the files only (ImageNet's 1.28 M: seconds). ``say``
    hears, every ``every`` seconds while images are read, how far the check is, and how it ended."""
    found = list_classes(split_dir)
    if classes is not None:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DatasetError(f"{split_dir} has class folders the model does not know: {', '.join(unknown[:5])}")
    manifest = ScanManifest(split_dir)
    ticker = Ticker(every)
    count = checked = 0
    bad = []
    for name in found:
        folder = os.path.join(split_dir, name)
        file_names, digest = _listing(folder)
        if manifest.passed(name, digest) == len(file_names):
            count += len(file_names)
            continue
        problems = []
        for file_name in file_names:
            path = os.path.join(folder, file_name)
            problem = check_image(path)
            if problem:
                problems.append(f"{path}: {problem}")
            checked += 1
            if say and ticker.due():
                say(f"checking {split_dir}: {checked:,} images read ({checked / ticker.elapsed():,.0f}/s), "
                    f"{count + checked:,} listed so far")
        count += len(file_names)
        bad += problems
        if problems:
            manifest.forget(name)
        else:
            manifest.record(name, digest, len(file_names))
    manifest.save()
    if say and checked and ticker.elapsed() >= every:
        say(f"checked {split_dir}: {count:,} images in {ticker.elapsed():.0f} s ({checked:,} read; the others "
            "unchanged since an earlier check)")
    if bad:
        shown = "\n  ".join(bad[:10]) + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DatasetError(f"{len(bad)} of {count:,} images in {split_dir} cannot be used; remove or replace them "
                           f"(nothing has been done yet):\n  {shown}")
    if count == 0:
        raise DatasetError(f"no images in {split_dir} (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return count


def _listing(folder: str):
    """A class folder's image file names and their digest (names, sizes, modification times)."""
    names, records = [], []
    for entry in os.scandir(folder):
        if entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file():
            stat = entry.stat()
            names.append(entry.name)
            records.append(f"{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}")
    return names, folder_digest(records)


def resolve_classes(folders: List[str], num_classes: int, where: str) -> List[str]:
    """The class list a model with ``num_classes`` outputs uses for these folders (index = position).

    Folders of a 1000-class ImageNet model that are ImageNet wnids (a subset, as the tutorial's dataset) get the
    standard sorted-wnid indices; otherwise the folders, sorted, must be the model's classes."""
    if num_classes == 1000 and len(folders) < 1000:
        wnids = list(builtin_imagenet_names())
        if set(folders) <= set(wnids):
            return wnids
    if len(folders) != num_classes:
        raise DatasetError(f"{where} has {len(folders)} class folders, the model {num_classes} classes")
    return folders


def class_names(root: str, classes: List[str]) -> List[str]:
    """Human-readable names for ``classes`` (folder names): devkit, built-in ImageNet table, or as is."""
    table = {}
    devkit = os.path.join(root, DEVKIT)
    if os.path.isfile(devkit):
        table = read_devkit_names(devkit)
    elif all(c.startswith("n") and c[1:].isdigit() for c in classes):
        table = builtin_imagenet_names()
    return [table.get(c, c) for c in classes]


def builtin_imagenet_names() -> Dict[str, str]:
    with open(_BUILTIN_NAMES, encoding="utf-8") as f:
        return dict(line.rstrip("\n").split("\t", 1) for line in f if line.strip() and not line.startswith("#"))


def read_devkit_names(path: str) -> Dict[str, str]:
    """wnid -> words of the 1000 leaf synsets in the devkit's ``data/meta.mat``."""
    from scipy.io import loadmat
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("data/meta.mat"))
            synsets = loadmat(io.BytesIO(tar.extractfile(member).read()), squeeze_me=True)["synsets"]
    except (OSError, tarfile.TarError, StopIteration, KeyError, ValueError) as exc:
        raise DatasetError(f"cannot read class names from {path}: {exc or 'no data/meta.mat'}") from None
    return {str(s["WNID"]): str(s["words"]) for s in synsets if int(s["num_children"]) == 0}


def short_name(words: str) -> str:
    """The first of a synset's words: 'tench, Tinca tinca' -> 'tench'."""
    return words.split(",")[0].strip()


def crop_transforms(config: ViTConfig):
    """Decode, resize the short side to ``size / crop_pct`` (aspect kept), centre-crop: HWC uint8, what the model
    sees."""
    size = config.image_size
    return [vision.Decode(),
            vision.Resize(int(size / config.crop_pct), interpolation=_INTERPOLATION[config.interpolation]),
            vision.CenterCrop(size)]


def eval_transforms(config: ViTConfig):
    """``crop_transforms``, then normalise, CHW."""
    return crop_transforms(config) + _to_tensor(config)


def train_transforms(config: ViTConfig, min_crop_scale: float = 0.08, hflip: float = 0.5,
                     auto_augment: Optional[str] = None, re_prob: float = 0.0, re_mode: str = "pixel"):
    """Inception-style random resized crop (decoded and resized in one op), horizontal flip, timm's RandAugment
    (``auto_augment``, e.g. ``rand-m9-mstd0.5-inc1``), normalise, CHW, timm's random erasing (``re_prob``)."""
    ops = [vision.RandomCropDecodeResize(config.image_size, scale=(min_crop_scale, 1.0), ratio=(0.75, 1.333),
                                         interpolation=_INTERPOLATION[config.interpolation])]
    if hflip > 0:
        ops.append(vision.RandomHorizontalFlip(prob=hflip))
    if auto_augment:
        from PIL import Image as PILImage
        resample = {"bicubic": PILImage.BICUBIC, "bilinear": PILImage.BILINEAR}.get(config.interpolation,
                                                                                     PILImage.BICUBIC)
        ops.append(augment_module.RandAugment.from_string(auto_augment, fill=tuple(round(255 * m) for m in config.mean),
                                                   interpolation=resample))
    ops += _to_tensor(config)
    if re_prob > 0:
        ops.append(augment_module.RandomErasing(re_prob, re_mode))
    return ops


def _to_tensor(config):
    return [vision.Normalize(mean=[m * 255 for m in config.mean], std=[s * 255 for s in config.std]),
            vision.HWC2CHW()]


def create_dataset(split_dir: str, classes: List[str], config: ViTConfig, batch_size: int, training: bool,
                   num_workers: int = 2, num_shards: Optional[int] = None, shard_id: Optional[int] = None,
                   min_crop_scale: float = 0.08, hflip: float = 0.5, augment: bool = True, shuffle: bool = True,
                   auto_augment: Optional[str] = None, re_prob: float = 0.0, re_mode: str = "pixel",
                   mixup: Optional["augment_module.Mixup"] = None, repeated_aug: int = 0, seed: int = 0):
    """A batched ``ImageFolderDataset`` of (image float32 (B, C, S, S), label int32 (B,)), or with ``mixup``
    (label float32 (B, K) soft targets).

    Training shuffles (unless ``shuffle=False``: the folder order), augments (unless ``augment=False``: the
    evaluation transform; see ``train_transforms``) and drops the last partial batch; evaluation keeps every image
    in order.

    With ``num_shards`` (data-parallel ranks), rank ``shard_id`` reads its own shard: for training MindSpore's
    distributed sampler (padded to equal size so that every rank runs the same number of steps) or, with
    ``repeated_aug`` > 1, timm's repeated augmentation sampler (``augment.RepeatedAugmentSampler``), both shuffled
    with ``seed``, the same on every rank, so that the shards of an epoch are disjoint; the augmentations draw from
    the pipeline's seed (``ds.config``), which ``device.setup`` sets per rank. For evaluation images
    ``shard_id, shard_id + num_shards, ...``, so that the shards together hold every image exactly once."""
    common = dict(extensions=list(_all_cases(IMAGE_EXTENSIONS)), class_indexing={c: i for i, c in enumerate(classes)},
                  num_parallel_workers=num_workers)
    if training and repeated_aug > 1:
        total = ds.ImageFolderDataset(split_dir, **common).get_dataset_size()
        sampler = augment_module.RepeatedAugmentSampler(total, num_shards or 1, shard_id or 0, repeated_aug, seed)
        dataset = ds.ImageFolderDataset(split_dir, sampler=sampler, **common)
    elif training and num_shards:
        dataset = ds.ImageFolderDataset(split_dir, sampler=shard_sampler(num_shards, shard_id, shuffle, seed),
                                        **common)
    elif training or not num_shards:
        dataset = ds.ImageFolderDataset(split_dir, shuffle=training and shuffle, **common)
    else:
        total = ds.ImageFolderDataset(split_dir, **common).get_dataset_size()
        dataset = ds.ImageFolderDataset(split_dir, sampler=ds.SubsetSampler(list(range(shard_id, total, num_shards))),
                                        **common)
    transforms = (train_transforms(config, min_crop_scale, hflip, auto_augment, re_prob, re_mode)
                  if training and augment else eval_transforms(config))
    # The Python steps (RandAugment, erasing, Mixup/CutMix) run in the pipeline's threads: in worker processes
    # (``python_multiprocessing``) DeiT's pipeline delivered 40 % of the images per second
    # (benchmarks/bench_pipeline.py).
    dataset = dataset.map(transforms, input_columns="image", num_parallel_workers=num_workers)
    dataset = dataset.map(ds.transforms.TypeCast(ms.int32), input_columns="label")         # C++: no GIL
    dataset = dataset.batch(batch_size, drop_remainder=training)
    if training and mixup is not None:
        dataset = dataset.map(mixup, input_columns=["image", "label"], num_parallel_workers=1)
    return dataset


def shard_sampler(num_shards: int, shard_id: int, shuffle: bool, seed: int) -> ds.DistributedSampler:
    """MindSpore's distributed sampler with its shuffle seeded by ``seed``: it takes the pipeline's seed at its
    construction (``ds.config.get_seed()`` into ``self.seed``, plus one per iterator it is parsed for;
    ``mindspore/dataset/engine/samplers.py``), which differs per rank, and ranks that shuffle differently deal
    overlapping shards."""
    sampler = ds.DistributedSampler(num_shards, shard_id, shuffle=shuffle)
    sampler.seed = seed
    return sampler


def _all_cases(extensions):
    for ext in extensions:
        yield ext
        yield ext.upper()


def read_image(path: str, config: ViTConfig) -> np.ndarray:
    """One image file -> the part the model sees (``crop_transforms``), HWC uint8: for pictures, and for
    ``to_model_input``."""
    if not os.path.isfile(path):
        raise DatasetError(f"image not found: {path}")
    problem = check_image(path)
    if problem:
        raise DatasetError(f"cannot use image {path}: {problem}")
    try:
        with open(path, "rb") as f:
            image = np.frombuffer(f.read(), np.uint8)
        for op in crop_transforms(config):
            image = op(image)
    except RuntimeError as exc:
        raise DatasetError(f"cannot decode image {path}: {str(exc).splitlines()[0]}") from None
    return image


def to_model_input(crop: np.ndarray, config: ViTConfig) -> ms.Tensor:
    """A ``read_image`` crop -> the evaluation transform's (1, C, S, S) tensor."""
    for op in _to_tensor(config):
        crop = op(crop)
    return ms.Tensor(crop[None].astype(np.float32))


def pad_batch(images: ms.Tensor, size: int) -> ms.Tensor:
    """A batch of fewer than ``size`` images, padded with zero images to ``size``: the shape a compiled graph
    was built for (the caller drops the padding's outputs)."""
    if len(images) >= size:
        return images
    return ms.ops.cat([images, ms.ops.zeros((size - len(images), *images.shape[1:]), images.dtype)])


def load_image(path: str, config: ViTConfig) -> ms.Tensor:
    """One image file -> the evaluation transform's (1, C, S, S) tensor."""
    return to_model_input(read_image(path, config), config)
