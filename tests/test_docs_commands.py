"""The docs are tests: every command of README.md and docs/*.md runs here as a user's shell runs it, or its entry in
``COMMANDS`` says why it cannot run on this machine.

What counts as a command: each line of a fenced ```bash (or ```sh, or bare ```) block, backslash continuations
joined and ``# comments`` dropped; each ```python block as one unit (other blocks, such as ```text, are not
commands); and each cell in backticks of a table's ``command`` column (README.md's results). ``COMMANDS`` is keyed
by that exact text, in the order the runnable ones run (document order, each after what it needs):
``test_every_documented_command_has_an_entry`` fails on a command without an entry and on an entry no doc holds any
more, so a doc edit cannot leave this test behind.

``test_documented_commands_run_as_written`` runs the runnable ones through ``bash -c`` (globs and ``VAR=value cmd``
work as in a user's shell) with the virtual environment's ``bin/`` first on PATH, in a workspace holding links to the
entry scripts, ``configs/`` and ``benchmarks/`` (PYTHONPATH: the project), so ``data/...`` and ``outputs/...`` land
in the workspace. Downloads come from a 127.0.0.1 HTTP server at the publishers' own paths (the mirrors' variables
point the hosts at it) serving files made here in the publishers' formats: the tutorial's dataset zip (real ImageNet
photos), MindSpore Vision's ``vit_b_16_224.ckpt`` (random weights of the real shapes) and timm's safetensors. A
weight set pinned by its published sha256 cannot be made here: those commands run and must be refused in one line
naming the sha256 mismatch, as they are offline with a wrong file. The doc's placeholders (``ROOT``, ``IMAGE.jpg``,
``<64 hex>``) become real values; where a command is too big for this 2-core CPU, its entry appends the smaller
settings (argparse: the last value wins) and says why.
"""
import dataclasses
import glob
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile

import numpy as np
import pytest
from conftest import ROOT, require_timm
from helpers import free_port
from test_weights import Server, sha256, tutorial_names, write_ckpt

DOCS = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
SHELL_FENCES, PYTHON_FENCES = ("bash", "sh", "shell", ""), ("python",)
# what the workspace links to: the entry scripts and the folders their documented commands name
LINKED = ("train.py", "eval.py", "infer.py", "export.py", "demo.py", "configs", "benchmarks")
DATASET = "data/vit_imagenet_dataset"
SMALL_B16 = "--epoch_size 1 --batch_size 2 --image_size 32"
WHY_SMALL_B16 = ("fine-tuning ViT-B/16 at 224 px with batch 64 for 10 epochs takes hours on this 2-core CPU: one "
                 "epoch of batch 2 at 32 px (the position embedding resampled); argparse's last value wins")


# --- the commands in the docs ---------------------------------------------------------------------------------------

