"""SIGKILL a training run at every moment after its first epoch checkpoint appears, then resume it: a time sweep, as a
user on a pre-emptible machine meets it (tests/test_crash_consistency.py sweeps the write points themselves in CI).

    python tests/sweep_kill_times.py [--data_dir data/mnist] [--step 0.1]

For each delay d = step, 2 step, ... until the next epoch's checkpoint: start the run (the demo's MNIST digits, a tiny
ViT, 3 epochs of 62 steps), SIGKILL it d seconds after ``vit-1_62.ckpt`` appears, run the same command with
``--resume auto``, and check: every epoch any process printed is in val_history.json with the figures printed,
the records are epochs 1..3, best.ckpt holds the best recorded epoch, no temporary file is left. Prints one line per
delay and a summary; exits 1 if any delay broke an invariant.
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--model", "vit_ti_16_224", "--image_size", "28", "--patch_size", "7", "--embed_dim", "48", "--depth", "2",
        "--num_heads", "3", "--mlp_dim", "96", "--batch_size", "64", "--epoch_size", "3", "--log_interval", "20",
        "--no_augment", "--drop_path_rate", "0"]
EPOCH_LINE = re.compile(r"^epoch (\d+): val top-1 (\S+) top-5 (\S+) loss (\S+)", re.M)


def command(data, out):
    return [sys.executable, "train.py", "--data_dir", data, "--ckpt_save_dir", out, *ARGS, "--resume", "auto"]


def killed_after(data, out, delay, first_checkpoint):
    """Start the run, SIGKILL it ``delay`` s after ``first_checkpoint`` appears; returns what it printed."""
    log = open(os.path.join(out + ".log"), "w+")
    process = subprocess.Popen(command(data, out), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env=dict(os.environ, PYTHONPATH=ROOT))
    target = os.path.join(out, first_checkpoint)
    while not os.path.exists(target) and process.poll() is None:
        time.sleep(0.005)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    log.seek(0)
    return log.read()


def check(out, printed):
    problems = []
    records = json.load(open(os.path.join(out, "val_history.json")))
    if [r["epoch"] for r in records] != [1, 2, 3]:
        problems.append(f"records of epochs {[r['epoch'] for r in records]}")
    for r in records:
        figures = (f"{r['top1']:.4f}", f"{r['top5']:.4f}", f"{r['loss']:.4f}")
        if printed.get(r["epoch"], {figures}) != {figures}:
            problems.append(f"epoch {r['epoch']} printed {printed[r['epoch']]}, recorded {figures}")
    best = max(records, key=lambda r: r["top1"])
    sys.path.insert(0, ROOT)
    from ms_vit.weights import checkpoint
    if checkpoint.read(os.path.join(out, "best.ckpt"))[1].get("epoch") != best["epoch"]:
        problems.append("best.ckpt is not the best recorded epoch")
    if glob.glob(os.path.join(out, "*.tmp")) + glob.glob(os.path.join(out, ".*.tmp*")):
        problems.append("temporary files left")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "data", "mnist"))
    parser.add_argument("--step", type=float, default=0.1, help="seconds between two delays (default: %(default)s)")
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(args.data_dir, "val")):
        subprocess.run([sys.executable, "-m", "dataset_tools", "demo", "--dest", args.data_dir], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="ms_vit_kill_sweep_")
    try:
        straight = os.path.join(work, "straight")
        start = time.time()
        subprocess.run(command(args.data_dir, straight), cwd=ROOT, check=True, capture_output=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))
        print(f"straight run: {time.time() - start:.1f} s")
        steps = re.search(r"_(\d+)\.ckpt$", glob.glob(os.path.join(straight, "vit-*.ckpt"))[0]).group(1)
        first, second = f"vit-1_{steps}.ckpt", f"vit-2_{steps}.ckpt"          # the epochs' checkpoints
        delay, failures, runs = args.step, 0, 0
        while True:
            out = os.path.join(work, f"d{delay:.2f}")
            said = killed_after(args.data_dir, out, delay, first)
            if os.path.exists(os.path.join(out, second)):
                break                                                      # past the next epoch's checkpoint
            resumed = subprocess.run(command(args.data_dir, out), cwd=ROOT, capture_output=True, text=True,
                                     env=dict(os.environ, PYTHONPATH=ROOT))
            printed = {}
            for epoch, *figures in EPOCH_LINE.findall(said + resumed.stdout):
                printed.setdefault(int(epoch), set()).add(tuple(figures))
            problems = check(out, printed) if resumed.returncode == 0 else [f"resume exit {resumed.returncode}"]
            runs += 1
            failures += bool(problems)
            before_kill = sorted(e for e in printed if f"epoch {e}:" in said)
            print(f"kill {delay:.2f} s after {first}: epochs printed before the kill {before_kill}; "
                  f"{'; '.join(problems) or 'every record kept, best.ckpt the best'}", flush=True)
            delay += args.step
        print(f"{runs} kills from {args.step:.2f} s to the next epoch's checkpoint: {failures} broke an invariant")
        return 1 if failures else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
