"""ms_vit.data: class lists and names, pipelines, clear errors for bad folders."""
import os
import re
import shutil

import numpy as np
import pytest
from bounds import U, assert_within

from ms_vit import data, variant_config
from ms_vit.data import DatasetError

CONFIG = variant_config("vit_ti_16_224", image_size=32, patch_size=8)


def test_classes_sorted_and_named_from_devkit(imagenet_sample):
    classes = data.list_classes(os.path.join(imagenet_sample, "train"))
    assert classes == sorted(classes) and len(classes) == 19 and all(c.startswith("n") for c in classes)
    names = data.class_names(imagenet_sample, classes)
    assert "goose" in names and "spoonbill" in names
    assert names[classes.index("n02108422")] == "bull mastiff"


def test_names_builtin_for_wnid_folders_without_devkit(imagenet_sample, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(os.path.join(imagenet_sample, "val"), root / "val")
    classes = data.list_classes(str(root / "val"))
    names = data.class_names(str(root), classes)
    assert names[classes.index("n02108422")] == "bull mastiff"
    assert data.class_names(str(root), ["cats", "dogs"]) == ["cats", "dogs"]


def test_builtin_table_is_imagenet_order():
    table = data.builtin_imagenet_names()
    wnids = list(table)
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    assert table[wnids[0]].startswith("tench") and data.short_name(table[wnids[0]]) == "tench"


def test_eval_pipeline_keeps_every_image_and_aspect(imagenet_sample):
    split = os.path.join(imagenet_sample, "val")
    classes = data.list_classes(split)
    dataset = data.create_dataset(split, classes, CONFIG, batch_size=8, training=False, num_workers=1)
    batches = list(dataset.create_tuple_iterator(output_numpy=True))
    assert [len(labels) for _, labels in batches] == [8, 8, 4]          # no image dropped
    images = np.concatenate([b[0] for b in batches])
    assert images.shape == (20, 3, 32, 32) and images.dtype == np.float32
    assert -2.2 < images.min() < 0 < images.max() < 2.7                  # ImageNet-normalised
    labels = np.concatenate([b[1] for b in batches])
    files = sorted((c, f) for c in classes for f in os.listdir(os.path.join(split, c)))
    assert sorted(labels.tolist()) == sorted(classes.index(c) for c, _ in files)


def test_train_pipeline_random_and_drops_partial_batch(imagenet_sample):
    split = os.path.join(imagenet_sample, "train")
    dataset = data.create_dataset(split, data.list_classes(split), CONFIG, batch_size=8, training=True, num_workers=1)
    assert dataset.get_dataset_size() == 2
    first = [b[0] for b in dataset.create_tuple_iterator(output_numpy=True)]
    assert all(b.shape == (8, 3, 32, 32) for b in first)


def test_load_image_matches_eval_pipeline(imagenet_sample):
    split = os.path.join(imagenet_sample, "val")
    cls = data.list_classes(split)[0]
    path = os.path.join(split, cls, os.listdir(os.path.join(split, cls))[0])
    single = data.load_image(path, CONFIG).asnumpy()
    dataset = data.create_dataset(split, [cls], CONFIG, batch_size=1, training=False, num_workers=1)
    from_pipeline = next(dataset.create_tuple_iterator(output_numpy=True))[0]
    # the same crop, normalised by the same operator ((x - mean) / std: 2 roundings each, and the constants'):
    # 4 U of the value, twice
    assert_within(single, from_pipeline, 8 * U * np.abs(from_pipeline), "one image vs the pipeline")


def test_missing_and_empty_splits(tmp_path):
    with pytest.raises(DatasetError, match="split folder not found"):
        data.list_classes(str(tmp_path / "val"))
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        data.scan_split(str(tmp_path / "val"))
    (tmp_path / "val" / "cat").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        data.scan_split(str(tmp_path / "val"))


def test_unreadable_image_is_named(imagenet_sample, tmp_path):
    split = tmp_path / "train"
    shutil.copytree(os.path.join(imagenet_sample, "train"), split)
    bad = split / data.list_classes(str(split))[3] / "broken.jpg"
    bad.write_bytes(b"this is not a JPEG")
    with pytest.raises(DatasetError, match=f"{bad}: not a readable image"):
        data.scan_split(str(split))


def test_unknown_class_folder_in_val(imagenet_sample):
    split = os.path.join(imagenet_sample, "val")
    with pytest.raises(DatasetError, match="class folders the model does not know"):
        data.scan_split(split, data.list_classes(split)[1:])


def test_imagenet_subset_keeps_standard_indices(imagenet_sample):
    folders = data.list_classes(os.path.join(imagenet_sample, "val"))
    classes = data.resolve_classes(folders, 1000, "val")
    assert len(classes) == 1000 and classes.index("n02108422") == 243     # bull mastiff, as foolbox labels it
    assert data.resolve_classes(["a", "b"], 2, "x") == ["a", "b"]
    with pytest.raises(DatasetError, match="has 2 class folders, the model 3 classes"):
        data.resolve_classes(["a", "b"], 3, "x")


def _grey_images(root, count):
    """``count`` uniform PNG images, image i of grey level 20 * i, in two class folders."""
    from PIL import Image
    for i in range(count):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (20 * i,) * 3).save(folder / f"{i:02d}.png")
    return str(root)


