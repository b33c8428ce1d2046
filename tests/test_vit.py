"""Unit tests of ms_vit.models.vit: variants, shapes, layout, training step, pooling, stochastic depth, AMP."""
import mindspore as ms
import numpy as np
import pytest
from bounds import assert_within, gamma, gelu_error, parameters, vit_forward
from conftest import shared_path
from mindspore import nn
from mindspore.nn.utils import no_init_parameters

from ms_vit import ViT, count_params, create_model, list_models, variant_config
from ms_vit.training.loss import LabelSmoothingCrossEntropy

PAPER_PARAMS = {  # at 1000 classes and 224 px, as timm counts them
    "vit_ti_16_224": 5_717_416, "vit_s_16_224": 22_050_664, "vit_b_16_224": 86_567_656,
    "vit_b_32_224": 88_224_232, "vit_l_16_224": 304_326_632, "vit_l_32_224": 306_535_400,
    "vit_h_14_224": 632_045_800,
}
TINY = dict(num_classes=10, image_size=32, patch_size=8, depth=2)


def tiny(**kw):
    return create_model("vit_ti_16_224", **dict(TINY, **kw))


def images(n=4, size=32, seed=0):
    return ms.Tensor(np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32))


def test_variant_table_names():
    names = list_models()
    assert len(names) == 14
    for arch in ("ti_16", "s_16", "b_16", "b_32", "l_16", "l_32", "h_14"):
        assert f"vit_{arch}_224" in names and f"vit_{arch}_384" in names


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_parameter_count_equals_paper(name):
    with no_init_parameters():  # shapes only: no memory for the weights of the big variants
        net = ViT(variant_config(name))
    assert count_params(net) == PAPER_PARAMS[name]


def test_384_variant_has_larger_grid():
    with no_init_parameters():
        net = ViT(variant_config("vit_l_32_384"))
    assert net.pos_embedding.shape == (1, 1 + 12 * 12, 1024)


def test_unknown_variant_and_bad_override():
    with pytest.raises(ValueError, match="unknown model 'vit_x_16_224'"):
        create_model("vit_x_16_224")
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        create_model("vit_ti_16_224", image_size=30, patch_size=8)
    with pytest.raises(TypeError, match="pool"):
        create_model("vit_ti_16_224", pool="cls")


def test_b16_layout_equals_reference():
    rows = [line.rstrip("\n").split("\t") for line in open(shared_path("reference", "vit_b_16_224.ckpt-layout.tsv"))
            if line.strip() and not line.startswith("#")]
    expected = [(name, tuple(int(d) for d in shape.split("x"))) for name, shape in rows]
    with no_init_parameters():
        net = ViT(variant_config("vit_b_16_224"))
    actual = [(p.name, tuple(p.shape)) for p in net.get_parameters()]
    assert sorted(actual) == sorted(expected)
    assert len(actual) == 152


def test_forward_and_training_step(mode):
    net = tiny(drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.1, weight_init="jax")
    x, y = images(), ms.Tensor(np.array([1, 2, 3, 4], np.int32))
    net.set_train(False)
    assert net(x).shape == (4, 10)
    step = nn.TrainOneStepCell(nn.WithLossCell(net, LabelSmoothingCrossEntropy(0.1)),
                               nn.AdamWeightDecay(net.trainable_params(), learning_rate=1e-3))
    step.set_train(True)
    losses = [float(step(x, y).asnumpy()) for _ in range(4)]
    # zero head: logits exactly 0, the loss log 10 for any targets; float32 log-softmax and the smoothed targets' sum
    # round it by a few ulp (~1e-6): 1e-4 is safe, and a loss off by 1e-4 (targets not summing to 1) fails
    assert losses[0] == pytest.approx(np.log(10), abs=1e-4)
    assert losses[-1] < losses[0]


def test_initialisation_as_paper():
    net = create_model("vit_s_16_224", weight_init="jax")
    pos = net.pos_embedding.asnumpy()
    # truncated normal, std 0.02 (as timm): over 75,648 values the sample std is within 5e-5 and the mean within 7e-5
    # (one standard deviation each); the bounds are 40 and 14 of them
    assert 0.018 < pos.std() < 0.022 and abs(pos.mean()) < 1e-3
    assert not net.dense.weight.asnumpy().any() and not net.dense.bias.asnumpy().any()
    qkv = net.transformer.layers[0][0].cell[1].qkv.weight.asnumpy()          # Xavier-uniform
    bound = np.sqrt(6 / (384 + 3 * 384))
    assert np.abs(qkv).max() <= bound and np.abs(qkv).max() > 0.9 * bound    # 442,368 draws: P(all < 0.9) = 0.95^442368
    assert not net.transformer.layers[0][0].cell[1].qkv.bias.asnumpy().any()


