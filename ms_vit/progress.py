"""The training progress line: epoch, step, loss, learning rate, images/s and time left."""
import time
from typing import Optional, Sequence

import numpy as np
import mindspore as ms
from mindspore import ops
from mindspore.communication import get_group_size
from mindspore.train import Callback


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress(Callback):
    """Every ``interval`` steps (and at the end of each epoch) one line::

        epoch 3/40 step 50/62 loss 0.8123 lr 1.95e-03 812.3 img/s ETA 0:04:12

    The loss is the mean over the steps since the last line and, under data parallelism, over every rank (an
    AllReduce on the printing steps only, which every rank runs), so it is the loss of the global batch.
    Images/s counts the global batch; the ETA covers the remaining steps of the run at the speed measured so far
    (from the second step on: the first includes graph compilation). Only the ``writer`` prints. Under AMP loss
    scaling, the steps skipped since the last line because their gradients overflowed are counted on it, with the
    loss scale: ``skipped 3 overflowing steps (loss scale 32768)``.

    Args:
        steps_per_epoch: steps in one epoch (one step = one global batch).
        epochs: the run's last epoch.
        global_batch: images per step over all ranks.
        learning_rates: the per-step schedule (``ms_vit.lr.cosine_lr``), indexed by the global step.
        interval: steps between lines.
        writer: whether this process prints.
        across_ranks: average the printed loss over the ranks of the collective group.
        history: a list to which each line is appended as ``{"step", "epoch", "loss", "lr"}`` (for the curves).
        done_steps: the global steps done before this run: a run resumed in the middle of an epoch counts that
            epoch's steps on from there.
        loss_scaling: count the steps skipped by the loss scale.
    """

    def __init__(self, steps_per_epoch: int, epochs: int, global_batch: int, learning_rates: Sequence[float],
                 interval: int, writer: bool = True, across_ranks: bool = False, history: Optional[list] = None,
                 done_steps: int = 0, loss_scaling: bool = False):
        super().__init__()
        self.first_epoch_offset = done_steps % steps_per_epoch
        self.loss_scaling, self.skipped = loss_scaling, 0
        self.steps_per_epoch, self.epochs, self.global_batch = steps_per_epoch, epochs, global_batch
        self.learning_rates, self.interval = learning_rates, max(1, interval)
        self.writer, self.across_ranks = writer, across_ranks
        self.all_reduce = ops.AllReduce() if across_ranks else None
        self.run_start: Optional[float] = None
        self.timed_start: Optional[float] = None       # the end of the run's first step (graph compilation)
        self.timed_steps = 0
        self.window_start: Optional[float] = None      # since the last line or the start of the epoch
        self.window_steps = 0
        self.losses = []
        self.history = [] if history is None else history

    def on_train_begin(self, run_context):
        self.run_start = time.time()

    def on_train_epoch_begin(self, run_context):
        self.step, self.first_epoch_offset = self.first_epoch_offset, 0
        self.window_start, self.window_steps = (time.time() if self.timed_start else None), 0

    def on_train_step_end(self, run_context):
        args = run_context.original_args()
        outputs = args.net_outputs
        loss = outputs[0] if isinstance(outputs, (tuple, list)) else outputs    # (loss, overflow, scale) under O2
        self.losses.append(float(loss.asnumpy()))
        if self.loss_scaling:
            self.skipped += bool(outputs[1].asnumpy())
            self.loss_scale = float(outputs[2].asnumpy())
        self.step += 1
        if self.timed_start is None:
            self.timed_start = self.window_start = time.time()
        else:
            self.timed_steps += 1
            self.window_steps += 1
        if self.step % self.interval == 0 or self.step == self.steps_per_epoch:
            self._print(args.cur_epoch_num)

    def _print(self, epoch: int):
        loss = float(np.mean(self.losses))
        if self.all_reduce is not None:
            loss = float(self.all_reduce(ms.Tensor([loss], ms.float32)).asnumpy()[0]) / get_group_size()
        self.losses = []
        now = time.time()
        line = f"epoch {epoch}/{self.epochs} step {self.step}/{self.steps_per_epoch} loss {loss:.4f}"
        global_step = (epoch - 1) * self.steps_per_epoch + self.step
        lr = float(self.learning_rates[min(global_step, len(self.learning_rates)) - 1])
        self.history.append({"step": global_step, "epoch": epoch, "loss": loss, "lr": lr})
        line += f" lr {lr:.2e}"
        if self.window_steps:
            line += f" {self.global_batch * self.window_steps / (now - self.window_start):.1f} img/s"
        if self.timed_steps:
            remaining = (self.epochs - epoch + 1) * self.steps_per_epoch - self.step
            line += f" ETA {format_duration(remaining * (now - self.timed_start) / self.timed_steps)}"
        if self.skipped:
            line += (f" skipped {self.skipped} overflowing step{'s' if self.skipped > 1 else ''} "
                     f"(loss scale {self.loss_scale:g})")
            self.history[-1]["skipped"] = self.skipped
            self.skipped = 0
        self.window_start, self.window_steps = now, 0
        if self.writer:
            print(line, flush=True)

    def elapsed(self) -> float:
        return time.time() - self.run_start if self.run_start else 0.0
