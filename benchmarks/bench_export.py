"""Deployment speed, side by side: onnxruntime on ms_vit's ONNX export vs on timm's own export of the same
architecture, and MindSpore on ms_vit's MINDIR vs on the checkpoint; ViT-B/16 and ViT-Ti/16 at batch 1 and 8.

    python benchmarks/bench_export.py                         # about 10 minutes on 2 cores
    python benchmarks/bench_export.py --models ti16 --batches 8 --profile

ms_vit's files come from export.py (ONNX: opset 17, any batch size; MINDIR: a dynamic batch dimension); timm's ONNX
from ``torch.onnx.export`` at opset 17 with a dynamic batch axis, as timm's users export (timm 1.0.31, PyTorch
2.13, in a process of its own). Both ONNX files run in one onnxruntime process (CPU provider, default graph
optimisations and threads), alternating, ``--rounds`` rounds of ``--repeats`` timed calls each: the median call of
each file's best round. MindSpore's figures come from one process too: ``nn.GraphCell(mindspore.load(MINDIR))`` and
the checkpoint as infer.py runs it in graph mode (fused CPU kernels). ``--profile`` adds onnxruntime's profile of
both files, summed by operator type. Also printed: file sizes, export times, the largest logit difference against
the checkpoint's network.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import _machine
import numpy as np
from _peers import require

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = {"b16": ("vit_b_16_224", "vit_base_patch16_224"), "ti16": ("vit_ti_16_224", "vit_tiny_patch16_224")}

TIMM_EXPORT = r"""
import sys
sys.path.insert(0, %r)
import _torchvision_stub
_torchvision_stub.install()
import timm, torch
net = timm.create_model(sys.argv[1], num_classes=1000).eval()
torch.onnx.export(net, torch.randn(1, 3, 224, 224), sys.argv[2], opset_version=17, input_names=["images"],
                  output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
""" % HERE


def timed_rounds(calls: dict, rounds: int, repeats: int) -> dict:
    """``{name: seconds per call}``: the calls alternate round by round; each one's best round's median."""
    best = {name: float("inf") for name in calls}
    for name, call in calls.items():                 # warm-up
        call()
    for _ in range(rounds):
        for name, call in calls.items():
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            best[name] = min(best[name], statistics.median(times))
    return best


def profile_by_op(session_path: str, x: np.ndarray, runs: int = 5) -> dict:
    """onnxruntime's profile of ``runs`` calls: milliseconds per call by operator type."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(os.path.dirname(session_path), "onnxruntime_profile")
    session = ort.InferenceSession(session_path, options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, {"images": x})
    profile = session.end_profiling()
    with open(profile) as f:
        events = json.load(f)
    os.remove(profile)
    totals = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + event["dur"] / 1000 / runs
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def onnx_case(ours: str, theirs: str, batch: int, rounds: int, repeats: int, profile: bool):
    import onnxruntime as ort
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    sessions = {name: ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                for name, path in (("ms_vit", ours), ("timm", theirs))}
    seconds = timed_rounds({name: (lambda s=s: s.run(None, {"images": x})) for name, s in sessions.items()},
                           rounds, repeats)
    result = {name: batch / s for name, s in seconds.items()}
    if profile:
        result["profile"] = {name: profile_by_op(path, x) for name, path in (("ms_vit", ours), ("timm", theirs))}
    return result


MINDSPORE_CASE = r"""
import json, sys
sys.path.insert(0, %r)
import numpy as np, mindspore as ms
from mindspore import nn
ms.set_device("CPU"); ms.set_context(mode=ms.GRAPH_MODE)
sys.path.insert(0, %r)
from bench_export import timed_rounds
from ms_vit import create_model
ckpt, mindir, batch, rounds, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
net = create_model(checkpoint_path=ckpt, drop_path_rate=0.0)
net.set_train(False)
graph = nn.GraphCell(ms.load(mindir))
x = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32))
diff = float(np.abs(graph(x).asnumpy() - net(x).asnumpy()).max())
seconds = timed_rounds({"checkpoint": lambda: net(x).asnumpy(), "mindir": lambda: graph(x).asnumpy()}, rounds, repeats)
print(json.dumps({"checkpoint": batch / seconds["checkpoint"], "mindir": batch / seconds["mindir"], "diff": diff}))
""" % (ROOT, HERE)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="onnxruntime's profile by operator type, both files")
    args = parser.parse_args()
    print(_machine.describe(), flush=True)
    require("torch", "timm", "onnx", "onnxruntime")
    sys.path.insert(0, ROOT)
    import mindspore as ms

    from ms_vit import create_model
    from ms_vit.weights import checkpoint
    ms.set_device("CPU")
    with tempfile.TemporaryDirectory(prefix="ms_vit_export_") as work:      # ~90 MB of models, removed after
        print(f"{'case':<16}{'ms_vit ONNX':>12}{'timm ONNX':>11}{'ratio':>7}{'MINDIR':>9}{'checkpoint':>11}{'ratio':>7}"
              "   (img/s)")
        for model in args.models:
            ours_name, timm_name = MODELS[model]
            net = create_model(ours_name, fused_kernels=False)
            ckpt = os.path.join(work, f"{model}.ckpt")
            checkpoint.save(net, ckpt)
            files = {}
            for file_format in ("ONNX", "MINDIR"):
                start = time.time()
                run = subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), "--ckpt_path", ckpt,
                                      "--file_format", file_format, "--output", os.path.join(work, model)],
                                     capture_output=True, text=True)
                if run.returncode:
                    sys.exit(run.stderr[-2000:])
                files[file_format] = os.path.join(work, model + (".onnx" if file_format == "ONNX" else ".mindir"))
                print(f"{model} {file_format}: {os.path.getsize(files[file_format]) / 2 ** 20:.0f} MiB, export.py "
                      f"{time.time() - start:.1f} s", flush=True)
            theirs = os.path.join(work, f"{model}_timm.onnx")
            run = subprocess.run([sys.executable, "-c", TIMM_EXPORT, timm_name, theirs], capture_output=True, text=True)
            if run.returncode:
                sys.exit(f"timm's export failed (pip install torch==2.13.0; pip install --no-deps timm==1.0.31): "
                         f"{run.stderr[-1500:]}")
            for batch in args.batches:
                onnx = onnx_case(files["ONNX"], theirs, batch, args.rounds, args.repeats, args.profile)
                run = subprocess.run([sys.executable, "-c", MINDSPORE_CASE, ckpt, files["MINDIR"], str(batch),
                                      str(args.rounds), str(args.repeats)], capture_output=True, text=True)
                if run.returncode:
                    sys.exit(run.stderr[-2000:])
                mind = json.loads(run.stdout.strip().splitlines()[-1])
                ratio = onnx["ms_vit"] / onnx["timm"]
                print(f"{model} b{batch:<11}{onnx['ms_vit']:>12.2f}{onnx['timm']:>11.2f}{ratio:>7.2f}"
                      f"{mind['mindir']:>9.2f}{mind['checkpoint']:>11.2f}{mind['mindir'] / mind['checkpoint']:>7.2f}"
                      f"   MINDIR vs checkpoint logits {mind['diff']:.1e}", flush=True)
                for name, ops in onnx.get("profile", {}).items():
                    print(f"  {name} ONNX, ms per call by op: " + ", ".join(f"{op} {ms_:.1f}" for op, ms_ in
                                                                           list(ops.items())[:8]))


if __name__ == "__main__":
    main()
