"""Export ViT-B/16 (224 px, 1000 classes, random non-trivial weights) as MINDIR and ONNX: time, file size, and
the largest logit difference against the checkpoint's network (MINDIR reloaded with mindspore.load + GraphCell,
ONNX run in onnxruntime).

    python benchmarks/bench_export.py [--model vit_b_16_224] [--batch_size 2]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b_16_224")
    parser.add_argument("--batch_size", type=int, default=2)
    args = parser.parse_args()
    import mindspore as ms
    from mindspore import nn
    from ms_vit import create_model, checkpoint
    ms.set_device("CPU")
    work = tempfile.mkdtemp(prefix="ms_vit_export_")
    net = create_model(args.model, fused_kernels=False)
    rng = np.random.default_rng(0)
    for p in net.get_parameters():             # non-trivial weights everywhere (the paper init zeroes the head)
        p.set_data(ms.Tensor((p.asnumpy() + rng.standard_normal(p.shape) * 0.02).astype(np.float32)))
    ckpt = os.path.join(work, "model.ckpt")
    checkpoint.save(net, ckpt)
    net.set_train(False)
    s = net.config.image_size
    x = rng.standard_normal((args.batch_size, 3, s, s)).astype(np.float32)
    reference = net(ms.Tensor(x)).asnumpy()
    print(f"{args.model}, batch {args.batch_size}: checkpoint {os.path.getsize(ckpt) / 2 ** 20:.0f} MiB, "
          f"logits up to {np.abs(reference).max():.2f}")
    for file_format in ("MINDIR", "ONNX"):
        start = time.time()
        run = subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), "--ckpt_path", ckpt, "--file_format",
                              file_format, "--batch_size", str(args.batch_size), "--output",
                              os.path.join(work, "model")], capture_output=True, text=True)
        wall = time.time() - start
        if run.returncode:
            sys.exit(run.stderr[-2000:])
        path = os.path.join(work, "model" + (".mindir" if file_format == "MINDIR" else ".onnx"))
        if file_format == "MINDIR":
            got = nn.GraphCell(ms.load(path))(ms.Tensor(x)).asnumpy()
        else:
            import onnxruntime
            got = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
        exported = run.stdout.splitlines()[0]
        print(f"{file_format}: {os.path.getsize(path) / 2 ** 20:.0f} MiB, export.py {wall:.1f} s wall "
              f"({exported.split('(')[-1].rstrip(')')} in the export call), "
              f"max |logits - checkpoint's| = {np.abs(got - reference).max():.2e}")


if __name__ == "__main__":
    main()