def strip_comment(line: str) -> str:
    """``line`` without its ``# comment`` (a ``#`` that starts a word outside quotes, as bash reads it)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def shell_commands(lines):
    """``[(index of its first line, command)]``: one command per line, comments dropped, backslash continuations
    joined with one space."""
    commands, pending, first = [], "", None
    for index, line in enumerate(lines):
        code = strip_comment(line).rstrip()
        if not code and not pending:
            continue
        first = index if first is None else first
        if code.endswith("\\"):
            pending += code[:-1].strip() + " "
            continue
        command = (pending + code.strip()).strip()
        if command:
            commands.append((first, command))
        pending, first = "", None
    assert not pending, f"a continuation without a next line: {pending}"
    return commands


def table_commands(lines, i):
    """``[(line number, command)]`` of the ``command`` column of the table whose header is ``lines[i]`` (a cell in
    backticks is a command; "same" and the like are not)."""
    header = [cell.strip() for cell in lines[i].strip().strip("|").split("|")]
    column = header.index("command")
    found = []
    for j in range(i + 2, len(lines)):
        if not lines[j].startswith("|"):
            break
        cell = [c.strip() for c in lines[j].strip().strip("|").split("|")][column]
        found += [(j + 1, command) for command in re.findall(r"`([^`]+)`", cell)]
    return found


def documented_commands():
    """``[(doc, line number, kind, text)]`` of every command in the docs, in document order; ``kind``: shell or
    python. Besides the fenced blocks, the ``command`` column of a table (README.md's results) holds commands."""
    found = []
    for doc in DOCS:
        lines = open(os.path.join(ROOT, doc)).read().splitlines()
        i = 0
        while i < len(lines):
            if re.match(r"^\|.*\|\s*command\s*\|", lines[i]):
                found += [(doc, line, "shell", command) for line, command in table_commands(lines, i)]
            fence = re.match(r"^```(\w*)\s*$", lines[i])
            if not fence:
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            body, language = lines[i + 1:end], fence.group(1).lower()
            if language in PYTHON_FENCES:
                found.append((doc, i + 2, "python", "\n".join(body).strip("\n")))
            elif language in SHELL_FENCES:
                found += [(doc, i + 2 + k, "shell", command) for k, command in shell_commands(body)]
            i = end + 1
    return found


# --- what each command does here ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Runs:
    """A command that runs here.

    Attributes:
        files: globs (relative to ``cwd``) each matching at least one file afterwards.
        output: fragments its output (stdout and stderr) must hold; ``{sha256:NAME}`` is the sha256 of the file
            served for the weight set NAME.
        refused: instead of exit 0: exit 2 with one ``error:`` line holding this fragment (``{sha256:NAME}`` alike),
            no traceback. For a python unit: ``(statement fragment, error fragment)``: that statement must raise.
        append: arguments added at the end (python: code added at the end), because ``why``.
        replace: ``{text: replacement}`` applied to the command, because ``why``.
        before: a command run first in the workspace (what the doc says to do before), because ``why``.
        root: the dataset ``ROOT`` stands for (default: the tutorial's), because ``why``.
        cwd: the folder it runs in, relative to the workspace.
        logs: files (relative to ``cwd``) whose text counts as its output too.
    """
    files: tuple = ()
    output: tuple = ()
    refused: object = None
    append: str = ""
    replace: dict = dataclasses.field(default_factory=dict)
    before: str = ""
    why: str = ""
    root: str = DATASET
    cwd: str = "."
    logs: tuple = ()


@dataclasses.dataclass(frozen=True)
class NotHere:
    """A command that cannot run on this machine, and why."""
    reason: str


def refused_pinned(name):
    """The line a weight set pinned by its published sha256 gives when the file it gets is not that one."""
    return Runs(refused=pinned_refusal(name))


def pinned_refusal(name):
    return (f"the download of {name} from {{server}}/timm/{name}/resolve/main/model.safetensors is damaged or not the "
            f"published file: sha256 {{sha256:{name}}}, published {{published:{name}}}")


README_UNIT = '''from ms_vit import create_model
net = create_model("deit_tiny_patch16_224.fb_in1k", pretrained=True)     # timm's names; downloaded, sha256 verified
net = create_model("vit_b_16_224.mindvision@sha256:<64 hex>", pretrained=True)  # the tutorial's, pinned by you
net = create_model("vit_ti_16_224", num_classes=10, image_size=32, patch_size=8)   # from scratch
net = create_model(checkpoint_path="model.safetensors")            # any file, any layout'''
WEIGHTS_UNIT = '''from ms_vit import create_model
net = create_model("deit_tiny_patch16_224.fb_in1k", pretrained=True)                # verified by its sha256
net = create_model("vit_b_16_224.mindvision@sha256:<64 hex>", pretrained=True)     # pinned by you
net = create_model(checkpoint_path="pytorch_model.bin")          # a file in any layout'''
DEPLOYMENT_UNIT = '''import json, numpy as np, mindspore as ms
from mindspore import nn

ms.set_device("Ascend")                                       # or "GPU", "CPU"
model = nn.GraphCell(ms.load("best.mindir"))                  # load once
info = json.load(open("best.mindir.json"))                    # preprocessing and class names

def predict(batch: np.ndarray) -> list:                       # (B, 3, S, S) float32, preprocessed as info says
    logits = model(ms.Tensor(batch)).asnumpy()                # any B: the batch dimension is dynamic
    return [info["class_names"][k] for k in logits.argmax(axis=1)]'''
PREDICT_THREE = '''
size = info["input"]["shape"][-1]
names = predict(np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32))
print("predicted:", len(names), "images:", names)'''
LAST_NET = '\nprint("loaded:", type(net).__name__, "dim", net.config.embed_dim, "classes", net.config.num_classes)'
TUNED = "outputs/vit_b_16_224_finetune"

# In the order they run: document order (README, then docs/ alphabetically), each after the commands it needs.
COMMANDS = {
    # README.md
    "python3 -m pip install -r requirements.txt && python3 demo.py":
        NotHere("the whole demo (~3 min, and an install into the shared environment): "
                "tests/test_scripts.py::test_demo_runs_end_to_end runs demo.py with --epochs 1"),
    "python3 -m pip install -r requirements.txt -r requirements-dev.txt && python3 -m pip install --no-deps "
    "timm==1.0.31 && python3 -m ruff check . && python3 -m pytest -q tests":
        NotHere("the test command itself (this test is one of them): .ci/run runs it in a fresh virtual environment"),
    "python -m dataset_tools download --dest data/vit_imagenet_dataset":
        Runs(files=(f"{DATASET}/train/*/*.JPEG", f"{DATASET}/val/*/*.JPEG", f"{DATASET}/infer/*/*.JPEG"),
             output=(f"dataset ready in {DATASET}", "train: 20 images in 19 classes",
                     "class names: ILSVRC2012_devkit_t12.tar.gz")),
    "MS_VIT_TRUST_ON_FIRST_USE=1 python train.py --config configs/vit_b_16_224_finetune_tutorial.yaml":
        Runs(append=SMALL_B16, why=WHY_SMALL_B16,
             files=(f"{TUNED}/best.ckpt", f"{TUNED}/vit-1_10.ckpt", f"{TUNED}/config.yaml", f"{TUNED}/curves.png"),
             output=("vit_b_16_224.mindvision: trusted on first use", "its sha256 {sha256:vit_b_16_224.mindvision}",
                     "training ViT(dim 768, depth 12, patch 16, image 32) with 19 classes", "trained epochs 1..1")),
    f"python eval.py --data_dir {DATASET} --ckpt_path {TUNED}/best.ckpt --report":
        Runs(files=(f"{TUNED}/eval_val.json", f"{TUNED}/eval_val.report.txt", f"{TUNED}/eval_val.confusion.png"),
             output=("(20 images)",)),
    f"python infer.py --ckpt_path {TUNED}/best.ckpt {DATASET}/infer/*/*.JPEG":
        Runs(files=("outputs/infer/ILSVRC2012_test_00000020_pred.png",), output=("  1. ", "rendered: outputs/infer/")),
    f"python export.py --ckpt_path {TUNED}/best.ckpt --file_format ONNX":
        Runs(files=(f"{TUNED}/best.onnx", f"{TUNED}/best.onnx.json"), output=("any batch size",)),
    # docs/data.md's ImageNet first: README.md's next command reads it (archives made here in the official layout)
    "python -m dataset_tools imagenet --train ILSVRC2012_img_train.tar --val ILSVRC2012_img_val.tar --devkit "
    "ILSVRC2012_devkit_t12.tar.gz --dest data/imagenet":
        Runs(files=("data/imagenet/train/*/*.JPEG", "data/imagenet/val/*/ILSVRC2012_val_*.JPEG",
                    "data/imagenet/ILSVRC2012_devkit_t12.tar.gz"),
             output=("train: 20 images in 19 classes", "val: 20 images in 19 classes")),
    "python eval.py --data_dir data/imagenet --pretrained deit3_base_patch16_224.fb_in1k":
        refused_pinned("deit3_base_patch16_224.fb_in1k"),
    README_UNIT:
        Runs(refused=('"deit_tiny_patch16_224.fb_in1k"', pinned_refusal("deit_tiny_patch16_224.fb_in1k")),
             append=LAST_NET, why="prints what the last line loaded", output=("loaded: ViT dim 128 classes 5",)),
    "pytest tests/test_convert.py tests/test_weights.py":
        NotHere("the timm parity tests (~3.5 min): the suite runs them, in a clone without ../shared too (its copies "
                "of the fixture are then deselected, conftest.py); here they would run twice"),
    "python benchmarks/bench_recipe.py":
        NotHere("a benchmark of ~3 min (20 epochs of timm and of ms_vit on the digits): its figures are in "
                "docs/training.md"),
    # docs/data.md
    "python eval.py --data_dir data/imagenet --pretrained deit3_base_patch16_224.fb_in1k --report":
        refused_pinned("deit3_base_patch16_224.fb_in1k"),
    # docs/training.md
    "MS_VIT_TRUST_ON_FIRST_USE=1 python train.py --data_dir ROOT --pretrained vit_b_16_224.mindvision --epoch_size "
    "10 --batch_size 64 --lr 1e-4":
        NotHere("same job as README.md's `MS_VIT_TRUST_ON_FIRST_USE=1 python train.py --config "
                "configs/vit_b_16_224_finetune_tutorial.yaml`, which runs (the recipe holds this dataset, weight set, "
                "epochs, batch and lr); a second B/16 fine-tuning costs ~1 min here"),
    "python train.py --data_dir ROOT --config configs/deit_small_224.yaml --resume auto":
        Runs(append="--epoch_size 1 --batch_size 4 --image_size 32",
             why="DeiT-S for 300 epochs of batch 128 at 224 px is days here: one epoch of batch 4 at 32 px, the "
                 "rest of the recipe as it is (Mixup/CutMix, RandAugment, erasing, repeated augmentation, EMA)",
             files=("outputs/deit_small_224/best.ckpt", "outputs/deit_small_224/config.yaml"),
             output=("no checkpoint in outputs/deit_small_224 to resume: starting a new run",
                     "training ViT(dim 384, depth 12, patch 16, image 32)", "trained epochs 1..1")),
    "python train.py --help":
        Runs(output=("--resume", "--config", "--pretrained")),
    # docs/faults.md
    "python train.py --data_dir ROOT --config configs/deit_small_224.yaml --ckpt_save_dir runs/deit_s --resume auto":
        NotHere("same as docs/training.md's `python train.py --data_dir ROOT --config configs/deit_small_224.yaml "
                "--resume auto`, which runs (this one into runs/deit_s); stopping and resuming are "
                "tests/test_faults.py's"),
    # docs/distributed.md, before the commands that read outputs/train, which its CPU line writes
    "msrun --worker_num=8 --local_worker_num=8 --master_port=8118 --log_dir=logs --join=True train.py --distribute "
    "--data_dir data/imagenet --model vit_b_16_224 --batch_size 128 --lr 1e-3":
        NotHere("8 Ascend NPUs"),
    "msrun --worker_num=16 --local_worker_num=8 --master_addr=192.0.2.10 --master_port=8118 --node_rank=0 "
    "--log_dir=logs --join=True train.py --distribute --data_dir data/imagenet --batch_size 64 --lr 1e-3":
        NotHere("2 machines of 8 Ascend NPUs"),
    "msrun --worker_num=4 --local_worker_num=4 --master_port=8118 --log_dir=logs --join=True train.py --distribute "
    "--device_target GPU --data_dir data/imagenet --batch_size 256 --lr 1e-3":
        NotHere("4 GPUs and MindSpore's GPU build"),
    "msrun --worker_num=2 --local_worker_num=2 --master_port=8118 --log_dir=logs --join=True train.py --distribute "
    "--config configs/demo.yaml --data_dir data/mnist --batch_size 32 --epoch_size 2":
        Runs(before="python -m dataset_tools demo --dest data/mnist",
             replace={"--master_port=8118": "--master_port={free_port}"},
             why="the line's comment makes data/mnist first; a free port, since another msrun on this shared "
                 "machine may hold 8118",
             logs=("logs/worker_0.log",), files=("logs/worker_1.log", "outputs/train/best.ckpt"),
             output=("62 steps of 2 workers x 32 = global batch 64 per epoch", "trained epochs 1..2")),
    # docs/deployment.md: outputs/train is the msrun line's run (the demo's ViT on the MNIST digits)
    "python export.py --ckpt_path outputs/train/best.ckpt --file_format MINDIR":
        Runs(files=("outputs/train/best.mindir", "outputs/train/best.mindir.json"),
             output=("MINDIR: outputs/train/best.mindir",)),
    "python export.py --pretrained deit3_base_patch16_224.fb_in1k --file_format ONNX --output deit3_b16":
        refused_pinned("deit3_base_patch16_224.fb_in1k"),
    "python infer.py --ckpt_path outputs/train/best.mindir IMAGE.jpg":
        Runs(output=("  1. ", "rendered: outputs/infer/ILSVRC2012_test_00000001_pred.png")),
    DEPLOYMENT_UNIT:
        Runs(replace={'ms.set_device("Ascend")': 'ms.set_device("CPU")'},
             append=PREDICT_THREE, cwd="outputs/train",
             why="no Ascend here (the line's comment offers CPU); it runs beside the files export.py wrote, and "
                 "calls predict on three images",
             output=("predicted: 3 images:",)),
    # docs/performance.md
    "python benchmarks/bench_vit.py":
        NotHere("a benchmark of ~40 min (ms_vit, timm and mindcv): its figures are in docs/performance.md"),
    "python benchmarks/bench_cold_start.py --runs 5":
        NotHere("a benchmark of ~5 min: its figures are in docs/performance.md"),
    "python benchmarks/bench_export.py":
        NotHere("a benchmark of B/16 and Ti/16 exports (~10 min): its figures are in docs/deployment.md"),
    "python benchmarks/bench_scale.py":
        NotHere("a benchmark writing 1.28 M files and dropping the page cache (root): its figures are in "
                "docs/data.md"),
    "python benchmarks/bench_checkpoint_read.py":
        NotHere("a benchmark reading a B/16 checkpoint in fresh processes: its figures are in docs/performance.md"),
    "python benchmarks/profile_ops.py --case train":
        NotHere("a profile of B/16 training by operator type (minutes): its figures are in docs/performance.md"),
    # docs/pictures.md
    "python infer.py --ckpt_path outputs/train/best.ckpt IMAGE.jpg --attention --plot":
        Runs(files=("outputs/infer/ILSVRC2012_test_00000001_attention.png",
                    "outputs/infer/ILSVRC2012_test_00000001_topk.png"),
             output=("attention: outputs/infer/", "top-5 chart: outputs/infer/")),
    "python eval.py --data_dir ROOT --ckpt_path outputs/train/best.ckpt --report":
        Runs(root="data/mnist", why="ROOT is the dataset outputs/train was trained on: the msrun line's digits",
             files=("outputs/train/eval_val.report.txt", "outputs/train/eval_val.confusion.png"),
             output=("(800 images)", "confusion matrix: ")),
    # docs/testing.md
    "MS_VIT_TOLERANCE_LOG=/tmp/margins.jsonl python -m pytest -q tests/test_kernels.py tests/test_convert.py":
        NotHere("runs part of the test suite itself (which runs those tests); the variable only adds the margins log"),
    "python -c \"import json; r = [json.loads(l) for l in open('/tmp/margins.jsonl')]; "
    "[print(f\\\"{d['ratio']:.3g}  {d['test']}  {d['what']}\\\") for d in sorted(r, key=lambda d: -d['ratio'])[:10]]\"":
        NotHere("reads the margins log the line above writes"),
    # docs/weights.md
    "python -m ms_vit.weights":
        Runs(output=("source        top-1 image  cached", "vit_b_16_224.mindvision", "deit3_base_patch16_224.fb_in1k",
                     "vit_h_14_224.torchvision_swag")),
    "python -m ms_vit.weights vit_b_16_224.mindvision":
        Runs(output=("url: https://download.mindspore.cn/vision/classification/vit_b_16_224.ckpt", "sha256: ",
                     "licence: Apache-2.0", "vit_b_16_224.mindvision/vit_b_16_224.ckpt")),
    "python eval.py --data_dir ROOT --pretrained deit3_base_patch16_224.fb_in1k":
        refused_pinned("deit3_base_patch16_224.fb_in1k"),
    "python infer.py --pretrained deit_small_patch16_224.fb_in1k@sha256:<64 hex> IMAGE.jpg":
        Runs(files=("outputs/infer/ILSVRC2012_test_00000001_pred.png",), output=("  1. ",)),
    "MS_VIT_TRUST_ON_FIRST_USE=1 python train.py --data_dir ROOT --pretrained vit_b_16_224.mindvision --lr 1e-4":
        NotHere("same job as README.md's `MS_VIT_TRUST_ON_FIRST_USE=1 python train.py --config "
                "configs/vit_b_16_224_finetune_tutorial.yaml`, which runs (the recipe holds this dataset, weight set "
                "and lr); a second B/16 fine-tuning costs ~1 min here"),
    "python -m ms_vit.weights.convert model.safetensors --out my.ckpt":
        Runs(files=("my.ckpt",), output=("wrote my.ckpt: ViT(dim 128, depth 2",)),
    WEIGHTS_UNIT:
        Runs(refused=('"deit_tiny_patch16_224.fb_in1k"', pinned_refusal("deit_tiny_patch16_224.fb_in1k")),
             append=LAST_NET, why="prints what the last line loaded", output=("loaded: ViT dim 128 classes 5",)),
}


def test_every_documented_command_has_an_entry():
    documented = {text: f"{doc}:{line}" for doc, line, _, text in documented_commands()}
    missing = [f"{where}: {text}" for text, where in documented.items() if text not in COMMANDS]
    stale = [text for text in COMMANDS if text not in documented]
    assert not missing and not stale, ("documented commands without an entry in COMMANDS:\n  " + "\n  ".join(missing)
                                       + "\nentries no doc holds any more:\n  " + "\n  ".join(stale))
    for text, entry in COMMANDS.items():
        assert isinstance(entry, NotHere) or all(old in text for old in entry.replace), text
        changed = not isinstance(entry, NotHere) and (entry.append or entry.replace or entry.before or
                                                      entry.root != DATASET)
        assert not changed or entry.why, text


# --- the workspace, the files the publishers serve, the run ---------------------------------------------------------

B16 = dict(dim=768, depth=12, mlp=3072, patch=16, grid=14, classes=1000)


def b16_weights(seed=0):
    """ViT-B/16's weights at 224 px, 1000 classes, in test_weights.tutorial_names' terms: random values (N(0, 0.02),
    LayerNorm scales 1) of the real shapes."""
    rng = np.random.default_rng(seed)
    d, m = B16["dim"], B16["mlp"]
    r = lambda *shape: (rng.standard_normal(shape, dtype=np.float32) * 0.02)      # noqa: E731
    one = lambda n: np.ones(n, np.float32)                                         # noqa: E731
    blocks = [dict(ln1_g=one(d), ln1_b=r(d), q_w=r(d, d), q_b=r(d), k_w=r(d, d), k_b=r(d), v_w=r(d, d), v_b=r(d),
                   out_w=r(d, d), out_b=r(d), ln2_g=one(d), ln2_b=r(d), fc1_w=r(m, d), fc1_b=r(m), fc2_w=r(d, m),
                   fc2_b=r(d)) for _ in range(B16["depth"])]
    return dict(cls=r(1, 1, d), pos=r(1, 1 + B16["grid"] ** 2, d), patch_w=r(d, 3, B16["patch"], B16["patch"]),
                patch_b=r(d), blocks=blocks, norm_g=one(d), norm_b=r(d), head_w=r(B16["classes"], d),
                head_b=r(B16["classes"]))


def sample_photos(imagenet_sample):
    """``[(wnid, photo bytes)]``: the 20 real ImageNet photos of the foolbox wheel (conftest.imagenet_sample)."""
    val = os.path.join(imagenet_sample, "val")
    return [(wnid, open(os.path.join(val, wnid, name), "rb").read())
            for wnid in sorted(os.listdir(val)) for name in sorted(os.listdir(os.path.join(val, wnid)))]


def tutorial_zip(imagenet_sample, path):
    """The MindSpore tutorial's vit_imagenet_dataset.zip in its layout: ``dataset/{train,val,infer}/<wnid>/*.JPEG``
    named as ImageNet names its files, and the devkit; real photos (each split holds the same 20)."""
    names = {"train": "{wnid}_{k}.JPEG", "val": "ILSVRC2012_val_{k:08d}.JPEG", "infer": "ILSVRC2012_test_{k:08d}.JPEG"}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, (wnid, photo) in enumerate(sample_photos(imagenet_sample), 1):
            for split, name in names.items():
                zf.writestr(f"dataset/{split}/{wnid}/{name.format(wnid=wnid, k=k)}", photo)
        zf.write(os.path.join(imagenet_sample, "ILSVRC2012_devkit_t12.tar.gz"),
                 "dataset/ILSVRC2012_devkit_t12.tar.gz")


def add_member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def imagenet_archives(imagenet_sample, folder):
    """ILSVRC2012_img_train.tar (a tar of per-wnid tars), ILSVRC2012_img_val.tar (one folder of
    ILSVRC2012_val_*.JPEG) and ILSVRC2012_devkit_t12.tar.gz (meta.mat and the validation ground truth), as the
    official archives are laid out, holding the 20 real photos: a devkit of their 19 classes (the tool stops on
    classes of the devkit missing from the training archive)."""
    from dataset_tools.demo import imagenet_synsets, write_devkit
    lemmas = imagenet_synsets()[1]
    photos = sample_photos(imagenet_sample)
    synsets = sorted({wnid for wnid, _ in photos})
    with tarfile.open(os.path.join(folder, "ILSVRC2012_img_train.tar"), "w") as train:
        for wnid in synsets:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for k, (_, photo) in enumerate(p for p in photos if p[0] == wnid):
                    add_member(tar, f"{wnid}_{k + 1}.JPEG", photo)
            add_member(train, f"{wnid}.tar", inner.getvalue())
    with tarfile.open(os.path.join(folder, "ILSVRC2012_img_val.tar"), "w") as val:
        for k, (_, photo) in enumerate(photos, 1):
            add_member(val, f"ILSVRC2012_val_{k:08d}.JPEG", photo)
    write_devkit(os.path.join(folder, "ILSVRC2012_devkit_t12.tar.gz"), synsets, lemmas,
                 [synsets.index(wnid) + 1 for wnid, _ in photos])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, imagenet_sample, timm_reference):
    """A user's folder (links to the scripts; the files the commands name), a cache of its own (the compiled
    kernels and the dataset wheels copied in: nothing compiled or fetched again), the publishers' hosts on
    127.0.0.1, and the environment pointing at both. Removed afterwards (B/16 checkpoints: ~2 GB)."""
    from dataset_tools.download import TUTORIAL_URL
    from ms_vit.files import cache_root
    from ms_vit.weights import registry
    timm = require_timm(timm_reference)
    folder = tmp_path_factory.mktemp("workspace")
    for name in LINKED:
        os.symlink(os.path.join(ROOT, name), folder / name)
    cache = tmp_path_factory.mktemp("cache") / "ms_vit"
    os.makedirs(cache, mode=0o700)
    for kept in ("kernels", "wheels"):
        if os.path.isdir(os.path.join(cache_root(), kept)):
            shutil.copytree(os.path.join(cache_root(), kept), cache / kept, ignore=shutil.ignore_patterns(".lock"))
    made = tmp_path_factory.mktemp("published")
    server = Server()
    tutorial_zip(imagenet_sample, made / "vit_imagenet_dataset.zip")
    server.publish(TUTORIAL_URL, made / "vit_imagenet_dataset.zip")
    write_ckpt(made / "vit_b_16_224.ckpt", tutorial_names(b16_weights(), "backbone.", "cls_token", "head.dense"))
    served = {"vit_b_16_224.mindvision": made / "vit_b_16_224.ckpt",
              "deit_small_patch16_224.fb_in1k": timm / "deit_small_patch16_224.safetensors",
              # pinned by their published sha256: a timm file of ours is not theirs
              "deit3_base_patch16_224.fb_in1k": timm / "deit3.safetensors",
              "deit_tiny_patch16_224.fb_in1k": timm / "vit.safetensors"}
    for name, path in served.items():
        server.publish(registry.find(name).url, path)
    shutil.copy(timm / "vit.safetensors", folder / "model.safetensors")
    shutil.copy(timm / "vit_pytorch_model.bin", folder / "pytorch_model.bin")
    imagenet_archives(imagenet_sample, folder)
    wnid, _ = sample_photos(imagenet_sample)[0]
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=ROOT, MS_VIT_CACHE=str(cache), MS_VIT_ALLOW_HTTP_MIRROR="1", HF_ENDPOINT=server.url,
               MS_VIT_MINDSPORE_MIRROR=server.url, MS_VIT_GOOGLE_MIRROR=server.url, MS_VIT_PYTORCH_MIRROR=server.url)
    for variable in ("MS_VIT_TRUST_ON_FIRST_USE", "MS_VIT_WEIGHTS_TABLE", "MS_VIT_FUSED_KERNELS"):
        env.pop(variable, None)
    image = f"{DATASET}/infer/{wnid}/ILSVRC2012_test_00000001.JPEG"          # the tutorial's first image to infer
    yield dict(folder=folder, env=env, server=server.url, sha256={name: sha256(path) for name, path in served.items()},
                published={name: registry.find(name).sha256 for name in served},
                image=image)
    server.httpd.shutdown()
    for made_here in (folder, cache.parent, made):
        shutil.rmtree(made_here, ignore_errors=True)


