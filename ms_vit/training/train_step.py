"""One training step: forward, backward, loss scaling, gradient accumulation, gradient reduction over the
data-parallel ranks, clipping by global norm, the optimizer, the EMA of the weights, and the run's statistics.

``TrainStep`` is ``nn.TrainOneStepWithLossScaleCell`` (MindSpore's own loss scaling and overflow check, which
``mindspore.train.Model`` builds for AMP) with what DeiT's recipe and a device run need:

* ``accumulation_steps`` = k: k calls of batch B make one optimizer step with the mean of their gradients, the
  update of one batch of k x B. Micro-batch gradients accumulate locally; under data parallelism they are reduced
  over the ranks once per optimizer step (as mindcv's and MindSpore's own accumulation), not once per micro-batch;
* ``clip_grad_norm``: the gradient (after accumulation and reduction) is scaled by ``min(1, max_norm / ||g||_2)``,
  ``||g||`` over all parameters together (``ops.clip_by_global_norm``, as ``torch.nn.utils.clip_grad_norm_``);
* ``ema``: after each optimizer step ``ema = decay * ema + (1 - decay) * weights`` (timm's ``ModelEmaV2``);
* ``stats``: the run's statistics, updated on the device at every step (``STATS``): the loss sum, the steps, the
  steps skipped for overflow, the first non-finite loss, the overflowing steps in a row. The host reads them with
  ``take_stats()`` only when it looks at the run (every sink on Ascend/GPU: ``ms_vit.training.guard``), so no step waits
  for a read-back, and a dataset sink of N steps reports on all N, not only its last.

Under loss scaling the overflow status is cleared before the backward pass (``start_overflow_check``: Ascend 910A
and 910B in saturation mode read a status register; elsewhere a no-op), as mindcv's TrainStep does.

Outputs: ``(loss, overflow, loss_scale)`` as MindSpore's cell, so ``Model`` and its callbacks work unchanged
(``overflow`` is False without loss scaling).
"""
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.nn.wrap.loss_scale import _grad_scale

_accumulate = ops.MultitypeFuncGraph("accumulate")
_ema_update = ops.MultitypeFuncGraph("ema_update")


@_accumulate.register("Tensor", "Tensor", "Tensor")
def _accumulate_grad(scale, accumulated, grad):
    return ops.assign_add(accumulated, grad.astype(accumulated.dtype) * scale)


@_ema_update.register("Tensor", "Tensor", "Tensor")
def _update_average(decay, average, weight):
    return ops.assign(average, average * decay + weight.astype(average.dtype) * (1.0 - decay))


class ModelEMA(nn.Cell):
    """An exponential moving average of a network's trainable parameters, as timm's ``ModelEmaV2``: parameters
    ``ema.<name>`` (saved in checkpoints; ``eval.py --use_ema`` loads them), updated by ``update()``.

    Args:
        params: the network's trainable parameters.
        decay: the averaging decay per optimizer step (DeiT: 0.99996).
    """

    def __init__(self, params, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), not {decay}")
        self.weights = ms.ParameterTuple(params)
        self.averages = self.weights.clone(prefix="ema", init="same")
        self.decay = Tensor(decay, ms.float32)
        self.hyper_map = ops.HyperMap()

    def update(self):
        return self.hyper_map(ops.partial(_ema_update, self.decay), self.averages, self.weights)


# Under dynamic loss scaling the scale halves on every overflowing step, from 2 ** 16 to its floor of 1 in 16 steps:
# steps that still overflow after twice that many in a row overflow at every scale (``ms_vit.training.guard`` stops
# the run).
MAX_OVERFLOWS_IN_A_ROW = 32
# The run's statistics since the host last read them (``TrainStep.stats``), by index: the sum of the losses, the
# steps, the steps skipped for overflow, the first step (1-based) with a non-finite loss and that loss. Two are not
# reset by a read: ``in_a_row``, the overflowing steps since the last step that was not skipped, and ``loss_scale``,
# the loss scale after the last step. ``overflow_limit``: the first step (1-based) that made ``in_a_row`` reach
# ``MAX_OVERFLOWS_IN_A_ROW`` (counted on the device: a sink can reach it and go on, even past an overflow-free step).
STATS = ("loss_sum", "steps", "skipped", "first_nonfinite", "nonfinite_loss", "in_a_row", "loss_scale",
         "overflow_limit")
_KEPT_ON_READ = ("in_a_row", "loss_scale")


