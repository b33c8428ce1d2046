"""Attention maps: every block's attention weights and the rollout, against a numpy forward pass; the pictures."""
import glob
import os

import mindspore as ms
import numpy as np
from bounds import assert_within, parameters, vit_forward
from helpers import run_script
from PIL import Image

from ms_vit import create_model
from ms_vit.pictures.visualize import as_grid, attention_rollout, attention_weights


def numpy_attention(net, x):
    """The ViT's forward pass in numpy (float64) from its parameters: each block's attention weights."""
    p = {q.name: q.asnumpy().astype(np.float64) for q in net.get_parameters()}
    c = net.config
    b, g, ps = x.shape[0], c.image_size // c.patch_size, c.patch_size
    patches = x.reshape(b, 3, g, ps, g, ps).transpose(0, 2, 4, 1, 3, 5).reshape(b, g * g, -1)
    w = p["patch_embedding.conv.weight"].reshape(c.embed_dim, -1)
    tokens = patches @ w.T + p["patch_embedding.conv.bias"]
    tokens = np.concatenate([np.broadcast_to(p["cls"], (b, 1, c.embed_dim)), tokens], 1) + p["pos_embedding"]

    def norm(t, prefix):
        mu, var = t.mean(-1, keepdims=True), t.var(-1, keepdims=True)
        return (t - mu) / np.sqrt(var + c.layer_norm_eps) * p[prefix + ".gamma"] + p[prefix + ".beta"]

    from scipy.special import erf
    heads, d = c.num_heads, c.embed_dim // c.num_heads
    weights = []
    for i in range(c.depth):
        pre = f"transformer.layers.{i}"
        h = norm(tokens, f"{pre}.0.cell.0")
        qkv = h @ p[f"{pre}.0.cell.1.qkv.weight"].T + p[f"{pre}.0.cell.1.qkv.bias"]
        q, k, v = (qkv[..., j * c.embed_dim:(j + 1) * c.embed_dim].reshape(b, -1, heads, d).transpose(0, 2, 1, 3)
                   for j in range(3))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
        attn = np.exp(scores - scores.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        weights.append(attn)
        merged = (attn @ v).transpose(0, 2, 1, 3).reshape(b, -1, c.embed_dim)
        tokens = tokens + merged @ p[f"{pre}.0.cell.1.out.weight"].T + p[f"{pre}.0.cell.1.out.bias"]
        h = norm(tokens, f"{pre}.1.cell.0") @ p[f"{pre}.1.cell.1.dense1.weight"].T + p[f"{pre}.1.cell.1.dense1.bias"]
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
        tokens = tokens + h @ p[f"{pre}.1.cell.1.dense2.weight"].T + p[f"{pre}.1.cell.1.dense2.bias"]
    return np.stack(weights)                                   # (depth, B, H, T, T)


def reference_rollout(weights):
    """Abnar & Zuidema's rollout written out: A_l = norm(mean_h W_l + I), R = A_L ... A_1, class token's row."""
    tokens = weights.shape[-1]
    result = np.eye(tokens)
    for layer in weights:
        a = np.mean(layer, axis=0) + np.eye(tokens)
        a = a / a.sum(axis=1)[:, None]
        result = np.matmul(a, result)
    return result[0][1:]


def test_attention_weights_and_rollout_match_numpy():
    net = create_model("vit_ti_16_224", num_classes=4, image_size=32, patch_size=8, embed_dim=48, depth=3,
                       num_heads=3, mlp_dim=96)
    rng = np.random.default_rng(0)
    for p in net.get_parameters():
        p.set_data(ms.Tensor((rng.standard_normal(p.shape) * 0.3).astype(np.float32)))
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    ours = attention_weights(net, ms.Tensor(x))
    expected = numpy_attention(net, x.astype(np.float64))
    bound = vit_forward(net.config, parameters(net), x)[3]        # each weight's float32 error bound
    assert ours.shape == (3, 2, 3, 17, 17)
    assert_within(ours, expected, bound, "attention weights vs float64")
    assert expected[:, :, :, 0, 1:].std() > 0.01                  # the weights are far from uniform
    for image in range(2):
        rollout = attention_rollout(ours[:, image])
        # float64 from float32 weights: a product of row-stochastic matrices moves by at most the sum of its
        # factors' largest row errors (the heads' mean, renormalised: twice the bounds' row sum)
        rollout_bound = sum(2 * layer.mean(0).sum(-1).max() for layer in bound[:, image])
        assert_within(rollout, reference_rollout(expected[:, image]), rollout_bound, "rollout vs float64")
        assert rollout.shape == (16,) and as_grid(rollout).shape == (4, 4) and 0 < rollout.sum() <= 1


def test_infer_writes_attention_maps_and_topk_chart(imagenet_sample, tmp_path):
    from ms_vit.weights import checkpoint
    net = create_model("vit_ti_16_224", num_classes=19, image_size=32, patch_size=8, embed_dim=48, depth=2,
                       num_heads=3, mlp_dim=96)
    ckpt = str(tmp_path / "tiny.ckpt")
    checkpoint.save(net, ckpt)
    image = sorted(glob.glob(os.path.join(imagenet_sample, "infer", "*", "*.jpg")))[0]
    result = run_script("infer.py", "--ckpt_path", ckpt, image, "--attention", "--plot", "--output_dir",
                        str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    stem = os.path.splitext(os.path.basename(image))[0]
    for suffix in ("attention", "topk"):
        path = tmp_path / "out" / f"{stem}_{suffix}.png"
        assert f"{suffix if suffix == 'attention' else 'top-5 chart'}: {path}" in result.stdout
        picture = np.asarray(Image.open(path).convert("RGB"))
        assert picture.shape[1] > 600 and picture.std() > 20
