"""ms_vit.kernels: each fused CPU kernel equals what it replaces, forward and backward; so does the whole model."""
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from conftest import ROOT
from scipy.special import erf

from ms_vit.kernels import gelu_erf_op


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
    assert np.abs(got - exact).max() < 1e-6


def test_gradient_matches_erf(kernel, mode):
    x = np.linspace(-8, 8, 200_001).astype(np.float32)
    got = ms.grad(Apply(kernel))(ms.Tensor(x)).asnumpy()
    exact = 0.5 * (1 + erf(x / np.sqrt(2))) + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)
    assert np.abs(got - exact).max() < 1e-6


MODEL_SCRIPT = """
import sys, numpy as np, mindspore as ms
sys.path.insert(0, %r)
from ms_vit import create_model
from ms_vit.loss import LabelSmoothingCrossEntropy
ms.set_context(mode=ms.GRAPH_MODE)
ms.set_seed(0)
net = create_model("vit_ti_16_224", image_size=32, patch_size=8, depth=2, num_classes=10,
                   fused_kernels=sys.argv[2] == "1")
net.dense.weight.set_data(ms.Tensor(np.random.default_rng(1).standard_normal((10, 192)), ms.float32))
block = net.transformer.layers[0]
print(net.patch_embedding.patchify.fused, block[0].cell[0].fused, block[0].cell[1].softmax.fused,
      block[0].cell[1].qkv.fused, block[1].cell[1].gelu.fused)
x = ms.Tensor(np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32))
y = ms.Tensor(np.array([1, 5, 7], np.int32))
net.set_train(False)
logits = net(x).asnumpy()
net.set_train(True)
loss_fn = LabelSmoothingCrossEntropy(0.1)


def loss(x, y):
    return loss_fn(net(x), y)


grads = ms.grad(loss, grad_position=None, weights=net.trainable_params())(x, y)
np.savez(sys.argv[1], logits=logits, **{p.name: g.asnumpy() for p, g in zip(net.trainable_params(), grads)})
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
    assert fused.keys() == composite.keys() and len(fused) > 30
    for name in fused:                                   # float32 rounding only
        scale = np.abs(composite[name]).max()
        assert scale > 0, name
        assert np.abs(fused[name] - composite[name]).max() < 1e-5 * scale, name


def test_layer_norm_kernel_matches_mindspore(mode):
    from mindspore import nn

    from ms_vit.kernels import layer_norm_op
    from ms_vit.layers import LayerNorm
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
    np.testing.assert_allclose(fused(x).asnumpy(), reference(x).asnumpy(), atol=2e-5)

    def grads(cell):
        def loss(x):
            return (cell(x) * weights).sum()
        _, (dx, (dgamma, dbeta)) = ms.value_and_grad(loss, grad_position=0, weights=[cell.gamma, cell.beta])(x)
        return dx.asnumpy(), dgamma.asnumpy(), dbeta.asnumpy()

    for ours, theirs in zip(grads(fused), grads(reference)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def apply_and_grad(cell, x, weights):
    """cell(x) and the gradient of sum(cell(x) * weights) with respect to x."""
    def weighted_sum(x):
        return (cell(x) * weights).sum()

    return cell(x).asnumpy(), ms.grad(weighted_sum)(x).asnumpy()


def test_softmax_kernel_matches_mindspore(mode):
    from ms_vit.kernels import softmax_op
    rng = np.random.default_rng(0)
    x = ms.Tensor((rng.standard_normal((2, 3, 17, 197)) * 4).astype(np.float32))
    weights = ms.Tensor(rng.standard_normal((2, 3, 17, 197)).astype(np.float32))
    ours = apply_and_grad(Apply(softmax_op()), x, weights)
    theirs = apply_and_grad(Apply(ms.ops.Softmax(axis=-1)), x, weights)
    np.testing.assert_allclose(ours[0], theirs[0], atol=1e-7, rtol=1e-5)
    np.testing.assert_allclose(ours[1], theirs[1], atol=1e-7, rtol=1e-4)


def test_dense_kernels(mode):
    from ms_vit.kernels import add_bias_op, sum_rows_op, transpose_op
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 37, 96)).astype(np.float32)
    bias = rng.standard_normal(96).astype(np.float32)
    np.testing.assert_array_equal(Apply2(add_bias_op())(ms.Tensor(x), ms.Tensor(bias)).asnumpy(), x + bias)
    np.testing.assert_allclose(Apply(sum_rows_op())(ms.Tensor(x)).asnumpy(), x.reshape(-1, 96).sum(0),
                               rtol=1e-5, atol=1e-5)
    matrix = rng.standard_normal((70, 45)).astype(np.float32)            # not a multiple of the 32 x 32 tiles
    np.testing.assert_array_equal(Apply(transpose_op())(ms.Tensor(matrix)).asnumpy(), matrix.T)


def test_linear_gradients_match_dense(mode):
    """kernels.Linear (both weight-gradient orders) gives nn.Dense's output and gradients."""
    from mindspore import nn

    from ms_vit.kernels import linear
    rng = np.random.default_rng(0)
    for out_features, in_features in ((48, 16), (16, 48)):           # dy^T x, and (x^T dy)^T
        dense = nn.Dense(in_features, out_features)
        op = linear(out_features, in_features)
        assert op.weight_grad_transposed == (out_features < in_features)
        x = ms.Tensor(rng.standard_normal((30, in_features)).astype(np.float32))
        weights = ms.Tensor(rng.standard_normal((30, out_features)).astype(np.float32))

        def ours(x, w, b):
            return (op(x, w, b) * weights).sum()

        def theirs(x, w, b):
            return (ms.ops.dense(x, w, b) * weights).sum()

        args = (x, dense.weight.value(), dense.bias.value())
        np.testing.assert_allclose(op(*args).asnumpy(), dense(x).asnumpy(), rtol=1e-5, atol=1e-5)
        for a, b in zip(ms.grad(ours, grad_position=(0, 1, 2))(*args), ms.grad(theirs, grad_position=(0, 1, 2))(*args)):
            np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-5, atol=1e-5)


