"""Where ms_vit's CPU time goes: MindSpore's profiler over a few steps, summed by op type.

    python benchmarks/profile_ops.py --model vit_b_16_224 --batch 8 --case train
"""
import argparse
import csv
import glob
import os
import sys
import tempfile

import _machine
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b_16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--case", choices=["infer", "train"], default="infer")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(_machine.describe(), flush=True)
    import mindspore as ms
    from mindspore import nn

    from ms_vit import create_model
    from ms_vit.loss import LabelSmoothingCrossEntropy
    from ms_vit.optim import AdamW
    ms.set_context(mode=ms.GRAPH_MODE)
    net = create_model(args.model)
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((args.batch, 3, net.config.image_size, net.config.image_size),
                                           dtype=np.float32))
    labels = ms.Tensor(rng.integers(0, 1000, args.batch).astype(np.int32))
    if args.case == "train":
        step = nn.TrainOneStepCell(nn.WithLossCell(net, LabelSmoothingCrossEntropy(0.1)),
                                   AdamW(net.trainable_params(), learning_rate=1e-4, weight_decay=0.05))
        step.set_train(True)
        run = lambda: step(images, labels).asnumpy()  # noqa: E731
    else:
        net.set_train(False)
        run = lambda: net(images).asnumpy()  # noqa: E731
    run()
    with tempfile.TemporaryDirectory(prefix="ms_vit_profile_") as out:      # the profiler's files, removed after
        profiler = ms.Profiler(output_path=out)
        for _ in range(args.steps):
            run()
        profiler.analyse()
        framework = glob.glob(os.path.join(out, "*", "FRAMEWORK"))[0]
        table = glob.glob(os.path.join(framework, "cpu_op_type_info_*.csv"))[0]
        rows = sorted(csv.DictReader(open(table)), key=lambda r: -float(r["total_compute_time"]))
        total = sum(float(r["total_compute_time"]) for r in rows)
        print(f"{args.model} {args.case} batch {args.batch}: {total / args.steps:.0f} ms of kernels per step")
        print(f"{'op':<28}{'calls/step':>11}{'ms/step':>10}{'share':>8}")
        for r in rows[:args.top]:
            ms_step = float(r["total_compute_time"]) / args.steps
            print(f"{r['op_type']:<28}{int(r['type_occurrences']) // args.steps:>11}{ms_step:>10.1f}"
                  f"{ms_step * args.steps / total:>8.1%}")
        print_gaps(glob.glob(os.path.join(framework, "cpu_op_execute_timestamp_*.txt"))[0], args.steps)


def print_gaps(timestamps, steps):
    """Per step: wall time from the first kernel's start to the last one's end, time inside kernels, and the
    time between kernels (the runtime's work of launching the next one)."""
    events = []                                           # (start us, duration us)
    with open(timestamps) as f:
        for line in f:
            for item in line.strip().split(";")[-1].split():
                start_ns, duration_ms = item.split(",")[:2]
                events.append((int(start_ns) / 1e3, float(duration_ms) * 1e3))
    events.sort()
    per_step = len(events) // steps
    for i in range(steps):
        step = events[i * per_step:(i + 1) * per_step]
        span = step[-1][0] + step[-1][1] - step[0][0]
        busy = sum(duration for _, duration in step)
        gaps = sorted(b[0] - (a[0] + a[1]) for a, b in zip(step, step[1:]))
        print(f"step {i + 1}: {len(step)} kernels, {span / 1e3:.1f} ms first start to last end, {busy / 1e3:.1f} ms "
              f"in kernels, {(span - busy) / 1e3:.1f} ms between them (median gap {gaps[len(gaps) // 2]:.0f} us)")


if __name__ == "__main__":
    main()
