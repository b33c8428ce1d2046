"""Export a ViT checkpoint for deployment: MINDIR (MindSpore, MindSpore Lite, Ascend 310), ONNX, or AIR (Ascend).

    python export.py --ckpt_path CKPT --file_format MINDIR|ONNX|AIR [--batch_size N] [--output NAME]

The exported network is built on MindSpore's own operators only (no fused CPU kernels: a MINDIR holding them
would carry this machine's library path), in evaluation mode. For ONNX the exact GELU is written without Erf,
which the exporter lacks (``ms_vit.layers.GELU.onnx_compatible``, within 1e-6 of it). Every format takes
--batch_size images per call (MindSpore's exporters write the traced shapes into the graph).

Beside NAME.<format> goes NAME.<format>.json: the input (name, shape, dtype), the preprocessing (resize, crop, mean/std,
interpolation), the class names and the model's configuration. infer.py takes an exported .mindir (with its JSON)
as it takes a checkpoint.
"""
import argparse
import json
import os
import sys
import time

from ms_vit import checkpoint, cli, create_model, device
from ms_vit.layers import GELU

FORMATS = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_path", required=True, help="checkpoint to export")
    p.add_argument("--file_format", default="MINDIR", type=str.upper,
                   help="MINDIR, ONNX or AIR (Ascend only) (default: %(default)s)")
    p.add_argument("--batch_size", type=int, default=1, help="images per call (default: %(default)s)")
    p.add_argument("--output", help="file name without extension (default: the checkpoint's, beside it)")
    p.add_argument("--model", help="variant, for checkpoints that do not record it (e.g. vit_b_16_224)")
    cli.add_device_args(p)
    return p


def sidecar(net, file_format: str, model_file: str, batch: int, source: str) -> dict:
    """What a deployment needs besides the network: how to feed it and what its outputs mean."""
    c = net.config
    names = net.checkpoint_meta.get("class_names") or [str(i) for i in range(c.num_classes)]
    return {
        "format": file_format, "file": os.path.basename(model_file), "checkpoint": os.path.abspath(source),
        "model": checkpoint.describe(c),
        "input": {"name": "images", "shape": [batch, c.in_channels, c.image_size, c.image_size], "dtype": "float32",
                  "layout": "NCHW"},
        "output": {"name": "logits", "shape": [batch, c.num_classes]},
        "preprocess": {"resize_short_side": int(c.image_size / c.crop_pct), "center_crop": c.image_size,
                       "crop_pct": c.crop_pct, "interpolation": c.interpolation, "mean": list(c.mean),
                       "std": list(c.std), "pixel_scale": "mean/std apply to pixels / 255, RGB"},
        "class_names": names, "config": c.to_dict(),
    }


def check_writable(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".{os.path.basename(path)}.probe")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as exc:
        raise ValueError(f"cannot write the export to {folder}: {exc.strerror}") from None


def export(net, file_format: str, base: str, batch: int) -> str:
    """Write ``net`` as ``base + extension``; returns the file's path."""
    import numpy as np
    import mindspore as ms
    images = ms.Tensor(np.zeros((batch, net.config.in_channels, net.config.image_size, net.config.image_size),
                                np.float32))
    path = base + FORMATS[file_format]
    if file_format == "ONNX":
        import mindspore.onnx
        for _, cell in net.cells_and_names():
            if isinstance(cell, GELU):
                cell.onnx_compatible = True          # the exporter has no Erf
        mindspore.onnx.export(net, images, file_name=path, input_names=["images"], output_names=["logits"])
    else:
        ms.export(net, images, file_name=base, file_format=file_format)
    return path


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.file_format not in FORMATS:
        raise ValueError(f"unknown --file_format {args.file_format}: choose one of {', '.join(FORMATS)}")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, not {args.batch_size}")
    setup = device.setup(args.device_target, args.mode)
    target = setup.device_target
    print(device.describe(target, setup.notes), file=sys.stderr)
    if args.file_format == "AIR" and target != "Ascend":
        raise ValueError("AIR files are written on Ascend only (use MINDIR: it runs on Ascend too)")
    base = args.output or os.path.splitext(args.ckpt_path)[0]
    for extension in FORMATS.values():
        if base.lower().endswith(extension):
            base = base[:-len(extension)]
    check_writable(base + FORMATS[args.file_format])
    net = create_model(args.model, checkpoint_path=args.ckpt_path, fused_kernels=False)
    net.set_train(False)
    start = time.time()
    path = export(net, args.file_format, base, args.batch_size)
    seconds = time.time() - start
    with open(path + ".json", "w") as f:
        json.dump(sidecar(net, args.file_format, path, args.batch_size, args.ckpt_path), f, indent=1)
    print(f"{args.file_format}: {path} ({os.path.getsize(path) / 2 ** 20:.1f} MiB, {seconds:.1f} s)\n"
          f"preprocessing and class names: {path}.json")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
