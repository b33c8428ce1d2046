"""Checking image files before any work depends on them: readable header, not truncated, not a decompression bomb.

``check_image`` reads a file's first bytes and its last few: the dimensions come from the header (JPEG's SOF
segment, PNG's IHDR; Pillow for the other formats), and truncation shows as a missing end marker (JPEG's EOI,
PNG's IEND chunk), which a cut-off download or copy loses. A file without its end marker near its end is decoded
once in full before it is called truncated, so JPEGs with bytes after the end marker still pass. About 15 us a
file: 1.3 s per 100,000 files on a warm page cache (``benchmarks/bench_scan.py``).

Modes need no check: MindSpore's ``vision.Decode`` turns grayscale, CMYK, palette, RGBA/LA and 16-bit images into
8-bit RGB (tests/test_faults.py compares each with Pillow).
"""
import os
import struct
from typing import Optional, Tuple

from PIL import Image, UnidentifiedImageError

HEAD_BYTES = 4096                 # JPEGs whose frame header lies further in (big EXIF blocks) go to Pillow
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def max_pixels() -> int:
    """Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485 by default)."""
    return int(Image.MAX_IMAGE_PIXELS or 0)


def _jpeg_size(head: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) from the first frame header (SOF) of a JPEG's first bytes, or None if not within them."""
    pos = 2
    while pos + 9 <= len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:                 # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:     # markers without a length
            pos += 2
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", head[pos + 5:pos + 9])
            return width, height
        pos += 2 + struct.unpack(">H", head[pos + 2:pos + 4])[0]
    return None


def _header(path: str, head: bytes) -> Tuple[str, Tuple[int, int]]:
    """(format, (width, height)); raises ValueError when the header cannot be read."""
    if head.startswith(b"\xff\xd8"):
        size = _jpeg_size(head)
        if size:
            return "JPEG", size
    elif head.startswith(_PNG_MAGIC) and head[12:16] == b"IHDR":
        return "PNG", struct.unpack(">II", head[16:24])
    try:                                   # other formats, and JPEGs whose frame header lies further in
        with Image.open(path) as image:
            return image.format, image.size
    except UnidentifiedImageError:
        raise ValueError("not a readable image (no image format that Pillow knows)") from None
    except Exception as exc:
        raise ValueError(f"not a readable image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") \
            from None


def _decodes(path: str) -> bool:
    """Whether the whole file decodes (Pillow; it refuses truncated data as MindSpore's decoder does, and without
    the ``abnormal_image.jpg`` that MindSpore's eager ``Decode`` dumps into the working folder on failure)."""
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:
        return False


def check_image(path: str) -> Optional[str]:
    """Why ``path`` cannot be trained on or classified, or None when it can."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
            if len(head) < HEAD_BYTES:
                tail = head[-16:]
            else:
                f.seek(-16, os.SEEK_END)
                tail = f.read()
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if not head:
        return "empty file"
    try:
        kind, (width, height) = _header(path, head)
    except ValueError as exc:
        return str(exc)
    if max_pixels() and width * height > max_pixels():
        return (f"{width}x{height} = {width * height:,} pixels, over the decompression-bomb limit of "
                f"{max_pixels():,} (PIL.Image.MAX_IMAGE_PIXELS)")
    ended = {"JPEG": lambda: b"\xff\xd9" in tail, "PNG": lambda: tail.endswith(_PNG_END)}.get(kind, lambda: True)
    if not ended() and not _decodes(path):
        return f"truncated (the {kind} data stops before its end marker)"
    return None

