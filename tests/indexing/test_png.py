"""The PNG writer of the anomaly check's files (indexing/png.py), read back by Pillow and zlib."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from indexing.png import encode_png


def _decoded(data: bytes) -> tuple[Image.Image, np.ndarray]:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img, np.asarray(img)


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk, each CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, payload = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + payload), kind
        chunks.append((kind, payload))
        at += 12 + length
    return chunks


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (37, 53)])
@pytest.mark.parametrize(
    ("dtype", "channels", "mode"), [(np.uint8, 0, "L"), (np.uint16, 0, "I;16"), (np.uint8, 3, "RGB")]
)
def test_every_layout_reads_back_pixel_for_pixel(shape: tuple[int, int], dtype: type, channels: int, mode: str) -> None:
    rng = np.random.default_rng(sum(shape) + channels)
    full = (*shape, channels) if channels else shape
    pixels = rng.integers(0, np.iinfo(dtype).max, size=full, endpoint=True).astype(dtype)
    pixels.flat[0], pixels.flat[-1] = np.iinfo(dtype).max, 0  # both ends of the range, wrapping differences
    img, back = _decoded(encode_png(pixels))
    assert img.format == "PNG" and img.mode == mode and img.size == (shape[1], shape[0])
    assert back.dtype == pixels.dtype and np.array_equal(back, pixels)


def test_rows_are_sub_filtered_in_one_checksummed_zlib_stream() -> None:
    ramp = np.add.outer(np.arange(6, dtype=np.uint16) * 300, np.arange(5, dtype=np.uint16) * 7)
    chunks = _chunks(encode_png(ramp))
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", chunks[0][1]) == (5, 6, 16, 0, 0, 0, 0)
    rows = np.frombuffer(zlib.decompress(chunks[1][1]), dtype=np.uint8).reshape(6, 1 + 5 * 2)  # Adler-32 checked
    assert (rows[:, 0] == 1).all()  # filter type Sub on every row
    # A ramp rising by 7 per pixel: after the first pixel every byte pair is the difference, 0 and 7.
    assert (rows[:, 3::2] == 0).all() and (rows[:, 4::2] == 7).all()
    assert np.array_equal(rows[:, 1:3].view(">u2")[:, 0], ramp[:, 0])


@pytest.mark.parametrize(
    "pixels", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4), np.uint8)]
)
def test_arrays_it_cannot_write_are_refused(pixels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="cannot write a PNG"):
        encode_png(pixels)
