"""Where ms_vit's CPU time goes: MindSpore's profiler over a few steps, summed by op type.

    python benchmarks/profile_ops.py --model vit_b_16_224 --batch 8 --case train
"""
import argparse
import csv
import glob
import os
import sys
import tempfile

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
    out = tempfile.mkdtemp(prefix="ms_vit_profile_")
    profiler = ms.Profiler(output_path=out)
    for _ in range(args.steps):
        run()
    profiler.analyse()
    table = glob.glob(os.path.join(out, "*", "FRAMEWORK", "cpu_op_type_info_*.csv"))[0]
    rows = sorted(csv.DictReader(open(table)), key=lambda r: -float(r["total_compute_time"]))
    total = sum(float(r["total_compute_time"]) for r in rows)
    print(f"{args.model} {args.case} batch {args.batch}: {total / args.steps:.0f} ms of kernels per step")
    print(f"{'op':<28}{'calls/step':>11}{'ms/step':>10}{'share':>8}")
    for r in rows[:args.top]:
        ms_step = float(r["total_compute_time"]) / args.steps
        print(f"{r['op_type']:<28}{int(r['type_occurrences']) // args.steps:>11}{ms_step:>10.1f}"
              f"{ms_step * args.steps / total:>8.1%}")


if __name__ == "__main__":
    main()
