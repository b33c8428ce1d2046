"""MindSpore's ``.ckpt`` file format, read field by field from files that may be damaged or crafted.

The format (``mindspore/train/checkpoint_pb2.py``; written by ``mindspore.save_checkpoint``)::

    message Checkpoint {
        message Value { required string tag = 1; oneof value { TensorProto tensor = 2; MapTensorProto maptensor = 3; } }
        repeated Value value = 1;
    }
    message TensorProto { repeated int64 dims = 1; required string tensor_type = 2; required bytes tensor_content = 3; }

then, with ``crc_check=True``, a 17-byte trailer: ``b"crc_num"`` and the CRC-32 of every byte before it (10 bytes,
big-endian). MindSpore writes one ``Value`` per tensor and splits a tensor over 512 MB into consecutive values of the
same tag, each with the whole tensor's dims and a part of its bytes; strings (``append_dict``) are values of type
``str`` holding numpy's UTF-32; an encrypted file (``enc_key``) starts with a magic number instead.

``read_entries`` reads every tensor's bytes straight into its own numpy array (no copy of the file: peak memory is
the tensors once). Nothing is allocated before it is checked against the file: every length against the bytes
left in the message that holds it, every tensor's dims (times its type's size) against the bytes it holds, a split
tensor's missing part against the bytes left in the file; MindSpore's own loader checks none of these (its
``convert_bytes_to_tensor`` copies a tensor's bytes whatever its dims say: a crafted file corrupts its heap), so it
is never given a file. Any breach is ``DamagedFile``.

Read: tensors of every type MindSpore writes and loads (``Int8`` .. ``Float64``, ``Bool``, and ``BFloat16``, decoded
here to float32 (its bits are float32's upper 16 bits): numpy has no bfloat16); strings; tensors split over
consecutive values; the CRC (checked when present); unknown fields, skipped as protobuf parsers do.
Refused (``UnsupportedFile``, saying why): encrypted files (they need MindSpore's decryption with the key; a ViT's
weights are not secret, so ms_vit does not take keys); map tensors (``MapParameter``, embedding tables that a ViT
does not have); ``Int4`` (quantized) and types MindSpore's loader does not know either.
"""
import binascii
import math
import os

import numpy as np

NP_TYPES = {"Int8": np.int8, "UInt8": np.uint8, "Int16": np.int16, "UInt16": np.uint16, "Int32": np.int32,
            "UInt32": np.uint32, "Int64": np.int64, "UInt64": np.uint64, "Float16": np.float16,
            "Float32": np.float32, "Float64": np.float64, "Bool": np.bool_}
_STORED = dict(NP_TYPES, BFloat16=np.uint16)                  # how each type's bytes are laid out in the file
_CRC_TRAILER = 17                          # b"crc_num" + the CRC-32 of everything before, 10 bytes big-endian
_CIPHER_MAGIC = {0x7F3A5ED8: "AES-GCM", 0x7F3A5ED9: "AES-CBC", 0x7F3A5EDA: "SM4-CBC"}   # mindspore/core crypto.h
_MAX_DIMS = 32                             # numpy's limit
_MAX_ENTRIES = 100_000                     # a ViT-H with optimizer state and EMA has ~2,000; each entry costs ~250
#                                            bytes of Python objects, so a file of tiny entries is stopped at 25 MB
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5                # protobuf wire types (groups, 3 and 4, are not used)


class DamagedFile(ValueError):
    """The file breaks the format; the message says where."""


class UnsupportedFile(ValueError):
    """A well-formed checkpoint that uses a feature ms_vit does not read; the message says which and why."""


def read_entries(path: str, require_crc: bool = False) -> dict:
    """Every entry of the ``.ckpt`` at ``path``: name -> numpy array (``BFloat16`` as float32) or str.

    ``require_crc``: for files written with a CRC: one without is cut (a cut between two entries leaves a file that
    is whole in every other respect). Raises ``DamagedFile``, ``UnsupportedFile`` or ``OSError``."""
    size = os.path.getsize(path)
    if size == 0:
        raise DamagedFile("empty")
    with open(path, "rb") as f:
        magic = int.from_bytes(f.read(4), "little")
        if magic in _CIPHER_MAGIC:
            raise UnsupportedFile(f"it is encrypted (mindspore.save_checkpoint(enc_key=...), "
                                  f"{_CIPHER_MAGIC[magic]}): reading it needs MindSpore's decryption with the key, "
                                  "which ms_vit does not do; load it with mindspore.load_checkpoint(dec_key=...) and "
                                  "save it again without enc_key")
        f.seek(max(0, size - _CRC_TRAILER))
        trailer = f.read()
        f.seek(0)
        has_crc = len(trailer) == _CRC_TRAILER and trailer[:7] == b"crc_num"
        if require_crc and not has_crc:
            raise DamagedFile("its CRC is missing: cut")
        reader = _Reader(f, size - _CRC_TRAILER if has_crc else size)
        entries = _Entries()
        for field, wire in _fields(reader, reader.end):
            if (field, wire) == (1, _LEN):
                entries.add(*_read_value(reader, reader.length(reader.end)), remaining=reader.end - reader.pos)
            else:
                reader.skip_field(wire, reader.end)
        entries.finish()
        if has_crc and reader.crc != int.from_bytes(trailer[7:], "big"):
            raise DamagedFile("its CRC does not match its content")
    return entries.out


