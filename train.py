"""Train a Vision Transformer on an ImageNet-style folder dataset (ROOT/train/<class>/*, ROOT/val/<class>/*).

    python train.py --data_dir ROOT --model vit_b_16_224 [--pretrained CKPT | --resume CKPT] ...

Each epoch is followed by top-1/top-5 on ROOT/val; the best checkpoint (by top-1) is kept as best.ckpt,
the last epochs as vit-<epoch>_<step>.ckpt (with optimizer state, for --resume).

Faults: SIGTERM/SIGINT (pre-emption, Ctrl-C) finish the current step, write vit-<epoch>_<step>.ckpt and exit
with 128 + the signal's number; the same command with --resume auto continues from the newest checkpoint, at the
same step, learning rate and data order. A non-finite loss stops the run at once (exit status 1) without saving
those weights. Every file is written atomically; one run at a time holds --ckpt_save_dir.
"""
import argparse
import os
import sys
import time

from ms_vit import checkpoint, cli, create_model, data, device   # first: sets MindSpore's log level
import numpy as np
import mindspore as ms
from mindspore import nn
from mindspore.train import Model, Callback

from ms_vit.evaluate import evaluate
from ms_vit.history import RunHistory
from ms_vit.factory import build_model
from ms_vit.guard import RunGuard, RunStopped
from ms_vit.run_folder import RunFolder
from ms_vit.augment import Mixup
from ms_vit.config import parse_with_config, write_config
from ms_vit.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from ms_vit.lr import cosine_lr
from ms_vit.optim import AdamW, layer_decay_scales
from ms_vit.train_step import ModelEMA, TrainStep
from ms_vit.progress import Progress, format_duration


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data_dir", help="dataset root with train/ and val/ class folders (required: here or in --config)")
    g.add_argument("--num_classes", type=int, help="head size (default: the number of class folders in train/)")
    g.add_argument("--batch_size", type=int, default=64,
                   help="per device; the global batch is workers x batch_size (default: %(default)s)")
    g.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="parallel data workers (default: %(default)s)")
    g.add_argument("--min_crop_scale", type=float, default=0.08,
                   help="smallest area fraction of the random resized crop (default: %(default)s)")
    g.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability (default: %(default)s)")
    g.add_argument("--auto_augment", help="timm's RandAugment, e.g. rand-m9-mstd0.5-inc1 (DeiT's); default: none")
    g.add_argument("--re_prob", type=float, default=0.0, help="random erasing probability (DeiT: 0.25) "
                   "(default: %(default)s)")
    g.add_argument("--re_mode", choices=["pixel", "rand", "const"], default="pixel",
                   help="random erasing fill: per-pixel noise, per-box colour or zeros (default: %(default)s)")
    g.add_argument("--mixup", type=float, default=0.0, help="Mixup alpha, 0: off (DeiT: 0.8) (default: %(default)s)")
    g.add_argument("--cutmix", type=float, default=0.0, help="CutMix alpha, 0: off (DeiT: 1.0) (default: %(default)s)")
    g.add_argument("--mixup_prob", type=float, default=1.0,
                   help="probability of mixing a batch (default: %(default)s)")
    g.add_argument("--mixup_switch_prob", type=float, default=0.5,
                   help="probability of CutMix rather than Mixup when both are on (default: %(default)s)")
    g.add_argument("--aug_repeats", type=int, default=0,
                   help="repeated augmentation: each image this many times per epoch, spread over the workers "
                        "(DeiT: 3); 0: off (default: %(default)s)")
    g.add_argument("--no_augment", action="store_true",
                   help="train on the evaluation transform (resize, centre crop): for reproducibility checks")
    g.add_argument("--no_shuffle", action="store_true",
                   help="read the training images in folder order every epoch: for reproducibility checks")
    g = p.add_argument_group("model")
    g.add_argument("--model", help="variant, e.g. vit_b_16_224, vit_ti_16_224 (default: vit_b_16_224, or the "
                   "variant recorded in --pretrained/--resume)")
    g.add_argument("--image_size", type=int, help="input side (default: the variant's)")
    g.add_argument("--patch_size", type=int, help="patch side (default: the variant's)")
    for name in ("embed_dim", "depth", "num_heads", "mlp_dim"):
        g.add_argument(f"--{name}", type=int, help=f"override the variant's {name} (small models for CPU)")
    g.add_argument("--drop_rate", type=float, default=0.0, help="dropout (default: %(default)s)")
    g.add_argument("--drop_path_rate", type=float, default=0.1, help="stochastic depth (default: %(default)s)")
    g.add_argument("--weight_init", choices=["timm", "jax"], default="timm",
                   help="initialisation from scratch: timm (timm's default, DeiT's) or jax (the ViT paper's) "
                        "(default: %(default)s)")
    g.add_argument("--pretrained", help="checkpoint to fine-tune from (head replaced if the class count differs)")
    g.add_argument("--resume", help="checkpoint written by train.py to continue (weights, optimizer, position in "
                   "the run), or 'auto': the newest in --ckpt_save_dir, or a new run when there is none")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epoch_size", type=int, default=10, help="epochs (default: %(default)s)")
    g.add_argument("--optimizer", choices=["adamw", "adam"], default="adamw",
                   help="adamw: decoupled weight decay with bias correction, as timm; adam: L2 weight decay "
                        "(default: %(default)s)")
    g.add_argument("--lr", type=float, default=1e-3,
                   help="peak learning rate, for the global batch (default: %(default)s)")
    g.add_argument("--min_lr", type=float, default=1e-6, help="final learning rate (default: %(default)s)")
    g.add_argument("--warmup_epochs", type=float, default=1.0, help="linear warm-up (default: %(default)s)")
    g.add_argument("--weight_decay", type=float, default=0.05,
                   help="on weights only: not on norms, biases, class token, position embedding "
                        "(default: %(default)s)")
    g.add_argument("--label_smoothing", type=float, default=0.1,
                   help="also folded into Mixup/CutMix's soft targets (default: %(default)s)")
    g.add_argument("--lr_base_size", type=int,
                   help="linear scaling: --lr is the rate for this global batch, scaled to the actual one "
                        "(DeiT: 512); default: --lr as given")
    g.add_argument("--layer_decay", type=float,
                   help="layer-wise learning-rate decay for fine-tuning (e.g. 0.65): block i of D gets "
                        "lr x decay^(D - i); default: off")
    g.add_argument("--clip_grad", type=float, default=0.0,
                   help="clip the gradient's global L2 norm to this; 0: off (default: %(default)s)")
    g.add_argument("--accumulation_steps", type=int, default=1,
                   help="batches per optimizer step: k steps of batch B update as one of k x B (default: %(default)s)")
    g.add_argument("--ema_decay", type=float, default=0.0,
                   help="keep an exponential moving average of the weights, evaluated after each epoch and saved "
                        "(DeiT: 0.99996); 0: off (default: %(default)s)")
    g = p.add_argument_group("run")
    g.add_argument("--config", help="a recipe: YAML of these options (configs/*.yaml); the command line wins")
    g.add_argument("--ckpt_save_dir", default="outputs/train", help="(default: %(default)s)")
    g.add_argument("--log_interval", type=int, default=100,
                   help="steps between progress lines, at most 4 per epoch apart (default: %(default)s)")
    g.add_argument("--keep_checkpoint_max", type=int, default=2, help="epoch checkpoints kept (default: %(default)s)")
    cli.add_device_args(p)
    g.add_argument("--amp_level", choices=list(device.AMP_LEVELS),
                   help="mixed precision (default: O2 with loss scaling on Ascend, O0 on CPU and GPU)")
    g.add_argument("--distribute", action="store_true",
                   help="data-parallel over the processes started by msrun (one per device): "
                        f"{device.LAUNCH_HINT}")
    g.add_argument("--seed", type=int, default=42, help="(default: %(default)s)")
    return p


