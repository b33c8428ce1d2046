"""Fuzzing ``checkpoint.read`` (Hypothesis, derandomized: the same generator seed on every run and machine).

Two sources of cases: real checkpoints written by ``checkpoint.save`` (a tiny ViT with its metadata and CRC) and by
``mindspore.save_checkpoint`` (bfloat16, scalars, strings), mutated byte by byte (flips, cuts, insertions, deletions,
varints replaced by extreme values); and checkpoints assembled entry by entry from drawn names, types, dims and
contents (lengths that agree or not with the dims, split tensors, strings and metadata, unknown fields, map tensors),
then mutated too. Every case must end in a read or a ``CheckpointError`` (never another exception, never "not enough
memory"), within 2 s, and allocate at most 3x the file plus 1 MiB (``tracemalloc``, which numpy reports its arrays
to: an allocation the file's size does not justify fails the case even when the OS would grant it lazily). A read
must agree with protobuf's own parse of the file (``mindspore/train/checkpoint_pb2.py``) entry for entry. Each test
also checks that its cases reach reads and the families of refusals it aims at (``FAMILIES``), not only the first
check a file meets.
"""
import collections
import math
import os
import time
import tracemalloc

import crafted_ckpt
import mindspore as ms
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ms_vit import CheckpointError, create_model
from ms_vit.weights import checkpoint
from ms_vit.weights.ckpt_format import NP_TYPES

SETTINGS = dict(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
MAX_SECONDS = 2.0                 # per case; a normal case takes ~2 ms: a loaded 2-core machine stays far below
EXTREMES = [0, 1, 2, 3, 4, 127, 128, 255, 2**31 - 1, 2**31, 2**32, 2**40, 2**63 - 1, 2**63, 2**64 - 1, 2**64,
            2**70]
TYPES = [*NP_TYPES, "BFloat16", "str", "Int4", "", "float32", "Float32\x00", "é"]
ITEMSIZE = {**{k: np.dtype(v).itemsize for k, v in NP_TYPES.items()}, "BFloat16": 2, "str": 4}
# what each family of refusals says (ckpt_format's messages), for the coverage checks
FAMILIES = {"length": "runs past the end", "cut": "ends in the middle", "crc": "CRC does not match",
            "wire type": "that protobuf does not have", "missing field": "lacks its", "dims vs bytes": "needs",
            "negative dim": "negative dimension", "64-bit overflow": "over 64 bits", "split": "ends after",
            "map tensor": "map tensor", "type": "which ms_vit does not read", "string": "not UTF-32",
            "metadata": "not a JSON object", "repeated entry": "twice in a row"}
META_TEXTS = ['{"epoch": 1}', "{}", "[]", '"text"', "{", "[" * 5000, '{"a": ' * 5000, "1e999", "9" * 5000, ""]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """Real checkpoints: a tiny ViT by checkpoint.save (CRC, metadata, int and float entries), and one by
    mindspore.save_checkpoint with bfloat16, a scalar, a string and no CRC."""
    folder = tmp_path_factory.mktemp("seeds")
    net = create_model("vit_ti_16_224", num_classes=3, image_size=16, patch_size=8, embed_dim=16, depth=1,
                       num_heads=2, mlp_dim=32)
    rng = np.random.default_rng(0)                     # the same bytes whichever tests ran before (MindSpore's seed)
    for p in net.get_parameters():
        p.set_data(ms.Tensor(rng.standard_normal(p.shape).astype(np.float32)))
    checkpoint.save(net, str(folder / "vit.ckpt"), meta={"epoch": 3, "class_names": ["a", "b", "c"]},
                    extra_values={"epoch_num": 3, "learning_rate": 0.5})
    ms.save_checkpoint([{"name": "h", "data": ms.Tensor(np.arange(12, dtype=np.float32).reshape(3, 4), ms.bfloat16)},
                        {"name": "s", "data": ms.Tensor(np.int32(7))}], str(folder / "ms.ckpt"),
                       append_dict={"note": "héllo"})
    return [open(folder / name, "rb").read() for name in ("vit.ckpt", "ms.ckpt")]


def varint_offsets(data: bytes) -> list:
    """Where each varint of a well-formed checkpoint starts (field keys, lengths, dims): where a crafted value goes."""
    offsets = []

    def walk(pos, end, inner):                  # inner: field number -> the fields of the message it holds
        while pos < end:
            offsets.append(pos)
            key, pos = crafted_ckpt.read_varint(data, pos)
            offsets.append(pos)
            number, pos = crafted_ckpt.read_varint(data, pos)
            if key & 7 == 2:
                if key >> 3 in inner:
                    walk(pos, pos + number, inner[key >> 3])
                pos += number

    walk(0, len(crafted_ckpt.without_crc(data)), {1: {2: {}}})     # Checkpoint.value -> Value.tensor -> TensorProto
    return offsets


def mutate(data: bytes, draw) -> bytes:
    """``data`` with 1-4 drawn mutations."""
    offsets = varint_offsets(data) if draw(st.booleans()) else []
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "varint"] if offsets else
                                  ["flip", "cut", "insert", "delete"]))
        if not out:
            break
        pos = draw(st.integers(0, len(out) - 1))
        if op == "flip":
            out[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del out[pos:]
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=12))
        elif op == "delete":
            del out[pos:pos + draw(st.integers(1, 16))]
        else:                                         # a key, length or dim replaced by an extreme value
            at = draw(st.sampled_from([o for o in offsets if o < len(out)] or [0]))
            _, after = crafted_ckpt.read_varint(bytes(out) + b"\x00", at)
            out[at:min(after, len(out))] = crafted_ckpt.varint(draw(st.sampled_from(EXTREMES)))
            offsets = []                              # (the offsets after it moved)
    return bytes(out)


