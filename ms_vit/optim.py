"""AdamW as timm trains ViT with it (torch.optim.AdamW): decoupled weight decay *and* bias correction.

MindSpore's ``nn.AdamWeightDecay`` has no bias correction (the BERT variant): its first steps move each
weight by up to ~3x the learning rate. This optimizer keeps its fused kernel (``ops.AdamWeightDecay``, one
kernel per parameter on Ascend, GPU and CPU) and folds the bias correction into the kernel's scalars:

    lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t),  eps_t = eps * sqrt(1 - b2^t),  decay_t = wd * lr / lr_t

so that ``w -= lr_t * (m / (sqrt(v) + eps_t) + decay_t * w)`` equals torch's
``w -= lr * wd * w;  w -= lr * m_hat / (sqrt(v_hat) + eps)``.
"""
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor, jit
from mindspore.nn.optim.adam import _fused_adam_weight_decay


class AdamW(nn.AdamWeightDecay):
    """AdamW with bias correction (torch/timm semantics), on MindSpore's fused AdamWeightDecay kernel.

    Args:
        params: parameters, or groups ``[{"params": [...], "weight_decay": wd}, ...]`` (no per-group lr).
        learning_rate: float, or per-step list/Tensor (``ms_vit.lr.cosine_lr``).
        beta1, beta2, eps: as torch (defaults 0.9, 0.999, 1e-8).
        weight_decay: decoupled weight decay (per group if groups give one).
    """

    def __init__(self, params, learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        super().__init__(params, learning_rate, beta1, beta2, eps, weight_decay)
        if self.is_group_lr:
            raise ValueError("AdamW here takes one learning-rate schedule for all groups")
        self.beta1_power = Parameter(Tensor([1.0], ms.float32), name="beta1_power")
        self.beta2_power = Parameter(Tensor([1.0], ms.float32), name="beta2_power")

    @jit(backend="ms_backend")
    def construct(self, gradients):
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        beta1_power = self.beta1_power * self.beta1
        beta2_power = self.beta2_power * self.beta2
        ops.assign(self.beta1_power, beta1_power)
        ops.assign(self.beta2_power, beta2_power)
        correction1 = 1.0 - beta1_power
        root2 = ops.sqrt(1.0 - beta2_power)
        lr_t = lr * root2 / correction1
        eps_t = self.eps * root2
        decay_scale = correction1 / root2
        weight_decay = self.get_weight_decay()
        if self.is_group:
            weight_decay = self.hyper_map(ops.partial(ops.mul, decay_scale), weight_decay)
            return self.hyper_map(
                ops.partial(_fused_adam_weight_decay, self.fused_opt, self.beta1, self.beta2, eps_t, lr_t),
                weight_decay, self._parameters, self.moments1, self.moments2, gradients, self.decay_flags,
                self.optim_filter)
        return self.hyper_map(
            ops.partial(_fused_adam_weight_decay, self.fused_opt, self.beta1, self.beta2, eps_t, lr_t,
                        weight_decay * decay_scale),
            self._parameters, self.moments1, self.moments2, gradients, self.decay_flags, self.optim_filter)
