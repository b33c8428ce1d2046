"""Train a Vision Transformer on an ImageNet-style folder dataset (ROOT/train/<class>/*, ROOT/val/<class>/*).

    python train.py --data_dir ROOT --model vit_b_16_224 [--pretrained CKPT | --resume CKPT] ...

Each epoch is followed by top-1/top-5 on ROOT/val; the best checkpoint (by top-1) is kept as best.ckpt,
the last epochs as vit-<epoch>_<step>.ckpt (with optimizer state, for --resume).

On Ascend/GPU the dataset is sunk into the device --sink_size steps at a time: progress, the loss and overflow
checks and signals are handled between sinks; epochs, evaluation and checkpoints stay per epoch.

Faults: SIGTERM/SIGINT (pre-emption, Ctrl-C) finish the current step (or sink), write vit-<epoch>_<step>.ckpt and
exit with 128 + the signal's number; the same command with --resume auto continues from the newest checkpoint, at
the same step, learning rate and data order. A non-finite loss, or float16 steps that keep overflowing, stop the run
(exit status 1) without saving those weights. Every file is written atomically; one run at a time holds
--ckpt_save_dir.
"""
import argparse
import os
import sys
import time
from types import SimpleNamespace

import mindspore as ms
import numpy as np
from mindspore import nn
from mindspore.train import Model

from ms_vit import cli, create_model, data, device, fault_points
from ms_vit.config import parse_with_config, write_config
from ms_vit.data.augment import Mixup
from ms_vit.evaluation.evaluate import evaluate
from ms_vit.factory import build_model
from ms_vit.models import amp
from ms_vit.models.vit import VARIANTS, ViTConfig
from ms_vit.timing import format_duration
from ms_vit.training import sink
from ms_vit.training.guard import RunGuard, RunStopped, stop_on_signal
from ms_vit.training.history import CURVES_FILE, TRAIN_FILE, VAL_FILE, RunHistory
from ms_vit.training.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from ms_vit.training.lr import training_schedule
from ms_vit.training.optim import AdamW, layer_decay_scales
from ms_vit.training.progress import Progress
from ms_vit.training.run_folder import RunFolder
from ms_vit.training.train_step import MAX_OVERFLOWS_IN_A_ROW, ModelEMA, TrainStep
from ms_vit.weights import checkpoint, registry


