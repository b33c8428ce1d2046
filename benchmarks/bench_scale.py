"""Start-up, memory and throughput at ImageNet's size: ImageNet-shaped trees of 10 k, 100 k and 1.28 M small JPEGs
(1,000 wnid folders; validation 1/25.6 of training, as ImageNet's 50,000 to 1,281,167), train.py and eval.py run on
each as a user runs them, with a ViT so small that the model costs nothing.

    python benchmarks/bench_scale.py                          # all three sizes; about 40 minutes, ~10 GB of disk
    python benchmarks/bench_scale.py --sizes 10000 100000

Per size, train.py three times: cold page cache and no remembered image check (a first run), cold with it, warm
with it; each to its third progress line, then SIGTERM (it saves and exits). Reported: seconds to the first line
that says what will be trained on how many images, seconds to the first progress line, the process's peak memory
(max RSS), the data pipeline's steady img/s (the third progress line's: the model costs nothing), and eval.py on
the validation split (warm): seconds to its first progress line, img/s, seconds in all (the per-epoch evaluation's
cost). Cold = ``echo 3 > /proc/sys/vm/drop_caches`` (root; else said, and only warm figures are real).
"""
import argparse
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import _machine
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", "vit_ti_16_224", "--image_size", "32", "--patch_size", "8", "--embed_dim", "32", "--depth", "1",
        "--num_heads", "1", "--mlp_dim", "64"]


def jpegs(count: int = 32):
    """Small JPEGs of ~4.4 KB (ImageNet-shaped trees for start-up, not accuracy)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        image = np.kron(base, np.ones((8, 8, 1), np.uint8)) + rng.integers(0, 40, (64, 64, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def build_tree(root: str, train: int) -> None:
    """``root/{train,val}/<wnid>/*.JPEG``: ``train`` images over 1,000 folders, val 1/25.6 of it."""
    if os.path.isfile(os.path.join(root, ".complete")):
        return
    shutil.rmtree(root, ignore_errors=True)
    payloads = jpegs()
    for split, total in (("train", train), ("val", max(1000, round(train / 25.6)))):
        for c in range(1000):
            folder = os.path.join(root, split, f"n{1440764 + c:08d}")
            os.makedirs(folder)
            for k in range(total * (c + 1) // 1000 - total * c // 1000):
                with open(os.path.join(folder, f"n{1440764 + c:08d}_{k}.JPEG"), "wb") as f:
                    f.write(payloads[(c + k) % len(payloads)])
    open(os.path.join(root, ".complete"), "w").close()


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def run_until(command, env, stop_after: str, count: int, timeout: float = 3600):
    """Run ``command``; the time of its first stdout line matching each pattern of interest, and SIGTERM once
    ``count`` lines start with ``stop_after``. Returns (events, lines, peak MB)."""
    start = time.time()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)
    events, lines, seen = {}, [], 0
    for line in process.stdout:
        now = time.time() - start
        lines.append(line.rstrip())
        for key, pattern in (("first_line", r"training |.* images in "), ("progress", r"epoch \d+/\d+ step "),
                             ("eval_progress", r"evaluated ")):
            if key not in events and re.match(pattern, line):
                events[key] = now
        if line.startswith(stop_after):
            seen += 1
            if seen == count:
                process.send_signal(signal.SIGTERM)
        if now > timeout:
            process.kill()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = status
    events["total"] = time.time() - start
    return events, lines, usage.ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_280_000])
    parser.add_argument("--root", default="/tmp/ms_vit_scale", help="where the trees go (kept for later runs)")
    args = parser.parse_args()
    print(_machine.describe(), flush=True)
    cold = drop_caches()
    if not cold:
        print("cannot drop the page cache (not root?): 'cold' runs are warm")
    print(f"{'files':>10} {'run':<28}{'first line s':>13}{'1st progress s':>15}{'peak MB':>9}{'pipeline img/s':>15}")
    for size in args.sizes:
        root = os.path.join(args.root, f"train_{size}")
        start = time.time()
        build_tree(root, size)
        print(f"{size:>10} tree ready ({time.time() - start:.0f} s)", flush=True)
        cache = os.path.join(args.root, f"cache_{size}")
        shutil.rmtree(os.path.join(cache, "scans"), ignore_errors=True)          # a first run: nothing remembered
        env = dict(os.environ, PYTHONPATH=ROOT, MS_VIT_CACHE=cache)
        out = os.path.join(args.root, f"run_{size}")
        for label, cold_cache in (("first run, cold", True), ("second run, cold", True), ("second run, warm", False)):
            shutil.rmtree(out, ignore_errors=True)
            if cold_cache:
                drop_caches()                           # else warm: the files the run before read
            command = [sys.executable, "train.py", "--data_dir", root, "--ckpt_save_dir", out, "--batch_size", "256",
                       "--epoch_size", "1", "--log_interval", "10", "--num_workers", "2", *TINY]
            events, lines, peak = run_until(command, env, "epoch 1/1 step", 3)
            rates = [float(m.group(1)) for m in (re.search(r" ([\d.]+) img/s", line) for line in lines) if m]
            if "progress" not in events:
                print("\n".join(lines[-15:]))
                sys.exit(f"train.py failed on {size} files")
            print(f"{size:>10} {'train.py, ' + label:<28}{events['first_line']:>13.1f}"
                  f"{events.get('progress', float('nan')):>15.1f}{peak:>9.0f}{(rates[-1] if rates else 0):>15.1f}",
                  flush=True)
        checkpoints = sorted(p for p in os.listdir(out) if p.startswith("vit-"))
        command = [sys.executable, "eval.py", "--data_dir", root, "--ckpt_path", os.path.join(out, checkpoints[-1]),
                   "--batch_size", "256", "--num_workers", "2", "--log_interval", "1", "--output",
                   os.path.join(out, "eval.json")]
        events, lines, peak = run_until(command, env, "never", 1)
        images = int(re.search(r"\((\d+) images\)", "\n".join(lines)).group(1))
        rates = [float(m.group(1)) for m in (re.search(r"\(([\d.]+) img/s", line) for line in lines) if m]
        print(f"{size:>10} {'eval.py val, warm':<28}{'':>13}{events.get('eval_progress', float('nan')):>15.1f}"
              f"{peak:>9.0f}{(rates[-1] if rates else 0):>15.1f}   ({images:,} images, {events['total']:.0f} s in all)",
              flush=True)


if __name__ == "__main__":
    main()
