"""ms_vit.weights.convert: timm and JAX weights reproduce timm's logits (the other layouts: tests/test_weights.py).

The parity fixture (a timm ViT of 64 px, patch 16, dim 96, depth 3, 3 heads, 10 classes with non-trivial random
weights: model.safetensors, input.npy, logits.npy, config.json) is made by timm itself in its own process
(tests/timm_reference.py); the one in ../shared/fixtures/timm_vit_parity, when present, is checked too."""
import io
import json
import os
import struct
import subprocess
import sys
import zipfile

import mindspore as ms
import numpy as np
import pytest
from bounds import assert_beyond, assert_within, parameters, vit_forward
from conftest import ROOT, require_timm, shared_path
from safetensors.numpy import load_file, save_file

from ms_vit import create_model
from ms_vit.weights.convert import TIMM_NAMES, ConversionError, convert, load_source


class Parity:
    """One copy of the parity fixture: its files by name."""

    def __init__(self, folder):
        self.folder = str(folder)

    def file(self, name):
        return os.path.join(self.folder, name)

    def heads(self):
        return json.load(open(self.file("config.json")))["kwargs"]["num_heads"]

    def logits_of(self, ckpt, **overrides):
        """The checkpoint's logits on the fixture's input, and the bound on their difference from timm's: two float32
        evaluations of the same network, each within ``bounds.vit_forward``'s bound of the exact logits."""
        net = create_model(checkpoint_path=ckpt, **overrides)
        net.set_train(False)
        x = np.load(self.file("input.npy"))
        return net(ms.Tensor(x)).asnumpy(), 2 * vit_forward(net.config, parameters(net), x)[1]


@pytest.fixture(params=["timm", pytest.param("shared", marks=pytest.mark.shared)])
def parity(request):
    """timm's fixture made in this session, and ../shared's (deselected where ../shared is absent: conftest.py)."""
    if request.param == "shared":
        return Parity(shared_path("fixtures", "timm_vit_parity"))
    return Parity(require_timm(request.getfixturevalue("timm_reference")) / "timm_vit_parity")


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


def test_timm_safetensors_parity(parity, tmp_path, mode):
    out = str(tmp_path / "timm.ckpt")
    config = convert(parity.file("model.safetensors"), out, num_heads=parity.heads())
    assert (config.embed_dim, config.depth, config.num_classes, config.image_size) == (96, 3, 10, 64)
    assert config.gelu_approximate is False and config.layer_norm_eps == 1e-6
    # bound 3.4e-4 and up (logits up to 1.8); it catches the tanh GELU (below), and more so a misplaced weight
    got, bound = parity.logits_of(out)
    assert_within(got, np.load(parity.file("logits.npy")), bound, "logits vs timm's")


def test_tanh_gelu_misses_parity(parity, tmp_path):
    """The parity bound tells the tanh GELU from the exact one: a model computing the tanh form where timm computes
    the exact one (up to 7.4e-4 apart here, ~2x the bound) fails the check above."""
    out = str(tmp_path / "timm.ckpt")
    convert(parity.file("model.safetensors"), out, num_heads=parity.heads())
    bound = parity.logits_of(out)[1]
    tanh_logits = parity.logits_of(out, gelu_approximate=True)[0]
    assert_beyond(tanh_logits, np.load(parity.file("logits.npy")), bound, "tanh GELU's logits vs timm's")


def test_jax_npz_parity(parity, tmp_path, mode):
    state = load_file(parity.file("model.safetensors"))
    npz = str(tmp_path / "ViT-fixture.npz")
    np.savez(npz, **timm_to_jax(state, parity.heads()))
    out = str(tmp_path / "jax.ckpt")
    config = convert(npz, out, num_heads=parity.heads())
    # the JAX release's numerics (flax: tanh GELU, eps 1e-6) and preprocessing (the image resized whole, mean/std 0.5)
    assert config.gelu_approximate is True and config.layer_norm_eps == 1e-6
    assert config.mean == (0.5, 0.5, 0.5) and config.crop_pct == 1.0
    # the same weights as timm's: with timm's exact GELU, timm's logits
    got, bound = parity.logits_of(out, gelu_approximate=False)
    assert_within(got, np.load(parity.file("logits.npy")), bound, "logits vs timm's")


def read_tsv(path):
    """``{name: shape}`` of a name<TAB>shape listing (``1x197x768``), comments skipped."""
    rows = (line.rstrip("\n").split("\t") for line in open(path) if line.strip() and not line.startswith("#"))
    return {name: tuple(int(n) for n in shape.split("x")) for name, shape in rows}


def timm_b16_in_ms_vit_names(timm_reference):
    """timm's ViT-B/16 keys (``timm.create_model("vit_base_patch16_224")``, in timm's process) through TIMM_NAMES:
    ``{ms_vit name: shape}``; every key maps through exactly one rule."""
    import re
    keys = read_tsv(require_timm(timm_reference) / "timm_vit_base_patch16_224.keys.tsv")
    assert len(keys) == 152
    mapped = {}
    for key, shape in keys.items():
        hits = [re.sub(p, t, key) for p, t in TIMM_NAMES if re.fullmatch(p, key)]
        assert len(hits) == 1, key
        mapped[hits[0]] = shape
    return mapped