def build_parser():
    p = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data_dir", help="dataset root with train/ and val/ class folders (required: here or in --config)")
    g.add_argument("--num_classes", type=cli.COUNT, help="head size (default: the number of class folders in train/)")
    g.add_argument("--batch_size", type=cli.COUNT, default=64,
                   help="per device; the global batch is workers x batch_size (default: %(default)s)")
    g.add_argument("--num_workers", type=cli.COUNT, default=min(8, os.cpu_count() or 1),
                   help="parallel data workers (default: %(default)s)")
    g.add_argument("--min_crop_scale", type=cli.ranged(float, 0.0, 1.0, open_low=True), default=0.08,
                   help="smallest area fraction of the random resized crop (default: %(default)s)")
    g.add_argument("--hflip", type=cli.FRACTION, default=0.5, help="horizontal flip probability (default: %(default)s)")
    g.add_argument("--auto_augment", help="timm's RandAugment, e.g. rand-m9-mstd0.5-inc1 (DeiT's); default: none")
    g.add_argument("--re_prob", type=cli.FRACTION, default=0.0, help="random erasing probability (DeiT: 0.25) "
                   "(default: %(default)s)")
    g.add_argument("--re_mode", choices=["pixel", "rand", "const"], default="pixel",
                   help="random erasing fill: per-pixel noise, per-box colour or zeros (default: %(default)s)")
    g.add_argument("--mixup", type=cli.NON_NEGATIVE, default=0.0,
                   help="Mixup alpha, 0: off (DeiT: 0.8) (default: %(default)s)")
    g.add_argument("--cutmix", type=cli.NON_NEGATIVE, default=0.0,
                   help="CutMix alpha, 0: off (DeiT: 1.0) (default: %(default)s)")
    g.add_argument("--mixup_prob", type=cli.FRACTION, default=1.0,
                   help="probability of mixing a batch (default: %(default)s)")
    g.add_argument("--mixup_switch_prob", type=cli.FRACTION, default=0.5,
                   help="probability of CutMix rather than Mixup when both are on (default: %(default)s)")
    g.add_argument("--aug_repeats", type=cli.ranged(int, 0), default=0,
                   help="repeated augmentation: each image this many times per epoch, spread over the workers "
                        "(DeiT: 3); 0: off (default: %(default)s)")
    g.add_argument("--no_augment", action="store_true",
                   help="train on the evaluation transform (resize, centre crop): for reproducibility checks")
    g.add_argument("--no_shuffle", action="store_true",
                   help="read the training images in folder order every epoch: for reproducibility checks")
    g = p.add_argument_group("model")
    g.add_argument("--model", help="variant, e.g. vit_b_16_224, vit_ti_16_224 (default: vit_b_16_224, or the "
                   "variant recorded in --pretrained/--resume)")
    g.add_argument("--image_size", type=cli.COUNT, help="input side (default: the variant's)")
    g.add_argument("--patch_size", type=cli.COUNT, help="patch side (default: the variant's)")
    for name in ("embed_dim", "depth", "num_heads", "mlp_dim"):
        g.add_argument(f"--{name}", type=cli.COUNT, help=f"override the variant's {name} (small models for CPU)")
    g.add_argument("--drop_rate", type=cli.ranged(float, 0.0, 1.0, open_high=True), default=0.0,
                   help="dropout (default: %(default)s)")
    g.add_argument("--drop_path_rate", type=cli.ranged(float, 0.0, 1.0, open_high=True), default=0.1,
                   help="stochastic depth (default: %(default)s)")
    g.add_argument("--recompute", action="store_true",
                   help="recompute each transformer block's activations in the backward pass instead of keeping them "
                        "(MindSpore's Cell.recompute, timm's set_grad_checkpointing): less memory, more compute")
    g.add_argument("--device_kernels", action="store_true",
                   help="Ascend: FlashAttention (910B and later, under --amp_level O1-O3) and the exact GELU as one "
                        "operator; not run on hardware here (see README)")
    g.add_argument("--weight_init", choices=["timm", "jax"], default="timm",
                   help="initialisation from scratch: timm (timm's default, DeiT's) or jax (the ViT paper's) "
                        "(default: %(default)s)")
    g.add_argument("--pretrained", metavar="NAME|FILE",
                   help="weights to fine-tune from (head replaced if the class count differs): a pretrained weight "
                        "set's name (python -m ms_vit.weights lists them; downloaded and verified on first use) or a "
                        "file in any layout ms_vit.weights.convert knows")
    g.add_argument("--resume", help="checkpoint written by train.py to continue (weights, optimizer, position in "
                   "the run), or 'auto': the newest in --ckpt_save_dir, or a new run when there is none")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epoch_size", type=cli.COUNT, default=10, help="epochs (default: %(default)s)")
    g.add_argument("--optimizer", choices=["adamw", "adam"], default="adamw",
                   help="adamw: decoupled weight decay with bias correction, as timm; adam: L2 weight decay "
                        "(default: %(default)s)")
    g.add_argument("--lr", type=cli.POSITIVE, default=1e-3,
                   help="peak learning rate, for the global batch (default: %(default)s)")
    g.add_argument("--min_lr", type=cli.NON_NEGATIVE, default=1e-6, help="final learning rate (default: %(default)s)")
    g.add_argument("--warmup_epochs", type=cli.NON_NEGATIVE, default=1.0, help="linear warm-up (default: %(default)s)")
    g.add_argument("--weight_decay", type=cli.NON_NEGATIVE, default=0.05,
                   help="on weights only: not on norms, biases, class token, position embedding "
                        "(default: %(default)s)")
    g.add_argument("--label_smoothing", type=cli.ranged(float, 0.0, 1.0, open_high=True), default=0.1,
                   help="also folded into Mixup/CutMix's soft targets (default: %(default)s)")
    g.add_argument("--lr_base_size", type=cli.COUNT,
                   help="linear scaling: --lr is the rate for this global batch, scaled to the actual one "
                        "(DeiT: 512); default: --lr as given")
    g.add_argument("--layer_decay", type=cli.ranged(float, 0.0, 1.0, open_low=True),
                   help="layer-wise learning-rate decay for fine-tuning (e.g. 0.65): block i of D gets "
                        "lr x decay^(D - i); default: off")
    g.add_argument("--clip_grad", type=cli.NON_NEGATIVE, default=0.0,
                   help="clip the gradient's global L2 norm to this; 0: off (default: %(default)s)")
    g.add_argument("--accumulation_steps", type=cli.COUNT, default=1,
                   help="batches per optimizer step: k steps of batch B update as one of k x B (default: %(default)s)")
    g.add_argument("--ema_decay", type=cli.ranged(float, 0.0, 1.0, open_high=True), default=0.0,
                   help="keep an exponential moving average of the weights, evaluated after each epoch and saved "
                        "(DeiT: 0.99996); 0: off (default: %(default)s)")
    g = p.add_argument_group("run")
    g.add_argument("--config", help="a recipe: YAML of these options (configs/*.yaml); the command line wins")
    g.add_argument("--ckpt_save_dir", default="outputs/train", type=cli.folder, help="(default: %(default)s)")
    g.add_argument("--log_interval", type=cli.COUNT, default=100,
                   help="steps between progress lines, at most 4 per epoch apart (default: %(default)s)")
    g.add_argument("--sink_size", type=cli.COUNT,
                   help="steps the device runs between two looks of the host (progress, loss and overflow checks, "
                        "SIGTERM): MindSpore's dataset sink size on Ascend/GPU, at most N and each epoch a whole "
                        "number of sinks (a divisor of the steps per epoch down to N/2, else the epoch trimmed by "
                        "fewer batches than it has sinks). Default: the progress interval on Ascend/GPU; 1 (step by "
                        "step) on CPU, where a larger N replays the device's sink cadence")
    g.add_argument("--keep_checkpoint_max", type=cli.COUNT, default=2,
                   help="epoch checkpoints kept (default: %(default)s)")
    cli.add_device_args(p)
    g.add_argument("--amp_level", choices=list(amp.LEVELS),
                   help="mixed precision: O1 matrix products, O2 all but LayerNorm and softmax, O3 all in --amp_dtype "
                        "(default: O2 on Ascend, O0 (float32) on CPU and GPU)")
    g.add_argument("--amp_dtype", choices=list(amp.DTYPES), default="float16",
                   help="float16 (with dynamic loss scaling) or bfloat16 (Ascend 910B and later; no loss scaling) "
                        "(default: %(default)s)")
    g.add_argument("--distribute", action="store_true",
                   help="data-parallel over the processes started by msrun (one per device): "
                        f"{device.LAUNCH_HINT}")
    g.add_argument("--seed", type=cli.ranged(int, 0), default=42, help="(default: %(default)s)")
    return p


