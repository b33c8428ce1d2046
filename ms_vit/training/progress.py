"""The training progress line: epoch, step, loss, learning rate, images/s and time left."""
import time
from typing import Optional, Sequence

from ..timing import format_duration
from .guard import Look


class Progress:
    """Fed the run guard's looks (``RunGuard(on_look=[progress.update])``), prints, at the first look at or past
    every ``interval`` steps of an epoch and at each epoch's end, one line::

        epoch 3/40 step 50/62 loss 0.8123 lr 1.95e-03 812.3 img/s ETA 0:04:12

    The loss is the mean over the steps since the last line and over every rank, so it is the loss of the global
    batch. Images/s counts the global batch; the ETA covers the remaining steps of the run at the speed measured so
    far (from the second look on: the first includes graph compilation). Only the ``writer`` prints. Under float16
    loss scaling the steps skipped since the last line because their gradients overflowed are counted on it, with
    the loss scale: ``skipped 3 overflowing steps (loss scale 32768)``.

    Args:
        steps_per_epoch: steps in one epoch (one step = one global batch).
        epochs: the run's last epoch.
        global_batch: images per step over all ranks.
        learning_rates: the schedule per step (``ms_vit.training.lr``), indexed by the global step.
        interval: steps between lines.
        writer: whether this process prints.
        history: a list to which each line is appended as ``{"step", "epoch", "loss", "lr"}`` (for the curves).
    """

    def __init__(self, steps_per_epoch: int, epochs: int, global_batch: int, learning_rates: Sequence[float],
                 interval: int, writer: bool = True, history: Optional[list] = None):
        self.steps_per_epoch, self.epochs, self.global_batch = steps_per_epoch, epochs, global_batch
        self.learning_rates, self.interval = learning_rates, max(1, interval)
        self.writer = writer
        self.history = [] if history is None else history
        self.run_start = time.time()
        self.timed_start: Optional[float] = None       # the first look (after graph compilation)
        self.timed_steps = 0
        self.window_start: Optional[float] = None      # since the last line
        self.window_timed_steps = 0
        self.loss_sum, self.loss_steps, self.skipped = 0.0, 0, 0

    def update(self, look: Look) -> None:
        now = time.time()
        self.loss_sum += look.loss_sum
        self.loss_steps += look.steps
        self.skipped += look.skipped
        if self.timed_start is None:
            self.timed_start = self.window_start = now
        else:
            self.timed_steps += look.steps
            self.window_timed_steps += look.steps
        previous_step = look.step - look.steps
        if look.epoch_end or look.step // self.interval > max(previous_step, 0) // self.interval:
            self._print(look, now)

    def _print(self, look: Look, now: float) -> None:
        loss = self.loss_sum / max(self.loss_steps, 1)
        lr = float(self.learning_rates[min(look.done_steps, len(self.learning_rates)) - 1])
        entry = {"step": look.done_steps, "epoch": look.epoch, "loss": loss, "lr": lr}
        line = f"epoch {look.epoch}/{self.epochs} step {look.step}/{self.steps_per_epoch} loss {loss:.4f} lr {lr:.2e}"
        if self.window_timed_steps:
            line += f" {self.global_batch * self.window_timed_steps / (now - self.window_start):.1f} img/s"
        if self.timed_steps:
            remaining = self.epochs * self.steps_per_epoch - look.done_steps
            line += f" ETA {format_duration(remaining * (now - self.timed_start) / self.timed_steps)}"
        if self.skipped:
            line += (f" skipped {self.skipped} overflowing step{'s' if self.skipped > 1 else ''} "
                     f"(loss scale {look.loss_scale:g})")
            entry["skipped"] = self.skipped
        self.history.append(entry)
        self.loss_sum, self.loss_steps, self.skipped = 0.0, 0, 0
        self.window_start, self.window_timed_steps = now, 0
        if self.writer:
            print(line, flush=True)

    def restart_window(self, epoch: int = 0) -> None:
        """Images/s leaves out what happens between epochs (evaluation, checkpoints): register last among the run
        guard's ``on_epoch_end`` listeners."""
        self.window_start = time.time()

    def elapsed(self) -> float:
        return time.time() - self.run_start
