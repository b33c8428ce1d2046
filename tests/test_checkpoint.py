"""Unit tests of ms_vit.checkpoint and create_model(checkpoint_path=...)."""
import logging

import mindspore as ms
import numpy as np
import pytest
from bounds import U, assert_within
from conftest import shared_path

from ms_vit import CheckpointError, checkpoint, create_model

TINY = dict(num_classes=10, image_size=32, patch_size=8, depth=2)


def tiny(**kw):
    return create_model("vit_ti_16_224", **dict(TINY, **kw))


def randomise(net, seed=0):
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        p.set_data(ms.Tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.1))
    return net


def images(n=2, size=32):
    return ms.Tensor(np.random.default_rng(5).standard_normal((n, 3, size, size)).astype(np.float32))


def test_public_b16_layout_loads_with_nothing_missing(tmp_path):
    rows = [line.split() for line in open(shared_path("reference", "vit_b_16_224.ckpt-layout.tsv"))
            if line.strip() and not line.startswith("#")]
    rng = np.random.default_rng(0)
    params = [{"name": name, "data": ms.Tensor(rng.standard_normal([int(d) for d in shape.split("x")],
                                                                   dtype=np.float32))}
              for name, shape in rows]
    path = str(tmp_path / "vit_b_16_224.ckpt")
    ms.save_checkpoint(params, path)            # as the public file: no ms_vit metadata
    net = create_model("vit_b_16_224", checkpoint_path=path)
    np.testing.assert_array_equal(net.transformer.layers[11][1].cell[1].dense2.weight.asnumpy(),
                                  params[-4]["data"].asnumpy())
    assert net.config.num_classes == 1000
    net_nameless = create_model(checkpoint_path=path)      # variant read from the shapes
    assert net_nameless.config.embed_dim == 768 and net_nameless.config.num_heads == 12


def test_roundtrip_restores_config_and_outputs(tmp_path):
    net = randomise(tiny(gelu_approximate=True, layer_norm_eps=1e-7, mean=(0.5, 0.5, 0.5)))
    path = str(tmp_path / "a.ckpt")
    checkpoint.save(net, path, meta={"class_names": list("abcdefghij")})
    again = create_model(checkpoint_path=path)
    assert again.config == net.config
    assert again.checkpoint_meta["class_names"][3] == "d"
    net.set_train(False), again.set_train(False)
    np.testing.assert_array_equal(net(images()).asnumpy(), again(images()).asnumpy())


def test_wrong_variant_fails_with_clear_message(tmp_path):
    path = str(tmp_path / "deep.ckpt")
    checkpoint.save(tiny(depth=3), path)
    with pytest.raises(CheckpointError) as err:
        tiny(depth=2, checkpoint_path=path)
    message = str(err.value)
    assert "does not fit" in message
    assert "in the checkpoint but not in the model (12):" in message
    assert "transformer.layers.2.0.cell.1.qkv.weight" in message
    assert "depth=3" in message


def test_wrong_named_variant_is_suggested(tmp_path):
    path = str(tmp_path / "s16.ckpt")
    ms.save_checkpoint(create_model("vit_s_16_224"), path)
    with pytest.raises(CheckpointError) as err:
        create_model("vit_ti_16_224", checkpoint_path=path)
    assert "of another shape" in str(err.value)
    assert "use --model vit_s_16_224" in str(err.value)


def test_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        create_model(checkpoint_path=str(bad))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        create_model(checkpoint_path=str(tmp_path / "nope.ckpt"))


def test_head_swap_for_new_class_count(tmp_path, caplog):
    src = randomise(tiny())
    path = str(tmp_path / "ten.ckpt")
    checkpoint.save(src, path)
    with caplog.at_level(logging.WARNING, logger="ms_vit"):
        net = tiny(num_classes=3, checkpoint_path=path)
    assert [r.message for r in caplog.records if r.name == "ms_vit"] == [
        f"{path}: head has 10 classes, the model 3: head left newly initialised (fine-tuning)"]
    head = net.dense.weight.asnumpy()                   # newly initialised: truncated normal 0.02 (timm's init)
    # the std of 576 draws: sd 6e-4
    assert head.shape == (3, 192) and 0.015 < head.std() < 0.025 and not net.dense.bias.asnumpy().any()
    np.testing.assert_array_equal(net.cls.asnumpy(), src.cls.asnumpy())


def test_position_embedding_same_grid_is_identity():
    pos = np.random.default_rng(0).standard_normal((1, 1 + 14 * 14, 8)).astype(np.float32)
    # weights 1 and 0 exactly (float64), then the float32 cast: the same values
    np.testing.assert_array_equal(checkpoint.resample_pos_embedding(pos, 14), pos)


def test_position_embedding_resampling_is_smooth_and_keeps_cls():
    yy, xx = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    linear = (yy * 2.0 + xx).reshape(1, 16, 1).astype(np.float32)      # a plane over the grid
    pos = np.concatenate([np.full((1, 1, 1), 7.0, np.float32), linear], axis=1)
    out = checkpoint.resample_pos_embedding(pos, 8)
    assert out.shape == (1, 65, 1) and out[0, 0, 0] == 7.0
    grid = out[0, 1:, 0].reshape(8, 8)
    assert np.all(np.diff(grid, axis=1) >= -1e-6) and np.all(np.diff(grid, axis=0) >= -1e-6)   # 1e-6 > 2 U x 9
    # torch.nn.functional.interpolate(arange(4), size=8, mode="bicubic", align_corners=False), as timm resamples
    torch_row = [-0.10546875, 0.19140625, 0.66796875, 1.296875, 1.703125, 2.33203125, 2.80859375, 3.10546875]
    row = np.array(torch_row)
    # computed in float64, then rounded to float32 once (U relative); torch's values are exact (multiples of 2^-8)
    expected = 2 * row[:, None] + row[None, :]
    assert_within(grid, expected, 2 * U * np.abs(expected), "bicubic resampling vs torch")


def test_other_image_size_resamples_and_runs(tmp_path, caplog):
    src = randomise(tiny())
    path = str(tmp_path / "32.ckpt")
    checkpoint.save(src, path)
    with caplog.at_level(logging.WARNING, logger="ms_vit"):
        net = create_model(checkpoint_path=path, image_size=64)
    assert "position embedding resampled from a 4x4 to a 8x8 patch grid" in caplog.text
    assert net.pos_embedding.shape == (1, 65, 192)
    net.set_train(False)
    assert np.isfinite(net(images(size=64)).asnumpy()).all()
    same = create_model(checkpoint_path=path)
    np.testing.assert_array_equal(same.pos_embedding.asnumpy(), src.pos_embedding.asnumpy())
