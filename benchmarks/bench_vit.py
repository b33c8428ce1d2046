"""ms_vit vs timm (PyTorch, eager) and mindcv (MindSpore) on this machine's CPU: throughput, peak memory, time to
first step.

    python benchmarks/bench_vit.py                 # everything (about 20 minutes on 2 cores)
    python benchmarks/bench_vit.py --models ti16 --cases infer8 train
    python benchmarks/bench_vit.py --cases train train_recompute --no_pipeline   # train.py --recompute's memory
    python benchmarks/bench_vit.py --models ti16 --cases train train_recompute --no_pipeline --amp_level O2

Every case runs in a fresh process of its own, so that peak memory (max RSS) and the first step's time
(graph compilation) belong to that case alone. timm runs in the same invocation when torch and timm import
(`pip install torch==2.13.0` takes the local CPU wheel; `pip install --no-deps timm==1.0.31`), mindcv when it imports
(`pip install --no-deps mindcv==0.3.0`: its ViT in graph mode, its AdamW and label-smoothed loss; Ti/16 built from its
VisionTransformer class, which mindcv has no name for).
Figures are images per second (higher is better), the ms_vit / timm ratio (>1: ms_vit faster) and, per case, the
fraction of this machine's float32 GEMM peak each framework reaches (the case's matrix-product FLOPs x img/s over the
best large SGEMM of numpy, PyTorch, MindSpore and ms_vit's kernels, measured first in the same run). The first line
names the CPU.
``train_recompute`` is the training step with each block recomputed in the backward pass (ms_vit's
``set_grad_checkpointing``, train.py ``--recompute``; timm's ``set_grad_checkpointing``). ``--amp_level`` trains ms_vit
at that AMP level in float16 as train.py does (``amp.apply``, recomputation set after AMP's casts; the peers are left
out: their mixed precision is not the same); the CPU runs many float16 operators slower than float32 ones, so only the
memory figures of those runs say something about a device.
Shared machines drift by 10 % from minute to minute: each case runs ``--rounds`` times, ms_vit and timm
alternating, and each framework's best round is reported (the median step of each round).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import _machine

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = {"b16": ("vit_b_16_224", "vit_base_patch16_224"), "ti16": ("vit_ti_16_224", "vit_tiny_patch16_224")}
MINDCV_TI16 = dict(embed_dim=192, depth=12, num_heads=3)
PEERS = ("timm", "mindcv")
TRAIN_BATCH = {"b16": 8, "ti16": 32}
CASES = ("infer1", "infer8", "train", "train_recompute")


def batch_of(model, case):
    return {"infer1": 1, "infer8": 8}.get(case, TRAIN_BATCH[model])         # training: both train cases


def timed(step, warmup, repeats):
    """(seconds of the first call, median seconds of ``repeats`` calls after ``warmup`` more)."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def run_mindspore(model, case, batch, repeats, amp_level="O0"):
    sys.path.insert(0, ROOT)
    import mindspore as ms
    import numpy as np
    from mindspore import nn

    from ms_vit import create_model
    from ms_vit.models import amp
    from ms_vit.training.loss import LabelSmoothingCrossEntropy
    from ms_vit.training.optim import AdamW
    from ms_vit.training.train_step import TrainStep
    ms.set_context(mode=ms.GRAPH_MODE)
    if os.environ.get("BENCH_MEM"):
        init, grow, level = os.environ["BENCH_MEM"].split(",")
        ms.runtime.set_memory(init_size=init, increase_size=grow, optimize_level=level)
    net = create_model(MODELS[model][0], fused_kernels=None if amp_level == "O0" else False)
    network = amp.apply(net, amp_level, "float16", recompute=case == "train_recompute")     # as train.py
    scaler = amp.loss_scale_manager(amp_level)
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((batch, 3, 224, 224)).astype(np.float32))
    if case.startswith("train"):
        labels = ms.Tensor(rng.integers(0, 1000, batch).astype(np.int32))
        step_cell = TrainStep(nn.WithLossCell(network, LabelSmoothingCrossEntropy(0.1)),      # train.py's step
                              AdamW(net.trainable_params(), learning_rate=1e-4, weight_decay=0.05),
                              scaler.get_update_cell() if scaler else None)
        step_cell.set_train(True)

        def step():
            step_cell(images, labels)[0].asnumpy()          # (loss, overflow, loss scale)
    else:
        net.set_train(False)

        def step():
            network(images).asnumpy()
    return timed(step, warmup=1 if case.startswith("train") else 2, repeats=repeats)


