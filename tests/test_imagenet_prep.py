"""python -m dataset_tools imagenet: the official archives (a tar of per-class tars, a flat validation tar, the
devkit with meta.mat and the validation ground truth) streamed into class folders; resumable; damage named."""
import io
import os
import tarfile

import numpy as np
import pytest
from helpers import assert_clean_error, run_script
from PIL import Image

# leaf synsets in the devkit's ILSVRC2012_ID order (not sorted by wnid, as the real one is not)
WNIDS = ["n02119789", "n01440764", "n04592741", "n02085620"]
LEMMAS = {"n02119789": "kit fox", "n01440764": "tench", "n04592741": "wing", "n02085620": "Chihuahua"}
VAL_IDS = [3, 1, 1, 4, 2, 3, 1, 2, 4, 4]          # ILSVRC2012_validation_ground_truth.txt: one ID per val image


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def inner_tar(wnid, count, damaged=False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for k in range(count):
            add(tar, f"{wnid}_{k + 10}.JPEG", jpeg(hash((wnid, k)) % 1000))
    data = buffer.getvalue()
    return data[:len(data) // 3] if damaged else data


@pytest.fixture
def archives(tmp_path):
    from dataset_tools.demo import write_devkit
    devkit = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
    write_devkit(str(devkit), WNIDS, LEMMAS, VAL_IDS)

    def train_tar(name, damaged=()):
        path = tmp_path / name
        with tarfile.open(path, "w") as tar:
            for i, wnid in enumerate(WNIDS):
                add(tar, f"{wnid}.tar", inner_tar(wnid, 3 + i, damaged=wnid in damaged))
        return path

    val = tmp_path / "ILSVRC2012_img_val.tar"
    with tarfile.open(val, "w") as tar:
        for k in range(len(VAL_IDS)):
            add(tar, f"ILSVRC2012_val_{k + 1:08d}.JPEG", jpeg(500 + k))
    return dict(devkit=devkit, train=train_tar("ILSVRC2012_img_train.tar"),
                damaged=train_tar("damaged_train.tar", damaged={"n04592741"}), val=val, tmp=tmp_path)


def prepare(archives, dest, train="train", val=True):
    args = ["-m", "dataset_tools", "imagenet", "--devkit", str(archives["devkit"]), "--dest", str(dest)]
    args += ["--train", str(archives[train])] if train else []
    args += ["--val", str(archives["val"])] if val else []
    return run_script(*args)


def test_archives_become_class_folders_with_the_devkits_labels(archives):
    dest = archives["tmp"] / "imagenet"
    result = prepare(archives, dest)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train: 18 images in 4 classes" in result.stdout and "val: 10 images in 4 classes" in result.stdout
    assert sorted(os.listdir(dest / "train")) == sorted(WNIDS)
    for i, wnid in enumerate(WNIDS):
        assert len(os.listdir(dest / "train" / wnid)) == 3 + i
    for k, label in enumerate(VAL_IDS):                       # ILSVRC2012_ID -> wnid through meta.mat
        assert (dest / "val" / WNIDS[label - 1] / f"ILSVRC2012_val_{k + 1:08d}.JPEG").is_file()
    with open(dest / "val" / WNIDS[2] / "ILSVRC2012_val_00000001.JPEG", "rb") as f:
        assert f.read() == jpeg(500)
    from ms_vit import data
    assert data.scan_split(str(dest / "train")) == 18 and data.scan_split(str(dest / "val")) == 10
    assert data.class_names(str(dest), sorted(WNIDS))[sorted(WNIDS).index("n02119789")] == "kit fox"
    assert not [p for p in os.listdir(dest / "train") if p.startswith(".")]


def test_a_damaged_class_is_named_the_others_stay_and_a_rerun_completes(archives):
    dest = archives["tmp"] / "imagenet"
    result = prepare(archives, dest, train="damaged", val=False)
    assert_clean_error(result, "the training images are not all in place", "n04592741.tar")
    assert sorted(os.listdir(dest / "train")) == sorted(w for w in WNIDS if w != "n04592741")   # no half class
    done = os.stat(dest / "train" / "n01440764").st_mtime_ns
    result = prepare(archives, dest)                          # the same command, a good archive: goes on
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(dest / "train")) == sorted(WNIDS)
    assert os.stat(dest / "train" / "n01440764").st_mtime_ns == done          # skipped, not rewritten


def test_a_cut_validation_archive_leaves_no_val_folder_and_resumes(archives):
    dest = archives["tmp"] / "imagenet"
    data = archives["val"].read_bytes()
    cut = archives["tmp"] / "cut_val.tar"
    cut.write_bytes(data[:len(data) // 2])
    result = run_script("-m", "dataset_tools", "imagenet", "--devkit", str(archives["devkit"]), "--val", str(cut),
                        "--dest", str(dest))
    assert_clean_error(result, "the validation images are not all in place", "stay in")
    assert not (dest / "val").exists() and (archives["tmp"] / "imagenet" / "val.partial").is_dir()
    result = prepare(archives, dest, train=None)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sum(len(os.listdir(dest / "val" / w)) for w in os.listdir(dest / "val")) == len(VAL_IDS)


def test_missing_archive_and_bad_devkit(archives, tmp_path):
    assert_clean_error(run_script("-m", "dataset_tools", "imagenet", "--devkit", str(tmp_path / "none.tar.gz"),
                                  "--val", str(archives["val"]), "--dest", str(tmp_path / "x")), "archive not found")
    assert_clean_error(run_script("-m", "dataset_tools", "imagenet", "--devkit", str(archives["val"]),
                                  "--val", str(archives["val"]), "--dest", str(tmp_path / "x")),
                       "cannot read the devkit")
