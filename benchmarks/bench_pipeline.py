"""The training pipeline's images per second per CPU core: ms_vit's beside timm's loader, with DeiT-B's recipe on the
same real photos and the same number of workers, and the rate per core a host needs to feed 8 NPUs.

    python benchmarks/bench_pipeline.py [--workers 2] [--seconds 40] [--npu_rate 400] [--host_cores 192]

The recipe (DeiT-B, ``configs/deit_b_16_224.yaml``): random resized crop to 224 (bicubic), flip, RandAugment
``rand-m9-mstd0.5-inc1``, normalise, random erasing 0.25 (per-pixel), repeated augmentation x3, Mixup 0.8 / CutMix 1.0
with label smoothing 0.1, batch 64. The images: the 20 ImageNet photos of the foolbox wheel, hard-linked 16 times
(320 JPEG files).

* ms_vit: ``data.create_dataset`` as train.py builds it (MindSpore's C++ decode-crop-resize, flip, normalise and
  label cast in C++ threads; the Python RandAugment and erasing in ``--workers`` threads under the GIL, Mixup/CutMix
  on the batches in one more);
* the same with each map that has Python steps in worker processes (MindSpore's ``python_multiprocessing``): the
  way around the GIL, measured against the threads;
* timm 1.0.31's loader: PyTorch's DataLoader with ``--workers`` worker processes, timm's ``rand_augment_transform``,
  ``RandomErasing``, ``RepeatAugSampler`` and ``Mixup`` (on the batches, in the main process, as timm's train.py).
  torchvision, which timm's transform factory calls for the crop, flip and tensor conversion, has no CPU build for
  this torch: those three steps are written here the way torchvision's PIL backend does them (PIL crop and resize,
  PIL flip, uint8 to float tensor), with timm's crop parameters; timm's posterize gets 0 bits right under Pillow 12.

Per core: images divided by the CPU seconds the run's processes used (user + system, every thread and worker
process) over the timed window, so that it does not depend on how many cores this machine lends the run. The host
an Ascend 910B node feeds 8 NPUs from (``--host_cores``, an Atlas 800T A2: 4 x 48-core Kunpeng 920) must supply
8 x ``--npu_rate`` images per second (``--npu_rate``: the images per second one NPU trains, an assumption to set, not
measured here); the per-core rate it needs is that over its cores.
"""
import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time

import _machine

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BATCH, SIZE, COPIES = 64, 224, 16
PIPELINES = {"ms_vit": "ms_vit (Python steps in threads, as train.py)",
             "ms_vit_processes": "ms_vit, Python steps in worker processes",
             "timm": "timm's loader (worker processes)"}
RECIPE = dict(auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, repeats=3, mixup=0.8, cutmix=1.0, smoothing=0.1)


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return f"{names[0] if names else 'unknown CPU'}, {os.cpu_count()} cores"


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live child processes."""
    import psutil
    me = psutil.Process()
    total = 0.0
    for process in [me] + me.children(recursive=True):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def timed(batches, seconds: float):
    """(images per wall second, images per CPU second) over ``seconds`` after one warm-up batch."""
    next(batches)
    count, start, cpu = 0, time.perf_counter(), cpu_seconds()
    while time.perf_counter() - start < seconds:
        count += len(next(batches)[0])
    wall, used = time.perf_counter() - start, cpu_seconds() - cpu
    return count / wall, count / used


def ms_vit_batches(split, workers, processes=False):
    """ms_vit's pipeline as train.py builds it; ``processes``: each map with Python steps run in worker processes
    (MindSpore's ``python_multiprocessing``) instead of threads, the alternative to the GIL measured here."""
    sys.path.insert(0, ROOT)
    import mindspore.dataset as ds
    from mindspore.dataset.transforms.transforms import TensorOperation

    from ms_vit import data, variant_config
    from ms_vit.data.augment import Mixup
    ds.config.set_seed(0)
    if processes:
        threaded_map = ds.Dataset.map

        def map_in_processes(self, operations, *args, **kwargs):
            steps = operations if isinstance(operations, list) else [operations]
            if any(not isinstance(step, TensorOperation) for step in steps):
                kwargs["python_multiprocessing"] = True
            return threaded_map(self, operations, *args, **kwargs)

        ds.Dataset.map = map_in_processes
    classes = data.list_classes(split)
    mixup = Mixup(RECIPE["mixup"], RECIPE["cutmix"], label_smoothing=RECIPE["smoothing"], num_classes=len(classes))
    dataset = data.create_dataset(split, classes, variant_config("vit_b_16_224"), BATCH, training=True,
                                  num_workers=workers, auto_augment=RECIPE["auto_augment"], re_prob=RECIPE["re_prob"],
                                  repeated_aug=RECIPE["repeats"], mixup=mixup)
    while True:
        yield from dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)