def param_groups(net, weight_decay):
    """Weight decay on Dense/Conv weights only; none on LayerNorm, biases, class token, position embedding."""
    decay = [p for p in net.trainable_params() if p.name.endswith(".weight")]
    rest = [p for p in net.trainable_params() if not p.name.endswith(".weight")]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


class EvaluateAndKeepBest(Callback):
    """After each epoch: top-1/top-5 on the validation set (of the EMA weights too, with ``ema``); the best epoch
    saved as ``best.ckpt`` (with the EMA weights, for ``eval.py --use_ema``); the run's history and curves
    (``ms_vit.history``) written. A resumed run continues the history and keeps the best top-1 of its earlier
    epochs: ``best.ckpt`` is never replaced by a worse epoch.

    Under data parallelism every rank evaluates its shard of the validation set and the counts are summed
    (``evaluate(across_ranks=True)``); only the writer (rank 0) prints and writes files."""

    def __init__(self, net, val_dataset, history, steps_per_epoch, meta, folder, guard, writer=True,
                 across_ranks=False, ema=None):
        super().__init__()
        self.net, self.val_dataset, self.history, self.meta, self.ema = net, val_dataset, history, meta, ema
        self.folder, self.guard = folder, guard
        self.steps_per_epoch, self.writer, self.across_ranks = steps_per_epoch, writer, across_ranks
        best = history.best()
        self.best_top1 = best["top1"] if best else -1.0

    def evaluate_ema(self) -> dict:
        """The EMA weights' figures: swapped into the network for the evaluation, then swapped back."""
        trained = [p.value().copy() for p in self.ema.weights]
        for weight, average in zip(self.ema.weights, self.ema.averages):
            weight.set_data(average.value())
        try:
            return evaluate(self.net, self.val_dataset, across_ranks=self.across_ranks)
        finally:
            for weight, value in zip(self.ema.weights, trained):
                weight.set_data(value)

    def on_train_epoch_end(self, run_context):
        if self.guard.stop:                       # interrupted mid-epoch, or not finite: nothing to evaluate
            return
        epoch = run_context.original_args().cur_epoch_num
        start = time.time()
        metrics = evaluate(self.net, self.val_dataset, across_ranks=self.across_ranks)
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
        ema_text = f", EMA top-1 {entry['ema_top1']:.4f} top-5 {entry['ema_top5']:.4f}" if self.ema else ""
        print(f"epoch {epoch}: val top-1 {metrics['top1']:.4f} top-5 {metrics['top5']:.4f} loss {metrics['loss']:.4f}"
              f"{ema_text} ({metrics['num_images']} images, {seconds:.1f} s){'  best so far' if improved else ''}",
              flush=True)
        if improved:
            self.folder.save("best.ckpt", lambda path: checkpoint.save(
                self.net, path, meta=dict(self.meta, epoch=epoch, metrics=metrics),
                extra_params=list(self.ema.averages) if self.ema else None))
        self.folder.write("the run's history", self.history.save)


