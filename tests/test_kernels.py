"""ms_vit.kernels: the fused exact-GELU CPU kernel equals the composite erf GELU, forward and backward."""
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms
from scipy.special import erf

from conftest import ROOT
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


def test_model_same_with_and_without_kernel(tmp_path):
    """The composite path (no compiler, or MS_VIT_FUSED_KERNELS=0) gives the same logits."""
    script = ("import sys, numpy as np, mindspore as ms; sys.path.insert(0, %r); from ms_vit import create_model;"
              "ms.set_seed(0); net = create_model('vit_ti_16_224', image_size=32, patch_size=8, depth=2);"
              "net.dense.weight.set_data(ms.Tensor(np.random.default_rng(1).standard_normal((1000, 192)),"
              " ms.float32)); net.set_train(False);"
              "x = ms.Tensor(np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32));"
              "print(net.transformer.layers[0][1].cell[1].fused_gelu); np.save(sys.argv[1], net(x).asnumpy())") % ROOT
    outputs = {}
    for flag in ("1", "0"):
        path = str(tmp_path / f"logits{flag}.npy")
        run = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True,
                             env=dict(os.environ, MS_VIT_FUSED_KERNELS=flag))
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.strip().splitlines()[-1] == ("True" if flag == "1" else "False")
        outputs[flag] = np.load(path)
    assert np.abs(outputs["1"] - outputs["0"]).max() < 1e-5 * np.abs(outputs["0"]).max()   # float32 rounding


def test_layer_norm_kernel_matches_mindspore(mode):
    from mindspore import nn
    from ms_vit.kernels import layer_norm_op
    from ms_vit.vit import LayerNorm
    op = layer_norm_op()
    assert op is not None
    rng = np.random.default_rng(0)
    fused, reference = LayerNorm(96, 1e-6), nn.LayerNorm((96,), -1, -1, epsilon=1e-6)
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
