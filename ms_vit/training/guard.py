"""Watching a training run, and stopping it cleanly: after the current step (or sink) on SIGTERM/SIGINT
(pre-emption, Ctrl-C), at once on a non-finite loss or on float16 steps that keep overflowing.

MindSpore calls a step callback after every step, or, when it sinks the dataset into an Ascend/GPU device, once per
sink of N steps, with ``cb_params.cur_step_num`` advanced by N (``Model._train_dataset_sink_process``). ``RunGuard``
counts steps from ``cur_step_num`` (plus the position a resumed run starts from), so it is right at either
cadence, and *looks* at the run every ``look_every`` steps and at the end of each epoch: one read-back of the train
step's statistics (``TrainStep.take_stats``: every step of a sink counted, not only its last), one AllReduce so that
every rank decides alike, then the stop decision, then the ``Look`` handed to the listeners (the progress line;
at an epoch's end, the checkpoint and the evaluation). Between looks nothing is read back from the device.

What to save and say is the caller's: ``stop`` tells why, ``position()`` where. (Once MindSpore's runtime has run a
graph, it catches SIGINT itself and raises SIGTERM: Ctrl-C reaches the handler as SIGTERM; both stop the run alike.)
"""
import dataclasses
import signal
from typing import Callable, List, Optional, Sequence

import mindspore as ms
from mindspore import ops
from mindspore.train import Callback

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """SIGTERM/SIGINT before the run guard took over (``stop_on_signal``): nothing new to save; ``args[0]`` is the
    signal's number."""


def stop_on_signal() -> None:
    """From now until a ``RunGuard`` starts watching a training run: SIGTERM/SIGINT raise ``Interrupted`` (a
    pre-emption notice during the data check or the compilation ends the process at once, the files written so far
    complete: every write is atomic)."""
    def interrupt(signum, frame):
        raise Interrupted(signum)
    for sig in _SIGNALS:
        signal.signal(sig, interrupt)


class RunStopped(Exception):
    """A run stopped by a fault (a non-finite loss, a failed save, a failing pipeline): the entry scripts print
    ``error: <message>`` and exit with status 1."""


@dataclasses.dataclass
class Look:
    """What the run did since the previous look, as every rank agrees."""
    done_steps: int              # global steps done, the resumed position included
    epoch: int                   # the epoch of the last step (1-based)
    step: int                    # the last step's number in that epoch (steps_per_epoch at its end)
    steps: int                   # steps since the previous look
    loss_sum: float              # the sum of their losses (mean over the ranks)
    skipped: int                 # of them, steps skipped by the float16 loss scale for overflowing
    loss_scale: float            # the loss scale now
    epoch_end: bool              # the last step ended an epoch


class RunGuard(Callback):
    """Args:
        train_step: the ``TrainStep`` whose statistics are read.
        steps_per_epoch: steps (global batches) in an epoch.
        learning_rates: the per-step schedule, for the messages.
        done_steps: the global steps done before this run (a resumed run's position).
        look_every: steps between looks (the sink size on Ascend/GPU); an epoch's end is always looked at.
        across_ranks: agree with the other data-parallel ranks at each look.
        on_look: called with each ``Look``, but for the one at which a fault stops the run.
        on_epoch_end: called with the epoch number after a ``Look`` at an epoch's end the run goes on from.

    After ``Model.train`` returns, ``stop`` is None (ran to the end), ``"signal"`` (``signum`` says which),
    ``"nonfinite"`` (``loss``, ``bad_step``: the first non-finite loss and its global step) or ``"overflow"``
    (``MAX_OVERFLOWS_IN_A_ROW`` float16 steps in a row skipped, the last at global step ``bad_step``, also inside a
    sink); ``done_steps`` counts the global steps done.
    """

    def __init__(self, train_step, steps_per_epoch: int, learning_rates: Sequence[float], done_steps: int = 0,
                 look_every: int = 1, across_ranks: bool = False, on_look: Sequence[Callable[[Look], None]] = (),
                 on_epoch_end: Sequence[Callable[[int], None]] = ()):
        super().__init__()
        self.train_step, self.steps_per_epoch, self.learning_rates = train_step, steps_per_epoch, learning_rates
        self.start_steps = self.done_steps = done_steps
        self.look_every = max(1, look_every)
        self.all_reduce = ops.AllReduce() if across_ranks else None
        self.on_look: List[Callable[[Look], None]] = list(on_look)
        self.on_epoch_end: List[Callable[[int], None]] = list(on_epoch_end)
        self.stop: Optional[str] = None
        self.signum: Optional[int] = None
        self.loss: Optional[float] = None
        self.bad_step: Optional[int] = None
        self._previous = {}

    def position(self, done_steps: Optional[int] = None):
        """``(epoch, step in that epoch)`` of global step ``done_steps`` (default: the last done; epoch 1-based,
        ``(e, steps_per_epoch)`` at the end of epoch e)."""
        done = self.done_steps if done_steps is None else done_steps
        epoch = max(1, -(-done // self.steps_per_epoch))
        return epoch, done - (epoch - 1) * self.steps_per_epoch

    def learning_rate(self, done_steps: Optional[int] = None) -> float:
        done = self.done_steps if done_steps is None else done_steps
        return float(self.learning_rates[min(max(done, 1), len(self.learning_rates)) - 1])

    def _on_signal(self, signum, frame):
        self.signum = signum
        signal.signal(signum, signal.SIG_DFL)         # a second signal stops at once, saving nothing

    def on_train_begin(self, run_context):
        for sig in _SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def on_train_end(self, run_context):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def on_train_step_end(self, run_context):
        self.done_steps = self.start_steps + run_context.original_args().cur_step_num
        epoch_end = self.done_steps % self.steps_per_epoch == 0
        if self.done_steps % self.look_every and not epoch_end:
            return                                    # between looks: nothing read back
        stats = self.train_step.take_stats()
        before = self.done_steps - int(stats["steps"])
        signalled = self.signum is not None
        nonfinite = not self.train_step.loss_scaling and stats["first_nonfinite"] > 0
        loss_sum = stats["loss_sum"]
        if self.all_reduce is not None:
            flags = self.all_reduce(ms.Tensor([float(signalled), float(nonfinite), loss_sum], ms.float32)).asnumpy()
            signalled, nonfinite = bool(flags[0]), bool(flags[1])
            loss_sum = float(flags[2]) / ms.communication.get_group_size()
        if nonfinite:
            self.stop = "nonfinite"
            local = stats["first_nonfinite"] > 0        # else another rank saw it first
            self.bad_step = before + int(stats["first_nonfinite"]) if local else self.done_steps
            self.loss = stats["nonfinite_loss"] if local else float("nan")
        elif stats["overflow_limit"] > 0:                # every rank skips alike: the overflow is agreed
            self.stop = "overflow"
            self.bad_step = before + int(stats["overflow_limit"])
        elif signalled:
            self.stop = "signal"
            self.signum = self.signum or signal.SIGTERM
        if self.stop:
            run_context.request_stop()
        if self.stop not in (None, "signal"):
            return                                    # nothing to report from a run gone wrong
        epoch, step = self.position()
        look = Look(self.done_steps, epoch, step, int(stats["steps"]), loss_sum, int(stats["skipped"]),
                    stats["loss_scale"], epoch_end)
        for listener in self.on_look:
            listener(look)
        if epoch_end and not self.stop:
            for listener in self.on_epoch_end:
                listener(epoch)