class SaveEachEpoch(Callback):
    """``save()`` after each epoch that the guard let finish."""

    def __init__(self, save, guard):
        super().__init__()
        self.save, self.guard = save, guard

    def on_train_epoch_end(self, run_context):
        if not self.guard.stop:
            self.save()


def resume_position(params: dict, meta: dict, steps: int, source: str):
    """``(epochs complete, steps done in the next epoch)`` where a checkpoint written by train.py left off."""
    if "global_step" in meta:
        done, saved_steps = int(meta["global_step"]), int(meta["steps_per_epoch"])
        if done % saved_steps and saved_steps != steps:
            raise ValueError(f"{source} stopped in the middle of an epoch of {saved_steps} steps; this run has "
                             f"{steps} steps per epoch: resume with the same --batch_size and number of workers")
        return done // saved_steps, done % saved_steps
    # written by MindSpore's ModelCheckpoint (earlier train.py), or best.ckpt: whole epochs
    return (int(params["epoch_num"]) if "epoch_num" in params else int(meta.get("epoch", 0))), 0


def require_finite(net, where: str) -> None:
    """Refuse to save weights that hold NaN or Inf."""
    for param in net.trainable_params():
        if not np.isfinite(param.asnumpy()).all():
            raise RunStopped(f"the weights are not finite {where} ({param.name}): not saved; the last good "
                             "checkpoints are kept. Try a lower --lr, a longer --warmup_epochs or --clip_grad 1.0")