def param_groups(net, weight_decay):
    """Weight decay on Dense/Conv weights only; none on LayerNorm, biases, class token, position embedding."""
    decay = [p for p in net.trainable_params() if p.name.endswith(".weight")]
    rest = [p for p in net.trainable_params() if not p.name.endswith(".weight")]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


class EvaluateAndKeepBest:
    """After each epoch (``RunGuard(on_epoch_end=[...])``, after the epoch's resumable checkpoint): top-1/top-5 on
    the validation set (of the EMA weights too, with ``ema``), recorded in ``val_history.json`` before the epoch's
    line is printed; the best epoch then saved as ``best.ckpt`` (with the EMA weights, for ``eval.py --use_ema``),
    and the curves drawn (``ms_vit.training.history``). A resumed run continues the records and keeps the best top-1 of
    its
    earlier epochs: ``best.ckpt`` is never replaced by a worse epoch; ``catch_up`` finishes what a killed run left
    undone after its last checkpoint.

    Under data parallelism every rank evaluates its shard of the validation set and the counts are summed
    (``evaluate(across_ranks=True)``); only the writer (rank 0) prints and writes files."""

    def __init__(self, net, val_dataset, history, steps_per_epoch, meta, folder, writer=True, across_ranks=False,
                 ema=None, num_images=None):
        self.net, self.val_dataset, self.history, self.meta, self.ema = net, val_dataset, history, meta, ema
        self.num_images = num_images
        self.folder, self.steps_per_epoch = folder, steps_per_epoch
        self.writer, self.across_ranks = writer, across_ranks
        best = history.best()
        self.best_top1 = best["top1"] if best else -1.0

    def evaluate_ema(self) -> dict:
        """The EMA weights' figures: swapped into the network for the evaluation, then swapped back."""
        trained = [p.value().copy() for p in self.ema.weights]
        for weight, average in zip(self.ema.weights, self.ema.averages):
            weight.set_data(average.value())
        try:
            return self.evaluate()
        finally:
            for weight, value in zip(self.ema.weights, trained):
                weight.set_data(value)

    def evaluate(self) -> dict:
        """The figures of the network as it is now, with a progress line every ~10 s when it takes that long."""
        say = (lambda line: print(line, flush=True)) if self.writer else None
        metrics = evaluate(self.net, self.val_dataset, across_ranks=self.across_ranks, say=say,
                           total=self.num_images)
        metrics.pop("confusion")
        return metrics

    def __call__(self, epoch: int):
        fault_points.fault_point("evaluate")
        start = time.time()
        metrics = self.evaluate()
        entry = dict(metrics, epoch=epoch, step=epoch * self.steps_per_epoch)
        if self.ema is not None:
            ema = self.evaluate_ema()
            entry.update(ema_top1=ema["top1"], ema_top5=ema["top5"], ema_loss=ema["loss"])
        seconds = time.time() - start
        self.net.set_train(True)
        self.history.val.append(entry)
        improved = metrics["top1"] > self.best_top1
        if improved:
            self.best_top1 = metrics["top1"]
        if not self.writer:
            return
        self.folder.write("the run's records", self.history.save_records)      # recorded before it is said
        ema_text = f", EMA top-1 {entry['ema_top1']:.4f} top-5 {entry['ema_top5']:.4f}" if self.ema else ""
        print(f"epoch {epoch}: val top-1 {metrics['top1']:.4f} top-5 {metrics['top5']:.4f} loss {metrics['loss']:.4f}"
              f"{ema_text} ({metrics['num_images']} images, {seconds:.1f} s){'  best so far' if improved else ''}",
              flush=True)
        if improved:
            self.save_best(entry)
        self.folder.write("the run's curves", self.history.draw)

    def save_best(self, entry: dict) -> None:
        """``best.ckpt``: the network as it is now, the weights of the epoch ``entry`` records."""
        metrics = {k: entry[k] for k in ("top1", "top5", "loss", "num_images")}
        self.folder.save("best.ckpt", lambda path: checkpoint.save(
            self.net, path, meta=dict(self.meta, epoch=entry["epoch"], metrics=metrics),
            extra_params=list(self.ema.averages) if self.ema else None))

    def catch_up(self, epoch: int) -> None:
        """A run resumed from the checkpoint of epoch ``epoch``'s end finishes what a kill may have cut off after
        that checkpoint: the epoch's evaluation (its record missing: evaluated again, the same figures), else
        ``best.ckpt`` (when this epoch is the best recorded and best.ckpt holds another), the records' files and the
        curves (when older than the records), the epoch checkpoints beyond ``--keep_checkpoint_max``."""
        if epoch and not self.history.has_epoch(epoch):
            self(epoch)
        if not self.writer:
            return
        best = self.history.best()
        best_path = os.path.join(self.folder.folder, "best.ckpt")
        if best and best["epoch"] == epoch and best_epoch(best_path) != epoch:
            self.save_best(best)
        records = [os.path.join(self.folder.folder, name) for name in (TRAIN_FILE, VAL_FILE)]
        curves = os.path.join(self.folder.folder, CURVES_FILE)
        if self.history.val and not all(map(os.path.isfile, records)):
            self.folder.write("the run's records", self.history.save_records)
        if self.history.val and (not os.path.isfile(curves) or
                                 os.path.getmtime(curves) < max(map(os.path.getmtime, records))):
            self.folder.write("the run's curves", self.history.draw)
        self.folder.prune()