def _images_read(dataset, epochs):
    """Per epoch, the grey-level ids of the images read (uniform images stay uniform under crops and flips)."""
    iterator = dataset.create_tuple_iterator(num_epochs=epochs, output_numpy=True)
    mean, std = CONFIG.mean[0] * 255, CONFIG.std[0] * 255
    return [sorted(int(round((grey * std + mean) / 20)) for images, _ in iterator for grey in images[:, 0, 0, 0])
            for _ in range(epochs)]


def test_training_shards_are_disjoint_in_every_epoch(tmp_path):
    """Data parallelism: with the same dataset seed on every rank, the shuffled shards of an epoch do not overlap
    (11 images: each of 2 shards is padded to 6, so exactly one image is read twice)."""
    import mindspore.dataset as ds
    split = _grey_images(tmp_path / "train", 11)
    ds.config.set_seed(7)
    epochs = [_images_read(data.create_dataset(split, ["a", "b"], CONFIG, 1, training=True, num_workers=1,
                                               num_shards=2, shard_id=rank), 3) for rank in range(2)]
    for epoch in range(3):
        first, second = epochs[0][epoch], epochs[1][epoch]
        assert len(first) == len(second) == 6
        assert set(first) | set(second) == set(range(11)) and len(set(first) & set(second)) == 1
    assert epochs[0][0] != epochs[0][1] or epochs[0][1] != epochs[0][2]          # reshuffled between epochs


def test_evaluation_shards_hold_every_image_once(tmp_path):
    split = _grey_images(tmp_path / "val", 11)
    shards = [_images_read(data.create_dataset(split, ["a", "b"], CONFIG, 4, training=False, num_workers=1,
                                               num_shards=2, shard_id=rank), 1)[0] for rank in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(11)) and len(shards[0]) == 6 and len(shards[1]) == 5


def test_the_image_check_is_remembered_per_class_folder(imagenet_sample, tmp_path, monkeypatch):
    """A second check reads only the class folders whose files changed (names, sizes, modification times):
    a file damaged behind the check's back, size and time kept, goes unnoticed; touched, it is read and named."""
    import shutil
    monkeypatch.setenv("MS_VIT_CACHE", str(tmp_path / "cache"))
    split = tmp_path / "train"
    shutil.copytree(os.path.join(imagenet_sample, "train"), split)
    said = []
    assert data.scan_split(str(split), say=said.append, every=0) == 20
    assert said[-1].startswith(f"checked {split}: 20 images") and "(20 read" in said[-1]
    assert len(os.listdir(tmp_path / "cache" / "scans")) == 1
    victim = next(split.glob("*/*.jpg"))
    stat = victim.stat()
    victim.write_bytes(b"\0" * stat.st_size)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    said.clear()
    assert data.scan_split(str(split), say=said.append, every=0) == 20 and said == []      # nothing read
    os.utime(victim)                                                                        # touched
    with pytest.raises(data.DatasetError, match=f"{victim}: not a readable image"):
        data.scan_split(str(split), say=said.append, every=0)
    assert re.search(r"20 images in \d+ s \(1 read; the others unchanged since an earlier check\)$", said[-1])