def build_train_step(args, net, steps: int, global_batch: int, amp_level: str, writer: bool, soft_targets: bool):
    """The loss (soft-target cross-entropy after Mixup/CutMix, else label-smoothed), optimizer (AdamW or Adam,
    cosine schedule, layer decay), EMA and ``TrainStep`` of the recipe; returns ``(train_step, ema, per-step
    learning rates)``."""
    lr = args.lr
    if args.lr_base_size:
        lr = args.lr * global_batch / args.lr_base_size
        if writer:
            print(f"learning rate {args.lr:g} x global batch {global_batch} / {args.lr_base_size} = {lr:g} "
                  "(linear scaling)", flush=True)
    # the schedule per step; the optimizer steps once every --accumulation_steps steps
    lrs = cosine_lr(lr, steps, args.epoch_size, args.warmup_epochs, args.min_lr)
    k = args.accumulation_steps
    groups = param_groups(net, args.weight_decay)
    scales = (layer_decay_scales([p.name for p in net.trainable_params()], net.config.depth, args.layer_decay)
              if args.layer_decay else None)
    schedule = ms.Tensor(lrs[k - 1::k])
    if args.optimizer == "adamw":
        optimizer = AdamW(groups, learning_rate=schedule, lr_scales=scales)
    elif scales:
        raise ValueError("--layer_decay needs --optimizer adamw")
    else:
        optimizer = nn.Adam(groups, learning_rate=schedule)
    # label smoothing is folded into Mixup's soft targets
    loss_fn = SoftTargetCrossEntropy() if soft_targets else LabelSmoothingCrossEntropy(args.label_smoothing)
    ema = ModelEMA(net.trainable_params(), args.ema_decay) if args.ema_decay else None
    compute = ms.amp.auto_mixed_precision(net, amp_level) if amp_level != "O0" else net
    scaler = device.loss_scale_manager(amp_level)
    train_step = TrainStep(nn.WithLossCell(compute, loss_fn), optimizer,
                           scaler.get_update_cell() if scaler else None, args.clip_grad, k, ema)
    return train_step, ema, lrs


