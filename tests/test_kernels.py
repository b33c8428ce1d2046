"""ms_vit.models.kernels: each fused CPU kernel equals what it replaces, forward and backward; so does the whole
model."""
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from bounds import (
    U,
    assert_within,
    erf_error,
    exp_error,
    gamma,
    gelu_error,
    gradient_bound,
    vit_forward,
)
from conftest import ROOT
from scipy.special import erf

from ms_vit.models.kernels import gelu_erf_op


@pytest.fixture(scope="module")
def kernel():
    op = gelu_erf_op()
    assert op is not None, "g++ is needed to build the fused GELU kernel (the CI machine has it)"
    return op


class Apply(ms.nn.Cell):
    def __init__(self, op):
        super().__init__()
        self.op = op

    def construct(self, x):
        return self.op(x)


class Apply2(Apply):
    def construct(self, x, y):
        return self.op(x, y)


def test_forward_matches_erf(kernel, mode):
    x = np.concatenate([np.linspace(-12, 12, 4001), np.random.default_rng(0).standard_normal(300_000) * 3])
    x = x.astype(np.float32)
    exact = 0.5 * x.astype(np.float64) * (1 + erf(x.astype(np.float64) / np.sqrt(2)))
    got = Apply(kernel)(ms.Tensor(x)).asnumpy()
    # Abramowitz & Stegun's erf (1.5e-7) evaluated in float32 (bounds.erf_error, up to 3.9e-6 at 0), times 0.5 |x|:
    # the tanh form (up to 4.7e-4 off) or an exp_approx off by 1e-5 would fail
    assert_within(got, exact, gelu_error(x), "GELU kernel vs float64")


def test_gradient_matches_erf(kernel, mode):
    x = np.linspace(-8, 8, 200_001).astype(np.float32)
    got = ms.grad(Apply(kernel))(ms.Tensor(x)).asnumpy()
    x64 = x.astype(np.float64)
    pdf = np.exp(-0.5 * x64 * x64) / np.sqrt(2 * np.pi)
    exact = 0.5 * (1 + erf(x64 / np.sqrt(2))) + x64 * pdf
    # Phi(x): half the erf's error (and its argument's rounding); x phi(x): exp_approx's, the rounding of -x^2 / 2
    # (x^2 U relative) and 3 roundings; the sum and the product by dy = 1
    cdf_error = 0.5 * (erf_error(x64 / np.sqrt(2)) + 2 * U * np.abs(x64) * np.exp(-0.5 * x64 * x64))
    pdf_error = np.abs(x64) * pdf * (exp_error(0.5 * x64 * x64) + U * x64 * x64 + 3 * U)
    bound = cdf_error + pdf_error + 2 * U * np.abs(exact)
    assert_within(got, exact, bound, "GELU kernel's gradient vs float64")


MODEL_SCRIPT = """
import sys, numpy as np, mindspore as ms
sys.path.insert(0, %r)
from ms_vit import create_model
from ms_vit.training.loss import LabelSmoothingCrossEntropy
ms.set_context(mode=ms.GRAPH_MODE)
ms.set_seed(0)
net = create_model("vit_ti_16_224", image_size=32, patch_size=8, depth=2, num_classes=10,
                   fused_kernels=sys.argv[2] == "1")
net.dense.weight.set_data(ms.Tensor(np.random.default_rng(1).standard_normal((10, 192)), ms.float32))
block = net.transformer.layers[0]
print(net.patch_embedding.patchify.fused, block[0].cell[0].fused, block[0].cell[1].fused_core is not None,
      block[1].branch_adds, block[1].cell[1].gelu is None)
x = ms.Tensor(np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32))
y = ms.Tensor(np.array([1, 5, 7], np.int32))
net.set_train(False)
logits = net(x).asnumpy()
net.set_train(True)
loss_fn = LabelSmoothingCrossEntropy(0.1)


def loss(x, y):
    return loss_fn(net(x), y)


grads = ms.grad(loss, grad_position=None, weights=net.trainable_params())(x, y)
np.savez(sys.argv[1], x=x.asnumpy(), logits=logits,
         **{p.name: g.asnumpy() for p, g in zip(net.trainable_params(), grads)},
         **{"value:" + p.name: p.asnumpy() for p in net.get_parameters()})
""" % ROOT