def fill(text, ws):
    """``{server}``, ``{free_port}``, ``{sha256:NAME}`` (the file served for NAME), ``{published:NAME}``."""
    values = {"server": lambda _: ws["server"], "free_port": lambda _: str(free_port()),
              "sha256": lambda name: ws["sha256"][name], "published": lambda name: ws["published"][name]}
    return re.sub(r"\{(\w+)(?::([\w.]+))?\}", lambda m: values[m.group(1)](m.group(2)), text)


def as_run(text, kind, entry, ws):
    """The command as it runs here: placeholders substituted, the entry's replacements and additions applied."""
    text = re.sub(r"\bIMAGE\.jpg\b", ws["image"], re.sub(r"\bROOT\b", entry.root, text))
    text = re.sub(r"([\w.]+)@sha256:<64 hex>", lambda m: f"{m.group(1)}@sha256:{ws['sha256'][m.group(1)]}", text)
    for old, new in entry.replace.items():
        text = text.replace(old, fill(new, ws))
    if kind == "python" and entry.refused:             # that statement must raise: its error is printed
        lines = text.splitlines()
        (index,) = [i for i, line in enumerate(lines) if entry.refused[0] in line]
        statement = lines[index].strip()
        lines[index:index + 1] = ["try:", f"    {statement}", "except Exception as exc:", "    print('refused:', exc)",
                                  "else:", f"    raise SystemExit({statement!r} + ': not refused')"]
        text = "\n".join(lines)
    return text + ("\n" + entry.append if kind == "python" else " " + entry.append) if entry.append else text


