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
    np.testing.assert_allclose(outputs["1"], outputs["0"], rtol=1e-5, atol=1e-5)   # logits up to ~30