def test_model_same_with_and_without_kernels(tmp_path):
    """MindSpore's operators (fused_kernels=False: exports, no compiler) give the same logits and the same gradient
    for every parameter."""
    outputs = {}
    script = tmp_path / "model_gradients.py"          # a file: graph mode compiles from source
    script.write_text(MODEL_SCRIPT)
    for flag in ("1", "0"):
        path = str(tmp_path / f"run{flag}.npz")
        run = subprocess.run([sys.executable, str(script), path, flag], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.strip().splitlines()[-1] == " ".join([str(flag == "1")] * 5)
        outputs[flag] = dict(np.load(path))
    fused, composite = outputs["1"], outputs["0"]
    names = [k for k in fused if not k.startswith("value:") and k not in ("x", "logits")]
    assert fused.keys() == composite.keys() and len(names) > 30
    assert all(np.array_equal(fused[k], composite[k]) for k in fused if k.startswith("value:"))   # the same weights
    from ms_vit import create_model
    config = create_model("vit_ti_16_224", image_size=32, patch_size=8, depth=2, num_classes=10,
                          fused_kernels=False).config
    params = {k[6:]: v.astype(np.float64) for k, v in fused.items() if k.startswith("value:")}
    # logits: two float32 evaluations, each within vit_forward's bound (~5e-5 of logits up to 3 here)
    assert_within(fused["logits"], composite["logits"], 2 * vit_forward(config, params, fused["x"])[1], "logits")
    for name in names:       # each within gradient_bound of the exact gradient: 2.1e-4 of the tensor's largest value
        scale = np.abs(composite[name]).max()
        assert scale > 0, name
        assert_within(fused[name], composite[name], 2 * gradient_bound(config, 3, composite[name]), name)


def layer_norm_bounds(x, g, b, dy, eps):
    """Worst-case bounds of one float32 LayerNorm over the last axis (D) of x (rows R) and of its gradients for the
    output gradient dy: (y, dx, dgamma, dbeta). The mean: gamma(D + 1) of mean |x|; the variance (one-pass kernels:
    E[x^2] - mean^2): gamma(D + 3) of var + mean^2; xhat = (x - mean) / sd: 2 roundings; y = xhat g + b: the
    product's and the sum's (one with FMA); dx = (dy g - mean(dy g) - xhat mean(dy g xhat)) / sd; dgamma, dbeta:
    sums over the R rows."""
    x, g, b, dy = (np.asarray(t, np.float64) for t in (x, g, b, dy))
    d, rows = x.shape[-1], x[..., 0].size
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    sd = np.sqrt(var + eps)
    xhat = (x - mean) / sd
    d_mean = gamma(d + 1) * np.abs(x).mean(-1, keepdims=True)
    d_sd = (gamma(d + 3) * (var + mean ** 2) + 2 * np.abs(mean) * d_mean) / (var + eps) / 2 + 3 * U   # relative
    d_xhat = d_mean / sd + np.abs(xhat) * (d_sd + 2 * U)
    d_y = np.abs(g) * d_xhat + U * np.abs(xhat * g) + U * np.abs(xhat * g + b)
    a = dy * g
    m1, m2 = a.mean(-1, keepdims=True), (a * xhat).mean(-1, keepdims=True)
    d_m1 = gamma(d + 2) * np.abs(a).mean(-1, keepdims=True)
    d_m2 = gamma(d + 3) * np.abs(a * xhat).mean(-1, keepdims=True) + (np.abs(a) * d_xhat).mean(-1, keepdims=True)
    dx = (a - m1 - xhat * m2) / sd
    d_dx = (d_m1 + np.abs(xhat) * d_m2 + np.abs(m2) * d_xhat + 4 * U * (np.abs(a) + np.abs(m1) + np.abs(xhat * m2))
            ) / sd + np.abs(dx) * (d_sd + U)
    flat = (-1, d)
    d_dgamma = (gamma(rows + 1) * np.abs(dy * xhat).reshape(flat).sum(0)
                + (np.abs(dy) * d_xhat).reshape(flat).sum(0))
    d_dbeta = gamma(rows) * np.abs(dy).reshape(flat).sum(0)
    return d_y, d_dx, d_dgamma, d_dbeta


def test_layer_norm_kernel_matches_mindspore(mode):
    from mindspore import nn

    from ms_vit.models.kernels import layer_norm_op
    from ms_vit.models.layers import LayerNorm
    op = layer_norm_op()
    assert op is not None
    rng = np.random.default_rng(0)
    fused, reference = LayerNorm(96, 1e-6, fused=True), nn.LayerNorm((96,), -1, -1, epsilon=1e-6)
    assert fused.fused
    for cell in (fused, reference):
        cell.gamma.set_data(ms.Tensor(rng.standard_normal(96).astype(np.float32)))
        cell.beta.set_data(ms.Tensor(rng.standard_normal(96).astype(np.float32)))
    reference.gamma.set_data(fused.gamma.value())
    reference.beta.set_data(fused.beta.value())
    x = ms.Tensor((rng.standard_normal((4, 50, 96)) * 3 + 1).astype(np.float32))
    weights = ms.Tensor(rng.standard_normal((4, 50, 96)).astype(np.float32))
    # two float32 evaluations, each within layer_norm_bounds (y: ~4e-5 where |y| reaches 8); a wrong epsilon is not
    # visible at var ~9 (1e-7 relative), a mean or variance off by one row element is (~1e-2)
    bounds = [2 * bound for bound in layer_norm_bounds(x.asnumpy(), fused.gamma.asnumpy(), fused.beta.asnumpy(),
                                                       weights.asnumpy(), 1e-6)]
    assert_within(fused(x).asnumpy(), reference(x).asnumpy(), bounds[0], "LayerNorm")

    def grads(cell):
        def loss(x):
            return (cell(x) * weights).sum()
        _, (dx, (dgamma, dbeta)) = ms.value_and_grad(loss, grad_position=0, weights=[cell.gamma, cell.beta])(x)
        return dx.asnumpy(), dgamma.asnumpy(), dbeta.asnumpy()

    for ours, theirs, bound, name in zip(grads(fused), grads(reference), bounds[1:], ("dx", "dgamma", "dbeta")):
        assert_within(ours, theirs, bound, name)


def apply_and_grad(cell, x, weights):
    """cell(x) and the gradient of sum(cell(x) * weights) with respect to x."""
    def weighted_sum(x):
        return (cell(x) * weights).sum()

    return cell(x).asnumpy(), ms.grad(weighted_sum)(x).asnumpy()


def test_softmax_kernel_matches_mindspore(mode):
    from ms_vit.models.kernels import softmax_op
    rng = np.random.default_rng(0)
    x = ms.Tensor((rng.standard_normal((2, 3, 17, 197)) * 4).astype(np.float32))
    weights = ms.Tensor(rng.standard_normal((2, 3, 17, 197)).astype(np.float32))
    ours = apply_and_grad(Apply(softmax_op()), x, weights)
    theirs = apply_and_grad(Apply(ms.ops.Softmax(axis=-1)), x, weights)
    # worst case of one float32 softmax over N = 197: x - max (U |x - max|), the exp (bounds.exp_error: MindSpore's
    # is the larger, up to 1.4e-5 relative at x - max = -40), the sum of N (gamma(N)) and the division; its gradient
    # y (dy - sum dy y): y's error, the sum of N products, 3 roundings. Twice: two implementations.
    x64, dy = x.asnumpy().astype(np.float64), weights.asnumpy().astype(np.float64)
    shifted = x64 - x64.max(-1, keepdims=True)
    e = np.exp(shifted)
    y = e / e.sum(-1, keepdims=True)
    sum_error = ((e * exp_error(shifted)).sum(-1, keepdims=True) / e.sum(-1, keepdims=True) + gamma(197))
    d_y = y * (U * np.abs(shifted) + exp_error(shifted) + sum_error + 2 * U)
    dot = (dy * y).sum(-1, keepdims=True)
    d_dot = gamma(197) * np.abs(dy * y).sum(-1, keepdims=True) + (np.abs(dy) * d_y).sum(-1, keepdims=True)
    d_dx = d_y * np.abs(dy - dot) + y * (d_dot + U * np.abs(dy - dot)) + U * y * np.abs(dy - dot)
    assert_within(ours[0], theirs[0], 2 * d_y, "softmax")
    assert_within(ours[1], theirs[1], 2 * d_dx, "softmax's gradient")


def test_linear_kernels_match_dense(mode):
    """kernels.Linear (oneDNN's sgemm; a residual added or the exact GELU applied in the same op; a convolution's
    4-D weight read as (O, I)) gives nn.Dense's output and gradients, on small products (one thread) and on larger
    ones (all the pool's threads: each a block of columns or of rows, see gemm.h's for_each_block)."""
    from mindspore import nn

    from ms_vit.models.kernels import linear
    rng = np.random.default_rng(0)
    # (out, in, rows, kind): below gemm.h's kMinParallelMacs (2^20 multiply-adds) one thread computes a product;
    # above, threads take blocks of columns (the wider side) or rows: y (rows, out) over out or rows, dx (rows, in),
    # dW (out, in), each split both ways below, and the columns' blocks not whole multiples of 16
    cases = [(48, 16, 30, None), (16, 48, 30, None), (16, 48, 1201, None), (40, 48, 301, "residual"),
             (40, 48, 301, "gelu"), (24, 3 * 4 * 4, 77, "conv"),
             (200, 64, 97, "gelu"), (40, 64, 501, "gelu"), (40, 64, 501, "residual"), (200, 64, 97, "residual"),
             (70, 300, 60, None), (200, 3 * 4 * 4, 240, "conv")]
    for out_features, in_features, rows, kind in cases:
        dense = nn.Dense(in_features, out_features)
        op = linear(gelu=kind == "gelu")
        x = ms.Tensor(rng.standard_normal((rows, in_features)).astype(np.float32))
        r = ms.Tensor(rng.standard_normal((rows, out_features)).astype(np.float32))
        weights = ms.Tensor(rng.standard_normal((rows, out_features)).astype(np.float32))
        weight = dense.weight.value()
        if kind == "conv":
            weight = ms.Tensor(weight.asnumpy().reshape(out_features, 3, 4, 4))

        def ours(x, w, b, r):
            return (op(x, w, b, r if kind == "residual" else None) * weights).sum()

        def theirs(x, w, b, r):
            y = ms.ops.dense(x, w.reshape(w.shape[0], -1), b)
            y = y + r if kind == "residual" else y
            return ((ms.ops.gelu(y, approximate="none") if kind == "gelu" else y) * weights).sum()

        args = (x, weight, dense.bias.value(), r)
        xs, w, b, rs, dy = (np.abs(t.asnumpy()).astype(np.float64) for t in (x, dense.weight.value(), *args[2:],
                                                                              weights))
        # y: each output a sum of I products, the bias (and the residual) in its own order: gamma(I + 2) of the sum
        # of |terms|, twice (two implementations); the GELU: its float32 error (bounds.gelu_error, either) plus
        # the slope (<= 1.13) times y's. dx = dy W (K = out), dW = dy^T x (K = rows), db = the rows of dy; through
        # the GELU, dy times its slope first (the slope's error: bounds.erf_error-sized, 1e-5 relative at most).
        d_y = 2 * gamma(in_features + 2) * (xs @ w.T + b + (rs if kind == "residual" else 0))
        pre = x.asnumpy().astype(np.float64) @ dense.weight.asnumpy().astype(np.float64).T + b
        if kind == "gelu":
            d_y = 1.13 * d_y + 2 * gelu_error(pre)
            dy = dy * 1.13 + dy * 1e-5
        bounds = (2 * gamma(out_features) * dy @ w + 1e-5 * (kind == "gelu") * dy @ w,
                  2 * gamma(rows + 1) * dy.T @ xs, 2 * gamma(rows) * dy.sum(0))
        got = op(*args[:3], r if kind == "residual" else None).asnumpy()
        want = ms.ops.dense(x, dense.weight.value(), dense.bias.value()).asnumpy()
        want = want + r.asnumpy() if kind == "residual" else want
        want = ms.ops.gelu(ms.Tensor(want), approximate="none").asnumpy() if kind == "gelu" else want
        assert_within(got, want, d_y, f"y ({kind})")
        for a, b, bound, name in zip(ms.grad(ours, grad_position=(0, 1, 2))(*args),
                                     ms.grad(theirs, grad_position=(0, 1, 2))(*args), bounds, ("dx", "dW", "db")):
            a = a.asnumpy().reshape(b.shape)
            assert_within(a, b.asnumpy(), bound.reshape(b.shape), f"{name} ({out_features}, {in_features}, {kind})")
        if kind == "residual":
            np.testing.assert_array_equal(ms.grad(ours, grad_position=3)(*args).asnumpy(), weights.asnumpy())


def attention_bounds(qkv, dout):
    """Worst-case float32 bounds of softmax(q k^T s) v per head (s = d^-0.5) and of its gradient dqkv, for one
    implementation, from float64 values: S = s q k^T (gamma(d + 2) of s |q| |k|^T), the softmax (the perturbation
    2 P max |dS| and its own roundings, as the softmax kernel's test), out = P v (gamma(N) |P| |v| + |dP| |v|);
    backward dv = P^T dout, dP = dout v^T, dS = P (dP - rowsum(dP P)), dq = s dS k, dk = s dS^T q, each product's
    gamma(K) of the |terms| plus the carried errors. Returns (out, d_out, dqkv, d_dqkv) in the kernel's layouts."""
    b, n, _, h, d = qkv.shape
    s = float(np.float32(d ** -0.5))
    q, k, v = (np.moveaxis(qkv[:, :, i], 2, 1) for i in range(3))             # (B, H, N, d)
    dy = np.moveaxis(dout, 2, 1)
    scores = s * q @ np.swapaxes(k, -1, -2)
    d_scores = gamma(d + 2) * s * np.abs(q) @ np.swapaxes(np.abs(k), -1, -2)
    shifted = scores - scores.max(-1, keepdims=True)
    e = np.exp(shifted)
    p = e / e.sum(-1, keepdims=True)
    own = p * (U * np.abs(shifted) + exp_error(shifted) + gamma(n) + 2 * U
               + (e * exp_error(shifted)).sum(-1, keepdims=True) / e.sum(-1, keepdims=True))
    d_p = own + 2 * p * d_scores.max(-1, keepdims=True)
    out = p @ v
    d_out = gamma(n) * p @ np.abs(v) + d_p @ np.abs(v)
    dv = np.swapaxes(p, -1, -2) @ dy
    d_dv = gamma(n) * np.swapaxes(p, -1, -2) @ np.abs(dy) + np.swapaxes(d_p, -1, -2) @ np.abs(dy)
    dp = dy @ np.swapaxes(v, -1, -2)
    d_dp = gamma(d) * np.abs(dy) @ np.swapaxes(np.abs(v), -1, -2)
    row = (dp * p).sum(-1, keepdims=True)
    d_row = gamma(n) * np.abs(dp * p).sum(-1, keepdims=True) + (d_dp * p + np.abs(dp) * d_p).sum(-1, keepdims=True)
    ds = p * (dp - row)
    d_ds = d_p * np.abs(dp - row) + p * (d_dp + d_row) + 3 * U * np.abs(ds)
    dq = s * ds @ k
    d_dq = s * (gamma(n + 1) * np.abs(ds) @ np.abs(k) + d_ds @ np.abs(k))
    dk = s * np.swapaxes(ds, -1, -2) @ q
    d_dk = s * (gamma(n + 1) * np.swapaxes(np.abs(ds), -1, -2) @ np.abs(q) + np.swapaxes(d_ds, -1, -2) @ np.abs(q))
    heads = lambda t: np.moveaxis(t, 1, 2)  # noqa: E731    (B, H, N, d) -> (B, N, H, d)
    return (heads(out), heads(d_out), np.stack([heads(dq), heads(dk), heads(dv)], 2),
            np.stack([heads(d_dq), heads(d_dk), heads(d_dv)], 2))


def test_attention_kernel_matches_float64(mode):
    """attention_op (one op forward, one backward, on oneDNN's sgemm per head and block of queries) against the
    float64 attention, within twice the float32 worst case; N = 197 spans 4 blocks of queries, with a short one."""
    from ms_vit.models.kernels import attention_op
    rng = np.random.default_rng(0)
    b, n, h, d = 2, 197, 3, 16
    qkv = (rng.standard_normal((b, n, 3, h, d)) * 2).astype(np.float32)
    dout = rng.standard_normal((b, n, h, d)).astype(np.float32)
    op = attention_op()

    class Core(ms.nn.Cell):
        def construct(self, x):
            return op(x)[0]

    got, dqkv = apply_and_grad(Core(), ms.Tensor(qkv), ms.Tensor(dout))
    out, d_out, dqkv64, d_dqkv = attention_bounds(qkv.astype(np.float64), dout.astype(np.float64))
    assert_within(got, out, 2 * d_out, "attention")
    assert_within(dqkv, dqkv64, 2 * d_dqkv, "attention's gradient")


RECOMPUTE_PEAK = """
import sys, numpy as np, mindspore as ms
sys.path.insert(0, %r)
from mindspore import nn
from ms_vit import create_model
from ms_vit.training.optim import AdamW
from ms_vit.training.train_step import TrainStep
ms.set_context(mode=ms.GRAPH_MODE)
net = create_model("vit_ti_16_224", depth=6)
if sys.argv[1] == "1":
    net.set_grad_checkpointing(True)
step = TrainStep(nn.WithLossCell(net, nn.CrossEntropyLoss()), AdamW(net.trainable_params(), learning_rate=1e-3), None)
step.set_train(True)
x = ms.Tensor(np.random.default_rng(0).random((32, 3, 224, 224), np.float32))
y = ms.Tensor(np.arange(32, dtype=np.int32))
step(x, y)[0].asnumpy()                                   # compiled: its peak is not the step's
with open("/proc/self/clear_refs", "w") as f:             # the peak resident size starts again from here
    f.write("5")
for _ in range(2):
    step(x, y)[0].asnumpy()
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmHWM"))
print(net.fused_kernels, peak)
""" % ROOT


def test_recompute_lowers_the_training_peak_on_the_kernels():
    """set_grad_checkpointing on the fused kernels: a training step of ViT-Ti/16 (depth 6, batch 32) peaks a quarter
    lower than without (the resident peak of the steps after the first, which compiles: Linux's VmHWM, reset through
    /proc/self/clear_refs). With each branch adding its residual in its last kernel, which kept the block's
    activations, the two were within 2 %.)"""
    peaks = {}
    for recompute in ("0", "1"):
        run = subprocess.run([sys.executable, "-c", RECOMPUTE_PEAK, recompute], capture_output=True, text=True,
                             timeout=900)
        assert run.returncode == 0, run.stderr[-2000:]
        fused, peak = run.stdout.split()[-2:]
        assert fused == "True", run.stdout                # on the kernels (a compiler and oneDNN are here)
        peaks[recompute] = int(peak)
    assert peaks["1"] < 0.8 * peaks["0"], peaks


def test_pool_serves_threads_that_call_together():
    """Kernels called from several threads at once (the pool runs one caller's tasks, the others' on their own
    threads) and in a forked child (a pool of its own) give the same results as alone."""
    script = """
import os, sys, threading, numpy as np, mindspore as ms
sys.path.insert(0, %r)
from ms_vit.models.kernels import linear
op = linear()
rng = np.random.default_rng(0)
x, w, b = (ms.Tensor(rng.standard_normal(s).astype(np.float32)) for s in ((700, 64), (96, 64), (96,)))
alone = op(x, w, b).asnumpy()
results = []
def call():
    for _ in range(20):
        results.append(op(x, w, b).asnumpy())
threads = [threading.Thread(target=call) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(len(results), all(np.array_equal(r, alone) for r in results))
# a forked child runs no MindSpore operator (its runtime's threads stay in the parent): it calls the kernel function
import ctypes
from ms_vit.models.kernels import compiled_library
library = ctypes.CDLL(compiled_library())
arrays = [np.ascontiguousarray(t.asnumpy()) for t in (x, w, b)] + [np.empty_like(alone)]
shapes = [(ctypes.c_int64 * a.ndim)(*a.shape) for a in arrays]
call = lambda: library.LinearForward(4, (ctypes.c_void_p * 4)(*[a.ctypes.data for a in arrays]),
                                     (ctypes.c_int * 4)(*[a.ndim for a in arrays]),
                                     (ctypes.POINTER(ctypes.c_int64) * 4)(*shapes),
                                     (ctypes.c_char_p * 4)(*[b"float32"] * 4), None, None)
assert call() == 0 and np.array_equal(arrays[3], alone)
arrays[3][:] = 0
pid = os.fork()
if pid == 0:
    os._exit(0 if call() == 0 and np.array_equal(arrays[3], alone) else 3)
print(os.waitpid(pid, 0)[1])
""" % ROOT
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["80", "True", "0"], run.stdout


def test_head_kernels_match_transposes(mode):
    from ms_vit.models.kernels import split_heads_op, swap_middle_axes_op
    b, n, h, d = 2, 11, 3, 8
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((b, n, 3, h, d)).astype(np.float32)
    q, k, v = (t.asnumpy() for t in split_heads_op()(ms.Tensor(qkv)))
    heads = qkv.transpose(2, 0, 3, 1, 4)                                     # (3, B, H, N, d)
    # the same float32 product (d^-0.5 rounded to float32, one multiplication): equal on any IEEE CPU
    np.testing.assert_array_equal(q, heads[0] * np.float32(d ** -0.5))
    np.testing.assert_array_equal(k, heads[1])
    np.testing.assert_array_equal(v, heads[2])
    weights = [rng.standard_normal((b, h, n, d)).astype(np.float32) for _ in range(3)]
    wq, wk, wv = (ms.Tensor(w) for w in weights)

    def loss(x):
        q, k, v = split_heads_op()(x)
        return (q * wq).sum() + (k * wk).sum() + (v * wv).sum()

    dqkv = ms.grad(loss)(ms.Tensor(qkv)).asnumpy()
    expected = np.stack([weights[0] * np.float32(d ** -0.5), weights[1], weights[2]]).transpose(1, 3, 0, 2, 4)
    np.testing.assert_array_equal(dqkv, expected)
    x = rng.standard_normal((b, h, n, d)).astype(np.float32)
    w = rng.standard_normal((b, n, h, d)).astype(np.float32)
    merged, dx = apply_and_grad(Apply(swap_middle_axes_op()), ms.Tensor(x), ms.Tensor(w))
    np.testing.assert_array_equal(merged, x.transpose(0, 2, 1, 3))
    np.testing.assert_array_equal(dx, w.transpose(0, 2, 1, 3))


def test_patchify_kernel_matches_reshape(mode):
    from ms_vit.models.kernels import patchify_op
    b, c, s, p = 2, 3, 24, 8
    g = s // p
    rng = np.random.default_rng(0)
    image = rng.standard_normal((b, c, s, s)).astype(np.float32)
    weights = rng.standard_normal((b, g * g, c * p * p)).astype(np.float32)
    patches, dimage = apply_and_grad(Apply(patchify_op(p)), ms.Tensor(image), ms.Tensor(weights))
    def to_patches(t):
        return t.reshape(b, c, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)

    np.testing.assert_array_equal(patches, to_patches(image))
    np.testing.assert_array_equal(to_patches(dimage), weights)


def test_unwritable_cache_falls_back_to_mindspore_operators(tmp_path):
    """A cache folder that cannot be created: one warning, the model still builds and runs (no kernels)."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    script = ("import sys; sys.path.insert(0, %r); import numpy as np, mindspore as ms;"
              "from ms_vit import create_model;"
              "net = create_model('vit_ti_16_224', image_size=32, patch_size=8, depth=1, num_classes=3);"
              "print(net.transformer.layers[0][0].cell[0].fused);"
              "print(net(ms.Tensor(np.zeros((1, 3, 32, 32), np.float32))).shape)") % ROOT
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=dict(os.environ, MS_VIT_CACHE=str(blocker / "cache")))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["False", "(1,", "3)"]
    assert "cannot write the fused CPU kernels" in run.stderr


def test_processes_starting_together_compile_the_kernels_once(tmp_path):
    """msrun's workers on a fresh machine: the first compiles, the others wait for it and load its library."""
    script = ("import logging, sys; sys.path.insert(0, %r); logging.basicConfig(level=logging.INFO);"
              "from ms_vit.models import kernels; print(kernels.compiled_library())") % ROOT
    env = dict(os.environ, MS_VIT_CACHE=str(tmp_path / "cache"))
    workers = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env) for _ in range(3)]
    results = [worker.communicate(timeout=300) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), results
    libraries = {out.strip() for out, _ in results}
    assert len(libraries) == 1 and os.path.isfile(libraries.pop())
    assert sum("compiling the fused CPU kernels" in err for _, err in results) == 1
    assert [f for f in os.listdir(tmp_path / "cache" / "kernels") if f.endswith(".so")] == \
        [os.path.basename(out.strip()) for out, _ in results[:1]]          # no leftover partial files


