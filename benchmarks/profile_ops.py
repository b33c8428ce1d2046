"""Where the CPU time of one step goes, by operator, for ms_vit (MindSpore's profiler) and timm (torch.profiler) side
by side: matrix products (GEMM), the attention, the rest of the operators, and the time between operators (the
framework launching the next one), per step.

    python benchmarks/profile_ops.py --model ti16 --batch 1                 # inference, both frameworks
    python benchmarks/profile_ops.py --model b16 --batch 8 --case train --framework ms_vit --top 20

Each framework runs in a process of its own (they are not imported together); the first steps (compilation, warm-up)
are not profiled.
"""
import argparse
import collections
import csv
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import _machine
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = {"b16": ("vit_b_16_224", "vit_base_patch16_224"), "ti16": ("vit_ti_16_224", "vit_tiny_patch16_224")}
# Operator type (ms_vit's MindSpore op types and custom kernels; timm's aten ops) -> the category it counts under
CATEGORIES = {
    "MatMul": "GEMM", "BatchMatMul": "GEMM", "MatMulExt": "GEMM", "BatchMatMulExt": "GEMM", "Conv2D": "GEMM",
    "Custom LinearForward": "GEMM", "Custom LinearBackward": "GEMM", "Custom Attention": "attention",
    "Custom AttentionBackward": "attention",
    "aten::addmm": "GEMM", "aten::mm": "GEMM", "aten::bmm": "GEMM", "aten::mkldnn_convolution": "GEMM",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention", "SoftmaxLastAxis": "attention",
    "Softmax": "attention", "aten::_softmax": "attention",
}


def category(op: str) -> str:
    return CATEGORIES.get(op, "other operators")


def custom_kernel(op_type: str, full_name: str) -> str:
    """An op's type, but for ms_vit's custom kernels of a Dense layer (``Custom LinearForward`` / ``Backward``:
    oneDNN's sgemm in ``kernels.Linear``, with the bias, a residual or the GELU) and of the attention's core
    (``Custom Attention`` / ``Backward``: its products, softmax and head layouts), told apart by their cells' scopes."""
    if op_type != "Custom":
        return op_type
    backward = "Backward" if "Grad" in full_name else ""
    if "/kernel-Linear/" in full_name:
        return "Custom LinearForward" if not backward else "Custom LinearBackward"
    if "-Attention/Custom" in full_name:
        return f"Custom Attention{backward}"
    return op_type


def seconds_per_step(run, steps):
    """Wall seconds per call of ``run`` over ``steps`` calls, after 3 calls of warm-up (compilation, caches)."""
    for _ in range(3):
        run()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    return (time.perf_counter() - start) / steps


def profile_ms_vit(model, batch, case, steps):
    """``(wall seconds per step, {op: seconds per step})`` of ms_vit's step, MindSpore's profiler."""
    sys.path.insert(0, ROOT)
    import mindspore as ms
    from mindspore import nn

    from ms_vit import create_model
    from ms_vit.training.loss import LabelSmoothingCrossEntropy
    from ms_vit.training.optim import AdamW
    from ms_vit.training.train_step import TrainStep
    ms.set_context(mode=ms.GRAPH_MODE)
    net = create_model(MODELS[model][0])
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((batch, 3, 224, 224), dtype=np.float32))
    labels = ms.Tensor(rng.integers(0, 1000, batch).astype(np.int32))
    if case == "train":
        step_cell = TrainStep(nn.WithLossCell(net, LabelSmoothingCrossEntropy(0.1)),
                              AdamW(net.trainable_params(), learning_rate=1e-4, weight_decay=0.05))
        step_cell.set_train(True)
        run = lambda: step_cell(images, labels)[0].asnumpy()  # noqa: E731
    else:
        net.set_train(False)
        run = lambda: net(images).asnumpy()  # noqa: E731
    wall = seconds_per_step(run, steps)
    with tempfile.TemporaryDirectory(prefix="ms_vit_profile_") as out:      # the profiler's files, removed after
        profiler = ms.Profiler(output_path=out)
        for _ in range(steps):
            run()
        profiler.analyse()
        framework = glob.glob(os.path.join(out, "*", "FRAMEWORK"))[0]
        table = glob.glob(os.path.join(framework, "cpu_op_detail_info_*.csv"))[0]
        ops = collections.Counter()
        for row in csv.DictReader(open(table)):
            kind = custom_kernel(row["op_type"], row["full_op_name"])
            ops[kind] += float(row["op_total_time(ms)"]) / 1e3 / steps
    return wall, ops


def profile_timm(model, batch, case, steps):
    """``(wall seconds per step, {op: seconds per step})`` of timm's step, torch.profiler (self time of each op)."""
    import _peers
    run, torch = _peers.timm_step(MODELS[model][1], batch, case == "train")
    wall = seconds_per_step(run, steps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            run()
    ops = {e.key: e.self_cpu_time_total / 1e6 / steps for e in profiler.key_averages() if e.self_cpu_time_total > 0}
    return wall, ops


def worker(args):
    profile = {"ms_vit": profile_ms_vit, "timm": profile_timm}[args.worker]
    wall, ops = profile(args.model, args.batch, args.case, args.steps)
    print(json.dumps({"wall": wall, "ops": ops}))


def summary(wall, ops):
    """``{category: ms per step}`` with the time between operators (wall - the operators' time)."""
    out = {}
    for op, seconds in ops.items():
        out[category(op)] = out.get(category(op), 0.0) + 1e3 * seconds
    out["between operators"] = max(0.0, 1e3 * wall - sum(out.values()))
    out["wall"] = 1e3 * wall
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="b16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--case", choices=["infer", "train"], default="infer")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--framework", choices=["both", "ms_vit", "timm"], default="both")
    parser.add_argument("--worker", choices=["ms_vit", "timm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    print(_machine.describe(), flush=True)
    frameworks = ["ms_vit", "timm"] if args.framework == "both" else [args.framework]
    found = {}
    for name in frameworks:
        run = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", name, "--model", args.model,
                              "--batch", str(args.batch), "--case", args.case, "--steps", str(args.steps)],
                             capture_output=True, text=True, env=dict(os.environ, GLOG_v="3"))
        if run.returncode:
            print(f"{name}: failed: {(run.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        found[name] = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"\n{args.model} {args.case} batch {args.batch}: ms per step")
    summaries = {name: summary(r["wall"], r["ops"]) for name, r in found.items()}
    rows = ["GEMM", "attention", "other operators", "between operators", "wall"]
    print(f"{'':<20}" + "".join(f"{name:>12}" for name in summaries))
    for row in rows:
        print(f"{row:<20}" + "".join(f"{s.get(row, 0.0):>12.2f}" for s in summaries.values()))
    for name, r in found.items():
        print(f"\n{name}: the {args.top} costliest operators (ms per step, share of the wall time)")
        for op, seconds in sorted(r["ops"].items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {op:<52}{1e3 * seconds:>9.2f}{seconds / r['wall']:>8.1%}  {category(op)}")


if __name__ == "__main__":
    sys.exit(main())
