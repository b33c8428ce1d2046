"""ms_vit.convert: timm and JAX weights reproduce timm's logits (the other layouts: tests/test_weights.py)."""
import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from bounds import assert_beyond, assert_within, parameters, vit_forward
from conftest import ROOT, shared_path
from safetensors.numpy import load_file, save_file

from ms_vit import create_model
from ms_vit.convert import TIMM_NAMES, ConversionError, convert

FIXTURE = ("fixtures", "timm_vit_parity")


def fixture_file(name):
    return shared_path(*FIXTURE, name)


def fixture_heads():
    return json.load(open(fixture_file("config.json")))["kwargs"]["num_heads"]


def logits_of(ckpt, **overrides):
    """The checkpoint's logits on the fixture's input, and the bound on their difference from timm's: two float32
    evaluations of the same network, each within ``bounds.vit_forward``'s bound of the exact logits."""
    net = create_model(checkpoint_path=ckpt, **overrides)
    net.set_train(False)
    x = np.load(fixture_file("input.npy"))
    return net(ms.Tensor(x)).asnumpy(), 2 * vit_forward(net.config, parameters(net), x)[1]


def timm_to_jax(state, heads):
    """The fixture's timm weights in the google-research/vision_transformer npz layout."""
    dim = state["cls_token"].shape[-1]
    jax = {"cls": state["cls_token"], "Transformer/posembed_input/pos_embedding": state["pos_embed"],
           "embedding/kernel": state["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
           "embedding/bias": state["patch_embed.proj.bias"],
           "Transformer/encoder_norm/scale": state["norm.weight"], "Transformer/encoder_norm/bias": state["norm.bias"],
           "head/kernel": state["head.weight"].T, "head/bias": state["head.bias"]}
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        attn = p + "MultiHeadDotProductAttention_1/"
        jax[p + "LayerNorm_0/scale"], jax[p + "LayerNorm_0/bias"] = state[b + "norm1.weight"], state[b + "norm1.bias"]
        jax[p + "LayerNorm_2/scale"], jax[p + "LayerNorm_2/bias"] = state[b + "norm2.weight"], state[b + "norm2.bias"]
        for j, part in enumerate(("query", "key", "value")):
            w = state[b + "attn.qkv.weight"][j * dim:(j + 1) * dim]          # (out, in)
            jax[attn + part + "/kernel"] = w.T.reshape(dim, heads, dim // heads)
            jax[attn + part + "/bias"] = state[b + "attn.qkv.bias"][j * dim:(j + 1) * dim].reshape(heads, -1)
        jax[attn + "out/kernel"] = state[b + "attn.proj.weight"].T.reshape(heads, dim // heads, dim)
        jax[attn + "out/bias"] = state[b + "attn.proj.bias"]
        for k, fc in ((0, "fc1"), (1, "fc2")):
            jax[p + f"MlpBlock_3/Dense_{k}/kernel"] = state[b + f"mlp.{fc}.weight"].T
            jax[p + f"MlpBlock_3/Dense_{k}/bias"] = state[b + f"mlp.{fc}.bias"]
    return jax


def test_timm_safetensors_parity(tmp_path, mode):
    out = str(tmp_path / "timm.ckpt")
    config = convert(fixture_file("model.safetensors"), out, num_heads=fixture_heads())
    assert (config.embed_dim, config.depth, config.num_classes, config.image_size) == (96, 3, 10, 64)
    assert config.gelu_approximate is False and config.layer_norm_eps == 1e-6
    # bound 3.4e-4 and up (logits up to 1.8); it catches the tanh GELU (below), and more so a misplaced weight
    got, bound = logits_of(out)
    assert_within(got, np.load(fixture_file("logits.npy")), bound, "logits vs timm's")


def test_tanh_gelu_misses_parity(tmp_path):
    """The parity bound tells the tanh GELU from the exact one: a model computing the tanh form where timm computes
    the exact one (up to 7.4e-4 apart here, ~2x the bound) fails the check above."""
    out = str(tmp_path / "timm.ckpt")
    convert(fixture_file("model.safetensors"), out, num_heads=fixture_heads())
    bound = logits_of(out)[1]
    tanh_logits = logits_of(out, gelu_approximate=True)[0]
    assert_beyond(tanh_logits, np.load(fixture_file("logits.npy")), bound, "tanh GELU's logits vs timm's")


def test_jax_npz_parity(tmp_path, mode):
    state = load_file(fixture_file("model.safetensors"))
    npz = str(tmp_path / "ViT-fixture.npz")
    np.savez(npz, **timm_to_jax(state, fixture_heads()))
    out = str(tmp_path / "jax.ckpt")
    config = convert(npz, out, num_heads=fixture_heads())
    # the JAX release's numerics (flax: tanh GELU, eps 1e-6) and preprocessing (the image resized whole, mean/std 0.5)
    assert config.gelu_approximate is True and config.layer_norm_eps == 1e-6
    assert config.mean == (0.5, 0.5, 0.5) and config.crop_pct == 1.0
    # the same weights as timm's: with timm's exact GELU, timm's logits
    got, bound = logits_of(out, gelu_approximate=False)
    assert_within(got, np.load(fixture_file("logits.npy")), bound, "logits vs timm's")


def test_mapping_covers_every_timm_b16_key():
    import re
    keys = [line.split("\t")[0] for line in open(shared_path("reference", "timm_vit_base_patch16_224.keys.tsv"))
            if line.strip() and not line.startswith("#")]
    layout = {line.split("\t")[0] for line in open(shared_path("reference", "vit_b_16_224.ckpt-layout.tsv"))
              if line.strip() and not line.startswith("#")}
    mapped = set()
    for key in keys:
        hits = [re.sub(p, t, key) for p, t in TIMM_NAMES if re.fullmatch(p, key)]
        assert len(hits) == 1, key
        mapped.add(hits[0])
    assert mapped == layout


def test_unmapped_and_misshaped_weights_stop_conversion(tmp_path):
    state = load_file(fixture_file("model.safetensors"))
    extra = dict(state, **{"fc_norm.weight": np.ones(96, np.float32)})
    bad = str(tmp_path / "extra.safetensors")
    save_file(extra, bad)
    with pytest.raises(ConversionError, match="timm and DeiT.*: 1 weight.*fc_norm.weight"):
        convert(bad, str(tmp_path / "x.ckpt"))
    state["blocks.1.mlp.fc1.bias"] = np.ones(7, np.float32)
    save_file(state, bad)
    with pytest.raises(ConversionError, match="transformer.layers.1.1.cell.1.dense1.bias: checkpoint \\(7,\\)"):
        convert(bad, str(tmp_path / "x.ckpt"), num_heads=3)
    assert not os.path.exists(tmp_path / "x.ckpt")


def test_cli_converts_and_fails_cleanly(tmp_path):
    out = tmp_path / "cli.ckpt"
    run = subprocess.run([sys.executable, "-m", "ms_vit.convert", fixture_file("model.safetensors"),
                          "--out", str(out), "--num_heads", "3"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "with 10 classes" in run.stdout and out.exists()
    run = subprocess.run([sys.executable, "-m", "ms_vit.convert", str(tmp_path / "missing.safetensors"),
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip().startswith("error: checkpoint not found")
    assert "Traceback" not in run.stderr
