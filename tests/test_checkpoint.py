"""Unit tests of ms_vit.weights.checkpoint and create_model(checkpoint_path=...)."""
import logging
import os

import crafted_ckpt
import mindspore as ms
import numpy as np
import pytest
from bounds import U, assert_within
from conftest import shared_path

from ms_vit import CheckpointError, create_model
from ms_vit.training.run_folder import RunFolder
from ms_vit.weights import checkpoint, ckpt_format, convert

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


@pytest.mark.shared
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


# --- reading files that are damaged or crafted ---------------------------------------------------------------------

def encrypted(tmp_path, mode):
    """A checkpoint MindSpore encrypted (``save_checkpoint(enc_key=...)``)."""
    path = str(tmp_path / f"encrypted-{mode}.ckpt")
    ms.save_checkpoint([{"name": "w", "data": ms.Tensor(np.ones((2, 3), np.float32))}], path,
                       enc_key=b"0123456789abcdef", enc_mode=mode)
    return open(path, "rb").read()


def test_crafted_and_damaged_checkpoints_are_one_line_checkpoint_errors(tmp_path):
    """Every kind of crafted or damaged file (crafted_ckpt.kinds: lengths, dims, types, strings, metadata, map and
    int4 tensors, empty) and MindSpore's encrypted files: a CheckpointError of one line naming the file and saying
    why, from checkpoint.read and from the converter's reader alike."""
    path = str(tmp_path / "model.ckpt")
    checkpoint.save(tiny(), path)
    cases = crafted_ckpt.kinds(open(path, "rb").read())
    for mode in ("AES-GCM", "SM4-CBC"):
        cases[f"encrypted {mode}"] = (encrypted(tmp_path, mode), "it is encrypted")
    for name, (data, says) in cases.items():
        bad = str(tmp_path / "bad.ckpt")
        with open(bad, "wb") as f:
            f.write(data)
        for reader in (checkpoint.read, convert.read_pretrained):
            with pytest.raises(CheckpointError) as err:
                reader(bad)
            message = str(err.value)
            assert message.startswith(f"cannot read checkpoint {bad}: ") and says in message, (name, message)
            assert "\n" not in message and len(message) < 400, (name, message)


def test_cut_anywhere_is_a_checkpoint_error(tmp_path):
    """A checkpoint cut at every entry boundary and 250 other places (mid-field, mid-tensor): never a partial read.
    Written with a CRC (checkpoint.save): every cut, read with require_crc as RunFolder.latest reads (a cut between two
    entries leaves a file the format alone cannot tell from a smaller checkpoint). Without a CRC: every cut inside an
    entry."""
    path = str(tmp_path / "model.ckpt")
    checkpoint.save(tiny(), path)
    raw = open(path, "rb").read()
    boundaries = crafted_ckpt.entry_ends(raw)
    cuts = sorted({0, *boundaries, *range(1, 150), *np.linspace(150, len(raw) - 1, 100, dtype=int).tolist()})
    assert len(boundaries) > 20 and len(cuts) > 250
    bad = str(tmp_path / "cut.ckpt")
    body = crafted_ckpt.without_crc(raw)
    for whole, ends, require_crc in ((raw, cuts, True), (body, set(cuts) - set(boundaries), False)):
        for end in (end for end in ends if end < len(whole)):
            with open(bad, "wb") as f:
                f.write(whole[:end])
            with pytest.raises(CheckpointError, match="truncated or corrupted"):
                checkpoint.read(bad, require_crc=require_crc)


def test_every_type_mindspore_writes_reads_as_mindspores_loader_reads_it(tmp_path):
    """Tensors of every type MindSpore writes (bfloat16 among them: decoded to float32 as MindSpore's own cast does,
    bit for bit, infinities, NaN, subnormals and -0 included), scalars and strings: what MindSpore's loader gives,
    exactly (reading is copying bytes: no rounding anywhere)."""
    rng = np.random.default_rng(0)
    special = np.array([np.inf, -np.inf, np.nan, -0.0, 1e-40, -3e38, 65504.0, 1.0 / 3], np.float32)
    data = {
        "bf16": ms.Tensor(np.concatenate([special, rng.standard_normal(40, np.float32)]).reshape(6, 8), ms.bfloat16),
        "bf16_scalar": ms.Tensor(np.float32(-2.5), ms.bfloat16),
        "bool": ms.Tensor(rng.random((3, 5)) > 0.5),
    }
    for kind in ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"):
        info = np.iinfo(kind)
        data[kind] = ms.Tensor(rng.integers(info.min, info.max, (4, 3), dtype=kind, endpoint=True))
    for kind in ("float16", "float32", "float64"):
        data[kind] = ms.Tensor(rng.standard_normal((2, 3, 4)).astype(kind))
    data["empty"] = ms.Tensor(np.zeros((0, 4), np.float32))
    path = str(tmp_path / "types.ckpt")
    ms.save_checkpoint([{"name": k, "data": ms.Parameter(v, name=k)} for k, v in data.items()], path,
                       append_dict={"epoch_num": 7, "lr": 0.5, "note": "héllo, ✓ 𝄞"}, crc_check=True)
    ours = ckpt_format.read_entries(path)
    theirs = ms.load_checkpoint(path)
    assert sorted(ours) == sorted(theirs)
    for name, value in theirs.items():
        if isinstance(value, str):
            assert ours[name] == value
            continue
        expected = (value.float() if value.dtype == ms.bfloat16 else value).asnumpy()
        assert ours[name].dtype == expected.dtype and ours[name].shape == expected.shape, name
        np.testing.assert_array_equal(ours[name], expected, err_msg=name)
    assert ours["bf16"].dtype == np.float32 and np.isnan(ours["bf16"][0, 2]) and np.signbit(ours["bf16"][0, 3])


