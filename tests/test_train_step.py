"""ms_vit.training.train_step and the optimisation options, against their definitions, in graph mode."""
import mindspore as ms
import numpy as np
import pytest
from bounds import U, assert_within, exp_error, gamma, gradient_relative_bound
from mindspore import nn

from ms_vit import create_model
from ms_vit.training.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from ms_vit.training.optim import AdamW, layer_decay_scales
from ms_vit.training.train_step import ModelEMA, TrainStep

TINY = dict(num_classes=5, image_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_dim=96)


def tiny(seed=0):
    ms.set_seed(seed)
    net = create_model("vit_ti_16_224", weight_init="timm", **TINY)     # a non-zero head: every gradient non-zero
    return net


def batch(n=8, seed=1):
    rng = np.random.default_rng(seed)
    return (ms.Tensor(rng.standard_normal((n, 3, 32, 32)).astype(np.float32)),
            ms.Tensor(rng.integers(0, 5, n).astype(np.int32)))


def weights(net):
    return {p.name: p.asnumpy().copy() for p in net.trainable_params()}


def step(net, lr=0.1, **kwargs):
    optimizer = nn.SGD(net.trainable_params(), learning_rate=lr)
    return TrainStep(nn.WithLossCell(net, LabelSmoothingCrossEntropy(0.0)), optimizer, **kwargs)


def test_accumulated_steps_equal_one_large_batch():
    """2 steps of batch 4 with accumulation 2 (and clipping, which then acts on the mean gradient) == 1 step of
    batch 8, twice over."""
    x, y = batch(8)
    a, b = tiny(), tiny()
    start = weights(a)
    accumulate = step(a, clip_grad_norm=0.5, accumulation_steps=2)
    large = step(b, clip_grad_norm=0.5)
    for _ in range(2):
        accumulate(x[:4], y[:4])
        accumulate(x[4:], y[4:])
        large(x, y)
    wa, wb = weights(a), weights(b)
    assert max(np.abs(wa[k] - start[k]).max() for k in wa) > 1e-3
    # the same math in another order (two half batches, or one): each step's update lr c g is off by the gradient's
    # float32 bound and the clipping factor c's (its norm: as much again), in both runs, for 2 steps; each weight
    # rounded once per step. Forgetting to average (2x), clipping each half batch, dropping one: O(update)
    relative = 2 * 2 * 2 * gradient_relative_bound(a.config, 8)
    for k in wa:
        assert_within(wa[k], wb[k], relative * np.abs(wb[k] - start[k]).max() + 4 * U * np.abs(wb[k]), k)


def test_first_accumulation_step_does_not_update():
    x, y = batch(8)
    net = tiny()
    start = weights(net)
    accumulate = step(net, accumulation_steps=2)
    accumulate(x[:4], y[:4])
    assert all(np.array_equal(v, start[k]) for k, v in weights(net).items())
    accumulate(x[4:], y[4:])
    assert any(not np.array_equal(v, start[k]) for k, v in weights(net).items())


def test_clipping_by_global_norm():
    x, y = batch(8)
    net = tiny()
    start = weights(net)
    loss_net = nn.WithLossCell(net, LabelSmoothingCrossEntropy(0.0))
    grads = ms.grad(loss_net, grad_position=None, weights=net.trainable_params())(x, y)
    grads = {p.name: g.asnumpy() for p, g in zip(net.trainable_params(), grads)}
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))
    max_norm = norm / 4                                          # clipping active: the update shrinks 4 times
    step(net, lr=1.0, clip_grad_norm=max_norm)(x, y)
    # the step's gradient and norm (another graph: each within the gradient's float32 bound), the update's product
    # and the weight's rounding: a norm off by 1 % or an unclipped step (4x) fail
    relative = 2 * 2 * gradient_relative_bound(net.config, 8)
    for name, value in weights(net).items():
        update = grads[name] * (max_norm / norm)
        assert_within(start[name] - value, update, relative * np.abs(update).max() + U * (np.abs(value)
                                                                                      + 2 * np.abs(update)), name)