def test_head_kernels_match_transposes(mode):
    from ms_vit.kernels import split_heads_op, swap_middle_axes_op
    b, n, h, d = 2, 11, 3, 8
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((b, n, 3, h, d)).astype(np.float32)
    q, k, v = (t.asnumpy() for t in split_heads_op()(ms.Tensor(qkv)))
    heads = qkv.transpose(2, 0, 3, 1, 4)                                     # (3, B, H, N, d)
    np.testing.assert_allclose(q, heads[0] * np.float32(d ** -0.5), rtol=1e-7)
    np.testing.assert_array_equal(k, heads[1])
    np.testing.assert_array_equal(v, heads[2])
    weights = [rng.standard_normal((b, h, n, d)).astype(np.float32) for _ in range(3)]
    wq, wk, wv = (ms.Tensor(w) for w in weights)

    def loss(x):
        q, k, v = split_heads_op()(x)
        return (q * wq).sum() + (k * wk).sum() + (v * wv).sum()

    dqkv = ms.grad(loss)(ms.Tensor(qkv)).asnumpy()
    expected = np.stack([weights[0] * np.float32(d ** -0.5), weights[1], weights[2]]).transpose(1, 3, 0, 2, 4)
    np.testing.assert_allclose(dqkv, expected, rtol=1e-7)
    x = rng.standard_normal((b, h, n, d)).astype(np.float32)
    w = rng.standard_normal((b, n, h, d)).astype(np.float32)
    merged, dx = apply_and_grad(Apply(swap_middle_axes_op()), ms.Tensor(x), ms.Tensor(w))
    np.testing.assert_array_equal(merged, x.transpose(0, 2, 1, 3))
    np.testing.assert_array_equal(dx, w.transpose(0, 2, 1, 3))


def test_patchify_kernel_matches_reshape(mode):
    from ms_vit.kernels import patchify_op
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
              "from ms_vit import kernels; print(kernels.compiled_library())") % ROOT
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
    from ms_vit.layers import GELU, LayerNorm, Linear, MergeHeads, Patchify, Softmax, SplitHeads
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