def test_tensors_mindspore_splits_are_joined(tmp_path, monkeypatch):
    """MindSpore splits a tensor over 512 MB into consecutive entries of one name; its own writer with the threshold
    lowered to 1 KB (serialization.SLICE_SIZE, read at every write) splits these into parts: read as its loader
    joins them."""
    from mindspore.train import checkpoint_pb2, serialization
    monkeypatch.setattr(serialization, "SLICE_SIZE", 1)
    rng = np.random.default_rng(1)
    params = [{"name": "w", "data": ms.Parameter(ms.Tensor(rng.standard_normal((7, 300), np.float32)), name="w")},
              {"name": "h", "data": ms.Parameter(ms.Tensor(rng.standard_normal(1000, np.float32), ms.bfloat16),
                                                 name="h")}]
    path = str(tmp_path / "split.ckpt")
    ms.save_checkpoint(params, path, crc_check=True)
    proto = checkpoint_pb2.Checkpoint()
    proto.ParseFromString(open(path, "rb").read()[:-crafted_ckpt.TRAILER])
    assert [v.tag for v in proto.value].count("w") == 9 and [v.tag for v in proto.value].count("h") == 2
    ours, theirs = ckpt_format.read_entries(path), ms.load_checkpoint(path)
    np.testing.assert_array_equal(ours["w"], theirs["w"].asnumpy())
    np.testing.assert_array_equal(ours["h"], theirs["h"].float().asnumpy())


def test_unknown_fields_are_skipped_as_protobuf_does(tmp_path):
    """Fields MindSpore does not write, of every wire type, in the file, in an entry and in a tensor: skipped (and
    counted in the CRC); the entries read as without them."""
    w = np.arange(6, dtype=np.float32)
    unknown = (crafted_ckpt.field(7, crafted_ckpt.varint(300), wire=0) + crafted_ckpt.field(8, bytes(8), wire=1) +
               crafted_ckpt.field(9, b"abc") + crafted_ckpt.field(10, bytes(4), wire=5))
    value = crafted_ckpt.field(1, crafted_ckpt.field(1, b"w") + unknown + crafted_ckpt.field(
        2, unknown + crafted_ckpt.tensor([2, 3], "Float32", w.tobytes()) + unknown) + unknown)
    path = tmp_path / "unknown.ckpt"
    path.write_bytes(crafted_ckpt.with_crc(unknown + value + unknown + crafted_ckpt.meta({"epoch": 2})))
    params, meta = checkpoint.read(str(path))
    np.testing.assert_array_equal(params["w"], w.reshape(2, 3))
    assert meta == {"epoch": 2}
    packed = tmp_path / "packed.ckpt"                               # dims packed, as protobuf may also write them
    packed.write_bytes(crafted_ckpt.field(1, crafted_ckpt.field(1, b"w") + crafted_ckpt.field(
        2, crafted_ckpt.tensor([3, 2], "Float32", w.tobytes(), packed=True))))
    np.testing.assert_array_equal(checkpoint.read(str(packed))[0]["w"], w.reshape(3, 2))


# --- --resume auto: the newest checkpoint that reads ---------------------------------------------------------------

def test_latest_passes_over_damaged_newer_checkpoints_in_one_line(tmp_path, caplog):
    """Every kind of damage in the newest checkpoints: RunFolder.latest() resumes from the newest that reads, in one
    warning naming the ones passed over and the one resumed from."""
    good = tmp_path / "vit-1_5.ckpt"
    checkpoint.save(tiny(), str(good), meta={"epoch": 1})
    for name, (data, says) in crafted_ckpt.kinds(good.read_bytes()).items():
        if data and data[-crafted_ckpt.TRAILER:-10] != b"crc_num":
            data = crafted_ckpt.with_crc(data)             # (else the missing CRC is all the line says)
        for newer in ("vit-2_5.ckpt", "vit-3_2.ckpt"):
            (tmp_path / newer).write_bytes(data)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ms_vit"):
            path, params, meta = RunFolder(str(tmp_path)).latest()
        assert path == str(good) and meta["epoch"] == 1 and "cls" in params
        lines = [r.getMessage() for r in caplog.records if r.name == "ms_vit"]
        assert len(lines) == 1 and "\n" not in lines[0], (name, lines)
        assert lines[0].startswith(f"cannot read checkpoint {tmp_path / 'vit-3_2.ckpt'}: ")
        assert f"cannot read checkpoint {tmp_path / 'vit-2_5.ckpt'}: " in lines[0] and says in lines[0]
        assert lines[0].endswith(f": passing over them, resuming from {good} instead"), lines[0]