def best_epoch(path: str):
    """The epoch ``best.ckpt`` at ``path`` holds, or None (absent or unreadable)."""
    try:
        return checkpoint.read(path)[1].get("epoch") if os.path.isfile(path) else None
    except checkpoint.CheckpointError:
        return None


def resume_position(params: dict, meta: dict, steps: int, source: str):
    """``(epochs complete, steps done in the next epoch)`` where a checkpoint written by train.py left off."""
    if "global_step" in meta:
        done, saved_steps = int(meta["global_step"]), int(meta["steps_per_epoch"])
        if done % saved_steps and saved_steps != steps:
            raise ValueError(f"{source} stopped in the middle of an epoch of {saved_steps} steps; this run has "
                             f"{steps} steps per epoch: resume with the same --batch_size, --sink_size and number of "
                             "workers")
        return done // saved_steps, done % saved_steps
    # written by MindSpore's ModelCheckpoint (earlier train.py), or best.ckpt: whole epochs
    return (int(params["epoch_num"]) if "epoch_num" in params else int(meta.get("epoch", 0))), 0


def require_finite(net, where: str) -> None:
    """Refuse to save weights that hold NaN or Inf."""
    for param in net.trainable_params():
        if not np.isfinite(param.asnumpy()).all():
            raise RunStopped(f"the weights are not finite {where} ({param.name}): not saved; the last good "
                             "checkpoints are kept. Try a lower --lr, a longer --warmup_epochs or --clip_grad 1.0")


# The steps of the job, in the order main() takes them.

def parse_args(argv):
    """The options (``--config`` file, then the command line), checked before any work."""
    args = parse_with_config(build_parser(), argv)
    if not args.data_dir:
        raise ValueError("--data_dir is required (on the command line or in the --config file)")
    if args.pretrained and args.resume and args.resume != "auto":
        raise ValueError("give --pretrained or --resume, not both (--pretrained with --resume auto: fine-tune "
                         "from --pretrained unless --ckpt_save_dir holds a checkpoint to continue)")
    if args.min_lr > args.lr:
        raise ValueError(f"--min_lr {args.min_lr:g} is above --lr {args.lr:g}: the schedule decays from --lr to "
                         "--min_lr")
    return args


def start(args):
    """Device, mode, seeds, ranks, AMP and the run folder; the device line."""
    setup = device.setup(args.device_target, args.mode, args.seed, args.distribute)
    amp_level = args.amp_level or amp.default_level(setup.device_target)
    amp.check(amp_level, args.amp_dtype, setup.device_target)
    writer = setup.rank == 0                    # one writer: rank 0 alone prints and writes --ckpt_save_dir
    folder = RunFolder(args.ckpt_save_dir, args.keep_checkpoint_max)
    if writer:
        folder.check_writable()                # errors before reading the data: the folder cannot be written,
        folder.check_free()                    # another run is using it,
        print(device.describe(setup.device_target, setup.notes), flush=True)
    held = folder.held()                       # or it holds another run's files that a new run would replace
    outside = args.resume not in (None, "auto") and \
        os.path.dirname(os.path.abspath(args.resume)) != os.path.abspath(args.ckpt_save_dir)
    if held and (args.resume is None or outside):
        raise ValueError(f"--ckpt_save_dir {args.ckpt_save_dir} holds another run ({', '.join(held[-3:])}): a new "
                         "run there would replace its best.ckpt and records; continue that run with --resume auto, "
                         "or choose another --ckpt_save_dir")
    return SimpleNamespace(target=setup.device_target, rank=setup.rank, group_size=setup.group_size,
                           distributed=setup.group_size > 1, writer=writer, folder=folder, amp_level=amp_level)