def run_timm(model, case, batch, repeats):
    import _peers
    step, _ = _peers.timm_step(MODELS[model][1], batch, case.startswith("train"), case == "train_recompute")
    return timed(step, warmup=1 if case.startswith("train") else 2, repeats=repeats)


def run_mindcv(model, case, batch, repeats):
    import mindspore as ms
    import numpy as np
    from mindcv.loss import create_loss
    from mindcv.models import create_model as create_mindcv
    from mindcv.models.vit import VisionTransformer
    from mindcv.optim import create_optimizer
    from mindspore import nn
    ms.set_context(mode=ms.GRAPH_MODE)
    net = create_mindcv("vit_b_16_224") if model == "b16" else VisionTransformer(**MINDCV_TI16)
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((batch, 3, 224, 224)).astype(np.float32))
    if case.startswith("train"):
        if case == "train_recompute":
            for block in net.blocks:
                block.recompute()
        labels = ms.Tensor(rng.integers(0, 1000, batch).astype(np.int32))
        optimizer = create_optimizer(net.trainable_params(), opt="adamw", lr=1e-4, weight_decay=0.05)
        step_cell = nn.TrainOneStepCell(nn.WithLossCell(net, create_loss("CE", label_smoothing=0.1)), optimizer)
        step_cell.set_train(True)

        def step():
            step_cell(images, labels).asnumpy()
    else:
        net.set_train(False)

        def step():
            net(images).asnumpy()
    return timed(step, warmup=1 if case.startswith("train") else 2, repeats=repeats)


def worker(args):
    run = {"ms_vit": run_mindspore, "timm": run_timm, "mindcv": run_mindcv}[args.worker]
    batch = batch_of(args.model, args.case)
    options = {"amp_level": args.amp_level} if args.worker == "ms_vit" else {}
    first, median = run(args.model, args.case, batch, args.repeats, **options)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"first_s": first, "step_s": median, "img_s": batch / median, "peak_mb": peak_mb}))


def measure(framework, model, case, repeats, amp_level="O0"):
    command = [sys.executable, os.path.abspath(__file__), "--worker", framework, "--model", model, "--case", case,
               "--repeats", str(repeats), "--amp_level", amp_level]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, GLOG_v="3"))
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def best_round(rounds):
    """The fastest round, with the largest peak memory and slowest first step of all rounds."""
    failed = [r for r in rounds if "error" in r]
    if failed:
        return failed[0]
    best = dict(max(rounds, key=lambda r: r["img_s"]))
    best["peak_mb"] = max(r["peak_mb"] for r in rounds)
    best["first_s"] = max(r["first_s"] for r in rounds)
    return best


IMPORTS = {"ms_vit": "import sys; sys.path.insert(0, %r); import mindspore, ms_vit" % ROOT,
           "timm": "import sys; sys.path.insert(0, %r); import _torchvision_stub; _torchvision_stub.install(); "
                   "import torch, timm" % HERE,
           "mindcv": "import mindspore, mindcv"}


