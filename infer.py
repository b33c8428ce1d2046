"""Classify images with a ViT checkpoint; print the top-k classes and write each image with its label drawn.

    python infer.py --ckpt_path CKPT IMAGE [IMAGE ...] [--output_dir DIR] [--topk 5]
"""
import argparse
import os
import sys

import numpy as np

from ms_vit import cli, create_model, data, device
from ms_vit.evaluate import softmax
from ms_vit.render import render_label


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--ckpt_path", required=True, help="checkpoint to use")
    p.add_argument("--model", help="variant, for checkpoints that do not record it (e.g. vit_b_16_224)")
    p.add_argument("--topk", type=int, default=5, help="classes printed per image (default: %(default)s)")
    p.add_argument("--output_dir", default="outputs/infer", help="rendered images go here (default: %(default)s)")
    cli.add_device_args(p)
    return p


def class_names_for(net):
    """Names recorded in the checkpoint; else ImageNet's for a 1000-class head; else the indices."""
    names = net.checkpoint_meta.get("class_names")
    if names:
        return names
    if net.config.num_classes == 1000:
        return list(data.builtin_imagenet_names().values())
    return [str(i) for i in range(net.config.num_classes)]


def main(argv=None):
    args = build_parser().parse_args(argv)
    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"image not found: {', '.join(missing)}")
    device.setup(args.device_target, args.mode)
    net = create_model(args.model, checkpoint_path=args.ckpt_path)
    net.set_train(False)
    names = class_names_for(net)
    os.makedirs(args.output_dir, exist_ok=True)
    for path in args.images:
        probs = softmax(net(data.load_image(path, net.config)).asnumpy().astype(np.float64))[0]
        top = np.argsort(-probs)[:args.topk]
        print(path)
        for rank, index in enumerate(top, 1):
            print(f"  {rank}. {names[index]}  {probs[index]:.4f}")
        stem = os.path.splitext(os.path.basename(path))[0]
        out = os.path.join(args.output_dir, f"{stem}_pred.png")
        render_label(path, f"{data.short_name(names[top[0]])} ({probs[top[0]]:.1%})", out)
        print(f"  rendered: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
