"""``checkpoint.read`` of a ViT-B/16 training checkpoint (weights and Adam moments, as train.py writes it): seconds and
the peak memory it adds, each run in a fresh process on a warm page cache.

    python benchmarks/bench_checkpoint_read.py [--model vit_b_16_224] [--repeats 5] [--moments]

Prints the file's size, the median and minimum seconds of ``checkpoint.read``, the peak-RSS growth of the process
during the read (Linux: ``/proc/self/clear_refs`` resets the peak; the arrays' own size is the floor: each tensor is
read straight into its own array) and the CPU.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import _machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PROBE = """
import json, sys, time
from ms_vit.weights import checkpoint
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
with open("/proc/self/clear_refs", "w") as f:       # the peak (VmHWM) restarts from the current RSS
    f.write("5")
before = status("VmRSS")
start = time.perf_counter()
params, meta = checkpoint.read(sys.argv[1])
seconds = time.perf_counter() - start
grown = status("VmHWM") - before
print(json.dumps({"seconds": seconds, "rss_mb": grown / 1024, "tensors": len(params),
                  "mb": sum(v.nbytes for v in params.values()) / 2**20}))
"""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        return "?"


def write_checkpoint(path: str, model: str, moments: bool) -> None:
    import mindspore as ms
    import numpy as np

    from ms_vit import create_model
    from ms_vit.weights import checkpoint
    net = create_model(model)
    extra = []
    if moments:                                   # Adam's two moments: the size of a train.py checkpoint
        rng = np.random.default_rng(0)
        extra = [ms.Parameter(ms.Tensor(rng.standard_normal(p.shape, dtype=np.float32)), name=f"{kind}.{p.name}")
                 for kind in ("adam_m", "adam_v") for p in net.trainable_params()]
    checkpoint.save(net, path, extra_params=extra, meta={"epoch": 1})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b_16_224")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--moments", action="store_true", help="add Adam's moments (a train.py checkpoint)")
    args = parser.parse_args()
    print(_machine.describe(), flush=True)
    with tempfile.TemporaryDirectory(prefix="ms_vit_ckpt_") as folder:
        path = os.path.join(folder, "model.ckpt")
        write_checkpoint(path, args.model, args.moments)
        env = dict(os.environ, PYTHONPATH=ROOT)
        runs = []
        for i in range(args.repeats + 1):                 # the first run warms the page cache: not counted
            out = subprocess.run([sys.executable, "-c", PROBE, path], capture_output=True, text=True, env=env,
                                 check=True).stdout
            if i:
                runs.append(json.loads(out.splitlines()[-1]))
        seconds = [r["seconds"] for r in runs]
        print(f"{args.model}{' + Adam moments' if args.moments else ''}: {os.path.getsize(path) / 2**20:.0f} MB file, "
              f"{runs[0]['tensors']} tensors, {runs[0]['mb']:.0f} MB of arrays")
        grown = statistics.median(r["rss_mb"] for r in runs)
        print(f"checkpoint.read: median {statistics.median(seconds):.3f} s, min {min(seconds):.3f} s "
              f"({args.repeats} fresh processes); peak RSS growth {grown:.0f} MB")
        print(f"CPU: {cpu_model()} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
