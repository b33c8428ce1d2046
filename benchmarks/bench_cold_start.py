"""The first answer: a fresh ``python infer.py`` process vs a fresh timm process doing the same job (create the
model, load its weights file, preprocess, predict, print the top 5), on the same ViT-B/16 weights and photos.

    python benchmarks/bench_cold_start.py [--runs 5] [--model b16] [--images 1 20]

For each image count, the two commands run ``--runs`` times, alternating; printed: median wall seconds, median
peak memory (max RSS of the process), and the ratios timm / ms_vit for time (>1: ms_vit answers first) and
ms_vit / timm for memory (<1: ms_vit smaller). ms_vit also writes each picture with its label (timm's side does
not draw). Weights: timm's model with its own random initialisation (seed 0) saved as ``model.safetensors``,
converted with ``python -m ms_vit.weights.convert`` into ``B16.ckpt``: the same numbers on both sides.

Also prints where a fresh ms_vit process spends its time (``--phases``): import, model build, weight loading,
the first forward pass, rendering.
"""
import argparse
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time

import _machine
from _peers import require

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = {"b16": ("vit_b_16_224", "vit_base_patch16_224"), "ti16": ("vit_ti_16_224", "vit_tiny_patch16_224")}

TIMM_SCRIPT = r'''
import sys
sys.path.insert(0, {here!r})
import _torchvision_stub
_torchvision_stub.install()
import numpy as np
import torch
import timm
from PIL import Image
from safetensors.torch import load_file

torch.set_grad_enabled(False)
model = timm.create_model({name!r}, pretrained=False)
model.load_state_dict(load_file({weights!r}))
model.eval()
mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def preprocess(path):          # timm's eval transform: short side to 248 (bicubic), centre crop 224, normalise
    image = Image.open(path).convert("RGB")
    scale = 248 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    x = (np.asarray(image.crop((left, top, left + 224, top + 224)), np.float32) / 255 - mean) / std
    return torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))


paths = sys.argv[1:]
for start in range(0, len(paths), 8):
    group = paths[start:start + 8]
    probs = model(torch.stack([preprocess(p) for p in group])).softmax(-1)
    for path, p in zip(group, probs):
        top = p.topk(5)
        print(path, [(int(i), round(float(v), 4)) for v, i in zip(top.values, top.indices)])
'''


def run(command):
    """(wall seconds, max RSS MB) of one fresh process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=dict(os.environ, PYTHONPATH=ROOT))
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    out, err = process.stdout.read(), process.stderr.read()
    if status != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{err.decode()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, out.decode()


def prepare(folder, model):
    ms_name, timm_name = MODELS[model]
    weights, ckpt = os.path.join(folder, "model.safetensors"), os.path.join(folder, f"{model}.ckpt")
    subprocess.run([sys.executable, "-c", f"""
import sys; sys.path.insert(0, {HERE!r}); import _torchvision_stub; _torchvision_stub.install()
import torch, timm
from safetensors.torch import save_file
torch.manual_seed(0)
save_file(timm.create_model({timm_name!r}, pretrained=False).state_dict(), {weights!r})
"""], check=True)
    subprocess.run([sys.executable, "-m", "ms_vit.weights.convert", weights, "--out", ckpt, "--model", ms_name],
                   check=True,
                   cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True)
    from dataset_tools.demo import build_imagenet_sample
    data = os.path.join(folder, "photos")
    build_imagenet_sample(data)
    photos = sorted(glob.glob(os.path.join(data, "val", "*", "*")))
    script = os.path.join(folder, "timm_infer.py")
    with open(script, "w") as f:
        f.write(TIMM_SCRIPT.format(here=HERE, name=timm_name, weights=weights))
    return ckpt, script, photos


PHASES = r'''
import time
start = time.perf_counter()
from ms_vit import create_model, data, device
import mindspore as ms
from ms_vit.pictures.render import render_label
marks = [("import", time.perf_counter())]
device.setup(None, "pynative")
net = create_model(checkpoint_path={ckpt!r}); net.set_train(False)
marks.append(("create_model (read checkpoint, build, load)", time.perf_counter()))
x = data.load_image({photo!r}, net.config)
marks.append(("read and preprocess the image", time.perf_counter()))
net(x).asnumpy()
marks.append(("first forward pass (PyNative)", time.perf_counter()))
render_label({photo!r}, "label", {picture!r})
marks.append(("render the label", time.perf_counter()))
previous = start
for name, t in marks:
    print(f"  {{name:45s}} {{t - previous:5.2f}} s"); previous = t
print(f"  {{'total':45s}} {{previous - start:5.2f}} s")
'''


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", choices=list(MODELS), default="b16")
    parser.add_argument("--images", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--phases", action="store_true", help="also time the phases of one fresh ms_vit process")
    args = parser.parse_args()
    print(_machine.describe(), flush=True)
    require("torch", "timm", "safetensors")
    sys.path.insert(0, ROOT)
    with tempfile.TemporaryDirectory(prefix="ms_vit_cold_") as folder:
        ckpt, script, photos = prepare(folder, args.model)
        if args.phases:
            print("where a fresh ms_vit process spends its time (one image):")
            code = PHASES.format(ckpt=ckpt, photo=photos[0], picture=os.path.join(folder, "p.png"))
            print(run([sys.executable, "-c", code])[2], end="")
        for count in args.images:
            images = (photos * count)[:count]
            ours = [sys.executable, "infer.py", "--ckpt_path", ckpt, *images, "--output_dir", os.path.join(folder, "o")]
            theirs = [sys.executable, script, *images]
            results = {"ms_vit": [], "timm": []}
            for _ in range(args.runs):
                results["ms_vit"].append(run(ours)[:2])
                results["timm"].append(run(theirs)[:2])
            med = {k: (statistics.median(t for t, _ in v), statistics.median(m for _, m in v))
                   for k, v in results.items()}
            print(f"{args.model} {count} image{'s' if count > 1 else ''}, fresh process, median of {args.runs}: "
                  f"ms_vit {med['ms_vit'][0]:.2f} s {med['ms_vit'][1]:.0f} MB | timm {med['timm'][0]:.2f} s "
                  f"{med['timm'][1]:.0f} MB | time timm/ms_vit {med['timm'][0] / med['ms_vit'][0]:.2f} | memory "
                  f"ms_vit/timm {med['ms_vit'][1] / med['timm'][1]:.2f}")
            print("  runs (s): ms_vit " + ", ".join(f"{t:.2f}" for t, _ in results["ms_vit"]) +
                  "; timm " + ", ".join(f"{t:.2f}" for t, _ in results["timm"]))


if __name__ == "__main__":
    main()