def test_ema_update():
    x, y = batch(8)
    net = tiny()
    ema = ModelEMA(net.trainable_params(), decay=0.9)
    assert all(a.name == "ema." + w.name for a, w in zip(ema.averages, ema.weights))
    expected = {k: v.astype(np.float64) for k, v in weights(net).items()}
    bound = {k: 0.0 for k in expected}
    train = step(net, ema=ema)
    for _ in range(3):
        train(x, y)
        for k, w in weights(net).items():
            # float64 from the float32 weights; ours a v + w (1 - a) in float32: a = 0.9 rounded (0.4 U), 1 - a
            # = 0.1 (1 + 4 U), 3 roundings
            new = 0.9 * expected[k] + 0.1 * w
            bound[k] = 0.9 * bound[k] + U * (2 * 0.9 * np.abs(expected[k]) + 6 * 0.1 * np.abs(w) + np.abs(new))
            expected[k] = new
    for average in ema.averages:
        assert_within(average.asnumpy(), expected[average.name[4:]], bound[average.name[4:]], average.name)


def test_layer_decay_groups_and_scaled_updates():
    net = tiny()
    scales = layer_decay_scales([p.name for p in net.trainable_params()], depth=2, decay=0.5)
    assert scales["cls"] == scales["patch_embedding.conv.weight"] == 0.125            # decay ** (depth + 1)
    assert scales["transformer.layers.0.0.cell.1.qkv.weight"] == 0.25
    assert scales["transformer.layers.1.1.cell.1.dense2.bias"] == 0.5
    assert scales["norm.gamma"] == scales["dense.weight"] == 1.0
    x, y = batch(8)
    deltas = {}
    for name, lr_scales in (("plain", None), ("decayed", scales)):
        net = tiny()
        start = weights(net)
        optimizer = AdamW(net.trainable_params(), learning_rate=1e-3, lr_scales=lr_scales)
        TrainStep(nn.WithLossCell(net, LabelSmoothingCrossEntropy(0.0)), optimizer)(x, y)
        deltas[name] = {k: v - start[k] for k, v in weights(net).items()}     # start: the same in both runs
    # Adam's first step: lr * scale * g / (|g| + eps), the same gradients in both runs: the weights after it are
    # rounded once (U |w|; the differences with the start are exact), the update's products 3 U
    for k, scale in scales.items():
        decayed, plain = deltas["decayed"][k], deltas["plain"][k]
        bound = U * (np.abs(start[k] + decayed) + scale * np.abs(start[k] + plain)) + 3 * U * np.abs(decayed)
        assert_within(decayed, plain * scale, bound, k)


def test_soft_target_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 6)).astype(np.float32)
    targets = rng.dirichlet(np.ones(6), 4).astype(np.float32)
    shifted = logits.astype(np.float64) - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    got = SoftTargetCrossEntropy()(ms.Tensor(logits), ms.Tensor(targets)).asnumpy()
    expected = float((-targets * log_probs).sum(1).mean())
    # float32: the log-softmax (x - max, the exp's error summed over 6, the log's rounding: ~exp_error + 10 U of
    # each term), the 6-term dot product with the targets and the mean over 4 (gamma(6), gamma(4) of the loss)
    terms = np.abs(targets * log_probs)
    bound = ((targets * (exp_error(shifted.min()) + 10 * U * (1 + np.abs(log_probs)))).sum(1).mean()
             + (gamma(6) + gamma(4)) * terms.sum(1).mean())
    assert_within(got, expected, bound, "soft-target cross-entropy")


@pytest.mark.parametrize("mode", ["jax", "timm"])
def test_weight_init(mode):
    net = create_model("vit_b_16_224", weight_init=mode, fused_kernels=False)
    qkv = net.transformer.layers[0][0].cell[1].qkv.weight.asnumpy()
    head = net.dense.weight.asnumpy()
    # sampling tolerances: the largest of 1.8 M uniform draws is within 1e-6 of the bound; the std of n draws of
    # std 0.02 has a standard deviation of 0.02 / sqrt(2 n): qkv and head (1.8 M and 0.77 M draws) ~1.6e-5, the
    # class token's 768 values 5e-4; each bound is >= 10 of them
    if mode == "jax":
        bound = np.sqrt(6 / (768 + 3 * 768))                   # Xavier uniform
        assert abs(qkv.max() - bound) < 1e-3 and np.all(head == 0)
        assert abs(net.cls.asnumpy().std() - 0.02) < 0.005
    else:
        assert abs(qkv.std() - 0.02) < 5e-4 and abs(head.std() - 0.02) < 5e-4
        assert net.cls.asnumpy().std() < 1e-5                                   # N(0, 1e-6)
        conv = net.patch_embedding.conv.weight.asnumpy()
        assert abs(np.abs(conv).max() - 1 / np.sqrt(768)) < 1e-3       # U(+-1/sqrt(fan_in)), as torch's Conv2d
    assert np.all(net.transformer.layers[0][0].cell[1].qkv.bias.asnumpy() == 0)
