"""Data: ImageNet-style folder datasets and their pipelines (``folders.py``), the image check (``image_files.py``)
and its memory (``manifest.py``), DeiT's augmentation with timm's semantics (``augment.py``), ImageNet's class names
(``imagenet_classes.tsv``).

May import: ``ms_vit.models`` (the config's preprocessing), and the base (``ms_vit.files``, ``ms_vit.timing``)."""
from .folders import (
    DEVKIT,
    IMAGE_EXTENSIONS,
    DatasetError,
    builtin_imagenet_names,
    class_names,
    create_dataset,
    crop_transforms,
    eval_transforms,
    list_classes,
    load_image,
    pad_batch,
    read_devkit_names,
    read_image,
    resolve_classes,
    scan_split,
    shard_sampler,
    short_name,
    to_model_input,
    train_transforms,
)

__all__ = ["DEVKIT", "IMAGE_EXTENSIONS", "DatasetError", "builtin_imagenet_names", "class_names", "create_dataset",
           "crop_transforms", "eval_transforms", "list_classes", "load_image", "pad_batch", "read_devkit_names",
           "read_image", "resolve_classes", "scan_split", "shard_sampler", "short_name", "to_model_input",
           "train_transforms"]