class _Reader:
    """Sequential reads of a file up to ``end`` with a running CRC-32 of every byte read."""

    def __init__(self, f, end: int):
        self.f, self.end, self.crc, self.pos = f, end, 0, 0

    def read(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise DamagedFile("it ends in the middle of an entry")
        data = self.f.read(n)
        if len(data) != n:
            raise DamagedFile("it ends in the middle of an entry")
        self.crc, self.pos = binascii.crc32(data, self.crc), self.pos + n
        return data

    def read_into(self, array: np.ndarray) -> None:
        view = memoryview(array).cast("B")
        if self.pos + len(view) > self.end or self.f.readinto(view) != len(view):
            raise DamagedFile("it ends in the middle of an entry")
        self.crc, self.pos = binascii.crc32(view, self.crc), self.pos + len(view)

    def varint(self) -> int:
        value = 0
        for shift in range(0, 70, 7):
            byte = self.read(1)[0]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                if value >> 64:
                    raise DamagedFile("a number over 64 bits")
                return value
        raise DamagedFile("a number over 10 bytes")

    def length(self, end: int) -> int:
        """A length-delimited field's length, checked against ``end`` (its message's end); returns where it ends."""
        n = self.varint()
        if self.pos + n > end:
            raise DamagedFile(f"a field of {n:,} bytes runs past the end of the {end - self.pos:,} bytes that hold it")
        return self.pos + n

    def skip_field(self, wire: int, end: int) -> None:
        """Pass over a field this reader does not use (read, for the CRC)."""
        if wire == _VARINT:
            self.varint()
            return
        stop = self.length(end) if wire == _LEN else self.pos + (8 if wire == _FIXED64 else 4)
        while self.pos < stop:
            self.read(min(stop - self.pos, 1 << 20))


def _fields(reader: _Reader, end: int):
    """``(field number, wire type)`` of each field of the message that ends at ``end``; the caller reads the field."""
    while reader.pos < end:
        key = reader.varint()
        if key >> 3 == 0 or key & 7 not in (_VARINT, _FIXED64, _LEN, _FIXED32):
            raise DamagedFile(f"a field key {key} that protobuf does not have")
        yield key >> 3, key & 7
        if reader.pos > end:
            raise DamagedFile("a field runs past the end of its entry")


def _read_value(reader: _Reader, end: int):
    """One ``Value``: ``(tag, tensor_type, dims, tensor_content)``; a repeated ``tensor`` field merges, as protobuf
    does (dims add up, the last type and content win)."""
    tag = kind = content = None
    dims = []
    for field, wire in _fields(reader, end):
        if (field, wire) == (1, _LEN):
            tag = _text(reader.read(reader.length(end) - reader.pos), "an entry name")
        elif (field, wire) == (2, _LEN):
            tensor_end = reader.length(end)
            for tensor_field, tensor_wire in _fields(reader, tensor_end):
                if (tensor_field, tensor_wire) == (1, _VARINT):
                    _add_dim(dims, reader.varint())
                elif (tensor_field, tensor_wire) == (1, _LEN):                 # packed dims
                    packed_end = reader.length(tensor_end)
                    while reader.pos < packed_end:
                        _add_dim(dims, reader.varint())
                    if reader.pos != packed_end:
                        raise DamagedFile("a dimension runs past the end of its list")
                elif (tensor_field, tensor_wire) == (2, _LEN):
                    kind = _text(reader.read(reader.length(tensor_end) - reader.pos), "a tensor type")
                elif (tensor_field, tensor_wire) == (3, _LEN):
                    content = None                                             # a repeated field: free the first
                    content = np.empty(reader.length(tensor_end) - reader.pos, np.uint8)
                    reader.read_into(content)
                else:
                    reader.skip_field(tensor_wire, tensor_end)
        elif field == 3:
            raise UnsupportedFile(f"entry {_shown(tag)} is a map tensor (mindspore.MapParameter, an embedding table), "
                                  "which a ViT does not have")
        else:
            reader.skip_field(wire, end)
    return tag, kind, dims, content


def _add_dim(dims: list, value: int) -> None:
    if value >> 63:
        raise DamagedFile("a negative dimension")
    if len(dims) == _MAX_DIMS:
        raise DamagedFile(f"a tensor of more than {_MAX_DIMS} dimensions")
    dims.append(value)


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise DamagedFile(f"{what} that is not UTF-8") from None


def _shown(name) -> str:
    """A name from the file, short enough for a message."""
    return "(unnamed)" if name is None else repr(name if len(name) <= 80 else name[:77] + "...")


class _Entries:
    """The entries read so far, and the one tensor being joined from the consecutive parts MindSpore split it into."""

    def __init__(self):
        self.out = {}
        self.split = None          # the tensor being joined: [tag, type, dims, shape, buffer of all its bytes, filled]
        self.previous = None       # the tag of the entry before

    def add(self, tag, kind, dims, content, remaining: int) -> None:
        """Add one ``Value``; ``remaining``: the bytes of the file after it (a split tensor's parts must fit)."""
        if tag is None or kind is None or content is None:
            raise DamagedFile(f"entry {_shown(tag)} lacks its " +
                              ("name" if tag is None else "tensor type" if kind is None else "content"))
        if self.split:
            if self.split[:3] == [tag, kind, dims]:
                self._join(content)
                return
            self.finish()
        if tag == self.previous:                  # (MindSpore's loader would join them into one tensor)
            raise DamagedFile(f"entry {_shown(tag)} is written twice in a row")
        self.previous = tag
        if kind == "str":
            self._keep(tag, _utf32(tag, content))
            return
        if kind not in _STORED:
            raise UnsupportedFile(f"entry {_shown(tag)} is of type {_shown(kind)}, which ms_vit does not read" +
                                  (" (quantized int4)" if kind == "Int4" else ""))
        shape = () if dims == [0] and len(content) else tuple(dims)   # MindSpore writes scalars' dims as [0]
        itemsize = np.dtype(_STORED[kind]).itemsize
        if math.prod(max(d, 1) for d in shape) * itemsize >> 63:   # numpy's limit, zero-size arrays included
            raise DamagedFile(f"tensor {_shown(tag)} of shape {shape} ({kind}) is larger than any array")
        total = math.prod(shape) * itemsize
        if len(content) == total:
            self._keep(tag, _array(content, kind, shape))
            return
        if len(content) > total or not len(content) or total - len(content) > remaining:
            raise DamagedFile(f"tensor {_shown(tag)} of shape {shape} ({kind}) needs {total:,} bytes; it holds "
                              f"{len(content):,}" + (f" and the file {remaining:,} more" if remaining else ""))
        buffer = np.empty(total, np.uint8)        # the first part of a tensor MindSpore split: the rest follows
        buffer[:len(content)] = content
        self.split = [tag, kind, dims, shape, buffer, len(content)]

    def _join(self, content: np.ndarray) -> None:
        tag, kind, _, shape, buffer, filled = self.split
        if filled + len(content) > len(buffer):
            raise DamagedFile(f"tensor {_shown(tag)}'s parts hold more than its {len(buffer):,} bytes")
        buffer[filled:filled + len(content)] = content
        self.split[5] = filled + len(content)
        if self.split[5] == len(buffer):
            self.split = None
            self._keep(tag, _array(buffer, kind, shape))

    def finish(self) -> None:
        """The end of the entries (or of a split tensor's parts): nothing may be left half-joined."""
        if self.split:
            tag, *_, buffer, filled = self.split
            raise DamagedFile(f"tensor {_shown(tag)} ends after {filled:,} of its {len(buffer):,} bytes")
        if not self.out:
            raise DamagedFile("it holds no entries")

    def _keep(self, tag: str, value) -> None:
        """Keep an entry; a name written again (not in a row) replaces the first, as in MindSpore's loader."""
        if tag not in self.out and len(self.out) == _MAX_ENTRIES:
            raise DamagedFile(f"it holds more than {_MAX_ENTRIES:,} entries")
        self.out[tag] = value


def _array(data: np.ndarray, kind: str, shape: tuple) -> np.ndarray:
    """A tensor of ``shape`` from its bytes (``data``, uint8, whose length has been checked)."""
    if kind == "BFloat16":                         # bfloat16 is the upper half of a float32
        bits = data.view(np.uint16).astype(np.uint32)
        bits <<= 16
        return bits.view(np.float32).reshape(shape)
    if kind == "Bool":                             # any non-zero byte is True, as numpy's own conversions
        return (data != 0).reshape(shape)
    return data.view(NP_TYPES[kind]).reshape(shape)


def _utf32(tag: str, data: np.ndarray) -> str:
    """A string entry: numpy's ``str_`` bytes (UTF-32, little-endian on every platform MindSpore runs on), without
    the padding NULs numpy drops."""
    if len(data) % 4:
        raise DamagedFile(f"string {_shown(tag)} is not UTF-32 ({len(data):,} bytes)")
    try:
        return data.tobytes().decode("utf-32-le").rstrip("\0")
    except UnicodeDecodeError:
        raise DamagedFile(f"string {_shown(tag)} is not UTF-32") from None
