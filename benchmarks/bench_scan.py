"""The start-up scan's cost at scale: ``data.scan_split`` (header, end marker and size of every image) on a
generated tree of small JPEGs, against opening each file with Pillow (what the scan did before).

    python benchmarks/bench_scan.py [--files 100000] [--classes 1000] [--repeats 3]

Prints seconds per 100,000 files (median of the repeats; the page cache is warm after the first pass, as on a
machine that has read the dataset before; a cold network filesystem adds its per-file latency on top).
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _machine  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ms_vit import data  # noqa: E402


def make_tree(root: str, files: int, classes: int) -> None:
    """``files`` small JPEG files (~1 KB) in ``classes`` folders."""
    rng = np.random.default_rng(0)
    template = os.path.join(root, "template.jpg")
    Image.fromarray((rng.random((32, 40, 3)) * 255).astype(np.uint8)).save(template, quality=90)
    raw = open(template, "rb").read()
    os.remove(template)
    for i in range(files):
        folder = os.path.join(root, f"n{i % classes:08d}")
        if i < classes:
            os.makedirs(folder)
        with open(os.path.join(folder, f"img_{i:07d}.JPEG"), "wb") as f:
            f.write(raw)


def pillow_open_all(root: str) -> int:
    count = 0
    for entry in os.scandir(root):
        for image in os.scandir(entry.path):
            with Image.open(image.path) as im:
                im.verify()
            count += 1
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(_machine.describe(), flush=True)
    root = tempfile.mkdtemp(prefix="ms_vit_scan_")
    try:
        start = time.perf_counter()
        make_tree(root, args.files, args.classes)
        print(f"generated {args.files:,} files in {args.classes} folders in {time.perf_counter() - start:.1f} s")
        per = 100_000 / args.files
        for name, scan in (("data.scan_split", data.scan_split), ("Pillow open + verify", pillow_open_all)):
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                count = scan(root)
                times.append(time.perf_counter() - start)
            assert count == args.files
            print(f"{name:22s} {statistics.median(times) * per:5.2f} s per 100,000 files "
                  f"(runs: {', '.join(f'{t:.2f}' for t in times)} s)")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
