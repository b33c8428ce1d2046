"""Classify images with a ViT checkpoint (or a MINDIR written by export.py); print the top-k classes and write each
image with its label drawn.

    python infer.py --ckpt_path CKPT|MODEL.mindir IMAGE [IMAGE ...] [--output_dir DIR] [--topk 5]
    python infer.py --pretrained vit_b_16_224.mindvision IMAGE [IMAGE ...]
                    [--attention] [--plot]

--attention writes IMAGE_attention.png: the class token's attention rollout over the image and the last block's
attention per head; --plot writes IMAGE_topk.png: the image beside a bar chart of its top-k classes.

Images that fit in one --batch_size batch run in PyNative mode (no graph compilation: the first answer
soonest); more run in graph mode, batched, the graph cached for the next process (ms_vit/deploy/compile_cache.py).
"""
import argparse
import json
import os
import sys

import mindspore as ms
import numpy as np

from ms_vit import cli, data, device
from ms_vit.deploy import compile_cache, mindir
from ms_vit.evaluation.evaluate import softmax
from ms_vit.factory import INFERENCE
from ms_vit.pictures.render import render_label


def build_parser():
    p = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    cli.add_weights_args(p, also="; or a .mindir written by export.py (with its .mindir.json)")
    p.add_argument("--topk", type=cli.COUNT, default=5, help="classes printed per image (default: %(default)s)")
    p.add_argument("--batch_size", type=cli.COUNT, default=8,
                   help="images per forward pass; the last batch is padded, so the graph compiles once "
                        "(default: %(default)s)")
    p.add_argument("--use_ema", action="store_true",
                   help="use the checkpoint's moving average of the weights (train.py --ema_decay)")
    p.add_argument("--output_dir", default="outputs/infer", type=cli.folder,
                   help="pictures go here (default: %(default)s)")
    p.add_argument("--attention", action="store_true", help="also write each image's attention maps")
    p.add_argument("--plot", action="store_true", help="also write each image beside a bar chart of its top-k")
    cli.add_device_args(p, auto_mode=True)
    return p


def class_names_for(net):
    """Names recorded in the checkpoint; else ImageNet's for a 1000-class head; else the indices."""
    names = net.checkpoint_meta.get("class_names")
    if names:
        return names
    if net.config.num_classes == 1000:
        return list(data.builtin_imagenet_names().values())
    return [str(i) for i in range(net.config.num_classes)]


class ExportedModel:
    """A MINDIR written by export.py, run with ``mindspore.load`` + ``nn.GraphCell``; its JSON gives the
    preprocessing and the class names. A MINDIR holding operators that load or run code (Custom/AOT, PyFunc...) is
    refused before it is loaded (``ms_vit.deploy.mindir``)."""

    def __init__(self, path: str):
        from mindspore import nn

        from ms_vit import ViTConfig
        info_path = path + ".json"
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model not found: {path}")
        if not os.path.isfile(info_path):
            raise FileNotFoundError(f"{path} needs the {os.path.basename(info_path)} that export.py writes beside it")
        with open(info_path) as f:
            info = json.load(f)
        self.config = ViTConfig.from_dict(info["config"])
        self.class_names = info["class_names"]
        self.batch = info["input"]["shape"][0]              # an int, or "batch": any
        mindir.check_no_code(path)                          # before ms.load: a Custom/AOT node would load its .so
        try:
            self.graph = nn.GraphCell(ms.load(path))
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"cannot load {path}: {str(exc).splitlines()[0]}") from None

    def __call__(self, images):
        if not isinstance(self.batch, int):                          # a dynamic batch dimension
            return self.graph(images)
        x = images.asnumpy()
        logits = []
        for start in range(0, len(x), self.batch):                    # in the exported batch size
            part = x[start:start + self.batch]
            padded = np.concatenate([part] * self.batch)[:self.batch]
            logits.append(self.graph(ms.Tensor(padded)).asnumpy()[:len(part)])
        return ms.Tensor(np.concatenate(logits))