def test_mapping_covers_every_timm_b16_key(timm_reference):
    """Every key of timm's ViT-B/16 lands on a parameter of ms_vit's vit_b_16_224 of the same shape, and every
    parameter is covered."""
    from mindspore.nn.utils import no_init_parameters
    with no_init_parameters():
        net = create_model("vit_b_16_224")
    assert timm_b16_in_ms_vit_names(timm_reference) == {p.name: tuple(p.shape) for p in net.get_parameters()}


@pytest.mark.shared
def test_mapping_lands_on_the_public_mindspore_b16_layout(timm_reference):
    """... and those names are the public vit_b_16_224.ckpt's (../shared's layout listing)."""
    layout = read_tsv(shared_path("reference", "vit_b_16_224.ckpt-layout.tsv"))
    assert timm_b16_in_ms_vit_names(timm_reference) == layout


def test_unmapped_and_misshaped_weights_stop_conversion(parity, tmp_path):
    state = load_file(parity.file("model.safetensors"))
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


def test_cli_converts_and_fails_cleanly(parity, tmp_path):
    out = tmp_path / "cli.ckpt"
    run = subprocess.run([sys.executable, "-m", "ms_vit.weights.convert", parity.file("model.safetensors"),
                          "--out", str(out), "--num_heads", "3"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "with 10 classes" in run.stdout and out.exists()
    run = subprocess.run([sys.executable, "-m", "ms_vit.weights.convert", str(tmp_path / "missing.safetensors"),
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip().startswith("error: checkpoint not found")
    assert "Traceback" not in run.stderr


def _safetensors(header, data=b"", declared=None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if declared is None else declared) + text + data


def _npy(shape, payload: bytes) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return out.getvalue() + payload


def _zip(path, members: dict, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_damaged_or_crafted_sources_of_every_format_are_one_line_errors(tmp_path):
    """The converter's other inputs, crafted: safetensors headers (huge or short lengths, bad or deeply nested JSON,
    offsets past the end, shapes that do not fit, overflowing shapes), npz and PyTorch zips (huge shapes, cut,
    pickled objects, decompression bombs: 80 MB of zeros in 80 KB), each a one-line ConversionError naming the
    file, with bounded memory (the bombs are refused before anything is inflated)."""
    import torch
    cls = {"dtype": "F32", "shape": [1, 1, 48], "data_offsets": [0, 192]}
    made = {
        "len.safetensors": (_safetensors(b"{}", declared=2**63), "header too large"),
        "short.safetensors": (_safetensors(b'{"a": 1}', declared=10**6), "invalid header length"),
        "json.safetensors": (_safetensors(b'{"a": [1,2'), "invalid JSON"),
        "nested.safetensors": (_safetensors(b"[" * 100_000), "invalid JSON"),
        "offsets.safetensors": (_safetensors({"cls_token": cls}, bytes(10)), "Error while deserializing"),
        "shape.safetensors": (_safetensors({"cls_token": dict(cls, shape=[10**6])}, bytes(192)),
                              "Error while deserializing"),
        "overflow.safetensors": (_safetensors({"cls_token": dict(cls, shape=[2**62, 2**62])}, bytes(192)),
                                 "overflow"),
        "empty.safetensors": (b"", "header too small"),
    }
    for name, (data, says) in made.items():
        (tmp_path / name).write_bytes(data)
    _zip(tmp_path / "huge.npz", {"cls.npy": _npy((2**40,), bytes(16))})
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _zip(tmp_path / "object.npz", {"cls.npy": pickled.getvalue()})
    np.savez(tmp_path / "cut.npz", cls=np.zeros(300, np.float32))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "cut.npz").read_bytes()[:-100])
    _zip(tmp_path / "bomb.npz", {"cls.npy": _npy((20 << 20,), bytes(80 << 20))}, zipfile.ZIP_DEFLATED)
    torch.save({"cls_token": torch.zeros(1000)}, tmp_path / "model.pth")
    raw = (tmp_path / "model.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(raw[:len(raw) // 2])
    with zipfile.ZipFile(tmp_path / "model.pth") as source:
        members = {info.filename: source.read(info.filename) for info in source.infolist()}
    storage = next(name for name in members if name.endswith("/data/0"))
    _zip(tmp_path / "small_storage.pth", dict(members, **{storage: members[storage][:40]}))
    _zip(tmp_path / "bomb.pth", dict(members, **{storage: bytes(80 << 20)}), zipfile.ZIP_DEFLATED)
    made.update({"huge.npz": (None, "Unable to allocate"), "object.npz": (None, "Object arrays cannot be loaded"),
                 "cut.npz": (None, "cannot read"), "bomb.npz": (None, "a decompression bomb, not weights"),
                 "cut.pth": (None, "cannot read"), "small_storage.pth": (None, "does not match expected size"),
                 "bomb.pth": (None, "a decompression bomb, not weights")})
    for name, (_, says) in made.items():
        path = str(tmp_path / name)
        with pytest.raises(ConversionError) as err:
            load_source(path)
        message = str(err.value)
        assert message.startswith(f"cannot read {path}: ") and says in message, (name, message)
        assert "\n" not in message, (name, message)
