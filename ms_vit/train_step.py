"""One training step: forward, backward, loss scaling, gradient reduction over the data-parallel ranks, gradient
accumulation, clipping by global norm, the optimizer, and the EMA of the weights.

``TrainStep`` is ``nn.TrainOneStepWithLossScaleCell`` (MindSpore's own loss scaling and overflow check, which
``mindspore.train.Model`` builds for AMP) with three additions that DeiT's recipe needs:

* ``accumulation_steps`` = k: k calls of batch B make one optimizer step with the mean of their gradients, the
  update of one batch of k x B (the learning-rate schedule counts optimizer steps);
* ``clip_grad_norm``: the gradient (after accumulation) is scaled by ``min(1, max_norm / ||g||_2)``, ``||g||`` over
  all parameters together (``ops.clip_by_global_norm``, as ``torch.nn.utils.clip_grad_norm_``);
* ``ema``: after each optimizer step ``ema = decay * ema + (1 - decay) * weights`` (timm's ``ModelEmaV2``).

Outputs: ``(loss, overflow, loss_scale)`` as MindSpore's cell, so ``Model`` and its callbacks work unchanged
(``overflow`` is False without loss scaling).
"""
from typing import Optional

import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor
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


class TrainStep(nn.TrainOneStepWithLossScaleCell):
    """One training step (see the module docstring).

    Args:
        network: the network with its loss, ``(images, labels) -> loss``.
        optimizer: updates ``network``'s trainable parameters.
        scale_sense: a ``nn.DynamicLossScaleUpdateCell`` (AMP O2) or a fixed scale; default: none (float32: no
            scaling, no overflow check, the graph of ``nn.TrainOneStepCell``).
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

    def construct(self, *inputs):
        loss = self.network(*inputs)
        scaling_sens = self.scale_sense
        if self.loss_scaling:                     # AMP: scaled gradients, skipped steps on overflow
            status = Tensor([0] * 8, ms.int32)
            scaling_sens_filled = ops.ones_like(loss) * ops.cast(scaling_sens, ops.dtype(loss))
            grads = self.grad(self.network, self.weights)(*inputs, scaling_sens_filled)
            grads = self.hyper_map(ops.partial(_grad_scale, scaling_sens), grads)
            grads = self.grad_reducer(grads)
            cond = self.get_overflow_status(status, grads)
            overflow = self.process_loss_scale(cond)
        else:                                     # float32: the graph of MindSpore's TrainOneStepCell
            grads = self.grad(self.network, self.weights)(*inputs, ops.ones_like(loss))
            grads = self.grad_reducer(grads)
            cond = overflow = False
        if self.accumulation_steps == 1:
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
            loss = ops.depend(loss, self.apply(self.accumulated))
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
