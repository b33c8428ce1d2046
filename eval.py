"""Evaluate a ViT checkpoint: top-1, top-5, mean cross-entropy and per-class top-1 over every image of a split.

    python eval.py --data_dir ROOT --ckpt_path CKPT [--split val] [--output metrics.json] [--report]
    python eval.py --data_dir ROOT --pretrained vit_b_16_224.mindvision

A progress line every ~10 s (images done, img/s, time left). The metrics JSON holds the figures, and every class's
top-1 and image count; --report also writes the worst classes and the most-confused class pairs (with class names)
as text and, for up to 100 classes, the confusion matrix as a picture.

Checkpoints written by train.py or ms_vit.weights.convert carry their variant, image size, preprocessing and classes;
pretrained weight sets (--pretrained NAME) and other layouts (the public vit_b_16_224.ckpt, timm, mindcv...) load
with the numerics and preprocessing their publishers trained and evaluated them with.
"""
import argparse
import os
import sys

import numpy as np

from ms_vit import cli, data, device
from ms_vit.deploy import compile_cache
from ms_vit.evaluation import report
from ms_vit.evaluation.evaluate import evaluate
from ms_vit.factory import INFERENCE
from ms_vit.training.history import write_json

MAX_PICTURE_CLASSES = 100


def build_parser():
    p = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="dataset root with <split>/<class>/<image>")
    cli.add_weights_args(p)
    p.add_argument("--split", default="val", help="folder under --data_dir (default: %(default)s)")
    p.add_argument("--image_size", type=cli.COUNT, help="evaluate at another size (position embedding resampled)")
    p.add_argument("--batch_size", type=cli.COUNT, default=64, help="(default: %(default)s)")
    p.add_argument("--use_ema", action="store_true",
                   help="use the checkpoint's moving average of the weights (train.py --ema_decay)")
    p.add_argument("--num_workers", type=cli.COUNT, default=min(8, os.cpu_count() or 1), help="(default: %(default)s)")
    p.add_argument("--log_interval", type=cli.NON_NEGATIVE, default=10.0,
                   help="seconds between progress lines, 0: a line per batch (default: %(default)s)")
    p.add_argument("--output", type=cli.new_file,
                   help="metrics JSON to write (default: eval_<split>.json beside the checkpoint; "
                   "eval_<name>_<split>.json here for --pretrained)")
    p.add_argument("--report", action="store_true",
                   help="also write <output>.report.txt (worst classes, most-confused pairs) and, for up to "
                        f"{MAX_PICTURE_CLASSES} classes, <output>.confusion.png")
    cli.add_device_args(p)
    return p


def output_path(args) -> str:
    """The metrics JSON's path: ``--output``, else eval_<split>.json beside the checkpoint (eval_<name>_<split>.json
    here for ``--pretrained``)."""
    if args.output:
        return args.output
    if args.pretrained:
        return f"eval_{args.pretrained}_{args.split}.json"
    return os.path.join(os.path.dirname(os.path.abspath(args.ckpt_path)), f"eval_{args.split}.json")


def parse_args(argv=None):
    """The options, checked before any work: the metrics file can be written (not found out after the evaluation)."""
    args = build_parser().parse_args(argv)
    cli.check_output(output_path(args), "--output")
    return args


def main(argv=None):
    args = parse_args(argv)
    output = output_path(args)
    setup = device.setup(args.device_target, args.mode)
    print(device.describe(setup.device_target, setup.notes), file=sys.stderr)
    net = cli.load_model(args, image_size=args.image_size, ema=args.use_ema, **INFERENCE)
    split_dir = os.path.join(args.data_dir, args.split)
    classes = (net.checkpoint_meta.get("classes")
               or data.resolve_classes(data.list_classes(split_dir), net.config.num_classes, split_dir))
    say = lambda line: print(line, flush=True)                          # noqa: E731
    num_images = data.scan_split(split_dir, classes, say=say, every=max(args.log_interval, 1.0))
    batch_size = min(args.batch_size, num_images)
    dataset = data.create_dataset(split_dir, classes, net.config, batch_size, training=False,
                                  num_workers=args.num_workers)
    if args.mode == "graph":           # one graph shape: evaluate pads the last batch to the first's size
        compile_cache.enable(net, batch_size)
    metrics = evaluate(net, dataset, say=say, total=num_images, every=args.log_interval)
    confusion = metrics.pop("confusion")
    names = net.checkpoint_meta.get("class_names") or data.class_names(args.data_dir, classes)
    metrics["per_class"] = report.per_class(confusion, classes, names)
    if args.pretrained:
        metrics.update(pretrained=args.pretrained, split=args.split)
    else:
        metrics.update(checkpoint=os.path.abspath(args.ckpt_path), split=args.split)
    write_json(metrics, output)
    print(f"{args.split}: top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  loss {metrics['loss']:.4f}  "
          f"({metrics['num_images']} images)\nmetrics: {output}")
    if args.report:
        write_report(metrics, confusion, classes, names, os.path.splitext(output)[0])
    return 0


def write_report(metrics, confusion, classes, names, base: str) -> None:
    """``base.report.txt`` (printed too) and, for up to ``MAX_PICTURE_CLASSES`` classes, ``base.confusion.png``."""
    from ms_vit.files import write_atomically
    summary = report.text(metrics, report.worst_classes(confusion, classes, names),
                          report.confused_pairs(confusion, classes, names))

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(summary + "\n")
    write_atomically(base + ".report.txt", write)
    print(summary + f"\nreport: {base}.report.txt")
    seen = np.flatnonzero(confusion.sum(axis=1) + confusion.sum(axis=0))         # classes with images or votes
    if len(seen) <= MAX_PICTURE_CLASSES:
        report.plot_confusion(confusion[np.ix_(seen, seen)], [names[k] for k in seen], base + ".confusion.png")
        print(f"confusion matrix: {base}.confusion.png")
    else:
        print(f"no confusion-matrix picture: {len(seen)} classes (at most {MAX_PICTURE_CLASSES})")


if __name__ == "__main__":
    sys.exit(cli.run(main))
