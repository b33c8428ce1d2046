"""AdamW as timm trains ViT with it (torch.optim.AdamW): decoupled weight decay *and* bias correction.

MindSpore's ``nn.AdamWeightDecay`` has no bias correction (the BERT variant): its first steps move each
weight by up to ~3x the learning rate; its CPU kernel also runs at ~3.9 ns per weight (340 ms per ViT-B/16
step; torch's AdamW takes ~130 ms). This optimizer keeps ``nn.AdamWeightDecay``'s parameter groups and state
names (``adam_m.*``, ``adam_v.*``) and updates each weight with two fused steps, as torch does:

    w *= 1 - lr * wd                                       (decoupled weight decay)
    ops.Adam(w, m, v, b1^t, b2^t, lr, b1, b2, eps_t, g)    (~0.5 ns per weight on CPU)

``ops.Adam`` applies ``lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)`` and ``w -= lr_t * m / (sqrt(v) + eps_t)``; with
``eps_t = eps * sqrt(1 - b2^t)`` that equals torch's ``w -= lr * m_hat / (sqrt(v_hat) + eps)``.
"""
import mindspore as ms
from mindspore import Parameter, Tensor, jit, nn, ops

_adamw_update = ops.MultitypeFuncGraph("adamw_update")


@_adamw_update.register("Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                        "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Bool")
def _update_scaled(adam, beta1_power, beta2_power, base_lr, beta1, beta2, eps, weight_decay, lr_scale, param, moment1,
                   moment2, gradient, decay_flag):
    """One parameter's AdamW step at ``lr_scale`` x the learning rate (layer-wise decay)."""
    return _update(adam, beta1_power, beta2_power, base_lr * lr_scale, beta1, beta2, eps, weight_decay, param,
                   moment1, moment2, gradient, decay_flag)


@_adamw_update.register("Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                        "Tensor", "Tensor", "Tensor", "Tensor", "Bool")
def _update(adam, beta1_power, beta2_power, lr, beta1, beta2, eps, weight_decay, param, moment1, moment2,
            gradient, decay_flag):
    """One parameter's AdamW step: decay first (as torch), then the fused Adam update."""
    if decay_flag:
        ops.assign(param, param * (1.0 - lr * weight_decay).astype(param.dtype))
    return ops.depend(True, adam(param, moment1, moment2, beta1_power, beta2_power, lr, beta1, beta2, eps,
                                 gradient.astype(param.dtype)))


class AdamW(nn.AdamWeightDecay):
    """AdamW with bias correction (torch/timm semantics).

    Args:
        params: parameters, or groups ``[{"params": [...], "weight_decay": wd}, ...]`` (no per-group lr).
        learning_rate: float, or per-step list/Tensor (``ms_vit.training.lr.cosine_lr``).
        beta1, beta2, eps: as torch (defaults 0.9, 0.999, 1e-8).
        weight_decay: decoupled weight decay (per group if groups give one).
        lr_scales: a factor on the learning rate per parameter name (layer-wise decay: ``layer_decay_scales``);
            1 for names not in it.

    MindSpore's parallel optimizer is refused (``Optimizer`` raises at construction when it is enabled): in
    data-parallel mode it keeps the full moments on every rank, each up to date only for the parameters that rank
    updates (docs/distributed.md).
    """
    _support_parallel_optimizer = False

    def __init__(self, params, learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                 lr_scales=None):
        super().__init__(params, learning_rate, beta1, beta2, eps, weight_decay)
        if self.is_group_lr:
            raise ValueError("AdamW here takes one learning-rate schedule for all groups")
        # per-parameter factors only when given: without them the update graph is the plain one (the factors cost
        # ViT-B/16 training ~330 MB of peak memory)
        self.lr_scales = (tuple(Tensor(lr_scales.get(p.name, 1.0), ms.float32) for p in self._parameters)
                          if lr_scales else None)
        self.beta1_power = Parameter(Tensor([1.0], ms.float32), name="beta1_power")
        self.beta2_power = Parameter(Tensor([1.0], ms.float32), name="beta2_power")
        self.adam = ops.Adam()

    @jit(backend="ms_backend")
    def construct(self, gradients):
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        beta1_power = self.beta1_power * self.beta1
        beta2_power = self.beta2_power * self.beta2
        ops.assign(self.beta1_power, beta1_power)
        ops.assign(self.beta2_power, beta2_power)
        beta1_power, beta2_power = beta1_power.reshape(()), beta2_power.reshape(())
        eps_t = self.eps * ops.sqrt(1.0 - beta2_power)
        weight_decay = self.get_weight_decay()
        update = ops.partial(_adamw_update, self.adam, beta1_power, beta2_power, lr, self.beta1, self.beta2, eps_t)
        decays = weight_decay if self.is_group else (weight_decay,) * len(self._parameters)
        if self.lr_scales is None:
            return self.hyper_map(update, decays, self._parameters, self.moments1, self.moments2, gradients,
                                  self.decay_flags)
        return self.hyper_map(update, decays, self.lr_scales, self._parameters, self.moments1, self.moments2,
                              gradients, self.decay_flags)


def layer_id(name: str, depth: int) -> int:
    """timm's ViT layer index for layer-wise decay: embeddings 0, block i -> i + 1, final norm and head depth + 1."""
    if name.startswith(("cls", "pos_embedding", "patch_embedding.")):
        return 0
    if name.startswith("transformer.layers."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def layer_decay_scales(names, depth: int, decay: float) -> dict:
    """Learning-rate factor per parameter: ``decay ** (depth + 1 - layer_id)`` (timm's ``param_groups_layer_decay``,
    BEiT's fine-tuning rule): 1 for the head, ``decay ** (depth + 1)`` for the embeddings."""
    return {name: decay ** (depth + 1 - layer_id(name, depth)) for name in names}