def test_latest_passes_over_a_checkpoint_cut_between_entries(tmp_path, caplog):
    """A run's checkpoint cut exactly between two entries (its optimizer state, position and metadata lost) reads
    whole but for its CRC: passed over, never resumed from (it would restart the run at epoch 0)."""
    good = tmp_path / "vit-1_5.ckpt"
    checkpoint.save(tiny(), str(good), meta={"epoch": 1})
    raw = good.read_bytes()
    (tmp_path / "vit-2_5.ckpt").write_bytes(raw[:crafted_ckpt.entry_ends(raw)[-3]])
    assert checkpoint.read(str(tmp_path / "vit-2_5.ckpt"))[1] == {}              # whole, to the format
    with caplog.at_level(logging.WARNING, logger="ms_vit"):
        assert RunFolder(str(tmp_path)).latest()[0] == str(good)
    assert f"vit-2_5.ckpt: the file is truncated or corrupted ({len(raw[:crafted_ckpt.entry_ends(raw)[-3]]):,} " \
           f"bytes: its CRC is missing: cut): passing over it, resuming from {good} instead" in caplog.text


def test_latest_refuses_when_no_checkpoint_reads(tmp_path):
    """Checkpoints that all fail to read: an error naming them (a new run would overwrite best.ckpt); no checkpoint
    at all: None (a new run)."""
    assert RunFolder(str(tmp_path)).latest() is None
    (tmp_path / "vit-1_5.ckpt").write_bytes(b"")
    (tmp_path / "vit-2_5.ckpt").write_bytes(b"\x0a\x05abc")
    with pytest.raises(CheckpointError) as err:
        RunFolder(str(tmp_path)).latest()
    message = str(err.value)
    assert message.startswith(f"no checkpoint in {tmp_path} can be read (cannot read checkpoint "
                              f"{tmp_path / 'vit-2_5.ckpt'}: ") and "\n" not in message
    assert f"{tmp_path / 'vit-1_5.ckpt'}: the file is truncated or corrupted (0 bytes: empty)" in message
    assert "--resume auto does not start a new run over them" in message
    assert sorted(os.listdir(tmp_path)) == ["vit-1_5.ckpt", "vit-2_5.ckpt"]             # nothing removed


def test_metadata_of_the_wrong_kind_is_a_checkpoint_error(tmp_path):
    """Metadata that parses as JSON but holds what train.py and the factory cannot use: one CheckpointError at
    reading, not a TypeError later (the config's sizes and rates are checked by ViTConfig itself)."""
    net = create_model("vit_ti_16_224", num_classes=3, image_size=32, patch_size=8, embed_dim=48, depth=1,
                       num_heads=3, mlp_dim=96)
    good = net.config.to_dict()
    table = {
        "a config that is not an object": ({"config": 5}, "config that is not a JSON object"),
        "a size that is a string": ({"config": dict(good, image_size="x")}, "image_size must be a positive integer"),
        "a size of zero": ({"config": dict(good, depth=0)}, "depth must be a positive integer"),
        "a rate out of range": ({"config": dict(good, drop_path_rate=2.0)}, "drop_path_rate must be a number in"),
        "a mean of two numbers": ({"config": dict(good, mean=[0.5, 0.5])}, "mean must be 3 numbers"),
        "an unknown interpolation": ({"config": dict(good, interpolation="lanczos9")}, "interpolation must be"),
        "a step that is text": ({"global_step": "10"}, "global_step that is not a JSON int"),
        "a negative position": ({"global_step": -3, "steps_per_epoch": 5}, "negative position"),
        "zero steps per epoch": ({"steps_per_epoch": 0}, "negative position"),
        "class names of numbers": ({"classes": [1, 2, 3]}, "class names that are not strings"),
        "records that are a list": ({"records": []}, "records that is not a JSON object"),
    }
    for case, (meta, reason) in table.items():
        path = str(tmp_path / f"{len(os.listdir(tmp_path))}.ckpt")
        checkpoint.save(net, path, meta=dict({"config": good}, **meta))
        with pytest.raises(CheckpointError, match=reason):
            checkpoint.read(path)
    # records of the wrong kind inside an object are left out by the run's history, not a crash
    from ms_vit.training.history import RunHistory
    good_record = {"epoch": 1, "top1": 0.5, "top5": 1.0, "loss": 1.0}
    history = RunHistory(str(tmp_path), 1, 5, {"train": 5, "val": [{"epoch": "x"}, {"epoch": 1, "top1": "high"},
                                                                   good_record]})
    assert history.val == [good_record] and history.train == []
