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


# --- hostile archives ----------------------------------------------------------------------------------------------

def sparse_member(name, realsize):
    """A GNU sparse member's header (no data blocks) that expands to ``realsize`` bytes when read: the 10 KiB tar
    holding a 1 GiB JPEG. tarfile writes no sparse members, so the header is patched: realsize, checksum."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[483:495] = tarfile.itn(realsize, 12, tarfile.GNU_FORMAT)                 # the GNU header's realsize
    header[148:155] = b"%06o\0" % tarfile.calc_chksums(bytes(header))[0]
    return bytes(header)


def huge_member(name, size):
    """A member header announcing ``size`` bytes, without them (the archive ends there)."""
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _without_end(data):
    end = len(data)
    while end >= 512 and data[end - 512:end] == bytes(512):
        end -= 512
    return data[:end]


GIB = 1 << 30


def test_sparse_and_oversized_members_are_named_not_read(archives):
    """Each would take a GiB of memory when read: refused from its header, named, the rest goes in place."""
    tmp = archives["tmp"]
    train = tmp / "hostile_train.tar"
    with tarfile.open(train, "w") as tar:
        for i, wnid in enumerate(WNIDS):
            data = inner_tar(wnid, 3 + i)
            if wnid == "n04592741":
                data = _without_end(data) + sparse_member(f"{wnid}_99.JPEG", GIB) + bytes(1024)
            if wnid == "n02085620":
                data = _without_end(data) + huge_member(f"{wnid}_99.JPEG", GIB) + bytes(1024)
            add(tar, f"{wnid}.tar", data)
    assert os.path.getsize(train) < 200_000
    result = run_script("-m", "dataset_tools", "imagenet", "--devkit", str(archives["devkit"]), "--train", str(train),
                        "--dest", str(tmp / "out"))
    assert_clean_error(result, "n04592741.tar: n04592741_99.JPEG: a GNU sparse member (refused",
                       "n02085620.tar: n02085620_99.JPEG: 1,073,741,824 bytes, over the 64 MiB a member may have")
    assert sorted(os.listdir(tmp / "out" / "train")) == sorted(set(WNIDS) - {"n04592741", "n02085620"})
    val = tmp / "hostile_val.tar"
    val.write_bytes(_without_end(archives["val"].read_bytes()) + sparse_member("ILSVRC2012_val_00000010.JPEG", GIB)
                    + bytes(1024))
    result = run_script("-m", "dataset_tools", "imagenet", "--devkit", str(archives["devkit"]), "--val", str(val),
                        "--dest", str(tmp / "out"))
    assert_clean_error(result, "ILSVRC2012_val_00000010.JPEG: a GNU sparse member")


def test_a_validation_image_numbered_0_takes_no_label(archives):
    """labels[0 - 1] would be the last image's label: image numbers start at 1."""
    tmp = archives["tmp"]
    val = tmp / "val_with_0.tar"
    with tarfile.open(val, "w") as tar:
        for k in range(len(VAL_IDS)):
            add(tar, f"ILSVRC2012_val_{k + 1:08d}.JPEG", jpeg(500 + k))
        add(tar, "ILSVRC2012_val_00000000.JPEG", jpeg(1))
    result = run_script("-m", "dataset_tools", "imagenet", "--devkit", str(archives["devkit"]), "--val", str(val),
                        "--dest", str(tmp / "out"))
    assert_clean_error(result, "ILSVRC2012_val_00000000.JPEG: no label for it in the devkit's ground truth")
    written = [f for _, _, files in os.walk(tmp / "out") for f in files]
    assert "ILSVRC2012_val_00000000.JPEG" not in written


def test_only_the_devkits_classes_come_from_the_training_tar(archives):
    """An extra ../x.tar (or a tar of a class the devkit does not have) would become a class and shift every
    index: skipped with a line; nothing is written outside --dest."""
    tmp = archives["tmp"]
    train = tmp / "extra_train.tar"
    with tarfile.open(train, "w") as tar:
        add(tar, "../x.tar", inner_tar("n09999999", 2))
        for i, wnid in enumerate(WNIDS):
            add(tar, f"{wnid}.tar", inner_tar(wnid, 3 + i))
        add(tar, "n09999999.tar", inner_tar("n09999999", 2))
    dest = tmp / "nested" / "out"
    result = run_script("-m", "dataset_tools", "imagenet", "--devkit", str(archives["devkit"]), "--train", str(train),
                        "--dest", str(dest))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train: ../x.tar skipped: not a class tar of the devkit" in result.stdout
    assert "train: n09999999.tar skipped" in result.stdout
    assert sorted(os.listdir(dest / "train")) == sorted(WNIDS)
    assert sorted(os.listdir(tmp / "nested")) == ["out"] and not (tmp / "x").exists()


def devkit_with(tmp, name, wnids=WNIDS, labels=VAL_IDS):
    from dataset_tools.demo import write_devkit
    path = tmp / f"{name}.tar.gz"
    write_devkit(str(path), wnids, {w: w for w in wnids}, labels)
    return path


@pytest.mark.parametrize("case, wnids, labels, expected", [
    ("absolute path", ["n02119789", "{tmp}/elsewhere/x", "n04592741", "n02085620"], VAL_IDS,
     "names a class '{tmp}/elsewhere/x', not a WNID (n and 8 digits): refused"),
    ("parent folder", ["n02119789", "../x", "n04592741", "n02085620"], VAL_IDS, "names a class '../x', not a WNID"),
    ("seven digits", ["n02119789", "n0144076", "n04592741", "n02085620"], VAL_IDS, "names a class 'n0144076'"),
    ("a class twice", ["n02119789", "n02119789", "n04592741", "n02085620"], VAL_IDS, "numbers its classes twice"),
    ("label 0", WNIDS, [3, 1, 0, 4, 2, 3, 1, 2, 4, 4], "ground truth holds a label below 1: refused"),
])
def test_hostile_devkits_are_refused_before_anything_is_written(archives, case, wnids, labels, expected):
    tmp = archives["tmp"]
    wnids = [w.format(tmp=tmp) for w in wnids]
    devkit = devkit_with(tmp, "hostile", wnids, labels)
    dest = tmp / "out"
    result = run_script("-m", "dataset_tools", "imagenet", "--devkit", str(devkit), "--train", str(archives["train"]),
                        "--val", str(archives["val"]), "--dest", str(dest))
    assert_clean_error(result, expected.format(tmp=tmp))
    assert not dest.exists() and not (tmp / "elsewhere").exists()


def test_a_sparse_devkit_member_is_refused(archives):
    tmp = archives["tmp"]
    devkit = tmp / "sparse_devkit.tar.gz"
    import gzip
    devkit.write_bytes(gzip.compress(sparse_member("ILSVRC2012_devkit_t12/data/meta.mat", GIB) +
                                     _without_end(raw_member_tar("ILSVRC2012_devkit_t12/data/"
                                                                 "ILSVRC2012_validation_ground_truth.txt", b"1\n"))
                                     + bytes(1024)))
    result = run_script("-m", "dataset_tools", "imagenet", "--devkit", str(devkit), "--val", str(archives["val"]),
                        "--dest", str(tmp / "out"))
    assert_clean_error(result, "cannot read the devkit", "a GNU sparse member")


def raw_member_tar(name, data):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add(tar, name, data)
    return buffer.getvalue()