def _posterize(img, bits_to_keep, **_):
    """timm's posterize with 0 bits giving black, as Pillow did when timm wrote it (Pillow 12 refuses 0, which
    timm's PosterizeIncreasing asks for at magnitude 10); ms_vit's RandAugment does the same."""
    if bits_to_keep >= 8:
        return img
    mask = (0xFF << (8 - bits_to_keep)) & 0xFF
    return img.point([i & mask for i in range(256)] * len(img.getbands()))


class TimmStyleDataset:
    """timm's training transform for one image file (see the module docstring for the torchvision steps)."""

    def __init__(self, files, labels):
        from timm.data import auto_augment
        from timm.data.auto_augment import rand_augment_transform
        auto_augment.NAME_TO_OP = dict(auto_augment.NAME_TO_OP, Posterize=_posterize, PosterizeIncreasing=_posterize,
                                       PosterizeOriginal=_posterize)
        from PIL import Image
        from timm.data.random_erasing import RandomErasing
        self.files, self.labels, self.bicubic = files, labels, Image.BICUBIC
        mean = (0.485, 0.456, 0.406)
        self.mean, self.std = mean, (0.229, 0.224, 0.225)
        self.rand_augment = rand_augment_transform(RECIPE["auto_augment"], dict(
            translate_const=int(SIZE * 0.45), img_mean=tuple(min(255, round(255 * m)) for m in mean),
            interpolation=Image.BICUBIC))
        self.erasing = RandomErasing(RECIPE["re_prob"], mode="pixel", device="cpu")

    def __len__(self):
        return len(self.files)

    @staticmethod
    def crop_box(width, height, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        """timm's RandomResizedCropAndInterpolation.get_params: (left, top, right, bottom)."""
        for _ in range(10):
            area = random.uniform(*scale) * width * height
            aspect = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
            w, h = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if w <= width and h <= height:
                top, left = random.randint(0, height - h), random.randint(0, width - w)
                return left, top, left + w, top + h
        side = min(width, height)
        return (width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2

    def __getitem__(self, index):
        import numpy as np
        import torch
        from PIL import Image
        with open(self.files[index], "rb") as f:
            img = Image.open(f).convert("RGB")
        img = img.resize((SIZE, SIZE), self.bicubic, box=self.crop_box(*img.size))
        if random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img = self.rand_augment(img)
        tensor = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        tensor = (tensor - torch.tensor(self.mean).view(3, 1, 1)) / torch.tensor(self.std).view(3, 1, 1)
        return self.erasing(tensor), self.labels[index]


def timm_batches(split, workers):
    sys.path.insert(0, HERE)
    import _torchvision_stub
    _torchvision_stub.install()
    import torch
    from timm.data.distributed_sampler import RepeatAugSampler
    from timm.data.mixup import Mixup
    torch.manual_seed(0)
    classes = sorted(os.listdir(split))
    files = [(os.path.join(split, c, name), i) for i, c in enumerate(classes)
             for name in sorted(os.listdir(os.path.join(split, c)))]
    dataset = TimmStyleDataset([f for f, _ in files], [label for _, label in files])
    sampler = RepeatAugSampler(dataset, num_replicas=1, rank=0, num_repeats=RECIPE["repeats"])
    loader = torch.utils.data.DataLoader(dataset, BATCH, sampler=sampler, num_workers=workers, drop_last=True,
                                         persistent_workers=True)
    mixup = Mixup(mixup_alpha=RECIPE["mixup"], cutmix_alpha=RECIPE["cutmix"], label_smoothing=RECIPE["smoothing"],
                  num_classes=len(classes))
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        epoch += 1
        for images, labels in loader:
            yield mixup(images, labels)


def python_steps_ms(split, images: int = 192) -> float:
    """Milliseconds per image of ms_vit's Python steps alone, in one thread: RandAugment on the 224 px crop, random
    erasing on the normalised image, Mixup/CutMix per batch (its share per image). Under the GIL one training process
    runs them on one core at a time, whatever its worker threads: 1000 / this is its ceiling in images per second."""
    sys.path.insert(0, ROOT)
    import numpy as np
    from PIL import Image

    from ms_vit.data.augment import Mixup, RandAugment, RandomErasing
    random.seed(0)
    np.random.seed(0)
    files = sorted(os.path.join(split, c, name) for c in os.listdir(split)
                   for name in os.listdir(os.path.join(split, c)))
    crops = [np.asarray(Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.BICUBIC))
             for path in files[:images]]
    augment, erase = RandAugment.from_string(RECIPE["auto_augment"]), RandomErasing(RECIPE["re_prob"])
    mixup = Mixup(RECIPE["mixup"], RECIPE["cutmix"], label_smoothing=RECIPE["smoothing"], num_classes=20)
    normalised = [np.random.standard_normal((3, SIZE, SIZE)).astype(np.float32) for _ in range(BATCH)]
    start = time.perf_counter()
    for crop in crops:
        augment(crop)
    for image in normalised * (len(crops) // BATCH):
        erase(image)
    for _ in range(len(crops) // BATCH):
        mixup(np.stack(normalised), np.arange(BATCH) % 20)
    return (time.perf_counter() - start) * 1000 / len(crops)


def prepare_images(folder: str) -> str:
    """The 20 photos in wnid folders, each hard-linked COPIES times: the training split's path."""
    sys.path.insert(0, ROOT)
    from dataset_tools.demo import build_imagenet_sample
    root = os.path.join(folder, "sample")
    build_imagenet_sample(root)
    split = os.path.join(root, "train")
    for wnid in os.listdir(split):
        for name in os.listdir(os.path.join(split, wnid)):
            for copy in range(1, COPIES):
                os.link(os.path.join(split, wnid, name), os.path.join(split, wnid, f"{copy}_{name}"))
    return split


def worker(args):
    batches = {"ms_vit": ms_vit_batches, "ms_vit_processes": lambda *a: ms_vit_batches(*a, processes=True),
               "timm": timm_batches}[args.worker](args.split, args.workers)
    wall, per_core = timed(batches, args.seconds)
    print(json.dumps({"img_s": wall, "img_s_per_core": per_core}), flush=True)
    os._exit(0)                         # the pipelines' worker processes and threads end with the process


def measure(name, split, args):
    command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--split", split,
               "--workers", str(args.workers), "--seconds", str(args.seconds)]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, GLOG_v="3"))
    if result.returncode != 0 or not result.stdout.strip():
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="pipeline workers of each (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=40.0, help="timed window of each (default: %(default)s)")
    parser.add_argument("--npu_rate", type=float, default=400.0,
                        help="images per second one NPU trains (an assumption; default: %(default)s)")
    parser.add_argument("--host_cores", type=int, default=192,
                        help="CPU cores of the host feeding 8 NPUs (default: %(default)s, Atlas 800T A2)")
    parser.add_argument("--worker", choices=list(PIPELINES), help=argparse.SUPPRESS)
    parser.add_argument("--split", help=argparse.SUPPRESS)
    args = parser.parse_args()
    print(_machine.describe(), flush=True)
    if args.worker:
        return worker(args)
    print(f"CPU: {cpu_model()}; DeiT-B pipeline, {SIZE} px, batch {BATCH}, {args.workers} workers, "
          f"{args.seconds:.0f} s each", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        split = prepare_images(tmp)
        results = {name: measure(name, split, args) for name in PIPELINES}
        python_ms = python_steps_ms(split)
    for name, result in results.items():
        if "error" in result:
            print(f"{PIPELINES[name]:<46} error: {result['error']}")
        else:
            print(f"{PIPELINES[name]:<46} {result['img_s']:8.1f} img/s {result['img_s_per_core']:8.1f} img/s per core"
                  f" ({result['img_s'] / result['img_s_per_core']:.2f} cores busy)")
    if all("error" not in r for r in results.values()):
        ratio = results["ms_vit"]["img_s_per_core"] / results["timm"]["img_s_per_core"]
        print(f"ms_vit / timm loader, images per second per core: {ratio:.2f}")
    print(f"ms_vit's Python steps alone (RandAugment, erasing, Mixup/CutMix), one thread: {python_ms:.2f} ms per "
          f"image: under the GIL at most {1000 / python_ms:.0f} img/s per training process, against "
          f"{args.npu_rate:.0f} img/s one NPU trains")
    need = 8 * args.npu_rate / args.host_cores
    print(f"feeding 8 NPUs at {args.npu_rate:.0f} img/s each from {args.host_cores} cores needs {need:.1f} img/s per "
          "core" + "".join(f"; {name} {r['img_s_per_core'] / need:.1f}x that" for name, r in results.items()
                           if "error" not in r))


if __name__ == "__main__":
    sys.exit(main())
