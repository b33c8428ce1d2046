"""ms_vit.training.optim.AdamW: torch.optim.AdamW's algorithm (bias correction, decoupled decay), step by step."""
import numpy as np
from bounds import U, assert_within
from mindspore import Parameter, Tensor, nn

from ms_vit.training.optim import AdamW


def torch_adamw(params, grads, state, lr, wd, beta1=0.9, beta2=0.999, eps=1e-8):
    """torch.optim.AdamW.step (single-tensor path) in float64 numpy; ``state["steps"][name]``: each step's update's
    size, lr m_hat / (sqrt(v_hat) + eps) with m's average of |g| (what m's roundings are relative to)."""
    state["t"] += 1
    t = state["t"]
    for name, grad in grads.items():
        m, v, m_abs = state.setdefault(name, (np.zeros_like(grad), np.zeros_like(grad), np.zeros_like(grad)))
        params[name] = params[name] * (1 - lr * wd[name])
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        m_abs = beta1 * m_abs + (1 - beta1) * np.abs(grad)
        state[name] = (m, v, m_abs)
        m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
        params[name] = params[name] - lr * m_hat / (np.sqrt(v_hat) + eps)
        state.setdefault("steps", {}).setdefault(name, []).append(
            lr * m_abs / (1 - beta1 ** t) / (np.sqrt(v_hat) + eps))


class Weights(nn.Cell):
    def __init__(self, values):
        super().__init__()
        self.weight = Parameter(Tensor(values["weight"]), name="weight")
        self.bias = Parameter(Tensor(values["bias"]), name="bias")


def test_adamw_matches_torch_algorithm():
    rng = np.random.default_rng(0)
    start = {"weight": rng.standard_normal((64, 32)).astype(np.float32),
             "bias": rng.standard_normal(64).astype(np.float32)}
    cell = Weights(start)
    groups = [{"params": [cell.weight], "weight_decay": 0.05}, {"params": [cell.bias], "weight_decay": 0.0}]
    lrs = [1e-2, 5e-3, 2e-3, 1e-3]
    optimizer = AdamW(groups, learning_rate=lrs)
    reference = {name: value.astype(np.float64) for name, value in start.items()}
    state = {"t": 0}
    bound = {"weight": 0.0, "bias": 0.0}
    for step, lr in enumerate(lrs):
        grads = {"weight": rng.standard_normal((64, 32)).astype(np.float32) * 10 ** -step,
                 "bias": rng.standard_normal(64).astype(np.float32)}
        optimizer((Tensor(grads["weight"]), Tensor(grads["bias"])))
        torch_adamw(reference, grads, state, lr, {"weight": 0.05, "bias": 0.0})
        for name in ("weight", "bias"):
            # each step, worst case: the weight rounded 3 times (the decay factor, the product, the update), the
            # update off by 12 roundings (relative to m's terms) and by beta2 = 0.999 in float32 (1.3e-5 relative in
            # 1 - beta2: up to 6.4e-6 per step in sqrt(v_hat) after bias correction)
            update = state["steps"][name][-1]
            bound[name] = bound[name] + 3 * U * np.abs(reference[name]) + update * (12 * U + (step + 1) * 6.5e-6)
            assert_within(getattr(cell, name).asnumpy(), reference[name], bound[name], f"step {step} {name}")
    moved = np.abs(cell.weight.asnumpy() - start["weight"]).max()
    # bias-corrected: each step moves a weight by at most ~lr (sum 0.018), not ~3x (nn.AdamWeightDecay: up to 0.05)
    assert 0.015 < moved < 0.02 + 1e-3


def test_adamw_single_group_decays_every_weight():
    cell = Weights({"weight": np.ones((4, 3), np.float32), "bias": np.ones(4, np.float32)})
    optimizer = AdamW(cell.trainable_params(), learning_rate=0.1, weight_decay=0.5)
    optimizer((Tensor(np.zeros((4, 3), np.float32)), Tensor(np.zeros(4, np.float32))))
    # zero gradient: only the decay moves the weights, w * (1 - lr * wd): 1 - 0.05 and the product, each rounded in
    # float32 (3 U relative with lr * wd's rounding; rtol 1e-6 is 17 U); Adam's own step is 0
    np.testing.assert_allclose(cell.weight.asnumpy(), 0.95, rtol=1e-6)
    np.testing.assert_allclose(cell.bias.asnumpy(), 0.95, rtol=1e-6)