@st.composite
def entry(draw) -> bytes:
    """One drawn Value (or several: a tensor split into consecutive parts), well-formed as protobuf or not."""
    tag = draw(st.sampled_from(["w", "b", "ms_vit_meta", "", "é", "epoch_num"]))
    if draw(st.integers(0, 7)) == 0:                                        # ms_vit's metadata
        return crafted_ckpt.meta(draw(st.sampled_from(META_TEXTS)))
    kind = draw(st.sampled_from(TYPES))
    dims = draw(st.lists(st.one_of(st.integers(0, 5), st.sampled_from(EXTREMES)), max_size=4))
    exact = math.prod(dims) * ITEMSIZE.get(kind, 4)
    length = draw(st.sampled_from([exact, exact + 1, exact - 1, exact // 2, draw(st.integers(0, 64))]))
    length = min(max(length, 0), 4096)
    content = draw(st.binary(min_size=length, max_size=length))
    if draw(st.integers(0, 9)) == 0:                                        # a map tensor
        return crafted_ckpt.field(1, crafted_ckpt.field(1, tag.encode()) + crafted_ckpt.field(
            3, crafted_ckpt.field(1, crafted_ckpt.tensor(dims, kind, content))))
    extra = crafted_ckpt.field(draw(st.integers(4, 20)), content[:3]) if draw(st.booleans()) else b""
    packed = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0 and len(content) > 1:                  # split over consecutive entries
        cut = draw(st.integers(1, len(content) - 1))
        return b"".join(crafted_ckpt.field(1, crafted_ckpt.field(1, tag.encode()) + crafted_ckpt.field(
            2, crafted_ckpt.tensor(dims, kind, part, packed)) + extra) for part in (content[:cut], content[cut:]))
    return crafted_ckpt.field(1, crafted_ckpt.field(1, tag.encode()) + crafted_ckpt.field(
        2, crafted_ckpt.tensor(dims, kind, content, packed)) + extra)


class Case:
    """The file each case is written to: rewritten in place (truncating a file to 0 bytes flushes it on ext4, 2 ms)."""

    def __init__(self, path):
        self.path = str(path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self.count = 0
        self.seen = collections.Counter()      # how the cases ended: "read", or the FAMILIES of refusals

    def check(self, data: bytes) -> None:
        """``checkpoint.read`` of ``data``: a read that protobuf agrees with, or a CheckpointError; bounded time and
        memory (``tracemalloc`` traces the read alone: tracing everything would slow Hypothesis 10-fold)."""
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))
        self.count += 1
        tracemalloc.start()
        start = time.perf_counter()
        try:
            params, meta = checkpoint.read(self.path)
        except CheckpointError as exc:
            assert "not enough memory" not in str(exc) and "\n" not in str(exc), str(exc)
            self.seen.update(family for family, says in FAMILIES.items() if says in str(exc))
            params = None
        finally:
            seconds = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert seconds < MAX_SECONDS, f"{seconds:.2f} s for {len(data):,} bytes"
        assert peak <= 3 * len(data) + (1 << 20), f"{peak:,} bytes allocated for a file of {len(data):,}"
        if params is not None:
            self.seen["read"] += 1
            assert isinstance(meta, dict)
            agrees_with_protobuf(data, params)

    def close(self):
        os.close(self.fd)


@pytest.fixture
def case(tmp_path):
    opened = Case(tmp_path / "case.ckpt")
    yield opened
    opened.close()


def agrees_with_protobuf(data: bytes, params: dict) -> None:
    """What ``read`` returned is what protobuf parses from the file: for each name, its last run of consecutive
    entries, joined (as MindSpore's loader joins a split tensor)."""
    from mindspore.train import checkpoint_pb2
    proto = checkpoint_pb2.Checkpoint()
    proto.ParseFromString(crafted_ckpt.without_crc(data))      # raises if protobuf does not take what we took
    runs = {}
    for i, value in enumerate(proto.value):
        if i and proto.value[i - 1].tag == value.tag:
            runs[value.tag][1].append(value.tensor.tensor_content)
        else:
            runs[value.tag] = (value.tensor, [value.tensor.tensor_content])
    for name, array in params.items():
        tensor, parts = runs[name]
        raw = np.frombuffer(b"".join(parts), np.uint8)
        assert array.size * (2 if tensor.tensor_type == "BFloat16" else array.itemsize) == raw.size, name
        if tensor.tensor_type == "BFloat16":
            bits = raw.view(np.uint16).astype(np.uint32) << 16             # bfloat16: float32's upper half
            np.testing.assert_array_equal(array.reshape(-1).view(np.uint32), bits)
        elif tensor.tensor_type == "Bool":
            np.testing.assert_array_equal(array.reshape(-1), raw != 0)
        else:
            np.testing.assert_array_equal(array.reshape(-1).view(np.uint8), raw)
        assert list(array.shape) == ([] if list(tensor.dims) == [0] and raw.size else list(tensor.dims)), name


def test_mutated_real_checkpoints(seeds, case):
    """3,000 real checkpoints mutated byte by byte: reads and refusals of lengths, cuts, CRCs, wire types, missing
    fields, strings."""
    @settings(max_examples=3000, **SETTINGS)
    @given(st.data())
    def run(data):
        case.check(mutate(data.draw(st.sampled_from(seeds)), data.draw))
    run()
    assert case.count >= 3000
    assert set(case.seen) >= {"read", "wire type", "length", "crc", "cut", "missing field", "string"}, case.seen


def test_assembled_checkpoints(seeds, case):
    """1,500 checkpoints assembled from drawn entries (with the tiny ViT's entries before them or not, a CRC or not),
    half of them mutated byte by byte too: reads and refusals of dims, types, splits, map tensors, strings,
    metadata."""
    @settings(max_examples=1500, **SETTINGS)
    @given(st.data())
    def run(data):
        body = b"".join(data.draw(st.lists(entry(), min_size=1, max_size=5)))
        if data.draw(st.booleans()):
            body = crafted_ckpt.without_crc(seeds[0]) + body
        if data.draw(st.booleans()):
            body = crafted_ckpt.with_crc(body)
        if data.draw(st.booleans()):
            body = mutate(body, data.draw)
        case.check(body)
    run()
    assert case.count >= 1500
    assert set(case.seen) >= {"read", "map tensor", "dims vs bytes", "wire type", "type", "length", "repeated entry",
                              "64-bit overflow", "split", "negative dim", "string", "metadata"}, case.seen