def picture_stems(images, output_dir: str) -> dict:
    """Where each image's pictures go: ``output_dir/<name>`` (``<name>_pred.png``...); images of the same file name
    (``a/x.jpg``, ``b/x.jpg``) keep their folders below the images' common folder, so no picture replaces another."""
    names = [os.path.splitext(os.path.basename(path))[0] for path in images]
    common = os.path.commonpath([os.path.dirname(os.path.abspath(path)) for path in images])
    stems = {}
    for path, name in zip(images, names):
        if names.count(name) > 1:
            name = os.path.splitext(os.path.relpath(os.path.abspath(path), common))[0]
        stems[path] = os.path.join(output_dir, name)
    return stems


def batches(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def parse_args(argv=None):
    """The options, checked before any work (the images exist; a MINDIR has no attention maps)."""
    args = build_parser().parse_args(argv)
    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"image not found: {', '.join(missing)}")
    if args.attention and args.ckpt_path and args.ckpt_path.lower().endswith(".mindir"):
        raise ValueError("--attention needs the checkpoint (an exported MINDIR returns only the logits)")
    return args


def main(argv=None):
    args = parse_args(argv)
    # one forward pass: no graph compilation (seconds for B/16) to pay back, PyNative answers first
    mode = args.mode if args.mode != "auto" else ("pynative" if len(args.images) <= args.batch_size else "graph")
    setup = device.setup(args.device_target, mode)
    print(device.describe(setup.device_target, setup.notes), file=sys.stderr)
    if args.ckpt_path and args.ckpt_path.lower().endswith(".mindir"):
        net = ExportedModel(args.ckpt_path)
        names = net.class_names
    else:
        net = cli.load_model(args, ema=args.use_ema, **INFERENCE)
        net.set_train(False)
        names = class_names_for(net)
    stems = picture_stems(args.images, args.output_dir)
    for folder in sorted({os.path.dirname(stem) for stem in stems.values()}):
        cli.check_folder(folder, f"the pictures to --output_dir {args.output_dir}")
    size = min(args.batch_size, len(args.images))
    if mode == "graph" and not args.attention and not isinstance(net, ExportedModel):
        compile_cache.enable(net, size)
    for group in batches(args.images, size):
        crops = [data.read_image(path, net.config) for path in group]   # decoded once: for the model and pictures
        images = data.pad_batch(ms.ops.cat([data.to_model_input(crop, net.config) for crop in crops]), size)
        all_probs = softmax(net(images).asnumpy().astype(np.float64))
        for index, (path, crop, probs) in enumerate(zip(group, crops, all_probs)):
            top = np.argsort(-probs)[:args.topk]                      # all classes if --topk is more
            print(path)
            for rank, k in enumerate(top, 1):
                print(f"  {rank}. {names[k]}  {probs[k]:.4f}")
            stem = stems[path]
            label = f"{data.short_name(names[top[0]])} ({probs[top[0]]:.1%})"
            render_label(path, label, f"{stem}_pred.png")
            print(f"  rendered: {stem}_pred.png")
            if args.plot or args.attention:
                draw_extras(args, net, crop, images[index:index + 1], names, top, probs, label, stem)
    return 0


def draw_extras(args, net, crop, image, names, top, probs, label, stem):
    """--plot's top-k chart and --attention's maps of one image."""
    from PIL import Image

    from ms_vit.pictures import plots
    view = Image.fromarray(crop)
    if args.plot:
        plots.plot_topk(view, [data.short_name(names[i]) for i in top], probs[top], f"{stem}_topk.png")
        print(f"  top-{len(top)} chart: {stem}_topk.png")
    if args.attention:
        from ms_vit.pictures.visualize import as_grid, attention_rollout, attention_weights
        weights = attention_weights(net, image)[:, 0]                  # (depth, H, 1 + N, 1 + N)
        plots.plot_attention(view, as_grid(attention_rollout(weights)), as_grid(weights[-1, :, 0, 1:]),
                             label, f"{stem}_attention.png")
        print(f"  attention: {stem}_attention.png")

if __name__ == "__main__":
    sys.exit(cli.run(main))