def problems_of(result, kind, entry, ws, cwd):
    """What is wrong with a command's run, as lines (none: it did what its doc says)."""
    output = result.stdout + result.stderr
    for log in entry.logs:
        output += open(os.path.join(cwd, log)).read() if os.path.isfile(os.path.join(cwd, log)) else ""
    problems = []
    if entry.refused and kind == "shell":
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        fragment = fill(entry.refused, ws)
        if result.returncode != 2 or len(errors) != 1 or fragment not in errors[0] or "Traceback" in output:
            problems.append(f"not refused in one line holding {fragment!r} (exit {result.returncode})")
    elif result.returncode != 0:
        problems.append(f"exit status {result.returncode}")
    if entry.refused and kind == "python":
        refusals = [line for line in result.stdout.splitlines() if line.startswith("refused: ")]
        if len(refusals) != 1 or fill(entry.refused[1], ws) not in refusals[0]:
            problems.append(f"{entry.refused[0]} was not refused with {fill(entry.refused[1], ws)!r}")
    problems += [f"no output line holds {fill(f, ws)!r}" for f in entry.output if fill(f, ws) not in output]
    problems += [f"no file {pattern}" for pattern in entry.files if not glob.glob(os.path.join(cwd, pattern))]
    if problems:
        problems.append(f"stdout: ...{result.stdout[-2500:]}\nstderr: ...{result.stderr[-2500:]}")
    return problems