def check_splits(args, run):
    """The class folders and every image of train/ and val/ checked (``data.scan_split``, remembered between runs),
    by rank 0 alone under data parallelism while the others wait for its verdict."""
    train_dir, val_dir = os.path.join(args.data_dir, "train"), os.path.join(args.data_dir, "val")
    folders = data.list_classes(train_dir)
    say = (lambda line: print(line, flush=True)) if run.writer else None
    num_train = num_val = 0
    failure = None
    if run.writer:
        try:
            num_train = data.scan_split(train_dir, say=say)
            num_val = data.scan_split(val_dir, folders, say=say)
        except data.DatasetError as exc:
            failure = exc
    if run.distributed:                          # the other ranks learn rank 0's verdict and counts
        from mindspore import ops
        verdict = ops.AllReduce()(ms.Tensor([float(failure is not None), num_train, num_val], ms.float32)).asnumpy()
        if verdict[0] and failure is None:
            raise data.DatasetError("rank 0 found images that cannot be used (its log names them)")
        num_train, num_val = int(verdict[1]), int(verdict[2])
    if failure is not None:
        raise failure
    if num_val < run.group_size:
        raise ValueError(f"{num_val} validation images cannot be shared by {run.group_size} workers: each evaluates "
                         "its shard")
    num_classes = args.num_classes or len(folders)
    classes = data.resolve_classes(folders, num_classes, train_dir)   # ImageNet wnids keep their standard index
    return SimpleNamespace(train_dir=train_dir, val_dir=val_dir, num_train=num_train, num_val=num_val,
                           num_classes=num_classes, classes=classes, names=data.class_names(args.data_dir, classes))


def find_resume(args, run):
    """``(path, params, meta)`` of the checkpoint to continue (``--resume``; ``auto``: the newest in the folder), or
    ``(None, {}, {})`` for a new run."""
    if args.resume == "auto":
        found = run.folder.latest()
        if found is None and run.folder.held():
            raise ValueError(f"--ckpt_save_dir {args.ckpt_save_dir} holds {', '.join(run.folder.held())} but no epoch "
                             "checkpoint to continue: choose another --ckpt_save_dir for a new run")
        if run.writer:
            print(f"resuming from {found[0]}" if found else
                  f"no checkpoint in {args.ckpt_save_dir} to resume: starting a new run", flush=True)
        return found or (None, {}, {})
    if args.resume:
        return (args.resume, *checkpoint.read(args.resume))          # read once: weights and optimizer state
    return None, {}, {}