def test_pooling_modes_differ():
    token, mean = tiny(global_pool="token"), tiny(global_pool="mean")
    ms.load_param_into_net(mean, {p.name: p for p in token.get_parameters()})
    token.dense.weight.set_data(ms.Tensor(np.random.default_rng(1).standard_normal((10, 192)).astype(np.float32)))
    mean.dense.weight.set_data(token.dense.weight.value())
    token.set_train(False), mean.set_train(False)
    x = images()
    feats = token.forward_features(x).asnumpy()
    w = token.dense.weight.asnumpy()
    # the same features; the head's 192-term products (and the mean of 16 tokens) in MindSpore and in numpy, each
    # within gamma(n) of the sum of |terms|: a bound of ~1e-3 here, where the wrong token or the class token in the
    # mean moves the logits by ~1
    head = np.abs(w).T.astype(np.float64)
    pooled = feats[:, 1:].mean(1)
    assert_within(token(x).asnumpy(), feats[:, 0] @ w.T, 2 * gamma(193) * (np.abs(feats[:, 0]) @ head), "token")
    assert_within(mean(x).asnumpy(), pooled @ w.T, 2 * gamma(193) * (np.abs(pooled) @ head)
                  + 2 * gamma(17) * np.abs(feats[:, 1:]).mean(1) @ head, "mean")


def test_stochastic_depth_drops_paths_in_training_only():
    net = tiny(drop_path_rate=0.9, depth=3)
    net.dense.weight.set_data(ms.Tensor(np.random.default_rng(1).standard_normal((10, 192)).astype(np.float32)))
    x = images()
    net.set_train(True)
    outs = [net(x).asnumpy() for _ in range(3)]
    assert np.abs(outs[0] - outs[1]).max() > 1e-3 or np.abs(outs[1] - outs[2]).max() > 1e-3
    net.set_train(False)
    np.testing.assert_array_equal(net(x).asnumpy(), net(x).asnumpy())
    plain = tiny(depth=3)
    ms.load_param_into_net(plain, {p.name: p for p in net.get_parameters()})
    plain.set_train(False)
    bound = 2 * vit_forward(plain.config, parameters(plain), x.asnumpy())[1]    # two float32 evaluations at most
    assert_within(net(x).asnumpy(), plain(x).asnumpy(), bound, "evaluation with and without stochastic depth")


def test_blocks_compiled_once_only_without_random_ops():
    """Blocks without dropout and stochastic depth share one compiled block (ReusedBlock, same numbers: see the
    test above); with either, every block is its own (a reused block would share its random state)."""
    from ms_vit.factory import INFERENCE
    from ms_vit.models.vit import Block, ReusedBlock
    assert {type(block) for block in tiny().transformer.layers} == {ReusedBlock}
    for rate in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
        assert {type(block) for block in tiny(**{rate: 0.1}).transformer.layers} == {Block}, rate
    trained = dict(drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.1)
    assert {type(block) for block in tiny(**dict(trained, **INFERENCE)).transformer.layers} == {ReusedBlock}


def test_drop_path_keeps_expectation():
    from ms_vit import DropPath
    drop = DropPath(0.25)
    drop.set_train(True)
    out = drop(ms.Tensor(np.ones((4000, 2, 3), np.float32))).asnumpy()
    kept = out[:, 0, 0] > 0
    assert set(np.unique(out)) <= {0.0, np.float32(1 / 0.75)}
    assert 0.70 < kept.mean() < 0.80 and (out == out[:, :1, :1]).all()   # whole samples dropped


@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_numerics_option(approximate):
    from scipy.special import erf

    from ms_vit.models.layers import GELU
    x = np.linspace(-6, 6, 101, dtype=np.float32)
    exact = 0.5 * x.astype(np.float64) * (1 + erf(x.astype(np.float64) / np.sqrt(2)))
    got = GELU(approximate)(ms.Tensor(x)).asnumpy()
    if approximate:      # the tanh form is up to 4.7e-4 from the erf form (x = +-2.6); float32 adds < 2e-4
        assert 1e-4 < np.abs(got - exact).max() < 1e-2
    else:
        assert_within(got, exact, gelu_error(x), "exact GELU vs float64")


def test_amp_o2_keeps_layernorm_float32():
    from ms_vit.models.layers import LayerNorm
    net = tiny(fused_kernels=False)            # AMP casts operator inputs to float16: the fused kernels take float32
    net.dense.weight.set_data(ms.Tensor(np.random.default_rng(1).standard_normal((10, 192)).astype(np.float32)))
    net.set_train(False)
    x = images()
    ref = net(x).asnumpy()
    # the values between operations rounded to float16 (unit roundoff 2^-11; products summed in float32, LayerNorm
    # and softmax float32), and the float32 reference's own rounding
    params = parameters(net)
    bound = sum(vit_forward(net.config, params, x.asnumpy(), unit)[1] for unit in (2.0 ** -11, 2.0 ** -24))
    amp = ms.amp.auto_mixed_precision(net, "O2")
    kept = [c for _, c in amp.cells_and_names() if type(c).__name__ == "_OutputTo16"]
    assert len(kept) == 2 * 2 + 1 and all(isinstance(c._backbone, LayerNorm) for c in kept)
    out = amp(x).asnumpy()
    assert np.isfinite(out).all()
    assert np.abs(out - ref).max() > 0                                        # float16 did compute
    assert_within(out, ref, bound, "AMP O2 vs float32")