def test_one_switch_for_the_kernels(tmp_path):
    """create_model(fused_kernels=...): False builds on MindSpore's operators only, True insists (a clear error
    where the kernels cannot be built), None uses them when it can."""
    from ms_vit import create_model
    from ms_vit.models.layers import GELU, LayerNorm, Linear, MergeHeads, Patchify, Softmax, SplitHeads
    blocks = (GELU, LayerNorm, Linear, MergeHeads, Patchify, Softmax, SplitHeads)
    off = create_model("vit_ti_16_224", image_size=32, patch_size=8, depth=1, num_classes=3, fused_kernels=False)
    on = create_model("vit_ti_16_224", image_size=32, patch_size=8, depth=1, num_classes=3)
    for net, fused in ((off, False), (on, True)):
        cells = [c for _, c in net.cells_and_names() if isinstance(c, blocks)]
        assert len(cells) >= 7 and all(c.fused == fused for c in cells), fused
        assert net.fused_kernels == fused
    script = ("import sys; sys.path.insert(0, %r); from ms_vit import create_model\n"
              "try:\n    create_model('vit_ti_16_224', depth=1, fused_kernels=True)\n"
              "except ValueError as e:\n    print(e)") % ROOT
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=dict(os.environ, MS_VIT_FUSED_KERNELS="0"))
    assert "fused_kernels=True: the fused CPU kernels cannot be built here" in run.stdout, run.stderr[-2000:]


def test_loading_the_kernels_leaves_the_process_float_modes_alone():
    """The kernel library is built without -ffast-math's crtfastmath.o, whose constructor turns on flush-to-zero for
    the whole process: after the library is loaded and run, subnormal float32 numbers still compute (a fresh process,
    so that nothing else has loaded the library first)."""
    import subprocess
    import sys

    from conftest import ROOT
    code = ("import numpy as np, mindspore as ms; from ms_vit import create_model; from ms_vit.models import kernels; "
            "assert kernels.compiled_library(); "
            "net = create_model('vit_ti_16_224', image_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, "
            "mlp_dim=96, fused_kernels=True); net.set_train(False); "
            "net(ms.Tensor(np.zeros((1, 3, 32, 32), np.float32))).asnumpy(); "
            "tiny = np.array([1e-40], np.float32); print(float((tiny * np.float32(2))[0]))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(__import__("os").environ, PYTHONPATH=ROOT))
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.strip().splitlines()[-1]) > 0            # 2e-40, not flushed to 0