def build_network(args, run, splits, resume):
    """The ViT: a resumed run's architecture is its checkpoint's (the same command line with --resume added
    continues the run); else the variant, from scratch or ``--pretrained``. Under data parallelism every rank
    starts from rank 0's weights."""
    path, params, meta = resume
    options = dict(fused_kernels=None if run.amp_level == "O0" else False,   # the fused CPU kernels: float32 only
                   device_kernels=args.device_kernels, drop_rate=args.drop_rate, drop_path_rate=args.drop_path_rate)
    if path:
        check_continues(args, splits, path, meta)
        net = build_model(None if "config" in meta else args.model, params, meta, path, splits.num_classes,
                          args.image_size, **options)
    else:
        overrides = {k: getattr(args, k) for k in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_dim")}
        named, path = registry.resolve(args.pretrained) if args.pretrained else (None, None)
        net = create_model(named or args.model or (None if path else "vit_b_16_224"), pretrained=bool(named),
                           num_classes=splits.num_classes, image_size=args.image_size, checkpoint_path=path,
                           weight_init=args.weight_init, **options,
                           **{k: v for k, v in overrides.items() if v is not None})
    if run.distributed:
        device.same_weights_as_rank0(net)
    return net


ARCHITECTURE_OPTIONS = ("image_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_dim")


def check_continues(args, splits, path: str, meta: dict) -> None:
    """A resumed command may change how the run trains (``--lr``, ``--epoch_size``...), not what it trains: an
    architecture option, a class count or a training set that contradicts the checkpoint is an error naming it."""
    if "config" not in meta:
        return                                       # not written by train.py: nothing to contradict
    saved = ViTConfig.from_dict(meta["config"])
    asked = {name: (f"--{name} {getattr(args, name)}", getattr(args, name)) for name in ARCHITECTURE_OPTIONS
             if getattr(args, name) is not None}
    for name, value in VARIANTS.get(args.model, {}).items():
        if name in ARCHITECTURE_OPTIONS:
            asked.setdefault(name, (f"--model {args.model} ({name} {value})", value))
    advice = (f": drop it to continue the run, or start a new one from it in another --ckpt_save_dir with "
              f"--pretrained {path}")
    for name, (option, value) in asked.items():
        if value != getattr(saved, name):
            raise ValueError(f"{option} contradicts {path}, a run of {checkpoint.describe(saved)} ({name} "
                             f"{getattr(saved, name)}){advice}")
    if splits.num_classes != saved.num_classes:
        given = f"--num_classes {args.num_classes}" if args.num_classes else f"--data_dir {args.data_dir}'s " \
            f"{splits.num_classes} class folders"
        raise ValueError(f"{given} contradicts {path}, a run of {saved.num_classes} classes{advice}")
    if meta.get("num_train", splits.num_train) != splits.num_train:
        raise ValueError(f"--data_dir {args.data_dir} holds {splits.num_train} training images; {path} is a run on "
                         f"{meta['num_train']}{advice}")


def build_datasets(args, run, splits, config):
    """The training pipeline (augmentation, Mixup/CutMix, this rank's shard) and the validation one."""
    shard = dict(num_shards=run.group_size, shard_id=run.rank) if run.distributed else {}
    val_ds = data.create_dataset(splits.val_dir, splits.classes, config, args.batch_size, training=False,
                                 num_workers=args.num_workers, **shard)
    mixup = (Mixup(args.mixup, args.cutmix, args.mixup_prob, args.mixup_switch_prob, args.label_smoothing,
                   splits.num_classes) if args.mixup > 0 or args.cutmix > 0 else None)
    train_ds = data.create_dataset(
        splits.train_dir, splits.classes, config, args.batch_size, training=True, num_workers=args.num_workers,
        min_crop_scale=args.min_crop_scale, hflip=args.hflip, augment=not args.no_augment,
        shuffle=not args.no_shuffle, auto_augment=args.auto_augment, re_prob=args.re_prob, re_mode=args.re_mode,
        mixup=mixup, repeated_aug=args.aug_repeats, seed=args.seed, **shard)
    global_batch = run.group_size * args.batch_size
    batches = (f"{run.group_size} workers x {args.batch_size} = global batch {global_batch}" if run.distributed
               else f"batch {args.batch_size}")
    steps = train_ds.get_dataset_size()         # per rank = global steps: every rank takes each step together
    if steps == 0:
        raise ValueError(f"{splits.num_train} training images make no full step of {batches}: lower --batch_size"
                         + (" or the number of workers" if run.distributed else ""))
    return SimpleNamespace(train=train_ds, val=val_ds, soft_targets=mixup is not None, steps=steps,
                           global_batch=global_batch, batches=batches)


def build_training(args, run, net, datasets, resume):
    """The training step of the recipe: the loss (soft-target cross-entropy after Mixup/CutMix, else
    label-smoothed), the optimizer (AdamW or Adam, cosine schedule over the optimizer steps, layer decay), EMA, AMP
    and ``TrainStep``; a resumed run's optimizer state restored. Returns ``(train_step, ema, the learning rate of
    each step, the training state a checkpoint holds)``."""
    lr = args.lr
    if args.lr_base_size:
        lr = args.lr * datasets.global_batch / args.lr_base_size
        if run.writer:
            print(f"learning rate {args.lr:g} x global batch {datasets.global_batch} / {args.lr_base_size} = {lr:g} "
                  "(linear scaling)", flush=True)
    updates, per_step = training_schedule(lr, datasets.steps, args.epoch_size, args.warmup_epochs, args.min_lr,
                                          args.accumulation_steps)
    groups = param_groups(net, args.weight_decay)
    scales = (layer_decay_scales([p.name for p in net.trainable_params()], net.config.depth, args.layer_decay)
              if args.layer_decay else None)
    if args.optimizer == "adamw":
        optimizer = AdamW(groups, learning_rate=ms.Tensor(updates), lr_scales=scales)
    elif scales:
        raise ValueError("--layer_decay needs --optimizer adamw")
    else:
        optimizer = nn.Adam(groups, learning_rate=ms.Tensor(updates))
    # label smoothing is folded into Mixup's soft targets
    loss_fn = SoftTargetCrossEntropy() if datasets.soft_targets else LabelSmoothingCrossEntropy(args.label_smoothing)
    ema = ModelEMA(net.trainable_params(), args.ema_decay) if args.ema_decay else None
    scaler = amp.loss_scale_manager(run.amp_level, args.amp_dtype)
    train_step = TrainStep(nn.WithLossCell(amp.apply(net, run.amp_level, args.amp_dtype, args.recompute), loss_fn),
                           optimizer, scaler.get_update_cell() if scaler else None, args.clip_grad,
                           args.accumulation_steps, ema)
    # what a resumable checkpoint holds besides the network: optimizer moments and step count, EMA, accumulated
    # gradients (not the schedule, rebuilt; not the run's statistics)
    network = {p.name for p in net.get_parameters()}
    state = [p for p in train_step.get_parameters()
             if p.name not in network and p.name not in ("learning_rate", "step_stats")]
    for param in state:           # by exact name (load_param_into_net matches names loosely: it wrote Adam's
        if param.name in resume[1]:                                   # moments into the weights)
            param.set_data(ms.Tensor(resume[1][param.name], param.dtype))
    return SimpleNamespace(train_step=train_step, ema=ema, lrs=per_step, state=state)


def starting_position(args, run, datasets, resume):
    """Where the run starts (a resumed run: at the checkpoint's step, the data pipeline too) and how the device
    sinks the data (``sinking``); takes the run folder (another run's: an error before any work)."""
    path, params, meta = resume
    if run.writer:
        run.folder.open()
    sink_size, sink_loop, kept = sinking(args, run, datasets.steps)
    left_out = datasets.steps - kept
    if left_out:                                 # each epoch a whole number of sinks (ms_vit.training.sink.plan_sinks)
        datasets.train, datasets.steps = datasets.train.take(kept), kept
    steps = datasets.steps
    start_epoch, start_step = resume_position(params, meta, steps, path) if path else (0, 0)
    done_steps = start_epoch * steps + start_step
    fault_points.set_run_position(f"step {done_steps}")
    finished = start_epoch >= args.epoch_size
    if done_steps and not finished:
        datasets.train.set_init_step(done_steps)     # MindSpore's pipeline recovery: the data order of the same step
    return SimpleNamespace(start_epoch=start_epoch, start_step=start_step, done_steps=done_steps, left_out=left_out,
                           sink_size=sink.resumed_sink_size(sink_size, steps, done_steps), sink_loop=sink_loop,
                           finished=finished, records=meta.get("records"))


def sinking(args, run, steps: int):
    """``(sink size, whether MindSpore's sink loop runs, steps kept per epoch)``: on Ascend/GPU in graph mode the
    dataset is sunk about ``--sink_size`` steps at a time (default: the progress interval), each epoch a whole
    number of sinks (``sink.plan_sinks``); on CPU step by step unless ``--sink_size`` > 1, which replays the device's
    cadence (``ms_vit.training.sink``)."""
    on_device = run.target != "CPU" and args.mode == "graph"
    requested = args.sink_size or (progress_interval(args, steps) if on_device else 1)
    size, kept = sink.plan_sinks(requested, steps)
    loop = (on_device or size > 1) and args.mode == "graph"
    return size, loop, kept if loop else steps


def progress_interval(args, steps: int) -> int:
    return min(args.log_interval, max(1, steps // 4))


def build_callbacks(args, run, net, splits, datasets, training, position):
    """The run guard (``ms_vit.training.guard``, the one MindSpore callback) with what it feeds: the progress line and
    the
    history at each look; at each epoch's end, the resumable checkpoint, the evaluation and ``best.ckpt``."""
    steps = datasets.steps
    meta = {"config": net.config.to_dict(), "classes": splits.classes, "class_names": splits.names,
            "train_config": {k: v for k, v in vars(args).items() if k != "config"}}
    if run.writer:
        write_config(args, os.path.join(args.ckpt_save_dir, "config.yaml"))
    history = RunHistory(args.ckpt_save_dir, position.start_epoch, position.done_steps, position.records)
    progress = Progress(steps, args.epoch_size, datasets.global_batch, training.lrs, progress_interval(args, steps),
                        run.writer, history=history.train)
    keep_best = EvaluateAndKeepBest(net, datasets.val, history, steps, meta, run.folder, run.writer,
                                    across_ranks=run.distributed, ema=training.ema,
                                    num_images=-(-splits.num_val // run.group_size))
    guard = RunGuard(training.train_step, steps, training.lrs, position.done_steps, look_every=position.sink_size,
                     across_ranks=run.distributed,
                     on_look=[lambda look: fault_points.reached(f"step {look.done_steps}"), progress.update])

    def save_position() -> str:
        """The resumable checkpoint of where the run stands: vit-<epoch>_<steps done in it>.ckpt."""
        epoch, step = guard.position()
        require_finite(net, f"after epoch {epoch} step {step}")
        where = dict(meta, epoch=epoch, global_step=guard.done_steps, steps_per_epoch=steps,
                     num_train=splits.num_train, records=history.records())
        complete = epoch if step == steps else epoch - 1
        return run.folder.save(f"vit-{epoch}_{step}.ckpt", lambda path: checkpoint.save(
            net, path, meta=where, extra_params=training.state,
            extra_values={"epoch_num": complete, "step_num": guard.done_steps}))

    if run.writer:
        guard.on_epoch_end.append(lambda epoch: save_position())
    guard.on_epoch_end += [keep_best, progress.restart_window]
    return SimpleNamespace(guard=guard, progress=progress, history=history, save_position=save_position,
                           keep_best=keep_best)


def announce(args, run, net, splits, datasets, position) -> None:
    """The run's first line: what will be trained, where, on how many images, in which steps."""
    if not run.writer:
        return
    where = (f" (from step {position.start_step + 1} of epoch {position.start_epoch + 1})" if position.start_step
             else "")
    amp_text = f"AMP {run.amp_level}" + (f" {args.amp_dtype}" if run.amp_level != "O0" else "")
    sink_text = f", sinks of {position.sink_size} steps" if position.sink_loop else ""
    if position.left_out:
        sink_text += (f" (the last {position.left_out} batches of each epoch's shuffle left out: whole sinks per "
                      "epoch)")
    print(f"training {checkpoint.describe(net.config)} ({sum(p.size for p in net.trainable_params()):,} parameters) "
          f"on {run.target}, {amp_text}, {args.mode} mode: {splits.num_train} train / {splits.num_val} val images, "
          f"{datasets.steps} steps of {datasets.batches} per epoch{sink_text}, epochs {position.start_epoch + 1}.."
          f"{args.epoch_size}{where}", flush=True)


def main(argv=None):
    stop_on_signal()                                               # until the run guard watches the steps
    args = parse_args(argv)
    run = start(args)                                              # device, ranks, AMP, the run folder
    splits = check_splits(args, run)                               # the data, checked
    resume = find_resume(args, run)
    net = build_network(args, run, splits, resume)                 # the model, or the one resumed
    datasets = build_datasets(args, run, splits, net.config)
    position = starting_position(args, run, datasets, resume)
    training = build_training(args, run, net, datasets, resume)    # the training step
    watch = build_callbacks(args, run, net, splits, datasets, training, position)
    if position.done_steps and position.start_step == 0:           # resumed at an epoch's end
        watch.keep_best.catch_up(position.start_epoch)              # what a kill after its checkpoint cut off
    if position.finished:
        return already_finished(args, run, watch.history)
    announce(args, run, net, splits, datasets, position)
    train(args, run, training.train_step, datasets.train, watch.guard, position, datasets.steps)
    return outcome(args, run, watch, position.start_epoch, datasets.steps)


def already_finished(args, run, history) -> int:
    """``--resume`` of a run that has done its epochs: nothing to train (a scheduler that restarts the command until
    it succeeds stops here)."""
    if run.writer:
        best = history.best()
        best_text = (f"; best val top-1 {best['top1']:.4f} top-5 {best['top5']:.4f} (epoch {best['epoch']}): "
                     f"{os.path.join(args.ckpt_save_dir, 'best.ckpt')}" if best else "")
        print(f"the run in {args.ckpt_save_dir} has already trained its {args.epoch_size} epochs{best_text}. To train "
              f"it longer, raise --epoch_size (the learning-rate schedule then spans the new length)", flush=True)
    return 0


def train(args, run, train_step, train_ds, guard, position, steps):
    """``Model.train``: step by step (an epoch per MindSpore epoch), or in sinks of ``position.sink_size`` steps (a
    sink per MindSpore "epoch", counted from the run's first step so that MindSpore sends every epoch's data); a
    failing pipeline or device becomes one line naming the intact checkpoints."""
    try:
        if position.sink_loop:
            model = (sink.SinkReplayModel if run.target == "CPU" else Model)(train_step)
            model.train(args.epoch_size * steps // position.sink_size, train_ds, callbacks=[guard],
                        dataset_sink_mode=True, sink_size=position.sink_size,
                        initial_epoch=position.done_steps // position.sink_size)
        else:
            Model(train_step).train(args.epoch_size, train_ds, callbacks=[guard], dataset_sink_mode=False,
                                    initial_epoch=position.start_epoch)
    except RuntimeError as exc:                  # the data pipeline or the device failed mid-run
        newest = run.folder.newest() if run.writer else "none yet"
        epoch, step = guard.position()
        detail = next((line.strip() for line in str(exc).splitlines() if "file" in line.lower()),
                      str(exc).splitlines()[0])
        raise RunStopped(f"training failed after epoch {epoch} step {step}: {detail}; the checkpoints written "
                         f"before are intact (newest: {newest}): fix the cause, then continue with --resume auto") \
            from None


def outcome(args, run, watch, start_epoch, steps) -> int:
    """What the run ended with: an error line (non-finite loss, overflowing float16), a resumable checkpoint (a
    signal), or the best epoch."""
    guard, history = watch.guard, watch.history
    epoch, step = guard.position()
    if guard.stop == "nonfinite":
        bad_epoch, bad_step = guard.position(guard.bad_step)
        raise RunStopped(f"the loss is {guard.loss} at epoch {bad_epoch} step {bad_step}/{steps} (learning rate "
                         f"{guard.learning_rate(guard.bad_step):.3g}): training stopped, these weights are not saved; "
                         f"the last good checkpoint is {run.folder.newest()}. Try a lower --lr, a longer "
                         "--warmup_epochs or --clip_grad 1.0")
    if guard.stop == "overflow":
        epoch, step = guard.position(guard.bad_step)
        raise RunStopped(f"{MAX_OVERFLOWS_IN_A_ROW} steps in a row overflowed in float16 up to epoch {epoch} step "
                         f"{step}/{steps}, the last ones at the smallest loss scale: the gradients are not finite even "
                         f"unscaled. Training stopped, these weights are not saved; the last good checkpoint is "
                         f"{run.folder.newest()}. Try a lower --lr, --clip_grad 1.0, --amp_dtype bfloat16 or "
                         "--amp_level O0")
    if guard.stop == "signal":
        if run.writer:
            path = watch.save_position()
            run.folder.write("the run's records", history.save_records)
            run.folder.write("the run's curves", history.draw)
            print(f"interrupted by SIGINT/SIGTERM after epoch {epoch} step {step}/{steps}: resumable checkpoint "
                  f"{path}; continue with the same command and --resume auto", file=sys.stderr, flush=True)
        return 128 + guard.signum
    if not run.writer:
        return 0
    best = history.best()
    print(f"trained epochs {start_epoch + 1}..{args.epoch_size} in {format_duration(watch.progress.elapsed())}; "
          f"best val top-1 {best['top1']:.4f} top-5 {best['top5']:.4f} (epoch {best['epoch']}): "
          f"{os.path.join(args.ckpt_save_dir, 'best.ckpt')}\n"
          f"curves: {os.path.join(args.ckpt_save_dir, 'curves.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