def test_documented_commands_run_as_written(workspace):
    where = {}
    for doc, line, kind, text in documented_commands():
        where.setdefault(text, (f"{doc}:{line}", kind))
    failures, timings = [], []
    for command, entry in COMMANDS.items():
        if isinstance(entry, NotHere):
            continue
        place, kind = where[command]
        cwd = os.path.join(workspace["folder"], entry.cwd)
        text = as_run(command, kind, entry, workspace)
        start = time.monotonic()
        if entry.before:
            before = subprocess.run(["bash", "-c", entry.before], cwd=workspace["folder"], env=workspace["env"],
                                    capture_output=True, text=True, timeout=600)
            assert before.returncode == 0, (entry.before, before.stderr[-2000:])
        shell = ["bash", "-c", text] if kind == "shell" else ["bash", "-c", "python -"]
        result = subprocess.run(shell, cwd=cwd, env=workspace["env"], capture_output=True, text=True, timeout=900,
                                input=text if kind == "python" else None)
        timings.append((time.monotonic() - start, f"{place:22} {command.splitlines()[0][:90]}"))
        problems = problems_of(result, kind, entry, workspace, cwd)
        if problems:
            failures.append(f"{place}: $ {text}\n  " + "\n  ".join(problems))
    summary = "\n".join(f"{seconds:6.1f} s  {command}" for seconds, command in timings)
    print(f"\n{summary}\n{sum(s for s, _ in timings):6.1f} s in all")
    assert not failures, "\n\n".join(failures) + "\n\n" + summary