def main(argv=None):
    parser = build_parser()
    args = parse_with_config(parser, argv)
    if not args.data_dir:
        raise ValueError("--data_dir is required (on the command line or in the --config file)")
    if args.pretrained and args.resume and args.resume != "auto":
        raise ValueError("give --pretrained or --resume, not both (--pretrained with --resume auto: fine-tune "
                         "from --pretrained unless --ckpt_save_dir holds a checkpoint to continue)")
    if args.accumulation_steps < 1:
        raise ValueError(f"--accumulation_steps must be at least 1, not {args.accumulation_steps}")
    target, amp_level, rank, group_size = device.setup(args.device_target, args.mode, args.amp_level, args.seed,
                                                       args.distribute)
    writer = rank == 0                         # one writer: rank 0 alone prints and writes --ckpt_save_dir
    folder = RunFolder(args.ckpt_save_dir, args.keep_checkpoint_max)
    if writer:
        folder.check_writable()                # an error before reading the data
    train_dir, val_dir = os.path.join(args.data_dir, "train"), os.path.join(args.data_dir, "val")
    classes = data.list_classes(train_dir)
    num_train = data.scan_split(train_dir)
    num_val = data.scan_split(val_dir, classes)
    if num_val < group_size:
        raise ValueError(f"{num_val} validation images cannot be shared by {group_size} workers: each evaluates "
                         "its shard")
    num_classes = args.num_classes or len(classes)
    classes = data.resolve_classes(classes, num_classes, train_dir)    # ImageNet wnids keep their standard index

    overrides = {k: getattr(args, k) for k in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_dim")}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    resume_path, resume_params, resume_meta = args.resume, {}, {}
    if args.resume == "auto":
        found = folder.latest()
        resume_path = found[0] if found else None
        if writer:
            print(f"resuming from {resume_path}" if found else
                  f"no checkpoint in {args.ckpt_save_dir} to resume: starting a new run", flush=True)
        if found:
            _, resume_params, resume_meta = found
    elif args.resume:
        resume_params, resume_meta = checkpoint.read(args.resume)       # read once: weights and optimizer state
    fused_kernels = None if amp_level == "O0" else False     # the fused CPU kernels compute in float32 only
    if resume_path:
        # the architecture is the checkpoint's: the same command line with --resume added continues the run
        net = build_model(None if "config" in resume_meta else args.model, resume_params, resume_meta, resume_path,
                          num_classes, args.image_size, fused_kernels, drop_rate=args.drop_rate,
                          drop_path_rate=args.drop_path_rate)
    else:
        net = create_model(args.model or (None if args.pretrained else "vit_b_16_224"), num_classes=num_classes,
                           image_size=args.image_size, checkpoint_path=args.pretrained, fused_kernels=fused_kernels,
                           drop_rate=args.drop_rate, drop_path_rate=args.drop_path_rate,
                           weight_init=args.weight_init, **overrides)
    config = net.config
    names = data.class_names(args.data_dir, classes)
    shard = dict(num_shards=group_size, shard_id=rank) if group_size > 1 else {}
    global_batch = group_size * args.batch_size
    val_ds = data.create_dataset(val_dir, classes, config, args.batch_size, training=False,
                                 num_workers=args.num_workers, **shard)
    batches = f"{group_size} workers x {args.batch_size} = global batch {global_batch}" if group_size > 1 \
        else f"batch {args.batch_size}"
    mixup = (Mixup(args.mixup, args.cutmix, args.mixup_prob, args.mixup_switch_prob, args.label_smoothing, num_classes)
             if args.mixup > 0 or args.cutmix > 0 else None)
    train_ds = data.create_dataset(
        train_dir, classes, config, args.batch_size, training=True, num_workers=args.num_workers,
        min_crop_scale=args.min_crop_scale, hflip=args.hflip, augment=not args.no_augment,
        shuffle=not args.no_shuffle, auto_augment=args.auto_augment, re_prob=args.re_prob, re_mode=args.re_mode,
        mixup=mixup, repeated_aug=args.aug_repeats, seed=args.seed, **shard)
    steps = train_ds.get_dataset_size()         # per rank = global steps: every rank takes each step together
    if steps == 0:
        raise ValueError(f"{num_train} training images make no full step of {batches}: lower --batch_size"
                         + (" or the number of workers" if group_size > 1 else ""))
    if writer:
        folder.open()                          # another run's: an error before any work
    start_epoch, start_step = resume_position(resume_params, resume_meta, steps, resume_path) if resume_path \
        else (0, 0)
    done_steps = start_epoch * steps + start_step
    if start_epoch >= args.epoch_size:
        raise ValueError(f"{resume_path} already finished epoch {start_epoch} of --epoch_size {args.epoch_size}")
    if done_steps:
        train_ds.set_init_step(done_steps)      # MindSpore's pipeline recovery: the data order of the same step
    train_step, ema, lrs = build_train_step(args, net, steps, global_batch, amp_level, writer, mixup is not None)
    network = {p.name for p in net.get_parameters()}
    state = [p for p in train_step.get_parameters() if p.name not in network and p.name != "learning_rate"]
    if resume_params:
        # optimizer moments and step count, EMA, accumulated gradients, by exact name (load_param_into_net matches
        # names loosely: it wrote Adam's moments into the weights); the schedule itself is rebuilt
        for param in state:
            if param.name in resume_params:
                param.set_data(ms.Tensor(resume_params[param.name], param.dtype))
    model = Model(train_step)

    if writer:
        write_config(args, os.path.join(args.ckpt_save_dir, "config.yaml"))
    meta = {"config": config.to_dict(), "classes": classes, "class_names": names,
            "train_config": {k: v for k, v in vars(args).items() if k != "config"}}
    loss_scaling = train_step.loss_scaling
    guard = RunGuard(steps, lrs, done_steps, loss_scaling, across_ranks=group_size > 1)

    def save_position() -> str:
        """The resumable checkpoint of where the run stands: vit-<epoch>_<steps done in it>.ckpt."""
        epoch, step = guard.position()
        require_finite(net, f"after epoch {epoch} step {step}")
        position = dict(meta, epoch=epoch, global_step=guard.done_steps, steps_per_epoch=steps)
        complete = epoch if step == steps else epoch - 1
        return folder.save(f"vit-{epoch}_{step}.ckpt", lambda path: checkpoint.save(
            net, path, meta=position, extra_params=state,
            extra_values={"epoch_num": complete, "step_num": guard.done_steps}))

    history = RunHistory(args.ckpt_save_dir, start_epoch, done_steps)
    keep_best = EvaluateAndKeepBest(net, val_ds, history, steps, meta, folder, guard, writer,
                                    across_ranks=group_size > 1, ema=ema)
    progress = Progress(steps, args.epoch_size, global_batch, lrs, min(args.log_interval, max(1, steps // 4)),
                        writer, across_ranks=group_size > 1, history=history.train, done_steps=done_steps,
                        loss_scaling=loss_scaling)
    callbacks = [guard, progress, keep_best]
    if writer:
        callbacks.insert(2, SaveEachEpoch(save_position, guard))
        where = f" (from step {start_step + 1} of epoch {start_epoch + 1})" if start_step else ""
        print(f"training {checkpoint.describe(config)} ({sum(p.size for p in net.trainable_params()):,} parameters) "
              f"on {target}, AMP {amp_level}, {args.mode} mode: {num_train} train / {num_val} val images, "
              f"{steps} steps of {batches} per epoch, epochs {start_epoch + 1}..{args.epoch_size}{where}", flush=True)
    # dataset sinking replays whole epochs: a run resumed in the middle of one feeds it step by step
    sink = target != "CPU" and not start_step
    try:
        model.train(args.epoch_size, train_ds, callbacks=callbacks, dataset_sink_mode=sink,
                    initial_epoch=start_epoch)
    except RuntimeError as exc:                  # the data pipeline or the device failed mid-run
        newest = folder.newest() if writer else "none yet"
        epoch, step = guard.position()
        detail = next((line.strip() for line in str(exc).splitlines() if "file" in line.lower()),
                      str(exc).splitlines()[0])
        raise RunStopped(f"training failed after epoch {epoch} step {step}: {detail}; the checkpoints written "
                         f"before are intact (newest: {newest}): fix the cause, then continue with --resume auto") \
            from None
    epoch, step = guard.position()
    if guard.stop == "nonfinite":
        newest = folder.newest()
        raise RunStopped(f"the loss is {guard.loss} at epoch {epoch} step {step}/{steps} (learning rate "
                         f"{guard.learning_rate():.3g}): training stopped, these weights are not saved; the last good "
                         f"checkpoint is {newest}. Try a lower --lr, a longer --warmup_epochs or --clip_grad 1.0")
    if guard.stop == "signal":
        if writer:
            path = save_position()
            folder.write("the run's history", history.save)
            print(f"interrupted by SIGINT/SIGTERM after epoch {epoch} step {step}/{steps}: resumable checkpoint "
                  f"{path}; continue with the same command and --resume auto", file=sys.stderr, flush=True)
        return 128 + guard.signum
    if not writer:
        return 0
    best = history.best()
    print(f"trained epochs {start_epoch + 1}..{args.epoch_size} in {format_duration(progress.elapsed())}; "
          f"best val top-1 {best['top1']:.4f} top-5 {best['top5']:.4f} (epoch {best['epoch']}): "
          f"{os.path.join(args.ckpt_save_dir, 'best.ckpt')}\n"
          f"curves: {os.path.join(args.ckpt_save_dir, 'curves.png')}")
    return 0

if __name__ == "__main__":
    sys.exit(cli.run(main))