class TrainStep(nn.TrainOneStepWithLossScaleCell):
    """One training step (see the module docstring).

    Args:
        network: the network with its loss, ``(images, labels) -> loss``.
        optimizer: updates ``network``'s trainable parameters.
        scale_sense: a ``nn.DynamicLossScaleUpdateCell`` (AMP with float16) or a fixed scale; default: none (float32
            and bfloat16: no scaling, no overflow check, the graph of ``nn.TrainOneStepCell``).
        clip_grad_norm: the largest global gradient norm (0: no clipping).
        accumulation_steps: batches per optimizer step.
        ema: a ``ModelEMA`` of the network's parameters, updated after each optimizer step, or None.
    """

    def __init__(self, network, optimizer, scale_sense=None, clip_grad_norm: float = 0.0,
                 accumulation_steps: int = 1, ema: Optional[ModelEMA] = None):
        super().__init__(network, optimizer, scale_sense if scale_sense is not None else Tensor([1.0], ms.float32))
        self.loss_scaling = scale_sense is not None
        if accumulation_steps < 1:
            raise ValueError(f"accumulation steps must be at least 1, not {accumulation_steps}")
        self.clip_grad_norm = float(clip_grad_norm)
        self.accumulation_steps = accumulation_steps
        self.ema = ema
        self.cpu_target = ms.get_context("device_target") == "CPU"
        initial = np.zeros(len(STATS), np.float32)
        initial[STATS.index("loss_scale")] = float(self.scale_sense.asnumpy().reshape(-1)[0])
        self.stats = Parameter(Tensor(initial), name="step_stats", requires_grad=False)
        if accumulation_steps > 1:
            self.accumulated = self.weights.clone(prefix="accumulated", init="zeros")
            self.micro_step = Parameter(Tensor(0, ms.int32), name="micro_step", requires_grad=False)
            self.accumulation_scale = Tensor(1.0 / accumulation_steps, ms.float32)

    def get_overflow_status(self, status, compute_output):
        """Whether any gradient holds Inf/NaN on any rank. MindSpore's check reads the NPU's float status (also on
        CPU, where that operator does not exist); on CPU every gradient is checked directly."""
        if not self.cpu_target:
            return super().get_overflow_status(status, compute_output)
        finite = ops.stack(self.hyper_map(_all_finite, compute_output)).all()
        overflow = ops.logical_not(finite)
        if self.is_distributed:
            overflow = self.allreduce(overflow.astype(ms.float32)) > 0
        return overflow

    def apply(self, grads):
        """Clip, step the optimizer, update the EMA."""
        if self.clip_grad_norm > 0:
            grads = ops.clip_by_global_norm(grads, self.clip_grad_norm)
        result = self.optimizer(grads)
        if self.ema is not None:
            result = ops.depend(result, self.ema.update())
        return result

    def record(self, loss, overflow, loss_scale):
        """Add this step to ``stats`` (on the device)."""
        s = self.stats
        loss = loss.astype(ms.float32)
        steps = s[1] + 1.0
        first_bad = ops.logical_and(s[3] == 0.0, ops.logical_not(ops.isfinite(loss)))
        skipped = overflow.astype(ms.float32)
        in_a_row = (s[5] + 1.0) * skipped
        at_limit = ops.logical_and(s[7] == 0.0, in_a_row >= MAX_OVERFLOWS_IN_A_ROW)
        return ops.assign(s, ops.stack([
            s[0] + loss, steps, s[2] + skipped, ops.select(first_bad, steps, s[3]), ops.select(first_bad, loss, s[4]),
            in_a_row, loss_scale.astype(ms.float32).reshape(()), ops.select(at_limit, steps, s[7])]))

    def take_stats(self) -> dict:
        """The statistics since the last call (host side: one read-back), then reset on the device."""
        values = self.stats.asnumpy()
        kept = np.array([values[i] if name in _KEPT_ON_READ else 0.0 for i, name in enumerate(STATS)], np.float32)
        self.stats.set_data(Tensor(kept))
        return {name: float(value) for name, value in zip(STATS, values)}

    def construct(self, *inputs):
        loss = self.network(*inputs)
        scaling_sens = self.scale_sense
        accumulating = self.accumulation_steps > 1
        if self.loss_scaling:                     # float16 AMP: scaled gradients, skipped steps on overflow
            status, scaling_sens = self.start_overflow_check(loss, scaling_sens)
            scaling_sens_filled = ops.ones_like(loss) * ops.cast(scaling_sens, ops.dtype(loss))
            grads = self.grad(self.network, self.weights)(*inputs, scaling_sens_filled)
            grads = self.hyper_map(ops.partial(_grad_scale, scaling_sens), grads)
            if not accumulating:                  # accumulated gradients are reduced once, when applied
                grads = self.grad_reducer(grads)
            cond = self.get_overflow_status(status, grads)       # agreed by every rank
            overflow = self.process_loss_scale(cond)
        else:                                     # float32: the graph of MindSpore's TrainOneStepCell
            grads = self.grad(self.network, self.weights)(*inputs, ops.ones_like(loss))
            if not accumulating:
                grads = self.grad_reducer(grads)
            cond = overflow = ops.zeros((), ms.bool_)
        loss = ops.depend(loss, self.record(loss, cond, ops.depend(self.scale_sense, overflow)))
        if not accumulating:
            if self.loss_scaling:
                if not overflow:
                    loss = ops.depend(loss, self.apply(grads))
            else:
                loss = ops.depend(loss, self.apply(grads))
            return loss, cond, scaling_sens
        if not overflow:                          # an overflowing micro-batch is left out of the mean
            loss = ops.depend(loss, self.hyper_map(ops.partial(_accumulate, self.accumulation_scale),
                                                   self.accumulated, grads))
        loss = ops.depend(loss, ops.assign_add(self.micro_step, Tensor(1, ms.int32)))
        if self.micro_step % self.accumulation_steps == 0:
            accumulated = self.grad_reducer(self.accumulated) if self.reducer_flag else self.accumulated
            loss = ops.depend(loss, self.apply(accumulated))
            loss = ops.depend(loss, self.hyper_map(ops.partial(_zero), self.accumulated))
        return loss, cond, scaling_sens


_zero = ops.MultitypeFuncGraph("zero")
_all_finite = ops.MultitypeFuncGraph("all_finite")


@_all_finite.register("Tensor")
def _tensor_all_finite(tensor):
    return ops.isfinite(tensor).all()


@_zero.register("Tensor")
def _zero_tensor(tensor):
    return ops.assign(tensor, ops.zeros_like(tensor))