def import_peak_mb(framework):
    """Peak memory (max RSS, MB) of a fresh process that only imports the framework: the floor of every case."""
    probe = IMPORTS[framework] + "; import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=dict(os.environ, GLOG_v="3"))
    return float(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else float("nan")


def available(framework):
    return subprocess.run([sys.executable, "-c", IMPORTS[framework]], capture_output=True).returncode == 0


def pipeline_throughput(seconds=20.0, workers=2, deit=False):
    """Images/s of the training pipeline (decode + random resized crop to 224 + flip + normalise; with ``deit``
    also DeiT's RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, Mixup 0.8 / CutMix 1.0 and repeated
    augmentation x3) on real JPEGs: the 20 ImageNet photos of the foolbox wheel, repeated."""
    sys.path.insert(0, ROOT)
    import tempfile

    from dataset_tools.demo import build_imagenet_sample
    from ms_vit import data, variant_config
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "sample")
        build_imagenet_sample(root)
        split = os.path.join(root, "train")
        for wnid in os.listdir(split):                   # 20 photos x 16 = 320 files
            for name in os.listdir(os.path.join(split, wnid)):
                for copy in range(1, 16):
                    os.link(os.path.join(split, wnid, name), os.path.join(split, wnid, f"{copy}_{name}"))
        classes = data.list_classes(split)
        recipe = {}
        if deit:
            from ms_vit.data.augment import Mixup
            recipe = dict(auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, repeated_aug=3,
                          mixup=Mixup(0.8, 1.0, label_smoothing=0.1, num_classes=len(classes)))
        dataset = data.create_dataset(split, classes, variant_config("vit_b_16_224"), batch_size=8, training=True,
                                      num_workers=workers, **recipe)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for images, _ in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True):
                count += len(images)
        return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per round (median taken)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating ms_vit/timm rounds per case (best kept)")
    parser.add_argument("--no_timm", action="store_true", help="leave timm out")
    parser.add_argument("--no_mindcv", action="store_true", help="leave mindcv out")
    parser.add_argument("--no_pipeline", action="store_true", help="skip the data pipeline measurement")
    parser.add_argument("--amp_level", choices=["O0", "O1", "O2", "O3"], default="O0",
                        help="ms_vit's AMP level (float16), as train.py --amp_level; not O0: ms_vit alone")
    parser.add_argument("--worker", choices=["ms_vit", "timm", "mindcv"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    sys.path.insert(0, ROOT)
    from ms_vit import variant_config
    print(_machine.describe(), flush=True)
    gemm = _machine.sgemm_peak()
    print("float32 GEMM peak, 2048^3 SGEMM: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in gemm.items()), flush=True)
    peers = [p for p in PEERS if not getattr(args, f"no_{p}") and available(p)] if args.amp_level == "O0" else []
    for missing in sorted(set(PEERS) - set(peers) - {p for p in PEERS if getattr(args, f"no_{p}")}
                          if args.amp_level == "O0" else ()):
        print(f"{missing} not importable: left out (pip install torch==2.13.0; pip install --no-deps timm==1.0.31 "
              "mindcv==0.3.0)")
    print(f"{'case':<26}{'ms_vit img/s':>13}" + "".join(f"{p + ' img/s':>13}{'ratio':>7}" for p in peers) +
          f"{'% peak':>8}" + "".join(f"{p[:4] + ' %':>8}" for p in peers) +
          f"{'ms_vit MB':>11}" + "".join(f"{p + ' MB':>11}" for p in peers) + f"{'ms_vit 1st s':>13}"
          + "".join(f"{p + ' 1st s':>13}" for p in peers))
    rows = []
    for model in args.models:
        for case in args.cases:
            results = {name: [] for name in ["ms_vit"] + peers}
            for _ in range(args.rounds):
                for name in results:
                    results[name].append(measure(name, model, case, args.repeats, args.amp_level))
            results = {name: best_round(rounds) for name, rounds in results.items()}
            rows.append(dict(model=model, case=case, batch=batch_of(model, case), **results))
            label = f"{model} {case.replace('infer', 'infer b')}"
            if case.startswith("train"):
                label = f"{model} train b{batch_of(model, case)}" + (" recompute" if "recompute" in case else "")
            label += f" {args.amp_level}" if args.amp_level != "O0" else ""
            errors = [f"{name}: {r['error']}" for name, r in results.items() if "error" in r]
            if errors:
                print(f"{label:<26} error: {'; '.join(errors)}")
                continue
            ours = results["ms_vit"]
            gflops = _machine.vit_gflops(variant_config(MODELS[model][0]), training=case.startswith("train"))
            share = {name: 100 * r["img_s"] * gflops / gemm["peak"] for name, r in results.items()}
            rows[-1]["gflops_per_image"], rows[-1]["gemm_peak"] = gflops, gemm["peak"]
            print(f"{label:<26}{ours['img_s']:>13.2f}"
                  + "".join(f"{results[p]['img_s']:>13.2f}{ours['img_s'] / results[p]['img_s']:>7.2f}" for p in peers)
                  + f"{share['ms_vit']:>8.1f}" + "".join(f"{share[p]:>8.1f}" for p in peers)
                  + f"{ours['peak_mb']:>11.0f}" + "".join(f"{results[p]['peak_mb']:>11.0f}" for p in peers)
                  + f"{ours['first_s']:>13.1f}" + "".join(f"{results[p]['first_s']:>13.1f}" for p in peers),
                  flush=True)
    floors = {name: import_peak_mb(name) for name in ["ms_vit"] + peers}
    print("import alone (the floor of every case's peak): "
          + ", ".join(f"{name} {mb:.0f} MB" for name, mb in floors.items()), flush=True)
    if not args.no_pipeline:
        train = next((r for r in rows if r["model"] == "b16" and r["case"] == "train" and "img_s" in r["ms_vit"]), None)
        need = f"; B/16 training consumes {train['ms_vit']['img_s']:.2f} img/s" if train else ""
        for deit, label in ((False, "train transforms"), (True, "DeiT augmentation")):
            rate = pipeline_throughput(deit=deit)
            print(f"data pipeline ({label}, 224 px, real JPEGs, 2 workers): {rate:.1f} img/s{need}", flush=True)
    with open(os.path.join(HERE, "last_run.json"), "w") as f:
        json.dump({"cases": rows, "import_peak_mb": floors}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
