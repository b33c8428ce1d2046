"""Export a ViT checkpoint for deployment: MINDIR (MindSpore, MindSpore Lite, Ascend 310), ONNX, or AIR (Ascend).

    python export.py --ckpt_path CKPT --file_format MINDIR|ONNX|AIR [--batch_size N] [--output NAME]
    python export.py --pretrained vit_b_16_224.mindvision --file_format ONNX --output vit_b16

By default a file takes any batch size: the MINDIR has a dynamic batch dimension (``mindspore.export`` of an input
``Tensor(shape=[None, C, S, S])``), the ONNX file a symbolic one. --batch_size N fixes it (AIR always has one: it
is traced at N, default 1).

MINDIR and AIR are MindSpore's exports of the network built on MindSpore's own operators only (no fused CPU kernels:
a MINDIR holding them would carry this machine's library path), in evaluation mode. ONNX is built from the model's
config and weights with the onnx package, opset 17 (``ms_vit.deploy.onnx_export``: LayerNormalization, the Erf GELU that
onnxruntime fuses, MatMul + Add), because MindSpore's own ONNX exporter (opset 11, no Erf, traced shapes) wrote a
graph that onnxruntime ran at 0.64x the speed of timm's export.

Beside NAME.<format> goes NAME.<format>.json: the input (name, shape, dtype), the preprocessing (resize, crop, mean/std,
interpolation), the class names and the model's configuration. infer.py takes an exported .mindir (with its JSON)
as it takes a checkpoint.
"""
import argparse
import json
import os
import sys
import time

from ms_vit import cli, device
from ms_vit.weights import checkpoint

FORMATS = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}
ONNX_INSTALL = ('ONNX export needs the onnx package: pip install "ms_vit[onnx]" (from this folder: pip install '
                '".[onnx]"), or pip install onnx "numpy<2" (a bare pip install onnx upgrades numpy to 2, with which '
                "MindSpore 2.10 cannot start)")


def build_parser():
    p = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_weights_args(p)
    p.add_argument("--file_format", default="MINDIR", type=str.upper,
                   help="MINDIR, ONNX or AIR (Ascend only) (default: %(default)s)")
    p.add_argument("--batch_size", type=cli.COUNT,
                   help="a fixed number of images per call (default: any, for MINDIR and ONNX; 1 for AIR)")
    p.add_argument("--output", help="file name without extension (default: the checkpoint's, beside it; for "
                   "--pretrained: the weight set's name)")
    cli.add_device_args(p)
    return p


def sidecar(net, file_format: str, model_file: str, batch, source: str) -> dict:
    """What a deployment needs besides the network: how to feed it and what its outputs mean (``batch``: an int,
    or "batch" for any)."""
    c = net.config
    names = net.checkpoint_meta.get("class_names") or [str(i) for i in range(c.num_classes)]
    return {
        "format": file_format, "file": os.path.basename(model_file), "source": source,
        "model": checkpoint.describe(c),
        "input": {"name": "images", "shape": [batch, c.in_channels, c.image_size, c.image_size], "dtype": "float32",
                  "layout": "NCHW"},
        "output": {"name": "logits", "shape": [batch, c.num_classes]},
        "preprocess": {"resize_short_side": int(c.image_size / c.crop_pct), "center_crop": c.image_size,
                       "crop_pct": c.crop_pct, "interpolation": c.interpolation, "mean": list(c.mean),
                       "std": list(c.std), "pixel_scale": "mean/std apply to pixels / 255, RGB"},
        "class_names": names, "config": c.to_dict(),
    }


def export(net, file_format: str, base: str, batch=None) -> str:
    """Write ``net`` as ``base + extension`` taking ``batch`` images per call (None: any); returns the file's path."""
    import mindspore as ms
    import numpy as np
    path = base + FORMATS[file_format]
    if file_format == "ONNX":
        from ms_vit.deploy import onnx_export
        onnx_export.export(net, path, batch)
        return path
    shape = (batch, net.config.in_channels, net.config.image_size, net.config.image_size)
    images = (ms.Tensor(np.zeros(shape, np.float32)) if batch else
              ms.Tensor(shape=[None, *shape[1:]], dtype=ms.float32))                # a dynamic batch dimension
    ms.export(net, images, file_name=base, file_format=file_format)
    return path


def parse_args(argv=None):
    """The options, checked before any work (the format, and the onnx package for ONNX: before any download)."""
    args = build_parser().parse_args(argv)
    if args.file_format not in FORMATS:
        raise ValueError(f"unknown --file_format {args.file_format}: choose one of {', '.join(FORMATS)}")
    if args.file_format == "ONNX":                   # before any download
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise ValueError(ONNX_INSTALL) from None
    return args


def main(argv=None):
    args = parse_args(argv)
    setup = device.setup(args.device_target, args.mode)
    target = setup.device_target
    print(device.describe(target, setup.notes), file=sys.stderr)
    if args.file_format == "AIR" and target != "Ascend":
        raise ValueError("AIR files are written on Ascend only (use MINDIR: it runs on Ascend too)")
    batch = args.batch_size or (1 if args.file_format == "AIR" else None)
    base = args.output or (args.pretrained if args.pretrained else os.path.splitext(args.ckpt_path)[0])
    for extension in FORMATS.values():
        if base.lower().endswith(extension):
            base = base[:-len(extension)]
    cli.check_output(base + FORMATS[args.file_format], "--output")
    net = cli.load_model(args, fused_kernels=False)
    net.set_train(False)
    start = time.time()
    path = export(net, args.file_format, base, batch)
    seconds = time.time() - start
    source = args.pretrained or os.path.abspath(args.ckpt_path)
    with open(path + ".json", "w") as f:
        json.dump(sidecar(net, args.file_format, path, batch or "batch", source), f, indent=1)
    print(f"{args.file_format}: {path} ({os.path.getsize(path) / 2 ** 20:.1f} MiB, {seconds:.1f} s, "
          f"{'batch ' + str(batch) if batch else 'any batch size'})\npreprocessing and class names: {path}.json")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
