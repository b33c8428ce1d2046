"""Stopping a training run cleanly: after the current step on SIGTERM/SIGINT (pre-emption, Ctrl-C), at once on a
non-finite loss.

``RunGuard`` is a ``Callback``: it installs its signal handlers for the duration of ``Model.train``, checks each
step's loss, and asks ``Model`` to stop (``run_context.request_stop()``). What to save and say is the caller's:
``stop`` tells why, where (``position``) and with what loss. (Once MindSpore's runtime has run a graph, it catches
SIGINT itself and raises SIGTERM: Ctrl-C reaches the handler as SIGTERM; both stop the run alike.)

Under data parallelism the ranks agree every step (one AllReduce of two flags): all stop after the same step,
even when only one of them got the signal or saw the non-finite loss, instead of the others waiting forever in
the next step's gradient reduction.
"""
import signal
from typing import Optional, Sequence

import numpy as np
import mindspore as ms
from mindspore import ops
from mindspore.train import Callback

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunStopped(Exception):
    """A run stopped by a fault (a non-finite loss, a failed save, a failing pipeline): the entry scripts print
    ``error: <message>`` and exit with status 1."""


class RunGuard(Callback):
    """Args:
        steps_per_epoch: steps (global batches) in an epoch.
        learning_rates: the per-step schedule, for the message.
        done_steps: the global steps done before this run (a resumed run's position).
        loss_scaling: under AMP loss scaling an overflowing step is skipped, not fatal: only a float32 run stops
            on a non-finite loss.
        across_ranks: agree with the other data-parallel ranks each step.

    After ``Model.train`` returns, ``stop`` is None (ran to the end), ``"signal"`` (``signum`` says which) or
    ``"nonfinite"`` (``loss``); ``done_steps`` counts the global steps done.
    """

    def __init__(self, steps_per_epoch: int, learning_rates: Sequence[float], done_steps: int = 0,
                 loss_scaling: bool = False, across_ranks: bool = False):
        super().__init__()
        self.steps_per_epoch, self.learning_rates = steps_per_epoch, learning_rates
        self.done_steps, self.loss_scaling = done_steps, loss_scaling
        self.all_reduce = ops.AllReduce() if across_ranks else None
        self.stop: Optional[str] = None
        self.signum: Optional[int] = None
        self.loss: Optional[float] = None
        self._previous = {}

    def position(self):
        """``(epoch, step in that epoch)`` of the last step done (epoch 1-based; ``(e, steps_per_epoch)`` at the
        end of epoch e)."""
        epoch = max(1, -(-self.done_steps // self.steps_per_epoch))
        return epoch, self.done_steps - (epoch - 1) * self.steps_per_epoch

    def learning_rate(self) -> float:
        return float(self.learning_rates[min(max(self.done_steps, 1), len(self.learning_rates)) - 1])

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
        outputs = run_context.original_args().net_outputs
        loss = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        self.loss = float(loss.asnumpy())
        self.done_steps += 1
        signalled = self.signum is not None
        nonfinite = not self.loss_scaling and not np.isfinite(self.loss)
        if self.all_reduce is not None:
            flags = self.all_reduce(ms.Tensor([float(signalled), float(nonfinite)], ms.float32)).asnumpy()
            signalled, nonfinite = bool(flags[0]), bool(flags[1])
        if nonfinite:
            self.stop = "nonfinite"
        elif signalled:
            self.stop = "signal"
            self.signum = self.signum or signal.SIGTERM
        if self.stop:
            run_context.request_stop()
