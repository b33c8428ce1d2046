"""MindSpore ``.ckpt`` bytes written by hand (the protobuf of ``mindspore/train/checkpoint_pb2.py``), for damaged and
crafted checkpoints: every length, dim, type and field is whatever the test says."""
import binascii
import json

TRAILER = 17                                      # b"crc_num" + CRC-32, 10 bytes big-endian


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative ``n`` (any size: over 64 bits too)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(data: bytes, pos: int):
    """The varint at ``pos`` of well-formed ``data``, and where it ends."""
    value = shift = 0
    while True:
        byte = data[pos]
        value, pos, shift = value | (byte & 0x7F) << shift, pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def entry_ends(data: bytes) -> list:
    """Where each entry (``Checkpoint.value``) of a well-formed checkpoint ends."""
    ends, pos, end = [], 0, len(without_crc(data))
    while pos < end:
        _, pos = read_varint(data, pos)
        length, pos = read_varint(data, pos)
        pos += length
        ends.append(pos)
    return ends


def int64(n: int) -> bytes:
    """An int64 field's varint: a negative ``n`` in two's complement (10 bytes)."""
    return varint(n & (2**64 - 1) if n < 0 else n)


def field(number: int, payload: bytes, wire: int = 2) -> bytes:
    """A field: length-delimited (wire 2) ``payload``, or a varint/fixed field whose ``payload`` is already encoded."""
    key = varint(number << 3 | wire)
    return key + (varint(len(payload)) + payload if wire == 2 else payload)


def tensor(dims, kind: str, content: bytes, packed: bool = False) -> bytes:
    """A ``TensorProto``: dims (int64, unpacked as MindSpore writes them, or packed), type, content."""
    if packed:
        dim_fields = field(1, b"".join(int64(d) for d in dims)) if dims else b""
    else:
        dim_fields = b"".join(field(1, int64(d), wire=0) for d in dims)
    return dim_fields + field(2, kind.encode()) + field(3, content)


def value(tag: str, dims, kind: str, content: bytes, extra: bytes = b"") -> bytes:
    """One ``Checkpoint.value`` entry: ``Value { tag; tensor }`` (``extra``: more fields of the Value)."""
    return field(1, field(1, tag.encode()) + field(2, tensor(dims, kind, content)) + extra)


def string(tag: str, text: str) -> bytes:
    """A string entry as ``save_checkpoint(append_dict=...)`` writes it: numpy's UTF-32, dims [0]."""
    return value(tag, [0], "str", text.encode("utf-32-le"))


def meta(obj) -> bytes:
    """ms_vit's metadata entry holding ``obj`` (JSON), or ``obj`` itself when it is a str."""
    return string("ms_vit_meta", obj if isinstance(obj, str) else json.dumps(obj))


def with_crc(body: bytes) -> bytes:
    return body + b"crc_num" + binascii.crc32(body).to_bytes(10, "big")


def without_crc(raw: bytes) -> bytes:
    """A checkpoint's entries without its CRC trailer (if it has one): more entries can be appended."""
    return raw[:-TRAILER] if raw[-TRAILER:-10] == b"crc_num" else raw


def kinds(valid: bytes) -> dict:
    """name -> (bytes, what the error says) of every kind of crafted or damaged checkpoint that ``checkpoint.read``
    must refuse with a ``CheckpointError``, built on ``valid`` (a checkpoint written by ``checkpoint.save``).

    Several carry a bfloat16 entry or an unknown field first: before ms_vit read those itself, either sent the whole
    file to ``mindspore.load_checkpoint``, whose ``convert_bytes_to_tensor`` copies a tensor's bytes whatever its
    dims say (heap corruption: "double free or corruption", SIGSEGV)."""
    body = without_crc(valid)
    bf16 = value("bf16_scale", [2], "BFloat16", b"\x80\x3f\x00\x40")             # [1.0, 2.0]
    unknown = field(9, b"a field no MindSpore writes")                          # (in a Value: skipped)
    return {
        "oversize content (Float32 dims [1], 1 MiB)": (
            body + bf16 + value("w", [1], "Float32", bytes(1 << 20)), "needs 4 bytes; it holds 1,048,576"),
        "oversize content after an unknown field": (
            body + value("w", [1], "Float32", bytes(1 << 20), extra=unknown), "needs 4 bytes; it holds 1,048,576"),
        "undersize content (Float32 dims [1000], 4 bytes)": (
            body + bf16 + value("w", [1000], "Float32", bytes(4)), "needs 4,000 bytes; it holds 4"),
        "dim of 2^64": (body + bf16 + value("w", [2**64], "Float32", bytes(4)), "a number over 64 bits"),
        "no elements, a dim of 2^63 - 1": (body + bf16 + value("w", [0, 2**63 - 1], "Int16", b""),
                                           "is larger than any array"),
        "negative dim": (body + bf16 + value("w", [-1, 4], "Float32", bytes(16)), "a negative dimension"),
        "1 TiB declared in 26 bytes": (value("w", [2**38], "Float32", bytes(1)),
                                       "needs 1,099,511,627,776 bytes; it holds 1"),
        "bad UTF-32 string": (body + bf16 + value("note", [0], "str", b"\xff\xff\xff\xff"),
                              "string 'note' is not UTF-32"),
        "metadata not JSON": (body + bf16 + meta("{not json"), "ms_vit_meta entry is not a JSON object"),
        "metadata nested 100,000 deep": (body + bf16 + meta("[" * 100_000 + "]" * 100_000),
                                         "ms_vit_meta entry is not a JSON object"),
        "metadata not an object": (body + bf16 + meta([1, 2]), "ms_vit_meta entry is not a JSON object"),
        "map tensor": (body + field(1, field(1, b"table") + field(3, field(1, tensor([2], "Float32", bytes(8))))),
                       "entry 'table' is a map tensor"),
        "quantized Int4 tensor": (body + value("q", [2], "Int4", bytes(1)), "of type 'Int4', which ms_vit does not"),
        "length past the end": (body + varint(1 << 3 | 2) + varint(1 << 40) + b"x", "runs past the end"),
        "split tensor cut short": (value("w", [1000], "Float32", bytes(400)) + body,
                                   "tensor 'w' ends after 400 of its 4,000 bytes"),
        "empty file": (b"", "(0 bytes: empty)"),
        "no entries (a CRC alone)": (with_crc(b""), "it holds no entries"),
    }
